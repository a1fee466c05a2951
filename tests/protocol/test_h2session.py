"""The sans-IO HTTP/2 session: requests pass, every flood defense fires, by bytes alone.

Each input is fed whole, byte by byte and with a trailing partial frame (the
``mode`` fixture); what the session sends back is parsed frame by frame.
"""

from __future__ import annotations

import h2.connection
import h2.settings
import pytest
from h2.errors import ErrorCodes
from h2_testing import REQUEST, client, feed, frames_of, opening, session
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from arrowport.protocol.h2events import (
    ConnectionClosed,
    ConnectionIdle,
    DataReceived,
    Event,
    RequestStarted,
    StreamEnded,
    StreamReset,
)
from arrowport.protocol.h2limits import CloseReason
from arrowport.protocol.h2session import FRAMES_PER_SLICE, H2Session


def _ping(n: int, ack: bool = False) -> bytes:
    frame = PingFrame(0, opaque_data=n.to_bytes(8, "big"))
    if ack:
        frame.flags.add("ACK")
    return bytes(frame.serialize())


def _goaway(s: H2Session) -> GoAwayFrame | None:
    found = [f for f in frames_of(s.data_to_send()) if isinstance(f, GoAwayFrame)]
    return found[-1] if found else None


def _closed(events: list[Event]) -> ConnectionClosed | None:
    found = [e for e in events if isinstance(e, ConnectionClosed)]
    return found[-1] if found else None


CALM = ErrorCodes.ENHANCE_YOUR_CALM


def _verdict(s: H2Session, events: list[Event]) -> tuple[CloseReason | None, int | None]:
    """Why the session closed, and the error code of the GOAWAY it sent."""
    closed, goaway = _closed(events), _goaway(s)
    return (
        None if closed is None else closed.reason,
        None if goaway is None else goaway.error_code,
    )


def _mid(mode: str) -> str:
    """The mode for bytes that more bytes follow: a trailing partial frame only at the end."""
    return "whole" if mode == "trailing" else mode


def _open(c: h2.connection.H2Connection, sid: int, end: bool = False) -> bytes:
    c.send_headers(sid, REQUEST, end_stream=end)
    return bytes(c.data_to_send())


def test_a_request_is_started_its_data_delivered_and_answered(mode: str) -> None:
    """HEADERS, DATA and END_STREAM become events; the answer parses as frames."""
    c = client()
    data = opening(c) + _open(c, 1)
    c.send_data(1, b"hello", end_stream=True)
    s = session()
    events = feed(s, data + c.data_to_send(), mode)
    assert [type(e) for e in events if type(e).__name__ != "WindowOpened"] == [
        RequestStarted,
        DataReceived,
        StreamEnded,
    ]
    payload = b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))
    assert payload == b"hello"
    s.send_headers(1, [(b":status", b"200")], end_stream=False)
    assert s.send_data(1, memoryview(b"answer")) == 6
    s.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    answer = c.receive_data(s.data_to_send())
    kinds = {type(e).__name__ for e in answer}
    assert {"ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"} <= kinds


def test_parsing_is_sliced(mode: str) -> None:
    """One call parses at most a slice of frames; the rest waits for ``next_slice``."""
    c = client()
    s = session()
    pings = b"".join(_ping(i) for i in range(5 * FRAMES_PER_SLICE))
    s.receive_data(opening(c), 0.0)
    s.receive_data(pings, 0.0)
    assert s.more_input
    slices = 1
    while s.more_input:
        s.next_slice(0.0)
        slices += 1
    assert slices >= 5
    acks = [f for f in frames_of(s.data_to_send()) if isinstance(f, PingFrame)]
    assert len(acks) == 5 * FRAMES_PER_SLICE and all("ACK" in f.flags for f in acks)


def test_pings_within_budget_pass_and_a_flood_is_calmed(mode: str) -> None:
    """max_pings PINGs per window are answered; one more gets GOAWAY ENHANCE_YOUR_CALM."""
    c = client()
    s = session(max_pings=50)
    events = feed(s, opening(c) + b"".join(_ping(i) for i in range(50)), _mid(mode))
    assert _closed(events) is None
    later = feed(s, b"".join(_ping(i) for i in range(50)), _mid(mode), now=10.0)  # next window
    assert _closed(later) is None
    assert _verdict(s, feed(s, _ping(99), "whole", now=10.0)) == (CloseReason.PING_FLOOD, CALM)


