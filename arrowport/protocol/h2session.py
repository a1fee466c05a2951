"""A sans-IO HTTP/2 server session: bytes in, events and bytes out, floods refused.

The driver (``io/h2conn.py``) reads bytes, hands them over, writes what
``data_to_send`` returns, and runs one handler per ``RequestStarted``. This
module has no trio, sockets or clocks: time comes in as ``now`` arguments.
It wraps h2 and adds what h2 lacks (see ``h2limits`` and ``h2frames``):

* Parsing is sliced: ``receive_data`` and ``next_slice`` parse at most
  ``FRAMES_PER_SLICE`` frames (``BYTES_PER_SLICE`` bytes) per call and keep
  the rest; ``more_input`` says another slice is ready. The driver yields to
  its event loop between slices, so one connection cannot starve others.
* Handlers never outnumber ``max_concurrent_streams``: h2 counts a stream the
  client reset as closed at once, while its handler may still be running. A
  stream that arrives while every slot is taken is queued (its events with
  it) and started when ``handler_done`` frees a slot. h2's own stream limit
  bounds the queue.
* Frame budgets (``FloodGuard``) and the header-block bound end the
  connection with GOAWAY ``ENHANCE_YOUR_CALM``: ``ConnectionClosed``.
* Unsent control frames are bounded: over ``max_outbound_control_bytes``
  ``reading_paused`` is true and no input is parsed; ``tick`` closes a
  connection paused longer than ``write_timeout`` (reason ``not_reading``).
* Each stream whose handler waits on the client (``stream_waiting``), or
  whose handler answered while the client never ends it, is reset (CANCEL)
  after ``stream_idle_timeout``; the connection is idle (``ConnectionIdle``)
  once nothing but waiting on the client happened for ``idle_timeout``.
"""

from __future__ import annotations

import contextlib
import math

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ..config import Http2Settings
from .h2events import (
    ConnectionClosed,
    ConnectionIdle,
    DataReceived,
    Event,
    GoingAway,
    Headers,
    Payload,
    RequestStarted,
    WindowOpened,
)
from .h2frames import ChunkedFrameBuffer, quiet_data_frame_repr
from .h2limits import CloseReason, EnhanceYourCalm, FloodGuard
from .h2streams import SessionStats, StreamTable

quiet_data_frame_repr()

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
KiB = 1024
MiB = 1024 * KiB
STREAM_WINDOW = 4 * MiB  # per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE)
MAX_WINDOW = 2**31 - 1  # RFC 9113 §6.9.1
MAX_FRAME_SIZE = 1 * MiB  # largest frame we accept (SETTINGS_MAX_FRAME_SIZE)
FRAMES_PER_SLICE = 100  # parsing work per call: about a millisecond of h2
BYTES_PER_SLICE = 1 * MiB  # ... and at most this many bytes (one frame always fits)
FRAME_OVERHEAD = 9


class StreamClosed(Exception):
    """The stream (or the connection) can no longer be written."""


