"""One gRPC call on an HTTP/2 stream: request checks, messages, status.

Invariants:

* Response headers go out with the first message, or together with the
  status as a trailers-only response when there is none.
* Every call ends with ``grpc-status`` (and ``grpc-message``), whatever
  happens in the method: an ``ArrowportError`` keeps its status and message;
  anything else is INTERNAL and logged as a bug.
* A call whose client is gone (reset or disconnect) sends nothing more.
* Every answer's headers say ``grpc-accept-encoding: identity``: Arrowport
  refuses compressed messages (UNIMPLEMENTED), and the header tells a client
  what to send instead.
* With a ``grpc-timeout`` (``set_timeout``), ``chunks()`` refuses to wait
  past the deadline: DEADLINE_EXCEEDED (``protocol.grpc.deadline_exceeded``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from ..protocol import NEED_DATA, ArrowportError, GrpcStatus
from ..protocol.grpc import (
    GrpcMessage,
    GrpcMessageDecoder,
    GrpcStreamEnded,
    deadline_exceeded,
    prefix,
    status_trailers,
)
from ..redact import public_detail
from .answers import shown_detail
from .h2conn import H2Stream, StreamGone
from .status import grpc_status

log = logging.getLogger("arrowport.grpc")

GRPC_CONTENT_TYPE = b"application/grpc"
ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity")
MAX_CONTROL_MESSAGE = 4 * 1024 * 1024  # tickets, actions, descriptors: small
MAX_STATUS_MESSAGE = 2048  # characters; percent-encoded it stays well under 16 KiB


class GrpcCall:
    def __init__(self, stream: H2Stream, method: str) -> None:
        self.stream = stream
        self.method = method
        self.headers_sent = False
        self.pushback_ms: int | None = None  # grpc-retry-pushback-ms, for UNAVAILABLE
        self.token: Any = None  # the caller's auth token, once authenticated
        self.response_headers: list[tuple[bytes, bytes]] = []  # extra, sent with the first
        self.messages_sent = 0
        self.timeout: float | None = None  # grpc-timeout, in seconds
        self.deadline = math.inf  # trio's clock
        self.deadline_monotonic = math.inf  # time.monotonic(), for worker threads

    def past_deadline(self) -> bool:
        """For a worker thread: is the deadline past?"""
        return time.monotonic() >= self.deadline_monotonic

    def set_timeout(self, seconds: float) -> None:
        """Start the call's deadline: ``seconds`` from now."""
        self.timeout = seconds
        self.deadline = trio.current_time() + seconds
        self.deadline_monotonic = time.monotonic() + seconds

    # -- receiving ----------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The request's DATA payloads, as they arrive (not past the deadline)."""
        if self.timeout is None:
            while chunk := await self.stream.receive_some():
                yield chunk
            return
        while True:
            received: bytes | memoryview | None = None
            with trio.move_on_at(self.deadline):  # (never yield inside a cancel scope)
                received = await self.stream.receive_some()
            if received is None:
                raise deadline_exceeded(
                    self.timeout,
                    "the request was abandoned before its end (nothing unacknowledged was "
                    "committed)",
                )
            if not received:
                return
            yield received

    async def messages(self, max_size: int = MAX_CONTROL_MESSAGE) -> AsyncIterator[bytes]:
        """The request's gRPC messages, for small (non-bulk) requests."""
        decoder = GrpcMessageDecoder(max_message_size=max_size)
        while True:
            event = decoder.next_event()
            if isinstance(event, GrpcMessage):
                yield event.data
            elif isinstance(event, GrpcStreamEnded):
                return
            elif event is NEED_DATA:
                decoder.receive_data(await self.stream.receive_some())

    async def unary_request(self, what: str) -> bytes:
        """The one request message of a unary or server-streaming call."""
        request: bytes | None = None
        async for message in self.messages():
            if request is not None:
                raise ArrowportError(
                    f"{self.method} takes one {what} message; got more",
                    error="invalid_request",
                )
            request = message
        if request is None:
            raise ArrowportError(
                f"{self.method} needs a {what} message; the request had none",
                error="invalid_request",
            )
        return request

    # -- sending ------------------------------------------------------------

    async def _start(self) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            await self.stream.send_headers(
                [
                    (b":status", b"200"),
                    (b"content-type", GRPC_CONTENT_TYPE),
                    ACCEPT_ENCODING,
                    *self.response_headers,
                ]
            )

    async def send_message(self, payload: bytes) -> None:
        await self._start()
        await self.stream.send_data(prefix(len(payload)) + payload)
        self.messages_sent += 1

    async def send_parts(self, head: bytes, body: memoryview | bytes, length: int) -> None:
        """Send one message of ``length`` bytes as ``head`` then ``body``, uncopied."""
        await self._start()
        await self.stream.send_data(prefix(length) + head)
        if len(body):
            await self.stream.send_data(body)
        self.messages_sent += 1

    async def finish(self, status: GrpcStatus, message: str = "") -> None:
        if len(message) > MAX_STATUS_MESSAGE:  # gRPC clients refuse metadata over 16 KiB
            message = message[: MAX_STATUS_MESSAGE - 1] + "…"
        trailers = status_trailers(status, message)
        if self.pushback_ms is not None:
            trailers.append((b"grpc-retry-pushback-ms", str(self.pushback_ms).encode()))
        if self.headers_sent:
            await self.stream.send_trailers(trailers)
        else:  # trailers-only
            self.headers_sent = True
            await self.stream.send_headers(
                [
                    (b":status", b"200"),
                    (b"content-type", GRPC_CONTENT_TYPE),
                    ACCEPT_ENCODING,
                    *self.response_headers,
                    *trailers,
                ],
                end_stream=True,
            )

    async def fail(self, exc: BaseException) -> None:
        """End the call with the status that explains ``exc``."""
        if isinstance(exc, StreamGone):
            return
        if isinstance(exc, ArrowportError):
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:  # gRPC's own hint for retrying clients
                self.pushback_ms = int(retry_after * 1000)
            await self.finish(grpc_status(exc), shown_detail(exc))
        else:
            log.error("%s failed with a bug", self.method, exc_info=exc)
            detail = public_detail(f"internal error: {type(exc).__name__}: {exc}")
            await self.finish(GrpcStatus.INTERNAL, detail)
