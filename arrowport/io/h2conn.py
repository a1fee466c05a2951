"""HTTP/2 connections served with h2 on trio: the transport under Flight.

Arrowport serves HTTP/2 itself rather than through hypercorn's HTTP/2 path;
docs/architecture.md says why. This module knows nothing of gRPC: it runs one
handler task per request stream and gives it ``receive_some`` / ``send_*``.

Invariants:

* One reader task per connection receives bytes, feeds h2 and routes events to
  per-stream state. It never waits for a handler, so a handler stalled on
  storage never delays another stream (no head-of-line blocking).
* One writer task owns the socket's send side; whatever changes h2's outbound
  buffer wakes it. ``send_data`` returns only once its bytes have left the
  process, so a paused peer holds at most one message per stream in memory
  (send-side backpressure); h2's flow-control windows bound the rest.
* Inbound flow control: a stream's window reopens only as its handler
  consumes data. The connection window covers every stream's window at once,
  so stalled streams cannot starve the others.
* Received bytes are read into 4 MiB buffers and DATA payloads are views of
  them (no copy). A stream that is not reading pins at most two buffers; its
  further payloads are copied. A decoder keeps a view only until its next
  feed (``InputBuffer``). So memory per connection stays bounded by the
  windows plus three buffers a stream, whatever frame sizes a client picks.
* Each request runs in a cancel scope that is cancelled when the peer resets
  the stream or the connection is lost: a client that vanishes mid-upload
  gets its handler cancelled (and its transaction rolled back).
* A handler may finish while the client is still sending (an early error).
  Its later DATA is acknowledged and dropped; the stream is never reset,
  because gRPC clients then report INTERNAL instead of the status we sent.
* h2 formats every received frame's ``repr`` eagerly; for DATA frames that
  hex-encodes a copy of the payload. ``h2frames.quiet_data_frame_repr`` makes
  that repr constant-time; it is installed on import. Received frames are
  parsed by ``h2frames.ChunkedFrameBuffer``, which does not copy payloads.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import pyarrow as pa
import trio
from h2.errors import ErrorCodes

from .h2frames import ChunkedFrameBuffer, quiet_data_frame_repr

quiet_data_frame_repr()

log = logging.getLogger("arrowport.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

KiB = 1024
MiB = 1024 * KiB
RECEIVE_SIZE = 4 * MiB  # receive buffers: several frames each, so few straddle two
MIN_RECEIVE = 256 * KiB  # a buffer with less room left is replaced
STREAM_WINDOW = 4 * MiB  # per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE)
MAX_FRAME_SIZE = 1 * MiB  # largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE)
MAX_CONCURRENT_STREAMS = 32
# Every stream's window, plus one more for control calls: never exhausted by
# stalled streams (h2's default of 64 KiB would be, by one).
CONNECTION_WINDOW = (MAX_CONCURRENT_STREAMS + 1) * STREAM_WINDOW
MAX_HEADER_LIST_SIZE = 64 * KiB

Headers = Sequence[tuple[bytes, bytes]]
Payload = bytes | memoryview  # DATA: a view of a receive buffer, or a copy


class Waitable(Protocol):
    async def wait(self) -> object: ...


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
            await self._lot.park()
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
            # copied, so a stalled stream costs its window, not 4 MiB a frame.
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
        await self.conn.wait_flushed()

    async def send_data(self, data: bytes | memoryview, *, end_stream: bool = False) -> None:
        await self.conn.send_data(self, data, end_stream=end_stream)

    async def send_trailers(self, headers: Headers) -> None:
        self.conn.send_headers(self, headers, end_stream=True)
        await self.conn.wait_flushed()


Handler = Callable[[H2Stream], Awaitable[None]]


class H2Server:
    """Serve one HTTP/2 connection whose client preface may be partly read."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        *,
        received: bytes = b"",
        terminated: Waitable | None = None,
        idle_timeout: float = math.inf,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.received = received
        self.terminated = terminated
        self.idle_timeout = idle_timeout
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # h2 derives this from the settings it was built with, not from ours
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self.h2.incoming_buffer = ChunkedFrameBuffer()
        self.streams: dict[int, H2Stream] = {}
        self._wakeup = trio.Event()
        self._queued = 0  # sequence number of the last change to h2's outbound buffer
        self._written = 0  # ... and of the last one written to the socket
        self._flushed = trio.lowlevel.ParkingLot()
        self._window = trio.lowlevel.ParkingLot()
        self._closed = False
        self._going_away = False
        self._buffer: memoryview | None = None
        self._filled = 0
        self._raw: list[bytes] = []  # frames written by hand (GOAWAY at shutdown)
        self._opened = 0  # streams opened so far (the idle watch)

    # -- for streams --------------------------------------------------------

    def acknowledge(self, stream_id: int, flow: int) -> None:
        if self._closed or not flow:
            return
        self.h2.acknowledge_received_data(flow, stream_id)
        self._wake()

    def send_headers(self, stream: H2Stream, headers: Headers, *, end_stream: bool) -> None:
        self._check(stream)
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            raise StreamGone("the stream is closed") from None
        if end_stream:
            stream.local_ended = True
        self._wake()

    async def send_data(
        self, stream: H2Stream, data: bytes | memoryview, *, end_stream: bool
    ) -> None:
        """Send ``data`` as the peer's windows allow; return once it is written."""
        view = memoryview(data).cast("B")
        sid = stream.stream_id
        while view:
            self._check(stream)
            try:
                window = self.h2.local_flow_control_window(sid)
                if window <= 0:
                    await self._window.park()
                    continue
                take = min(len(view), window)
                frame = self.h2.max_outbound_frame_size
                for start in range(0, take, frame):
                    self.h2.send_data(sid, view[start : min(start + frame, take)])
            except h2.exceptions.ProtocolError:
                raise StreamGone("the stream is closed") from None
            view = view[take:]
            self._wake()
            await self.wait_flushed()
        if end_stream:
            self._check(stream)
            try:
                self.h2.end_stream(sid)
            except h2.exceptions.ProtocolError:
                raise StreamGone("the stream is closed") from None
            stream.local_ended = True
            self._wake()
            await self.wait_flushed()

    async def wait_flushed(self) -> None:
        """Wait until everything queued so far has been written to the socket."""
        target = self._queued
        while self._written < target:
            if self._closed:
                raise StreamGone("the connection is closed")
            await self._flushed.park()

    def _check(self, stream: H2Stream) -> None:
        if self._closed:
            raise StreamGone("the connection is closed")
        if stream.reset:
            raise StreamGone("the client reset the stream")

    def _wake(self) -> None:
        self._queued += 1
        self._wakeup.set()

    # -- the connection -----------------------------------------------------

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        self._wake()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if self.terminated is not None:
                    nursery.start_soon(self._wait_terminated, nursery.cancel_scope)
                if self.idle_timeout < math.inf:
                    nursery.start_soon(self._close_when_idle, nursery.cancel_scope)
                await self._reader(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._close()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.stream.aclose()

    async def _reader(self, nursery: trio.Nursery) -> None:
        data: bytes | bytearray | memoryview = self.received  # what h2 has not seen yet
        while True:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.info("HTTP/2 protocol error from client: %s", exc)
                self._wake()  # h2 queued a GOAWAY: let the writer send it
                with trio.move_on_after(1):
                    await self.wait_flushed()
                return
            for event in events:
                self._dispatch(event, nursery)
            self._wake()
            try:
                data, more = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not more:
                return

    async def _receive(self) -> tuple[bytes | bytearray | memoryview, bool]:
        """Read into Arrow-allocated buffers, filled read after read.

        A fresh ``bytes`` per read costs a page fault every 4 KiB (a third of
        the CPU of a bulk upload); Arrow's allocator recycles these buffers.
        Each read lands right after the previous one in the same buffer, and
        the frame buffer joins such spans without copying. Bytes once
        received are never written again, so frames may keep views of them.
        Returns what h2 has yet to be given (nothing, when the bytes went
        straight into the frame buffer), and False at EOF.
        """
        frames = self.h2.incoming_buffer
        sock = getattr(self.stream, "socket", None)
        if sock is None or not isinstance(frames, ChunkedFrameBuffer):
            data = await self.stream.receive_some(RECEIVE_SIZE)
            return data, bool(data)
        if self._buffer is None or RECEIVE_SIZE - self._filled < MIN_RECEIVE:
            self._buffer = memoryview(pa.allocate_buffer(RECEIVE_SIZE))
            self._filled = 0
        start = self._filled
        n = await sock.recv_into(self._buffer[start:])
        self._filled += n
        frames.add_span(self._buffer, start, start + n)
        return b"", n > 0

    def _dispatch(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            flow = event.flow_controlled_length
            if stream is None or not event.data:  # empty (or padding-only): nothing to read
                self.acknowledge(event.stream_id, flow)
            else:
                stream._push(event.data, flow)
        elif isinstance(event, h2.events.RequestReceived):
            stream = H2Stream(self, event.stream_id, event.headers)
            if self._going_away:
                self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                return
            self.streams[event.stream_id] = stream
            self._opened += 1
            nursery.start_soon(self._run_stream, stream)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._end()
                self._forget_if_closed(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream._on_reset()
            self._window.unpark_all()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.unpark_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._going_away = True

    async def _run_stream(self, stream: H2Stream) -> None:
        try:
            with stream.cancel_scope:
                await self.handler(stream)
        except StreamGone:
            pass
        except Exception:
            log.exception("HTTP/2 stream handler failed")
        finally:
            stream._release()
            if not stream.local_ended and not stream.reset and not self._closed:
                # the handler ended without answering: never leave the client waiting
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.reset_stream(stream.stream_id, ErrorCodes.INTERNAL_ERROR)
                self._wake()
            self._forget_if_closed(stream)

    def _forget_if_closed(self, stream: H2Stream) -> None:
        """Drop a stream once both sides are done with it.

        A stream whose handler answered while the client is still uploading
        stays, so that its late DATA is acknowledged and dropped.
        """
        if stream.done and (stream.remote_ended or stream.reset):
            self.streams.pop(stream.stream_id, None)

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            target = self._queued
            data = self.h2.data_to_send()
            if self._raw:
                data += b"".join(self._raw)
                self._raw.clear()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._close()
                    return
            self._written = target
            self._flushed.unpark_all()

    async def _wait_terminated(self, scope: trio.CancelScope) -> None:
        """The server is stopping: refuse new streams, finish these, then close."""
        assert self.terminated is not None
        await self.terminated.wait()
        await self._go_away(scope)

    async def _close_when_idle(self, scope: trio.CancelScope) -> None:
        """Close a connection that has had no stream for ``idle_timeout`` seconds.

        Bytes alone do not count as activity, so a client trickling a frame
        that never completes a request is closed too. gRPC clients take the
        GOAWAY (NO_ERROR) as "reconnect for the next call".
        """
        tick = min(1.0, self.idle_timeout / 4)
        idle_since, opened = trio.current_time(), self._opened
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            if self.streams or self._opened != opened:
                idle_since, opened = now, self._opened
            elif now - idle_since >= self.idle_timeout:
                log.debug("closing an HTTP/2 connection idle for %.0f s", now - idle_since)
                await self._go_away(scope)
                return

    async def _go_away(self, scope: trio.CancelScope) -> None:
        """Refuse new streams, let these finish, then close.

        The GOAWAY is written by hand: h2 treats a GOAWAY it sends as the end
        of the connection and would refuse the in-flight streams' answers.
        """
        self._going_away = True
        goaway = hyperframe.frame.GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        self._raw.append(goaway.serialize())
        self._wake()
        while any(not stream.done for stream in self.streams.values()):
            await trio.sleep(0.05)  # answered streams still uploading do not hold us up
        await self.wait_flushed()
        scope.cancel()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in list(self.streams.values()):
            stream.reset = True
            stream._lot.unpark_all()
            stream.cancel_scope.cancel()
        self._flushed.unpark_all()
        self._window.unpark_all()