class H2Session:
    """One HTTP/2 server connection whose client preface may not be read yet."""

    def __init__(
        self,
        settings: Http2Settings | None = None,
        *,
        idle_timeout: float = math.inf,
        now: float = 0.0,
    ) -> None:
        self.settings = s = settings or Http2Settings()
        self.idle_timeout = idle_timeout or math.inf
        self.stream_idle_timeout = s.stream_idle_timeout or math.inf
        self.write_timeout = s.write_timeout or math.inf
        self.guard = FloodGuard(s)
        self.frames = ChunkedFrameBuffer(self.guard)
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE  # h2 takes it from its defaults
        self.h2.incoming_buffer = self.frames
        self.h2.initiate_connection()
        # every stream's window plus one more for control calls: stalled streams
        # never exhaust the connection's (h2's default of 64 KiB would be, by one);
        # within HTTP/2's largest window (from 511 streams up, stalled ones could)
        window = min((s.max_concurrent_streams + 1) * STREAM_WINDOW, MAX_WINDOW)
        self.h2.increment_flow_control_window(window - 65_535)
        self.table = StreamTable(s.max_concurrent_streams)
        self.streams = self.table.streams
        self._raw: list[bytes] = []  # frames written by hand (a graceful GOAWAY)
        self._data_queued = 0  # DATA bytes in h2's outbound buffer
        self._inflight_control = 0  # control bytes handed out, not yet written
        self._paused_since: float | None = None
        self._last_activity = now
        self.going_away = False  # we sent GOAWAY: new streams are refused
        self.peer_going_away = False
        self.went_idle = False  # closed for idleness (tick returned ConnectionIdle)
        self.close_reason: CloseReason | None = None
        self.close_detail = ""

    # -- input ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def reading_paused(self) -> bool:
        """Too many control frames wait to be written: read nothing until they are."""
        unsent = self._inflight_control + len(self.h2._data_to_send) - self._data_queued
        return unsent > self.settings.max_outbound_control_bytes

    @property
    def more_input(self) -> bool:
        """A whole frame is buffered and may be parsed now (call ``next_slice``)."""
        return not self.closed and not self.reading_paused and self.frames.has_frame()

    def add_span(self, base: memoryview, start: int, end: int) -> list[Event]:
        """Hand over ``base[start:end]`` (never written again) without a copy.

        Returns ``ConnectionClosed`` if the bytes are not an HTTP/2 preface.
        """
        try:
            self.frames.add_span(base, start, end)
        except h2.exceptions.ProtocolError as exc:
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
            return [self._close(CloseReason.PROTOCOL_ERROR, str(exc))]
        return []

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """Take received bytes and parse one slice of what is buffered.

        Once the connection is closed, this only says so again.
        """
        if self.close_reason is not None:
            return [ConnectionClosed(self.close_reason, self.close_detail)]
        try:
            self.frames.add_data(data)
        except h2.exceptions.ProtocolError as exc:  # not an HTTP/2 preface
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
            return [self._close(CloseReason.PROTOCOL_ERROR, str(exc))]
        return self.next_slice(now)

    def next_slice(self, now: float) -> list[Event]:
        """Parse at most one slice of the buffered frames."""
        if self.closed or self.reading_paused:
            return []
        self.guard.now = now
        self.frames.budget, self.frames.byte_budget = FRAMES_PER_SLICE, BYTES_PER_SLICE
        try:
            received = self.h2.receive_data(b"")
        except EnhanceYourCalm as exc:  # h2 queued the GOAWAY
            return [self._close(exc.reason, str(exc))]
        except h2.exceptions.ProtocolError as exc:
            return [self._close(CloseReason.PROTOCOL_ERROR, str(exc))]
        events: list[Event] = []
        opened = False
        try:
            for event in received:
                opened |= self._route(event, now, events)
        except EnhanceYourCalm as exc:
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            events.append(self._close(exc.reason, str(exc)))
            return events
        if opened:
            events.append(WindowOpened())
        if self.frames.goaway_received and not self.peer_going_away:
            self.peer_going_away = True
            events.append(GoingAway())
        return events

    def _route(self, event: h2.events.Event, now: float, out: list[Event]) -> bool:
        """Turn one h2 event into ours; True if windows may have opened."""
        if isinstance(event, h2.events.DataReceived):
            sid, flow = event.stream_id, event.flow_controlled_length
            if event.data and self.table.data(DataReceived(sid, event.data, flow), out):
                self._last_activity = now
            else:  # empty, or nobody reads it: the window goes back at once
                self.acknowledge(sid, flow)
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, tuple(event.headers or ()), now, out)
        elif isinstance(event, h2.events.StreamEnded):
            self.table.ended(event.stream_id, out)
        elif isinstance(event, h2.events.StreamReset):
            sid = event.stream_id
            for unread in self.table.reset(sid, event.error_code or 0, event.remote_reset, out):
                self.acknowledge(sid, unread.flow)
            return True
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            return True
        return False

    def _request(self, sid: int, headers: Headers, now: float, out: list[Event]) -> None:
        self._last_activity = now
        peer_gone = self.frames.goaway_received and sid > self.frames.goaway_after
        if self.going_away or peer_gone:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # closed already
                self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self.guard.count_reset()
            return
        self.table.request(RequestStarted(sid, headers), out)

    # -- output ---------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write, in order; call ``wrote`` once they are all written."""
        data = self.h2.data_to_send()
        if self._raw:
            data += b"".join(self._raw)
            self._raw.clear()
        self._inflight_control += len(data) - self._data_queued
        self._data_queued = 0
        return data

    def wrote(self) -> None:
        """Everything ``data_to_send`` returned so far has been written."""
        self._inflight_control = 0

    # -- for handlers ---------------------------------------------------------

    def acknowledge(self, stream_id: int, flow: int) -> None:
        """``flow`` bytes of the stream were consumed: reopen the windows."""
        if flow and not self.closed:
            self.h2.acknowledge_received_data(flow, stream_id)

    def send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool) -> None:
        self._writable(stream_id)
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            raise StreamClosed("the stream is closed") from None

    def local_window(self, stream_id: int) -> int:
        """How many DATA bytes the client's windows allow now."""
        self._writable(stream_id)
        try:
            return int(self.h2.local_flow_control_window(stream_id))
        except h2.exceptions.ProtocolError:
            raise StreamClosed("the stream is closed") from None

    def send_data(self, stream_id: int, data: memoryview) -> int:
        """Queue as much of ``data`` as the windows allow; returns the bytes taken."""
        take = min(len(data), self.local_window(stream_id))
        if take <= 0:
            return 0
        size = self.h2.max_outbound_frame_size
        try:
            for start in range(0, take, size):
                self.h2.send_data(stream_id, data[start : min(start + size, take)])
                self.guard.data_frames_sent += 1
                self._data_queued += FRAME_OVERHEAD
        except h2.exceptions.ProtocolError:
            raise StreamClosed("the stream is closed") from None
        self._data_queued += take
        return take

    def end_stream(self, stream_id: int) -> None:
        self._writable(stream_id)
        try:
            self.h2.end_stream(stream_id)
        except h2.exceptions.ProtocolError:
            raise StreamClosed("the stream is closed") from None

    def _writable(self, stream_id: int) -> None:
        if self.closed:
            raise StreamClosed("the connection is closed")
        if self.table.is_reset(stream_id):
            raise StreamClosed("the stream was reset")

    def stream_waiting(self, stream_id: int, waiting: bool, now: float) -> None:
        """The stream's handler starts (or stops) waiting on the client."""
        self.table.waiting(stream_id, waiting, now)
        if not waiting:
            self._last_activity = now

    def handler_done(self, stream_id: int, now: float, *, answered: bool) -> list[Event]:
        """The stream's handler returned; events start a queued stream, if any."""
        out: list[Event] = []
        unanswered = self.table.finish(stream_id, now, answered, out)
        if unanswered is None:
            return out
        self._last_activity = now
        if unanswered and not self.closed:
            # the handler ended without answering: never leave the client waiting
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
        return out

    # -- time -----------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Deadlines: streams waiting on the client, a connection idle or not reading."""
        if self.closed:
            return []
        if self.reading_paused:
            if self._paused_since is None:
                self._paused_since = now
            elif now - self._paused_since >= self.write_timeout:
                return [self.abort(CloseReason.NOT_READING, "the client reads nothing")]
        else:
            self._paused_since = None
        out: list[Event] = []
        for sid in self.table.overdue(now, self.stream_idle_timeout):
            self._expire(sid, out)
        if self.table.busy:
            self._last_activity = now
        elif now - self._last_activity >= self.idle_timeout and not self.going_away:
            self.go_away()
            self.went_idle = True
            for sid in self.table.overdue(now, -math.inf):
                self._expire(sid, out)
            out.append(ConnectionIdle())
        return out

    def _expire(self, sid: int, out: list[Event]) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(sid, ErrorCodes.CANCEL)
        self.table.expire(sid, ErrorCodes.CANCEL, out)

    # -- the end --------------------------------------------------------------

    def go_away(self) -> None:
        """Refuse new streams and let these finish (GOAWAY NO_ERROR).

        Written by hand: h2 treats a GOAWAY it sends as the end of the
        connection and would refuse the answers of the streams in flight.
        """
        if self.going_away or self.closed:
            return
        self.going_away = True
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        self._raw.append(goaway.serialize())

    @property
    def handlers_running(self) -> int:
        return self.table.running

    def abort(self, reason: CloseReason, detail: str) -> ConnectionClosed:
        """Close now, for a reason the driver found (nothing more is parsed)."""
        return self._close(reason, detail)

    def _close(self, reason: CloseReason, detail: str) -> ConnectionClosed:
        if self.close_reason is None:
            self.close_reason, self.close_detail = reason, detail
        return ConnectionClosed(self.close_reason, self.close_detail)

    @property
    def stats(self) -> SessionStats:
        return self.table.stats


__all__ = ["PREFACE", "H2Session", "Payload", "StreamClosed"]
