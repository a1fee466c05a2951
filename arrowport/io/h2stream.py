"""One HTTP/2 request stream as its handler sees it (served by ``h2conn.H2Server``)."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import trio

from ..protocol.h2events import Headers, Payload

if TYPE_CHECKING:
    from .h2conn import H2Server


class StreamGone(trio.BrokenResourceError):
    """The peer reset the stream, or the connection is gone."""


class H2Stream:
    """One request stream, as its handler sees it."""

    def __init__(self, conn: H2Server, stream_id: int, headers: Headers) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers: dict[bytes, bytes] = {}
        for name, value in headers:
            self.headers.setdefault(name, value)
        self.path = self.headers.get(b":path", b"").decode("latin-1")
        self.method = self.headers.get(b":method", b"").decode("latin-1")
        self.cancel_scope = trio.CancelScope()
        self._chunks: collections.deque[tuple[Payload, int]] = collections.deque()
        self._pinned: collections.Counter[int] = collections.Counter()  # receive buffers held
        self._lot = trio.lowlevel.ParkingLot()
        self.remote_ended = False
        self.reset = False
        self.local_ended = False
        self.done = False  # the handler returned

    # -- receiving ----------------------------------------------------------

    async def receive_some(self) -> Payload:
        """The next DATA payload; ``b""`` once the client ended the stream."""
        while not self._chunks:
            if self.reset:
                raise StreamGone("the client reset the stream")
            if self.remote_ended:
                return b""
            await self.conn.wait_on_client(self, self._lot)
        data, flow = self._chunks.popleft()
        if isinstance(data, memoryview):
            self._unpin(data)
        self.conn.acknowledge(self.stream_id, flow)
        return data

    def _push(self, data: Payload, flow: int) -> None:
        if self.done:  # the handler answered early: drop, but give the window back
            self.conn.acknowledge(self.stream_id, flow)
            return
        if isinstance(data, memoryview):
            # A payload is a view of a whole receive buffer. A stream that is
            # not reading may pin at most two of them; beyond that its data is
            # copied, so a stalled stream costs its window, not a buffer a frame.
            key = id(data.obj)
            if key in self._pinned or len(self._pinned) < 2:
                self._pinned[key] += 1
            else:
                data = bytes(data)
        self._chunks.append((data, flow))
        self._lot.unpark_all()

    def _unpin(self, data: memoryview) -> None:
        key = id(data.obj)
        self._pinned[key] -= 1
        if not self._pinned[key]:
            del self._pinned[key]

    def _end(self) -> None:
        self.remote_ended = True
        self._lot.unpark_all()

    def _on_reset(self) -> None:
        self.reset = True
        self._lot.unpark_all()
        self.cancel_scope.cancel()

    def _release(self) -> None:
        """The handler is done: return the window of what it never read."""
        self.done = True
        while self._chunks:
            _, flow = self._chunks.popleft()
            self.conn.acknowledge(self.stream_id, flow)
        self._pinned.clear()

    # -- sending ------------------------------------------------------------

    async def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        self.conn.send_headers(self, headers, end_stream=end_stream)
        await self.conn.wait_flushed(self)

    async def send_data(self, data: bytes | memoryview, *, end_stream: bool = False) -> None:
        await self.conn.send_data(self, data, end_stream=end_stream)

    async def send_trailers(self, headers: Headers) -> None:
        self.conn.send_headers(self, headers, end_stream=True)
        await self.conn.wait_flushed(self)