def test_unsolicited_ping_acks_are_calmed(mode: str) -> None:
    """Arrowport sends no PING: more than max_ping_acks ACKs end the connection."""
    c = client()
    s = session()
    data = opening(c) + b"".join(_ping(i, ack=True) for i in range(11))
    assert _verdict(s, feed(s, data, mode)) == (CloseReason.PING_ACK_FLOOD, CALM)


def test_settings_flood_is_calmed(mode: str) -> None:
    """More than max_settings SETTINGS frames in a window end the connection."""
    c = client()
    s = session(max_settings=20)
    flood = b"".join(bytes(SettingsFrame(0, settings={4: 65535}).serialize()) for _ in range(21))
    assert _verdict(s, feed(s, opening(c) + flood, mode)) == (CloseReason.SETTINGS_FLOOD, CALM)


def test_priority_frames_are_budgeted_per_stream(mode: str) -> None:
    """PRIORITY frames beyond max_priority_per_stream x (streams + 1) end the connection."""
    c = client()
    s = session(max_priority_per_stream=5)
    frames = [bytes(PriorityFrame(1, depends_on=0, stream_weight=1).serialize()) for _ in range(10)]
    events = feed(s, opening(c) + _open(c, 1) + b"".join(frames), _mid(mode))
    assert _closed(events) is None  # 10 = 5 x (1 stream + 1)
    assert _verdict(s, feed(s, frames[0], mode)) == (CloseReason.PRIORITY_FLOOD, CALM)


def test_window_updates_without_data_sent_are_calmed(mode: str) -> None:
    """WINDOW_UPDATEs that follow no DATA of ours are budgeted (Envoy's formula)."""
    c = client()
    s = session()
    updates = [bytes(WindowUpdateFrame(0, window_increment=1).serialize()) for _ in range(5)]
    events = feed(s, opening(c) + b"".join(updates), _mid(mode))
    assert _closed(events) is None
    assert _verdict(s, feed(s, updates[0], mode)) == (CloseReason.WINDOW_UPDATE_FLOOD, CALM)


def test_window_updates_that_follow_our_data_pass() -> None:
    """A reader that opens windows for each DATA frame we send is never calmed."""
    c = client()
    s = session()
    feed(s, opening(c) + _open(c, 1, end=True))
    s.send_headers(1, [(b":status", b"200")], end_stream=False)
    for _ in range(50):
        s.send_data(1, memoryview(b"x" * 100))
        for event in c.receive_data(s.data_to_send()):
            if type(event).__name__ == "DataReceived":
                c.acknowledge_received_data(event.flow_controlled_length, 1)
        assert _closed(feed(s, c.data_to_send())) is None
    assert not s.closed


def test_empty_data_frames_are_calmed(mode: str) -> None:
    """A run of DATA frames with no payload and no END_STREAM ends the connection."""
    c = client()
    s = session(max_empty_frames=10)
    empty = bytes(DataFrame(1, data=b"").serialize())
    events = feed(s, opening(c) + _open(c, 1) + empty * 10 + bytes(DataFrame(1, b"x").serialize()))
    assert _closed(events) is None  # a payload ends the run
    assert _verdict(s, feed(s, empty * 11, mode)) == (CloseReason.EMPTY_FRAMES, CALM)


def test_rapid_reset_is_calmed(mode: str) -> None:
    """Opening and resetting more than max_stream_resets streams in a window is refused."""
    c = client()
    s = session(max_stream_resets=30)
    data = opening(c)
    for sid in range(1, 2 * 31, 2):
        data += _open(c, sid)
        c.reset_stream(sid, ErrorCodes.CANCEL)
        data += c.data_to_send()
    assert _verdict(s, feed(s, data, mode)) == (CloseReason.RAPID_RESET, CALM)


def test_handlers_never_outnumber_max_concurrent_streams() -> None:
    """Streams reset while their handlers run are replaced only as handlers finish."""
    c = client()
    s = session(max_concurrent_streams=4)
    data = opening(c)
    for sid in (1, 3, 5, 7):
        data += _open(c, sid)
        c.reset_stream(sid, ErrorCodes.CANCEL)
        data += c.data_to_send()
    for sid in (9, 11, 13, 15):
        data += _open(c, sid, end=True)
    events = feed(s, data)
    started = [e.stream_id for e in events if isinstance(e, RequestStarted)]
    assert started == [1, 3, 5, 7] and s.handlers_running == 4
    resets = [e.stream_id for e in events if isinstance(e, StreamReset)]
    assert resets == [1, 3, 5, 7]
    later = s.handler_done(1, 1.0, answered=False)
    assert [type(e) for e in later] == [RequestStarted, StreamEnded]
    assert later[0].stream_id == 9 and s.handlers_running == 4


