"""HTTP/2 connections on trio: a thin driver of ``protocol.h2session.H2Session``.

Arrowport serves HTTP/2 itself rather than through hypercorn's HTTP/2 path;
docs/architecture.md says why. The protocol, and every flood defense, lives in
the sans-IO session; this module moves bytes, runs handlers and keeps time.
It knows nothing of gRPC: it runs one handler task per request stream and
gives it ``receive_some`` / ``send_*``.

Invariants:

* One reader task per connection receives bytes, feeds the session in slices
  (yielding to trio between them, so one connection cannot starve others) and
  routes events to per-stream state. It never waits for a handler, so a
  handler stalled on storage never delays another stream (no head-of-line
  blocking). It stops reading while the session's unsent control frames are
  over budget (a client that does not read stops being read).
* At most ``max_concurrent_streams`` handler tasks run per connection; the
  session queues streams beyond that until a handler finishes.
* One writer task owns the socket's send side; whatever changes the session's
  outbound bytes wakes it. ``send_data`` returns only once its bytes have left
  the process, so a paused peer holds at most one message per stream in memory
  whatever window it advertises (send-side backpressure).
* Inbound flow control: a stream's window reopens only as its handler
  consumes data. The connection window covers every stream's window at once,
  so stalled streams cannot starve the others.
* Received bytes go into buffers sized to the traffic (64 KiB up to 4 MiB),
  DATA payloads are views of them, and a stream that is not reading pins at
  most two (its further payloads are copied).
* Each request runs in a cancel scope that is cancelled when the peer resets
  the stream, the stream waits on its client past ``stream_idle_timeout``, or
  the connection is lost: its handler is cancelled (its transaction rolled back).
* A handler may finish while the client is still sending (an early error).
  Its later DATA is acknowledged and dropped; the stream is never reset,
  because gRPC clients then report INTERNAL instead of the status we sent.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import pyarrow as pa
import trio

from ..config import Http2Settings
from ..protocol.h2events import (
    ConnectionClosed,
    ConnectionIdle,
    DataReceived,
    Event,
    Headers,
    RequestStarted,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from ..protocol.h2limits import CloseReason
from ..protocol.h2session import PREFACE, H2Session, StreamClosed
from .h2stream import H2Stream, StreamGone

log = logging.getLogger("arrowport.h2")

KiB = 1024
MiB = 1024 * KiB
RECEIVE_SIZE = 4 * MiB  # the largest receive buffer (and the listener's read size)
RECEIVE_START = 64 * KiB  # a connection's first receive buffer
SMALL_READ = 4 * KiB  # a read this small sends the next buffer back to RECEIVE_START
LINGER = 1.0  # seconds to discard a closed connection's input after its GOAWAY ...
LINGER_BYTES = 4 * MiB  # ... and at most this many bytes of it
# what the connections of this process were closed for (arrowport_h2_connections_closed)
CLOSED: collections.Counter[str] = collections.Counter()
STREAMS_EXPIRED = [0]  # streams reset for waiting on their client too long

__all__ = ["CLOSED", "PREFACE", "RECEIVE_SIZE", "H2Server", "H2Stream", "Handler", "StreamGone"]


class Waitable(Protocol):
    async def wait(self) -> object: ...


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
        settings: Http2Settings | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.received = received
        self.terminated = terminated
        self.idle_timeout = idle_timeout
        self.settings = settings or Http2Settings()
        self.session = H2Session(self.settings, idle_timeout=idle_timeout, now=trio.current_time())
        self.streams: dict[int, H2Stream] = {}  # streams whose handler runs
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._queued = 0  # sequence number of the last change to the outbound bytes
        self._written = 0  # ... and of the last one written to the socket
        self._flushed = trio.lowlevel.ParkingLot()
        self._window = trio.lowlevel.ParkingLot()
        self._closed = False
        self._buffer: memoryview | None = None
        self._filled = 0
        self._size = RECEIVE_START

    # -- for streams --------------------------------------------------------

    def acknowledge(self, stream_id: int, flow: int) -> None:
        if self._closed or not flow:
            return
        self.session.acknowledge(stream_id, flow)
        self._wake()

    def send_headers(self, stream: H2Stream, headers: Headers, *, end_stream: bool) -> None:
        self._check(stream)
        try:
            self.session.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except StreamClosed as exc:
            raise StreamGone(str(exc)) from None
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
                take = self.session.send_data(sid, view)
            except StreamClosed as exc:
                raise StreamGone(str(exc)) from None
            if not take:
                await self.wait_on_client(stream, self._window)
                continue
            view = view[take:]
            self._wake()
            await self.wait_flushed(stream)
        if end_stream:
            self._check(stream)
            try:
                self.session.end_stream(sid)
            except StreamClosed as exc:
                raise StreamGone(str(exc)) from None
            stream.local_ended = True
            self._wake()
            await self.wait_flushed(stream)

    async def wait_on_client(self, stream: H2Stream, lot: trio.lowlevel.ParkingLot) -> None:
        """Park until woken; meanwhile the stream counts as waiting on its client."""
        self.session.stream_waiting(stream.stream_id, True, trio.current_time())
        try:
            await lot.park()
        finally:
            self.session.stream_waiting(stream.stream_id, False, trio.current_time())

    async def wait_flushed(self, stream: H2Stream | None = None) -> None:
        """Wait until everything queued so far has been written to the socket."""
        target = self._queued
        while self._written < target:
            if self._closed:
                raise StreamGone("the connection is closed")
            if stream is None:
                await self._flushed.park()
            else:
                await self.wait_on_client(stream, self._flushed)

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
        self._wake()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                if self.terminated is not None:
                    nursery.start_soon(self._wait_terminated, nursery.cancel_scope)
                nursery.start_soon(self._ticker, nursery.cancel_scope)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self._close()
            self._log_close()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.stream.aclose()

    async def _reader(self) -> None:
        session = self.session
        events = session.receive_data(self.received, trio.current_time())
        while True:
            if self._dispatch(events):
                self._wake()  # the session queued a GOAWAY: let the writer send it
                with trio.move_on_after(1):
                    await self.wait_flushed()
                await self._linger()
                return
            self._wake()
            if session.more_input:
                await trio.sleep(0)  # one slice at a time: others run in between
                events = session.next_slice(trio.current_time())
                continue
            if session.reading_paused:  # the client does not read: neither do we
                await self._flushed.park()  # the ticker closes it after write_timeout
                events = session.next_slice(trio.current_time())
                continue
            try:
                data, more = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not more:
                return
            events = session.receive_data(data, trio.current_time())

    async def _linger(self) -> None:
        """Half-close, then discard what the client still sends (``LINGER``, ``LINGER_BYTES``).

        Closing a socket with unread input resets the connection, and the
        client's kernel may then drop the GOAWAY before the client reads it
        (nginx's lingering close). A client that keeps sending past the bound
        is reset. TLS streams cannot half-close: they are closed at once.
        """
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None or self._written < self._queued:  # not flushed: it is not reading
            return
        discarded = 0
        with trio.move_on_after(LINGER):
            try:
                await send_eof()
                while discarded < LINGER_BYTES:
                    data = await self.stream.receive_some(RECEIVE_START)
                    if not data:
                        break
                    discarded += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _receive(self) -> tuple[bytes | memoryview, bool]:
        """Read into Arrow-allocated buffers, filled read after read.

        A fresh ``bytes`` per read costs a page fault every 4 KiB (a third of
        the CPU of a bulk upload); Arrow's allocator recycles these buffers.
        Each read lands right after the previous one in the same buffer, and
        the frame buffer joins such spans without copying. Bytes once
        received are never written again, so frames may keep views of them.
        A buffer starts at 64 KiB and the next one doubles while reads fill
        them (up to 4 MiB); after a small read (control traffic, an idle
        client) the next one is small again, so idle connections hold little.
        A buffer is replaced once less than a sixteenth of it is left.
        Returns what the session has yet to be given (nothing, when the bytes
        went straight to it), and False at EOF.
        """
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            data = await self.stream.receive_some(self._size)
            if len(data) == self._size and self._size < RECEIVE_SIZE:
                self._size *= 2
            return (data if isinstance(data, bytes) else memoryview(data)), bool(data)
        buffer = self._buffer
        if buffer is None or len(buffer) - self._filled < max(len(buffer) // 16, 4 * KiB):
            buffer = self._buffer = memoryview(pa.allocate_buffer(self._size))
            self._filled = 0
        start = self._filled
        space = len(buffer) - start
        n = await sock.recv_into(buffer[start:])
        if n == space and self._size < RECEIVE_SIZE:
            self._size *= 2  # bulk data: bigger buffers, fewer frames straddling two
        elif n < SMALL_READ:
            self._size = RECEIVE_START  # control traffic, or idle: start small again
        self._filled = start + n
        self.session.add_span(buffer, start, start + n)  # a bad preface closes the session
        return b"", n > 0

    def _dispatch(self, events: list[Event]) -> bool:
        """Act on the session's events; True once the connection must close."""
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.stream_id, event.flow)
                else:
                    stream._push(event.data, event.flow)
            elif isinstance(event, RequestStarted):
                stream = H2Stream(self, event.stream_id, event.headers)
                self.streams[event.stream_id] = stream
                assert self._nursery is not None
                self._nursery.start_soon(self._run_stream, stream)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._end()
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._on_reset()
                if not event.by_peer:
                    STREAMS_EXPIRED[0] += 1
                self._window.unpark_all()
            elif isinstance(event, WindowOpened):
                self._window.unpark_all()
            elif isinstance(event, ConnectionClosed):
                return True
        return False

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
            self.streams.pop(stream.stream_id, None)
            if not self._closed:
                events = self.session.handler_done(
                    stream.stream_id, trio.current_time(), answered=stream.local_ended
                )
                self._dispatch(events)
                self._wake()

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            target = self._queued
            data = self.session.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._close()
                    return
            self.session.wrote()
            self._written = target
            self._flushed.unpark_all()

    async def _ticker(self, scope: trio.CancelScope) -> None:
        """Deadlines: streams waiting on their client, an idle or unreading connection."""
        timeouts = (
            self.idle_timeout,
            self.settings.stream_idle_timeout,
            self.settings.write_timeout,
        )
        tick = min([1.0] + [t / 4 for t in timeouts if 0 < t < math.inf])
        while True:
            await trio.sleep(max(tick, 0.01))
            events = self.session.tick(trio.current_time())
            if self._dispatch(events):
                scope.cancel()
                return
            self._wake()
            if any(isinstance(e, ConnectionIdle) for e in events):
                log.debug("closing an idle HTTP/2 connection")
                await self._go_away(scope)
                return

    async def _wait_terminated(self, scope: trio.CancelScope) -> None:
        """The server is stopping: refuse new streams, finish these, then close."""
        assert self.terminated is not None
        await self.terminated.wait()
        self.session.go_away()
        await self._go_away(scope)

    async def _go_away(self, scope: trio.CancelScope) -> None:
        """The session sent GOAWAY: let the running handlers finish, then close.

        A client that reads nothing gets ``write_timeout`` to take the rest.
        """
        self._wake()
        while self.streams:
            await trio.sleep(0.05)  # answered streams still uploading do not hold us up
        with trio.move_on_after(self.settings.write_timeout or math.inf):
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

    def _log_close(self) -> None:
        """Log (once) and count why the session ended the connection, if it did."""
        reason = self.session.close_reason
        if reason is None and self.session.went_idle:
            reason = CloseReason.IDLE
        if reason is None:
            return
        CLOSED[reason.value] += 1
        peer = _peer(self.stream)
        if reason is CloseReason.PROTOCOL_ERROR:
            log.info("HTTP/2 protocol error from client %s: %s", peer, self.session.close_detail)
        elif reason is CloseReason.IDLE:
            log.debug("HTTP/2 connection from %s closed: %s", peer, self.session.close_detail)
        else:
            stats = self.session.stats
            log.warning(
                "HTTP/2 connection from %s closed (%s): %s; %d streams started, %d expired",
                peer,
                reason.value,
                self.session.close_detail,
                stats.streams_started,
                stats.streams_expired,
            )


def _peer(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        name = sock.getpeername() if sock is not None else None
    except OSError:
        return "?"
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name or "?")
