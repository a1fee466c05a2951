"""A request body for quart-trio with backpressure and no copies.

Stock Quart reads every ASGI body message as soon as it arrives and appends
it to one ``bytearray``, so a slow consumer lets a fast client fill memory,
and each chunk is copied twice. Here the ASGI receive loop waits while more
than ``HIGH_WATER`` bytes are buffered, so TCP flow control holds the client
back, and chunks are handed out as received.

``with_eof`` times any body (HTTP or DoPut) out when its client stalls.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Generator
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.wrappers import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge

from ..config import Limits
from ..protocol import ArrowportError

HIGH_WATER = 1024 * 1024


class StreamingBody:
    """Iterate with ``async for chunk in body``; ``await body`` reads it all."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._complete = False
        self._changed = trio.Event()
        self._max = max_content_length
        self._received = 0
        self._must_raise: Exception | None = None
        if (
            expected_content_length is not None
            and max_content_length is not None
            and expected_content_length > max_content_length
        ):
            self._must_raise = RequestEntityTooLarge()

    @property
    def complete(self) -> bool:
        return self._complete

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._received += len(data)
        if self._max is not None and self._received > self._max:
            self._must_raise = RequestEntityTooLarge()
            self._complete = True
        self._notify()

    def set_complete(self) -> None:
        self._complete = True
        self._notify()

    def clear(self) -> None:
        self._chunks.clear()
        self._size = 0
        self._notify()

    async def wait_writable(self) -> None:
        """Block the ASGI receive loop while the consumer is behind."""
        while self._size >= HIGH_WATER and not self._complete:
            await self._changed.wait()

    def __aiter__(self) -> StreamingBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._must_raise is not None:
                raise self._must_raise
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                self._notify()
                return chunk
            if self._complete:
                raise StopAsyncIteration
            await self._changed.wait()

    async def _read_all(self) -> bytes:
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._read_all().__await__()


class StreamingRequest(TrioRequest):
    body_class = StreamingBody  # type: ignore[assignment]


class StreamingASGIHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, with a receive loop that honours backpressure.

    quart-trio cancels the request handler when the client disconnects. But
    hypercorn also says "disconnect" once the last answer message is sent, from
    inside that very send, and then goes on in the handler's task to recycle the
    connection (restart its idle timer, or close it at shutdown). Cancelled
    there, a kept-alive connection was never timed out nor closed. So once the
    last message of the answer is on its way, a disconnect no longer cancels.
    """

    answered = False

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.answered = True
            await send(message)

        await super().__call__(receive, sending)

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            if isinstance(body, StreamingBody):
                await body.wait_writable()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        if not self.answered:  # the client went away: stop the handler
            nursery.cancel_scope.cancel()


async def with_eof(
    chunks: AsyncIterator[bytes | memoryview], limits: Limits, mode: str
) -> AsyncIterator[bytes | memoryview]:
    """Yield the body's chunks, then ``b""`` once the body is complete.

    A client that sends nothing for ``limits.body_idle_timeout`` seconds is
    cut off: it would otherwise hold its table's writer for as long as it
    likes. So is a request-mode client that trickles (slowloris): with
    ``limits.min_body_rate``, the time the body may spend waiting for the
    client is a credit of at most ``body_idle_timeout`` seconds, spent by
    waiting and earned back at one second per ``min_body_rate`` bytes. Only
    time spent waiting for the client counts, never time the server spends
    writing (when flow control holds the client back).
    """
    idle = limits.body_idle_timeout or math.inf
    # batch mode is for long-lived streams whose producers may wait for each ack (each a
    # commit the server takes its time over): only the idle timeout applies there
    rate = limits.min_body_rate if mode != "batch" else 0
    credit = idle
    received = 0
    waited = 0.0
    kept = "; batches before it stay committed" if mode == "batch" else " and nothing was committed"
    iterator = aiter(chunks)
    while True:
        asked = trio.current_time()
        try:
            with trio.fail_after(credit):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        except trio.TooSlowError:
            if credit < idle:
                waited = max(waited + credit, 1e-3)
                raise ArrowportError(
                    f"the request body arrived at {received / waited:,.0f} bytes/s, below "
                    f"limits.min_body_rate ({rate:,} bytes/s): {received:,} bytes in "
                    f"{waited:,.1f} s of waiting; the request was abandoned{kept}",
                    error="body_too_slow",
                ) from None
            raise ArrowportError(
                f"no request body data for {idle:g} s; the request was abandoned{kept}",
                error="body_timeout",
            ) from None
        if rate:
            spent = trio.current_time() - asked
            waited += spent
            received += len(chunk)
            credit = max(0.0, min(idle, credit - spent + len(chunk) / rate))
        if chunk:
            yield chunk
    yield b""