def test_a_continuation_flood_is_refused_before_it_is_buffered(mode: str) -> None:
    """A header block longer than the limit ends the connection as it arrives."""
    c = client()
    s = session(max_header_list_size=16 * 1024)
    block = HeadersFrame(1, data=b"\x00" * 16_000)  # never END_HEADERS
    frames = bytes(block.serialize())
    frames += b"".join(
        bytes(ContinuationFrame(1, data=b"\x00" * 16_000).serialize()) for _ in range(3)
    )
    events = feed(s, opening(c) + frames, mode)
    assert _verdict(s, events) == (CloseReason.HEADER_BLOCK, CALM)
    kept = sum(len(f.data) for f in s.frames._headers_buffer)
    assert kept <= s.guard.max_header_block


def test_a_large_legitimate_header_block_passes(mode: str) -> None:
    """A header block near the limit, split over CONTINUATION frames, starts a request."""
    c = client()
    c.max_outbound_frame_size = 16_384
    s = session()
    c.send_headers(1, [*REQUEST, (b"x-big", b"v" * 40_000)], end_stream=True)
    data = opening(c) + c.data_to_send()
    events = feed(s, data, mode)
    assert any(isinstance(e, RequestStarted) for e in events), events


def test_a_client_that_reads_nothing_stops_being_read_then_is_closed() -> None:
    """Over the outbound bound no input is parsed; after write_timeout: not_reading."""
    c = client()
    s = session(max_outbound_control_bytes=1024, write_timeout=30.0)
    feed(s, opening(c) + b"".join(_ping(i) for i in range(200)))
    assert s.reading_paused and not s.more_input
    unsent = s.data_to_send()  # handed to the socket, which never drains
    assert len(unsent) < 1024 + 17 * FRAMES_PER_SLICE + 200
    assert s.tick(0.0) == [] and s.tick(29.0) == []
    closed = _closed(s.tick(30.0))
    assert closed is not None and closed.reason is CloseReason.NOT_READING
    s2 = session(max_outbound_control_bytes=1024)
    feed(s2, opening(client()) + b"".join(_ping(i) for i in range(200)))
    s2.data_to_send()
    s2.wrote()  # the client read it all: parsing goes on
    assert not s2.reading_paused and s2.more_input


def test_a_stream_waiting_on_its_client_is_reset_after_the_idle_deadline() -> None:
    """stream_idle_timeout after its handler starts waiting, the stream is reset (CANCEL)."""
    c = client()
    s = H2Session(session(stream_idle_timeout=90.0).settings)  # no connection idle timeout
    feed(s, opening(c) + _open(c, 1))
    s.data_to_send()
    s.stream_waiting(1, True, 5.0)
    assert s.tick(94.0) == []
    events = s.tick(95.0)
    assert events == [StreamReset(1, ErrorCodes.CANCEL, by_peer=False)]
    resets = [f for f in frames_of(s.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [f.error_code for f in resets] == [ErrorCodes.CANCEL]


def test_a_stream_the_client_never_ends_is_reset_after_the_answer() -> None:
    """An answered stream the client keeps open is reset after stream_idle_timeout."""
    c = client()
    s = session(stream_idle_timeout=10.0)
    feed(s, opening(c) + _open(c, 1))
    s.send_headers(1, [(b":status", b"200"), (b"grpc-status", b"0")], end_stream=True)
    assert s.handler_done(1, 0.0, answered=True) == []
    s.data_to_send()
    assert s.tick(10.0) == []  # nothing left to cancel in a handler
    assert 1 not in s.streams
    resets = [f for f in frames_of(s.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [f.error_code for f in resets] == [ErrorCodes.CANCEL]


def test_the_connection_idles_while_all_its_streams_wait_on_the_client() -> None:
    """A busy handler keeps the connection alive; streams that only wait do not."""
    c = client()
    s = H2Session(session().settings, idle_timeout=75.0, now=0.0)
    feed(s, opening(c) + _open(c, 1), now=1.0)
    assert s.tick(100.0) == []  # the handler works (not waiting): busy
    s.stream_waiting(1, True, 100.0)
    assert s.tick(174.0) == []
    events = s.tick(175.0)
    assert isinstance(events[-1], ConnectionIdle)
    assert StreamReset(1, ErrorCodes.CANCEL, by_peer=False) in events
    goaway = _goaway(s)
    assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR


def test_data_after_an_early_answer_is_acknowledged_and_dropped() -> None:
    """DATA for a stream whose handler finished gives its window back, with no event."""
    c = client()
    s = session()
    feed(s, opening(c) + _open(c, 1))
    s.send_headers(1, [(b":status", b"200"), (b"grpc-status", b"3")], end_stream=True)
    s.handler_done(1, 0.0, answered=True)
    c.receive_data(s.data_to_send())  # our SETTINGS and window: the client may send 3 MiB
    for _ in range(3 * 64):
        c.send_data(1, b"z" * 16_384)
    events = feed(s, c.data_to_send())
    assert not [e for e in events if isinstance(e, DataReceived)]
    updates = [f for f in frames_of(s.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert sum(f.window_increment for f in updates if f.stream_id == 1) >= 2 * 1024 * 1024


def test_a_handler_that_ends_without_answering_resets_its_stream() -> None:
    """No answer from the handler: RST_STREAM INTERNAL_ERROR, never a client left waiting."""
    c = client()
    s = session()
    feed(s, opening(c) + _open(c, 1, end=True))
    s.data_to_send()
    s.handler_done(1, 0.0, answered=False)
    resets = [f for f in frames_of(s.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [f.error_code for f in resets] == [ErrorCodes.INTERNAL_ERROR]


@pytest.mark.parametrize(
    "junk", [b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nxxxxxxxxxx"]
)
def test_protocol_errors_close_the_connection(junk: bytes, mode: str) -> None:
    """A bad preface or frame is a ProtocolError event, never an exception."""
    s = session()
    closed = _closed(feed(s, junk, mode))
    assert closed is not None and closed.reason is CloseReason.PROTOCOL_ERROR
    frames_of(s.data_to_send())


def test_a_zero_window_reader_gets_nothing_queued() -> None:
    """With no window from the client, send_data takes nothing: the handler holds its message."""
    c = client()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    s = session()
    feed(s, opening(c) + c.data_to_send() + _open(c, 1, end=True))
    s.send_headers(1, [(b":status", b"200")], end_stream=False)
    assert s.send_data(1, memoryview(b"m" * 100_000)) == 0
    data = [f for f in frames_of(s.data_to_send()) if isinstance(f, DataFrame)]
    assert data == []


def test_after_the_client_goes_away_new_streams_are_refused(mode: str) -> None:
    """A stream opened after the client's GOAWAY gets REFUSED_STREAM, not a handler."""
    c = client()
    s = session()
    goaway = bytes(GoAwayFrame(0, last_stream_id=0).serialize())
    events = feed(s, opening(c) + goaway + _open(c, 1, end=True), mode)
    assert not [e for e in events if isinstance(e, RequestStarted)]
    resets = [f for f in frames_of(s.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [f.error_code for f in resets] == [ErrorCodes.REFUSED_STREAM]


def test_a_stream_opened_and_reset_after_goaway_is_no_error(mode: str) -> None:
    """HEADERS then RST_STREAM after the client's GOAWAY, in one slice: no exception (fuzz find)."""
    c = client()
    s = session()
    goaway = bytes(GoAwayFrame(0, last_stream_id=0).serialize())
    data = opening(c) + goaway + _open(c, 1)
    c.reset_stream(1, ErrorCodes.CANCEL)
    events = feed(s, data + c.data_to_send(), mode)
    assert _closed(events) is None and not s.streams
    frames_of(s.data_to_send())


def test_spans_handed_over_without_a_copy_have_their_preface_checked() -> None:
    """``add_span`` (the driver's zero-copy path) checks the preface as ``receive_data`` does."""
    c = client()
    good = memoryview(opening(c) + _open(c, 1, end=True))
    s = session()
    assert s.add_span(good, 0, 10) == [] and s.add_span(good, 10, len(good)) == []
    events = s.next_slice(0.0)
    assert [e.stream_id for e in events if isinstance(e, RequestStarted)] == [1]
    bad = session()
    closed = _closed(bad.add_span(memoryview(b"GET / HTTP/1.1\r\n\r\n"), 0, 18))
    assert closed is not None and closed.reason is CloseReason.PROTOCOL_ERROR
