"""The invariant the HTTP/2 session fuzzer checks, its seeds and its mutations.

An input is what a client sends after the connection preface: frames, valid
or not. :func:`check` feeds it to a session whole, byte by byte and split at
seeded points, playing a driver that answers each request as it ends; it must hold:

* nothing but the session's own ``ConnectionClosed`` event reports an error
  (no exception escapes), and all feedings agree on whether and why the
  connection was closed (unless one of them was a protocol error: when a
  handler answers decides whether a late frame is a stream or a connection
  error);
* the bytes the session sends parse as whole HTTP/2 frames, and there are at
  most ``AMPLIFICATION`` times as many as the client sent (plus the answers);
* memory stays bounded: buffered input at most one frame, a header block at
  most the configured bound, handlers never more than ``max_concurrent_streams``.

:func:`mutate` works on frames (duplicate, drop, reorder, retype, reflag,
restream, resize, splice from donors); :func:`seeds` builds request, flood and
CONTINUATION inputs with h2 as the client. ``fuzz_h2session.py`` (atheris) and
``tests/protocol/test_fuzz_harnesses.py`` share all three.
"""

from __future__ import annotations

import random
import struct
import zlib

import h2.config
import h2.connection
import h2.settings
from hyperframe.frame import Frame

from arrowport.config import Http2Settings
from arrowport.protocol.h2events import DataReceived, RequestStarted, StreamEnded, StreamReset
from arrowport.protocol.h2session import PREFACE, H2Session, StreamClosed

SETTINGS = Http2Settings(
    max_concurrent_streams=4,
    max_header_list_size=4096,
    max_stream_resets=20,
    max_pings=20,
    max_settings=10,
    max_outbound_control_bytes=4096,
)
AMPLIFICATION = 4  # output bytes per input byte, beyond the answers' own
ANSWER = 256  # output allowance per request answered
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"fuzz"),
    (b":path", b"/arrow.flight.protocol.FlightService/DoPut"),
    (b"content-type", b"application/grpc"),
]


class InvariantViolation(AssertionError):
    pass


def _frames_of(data: bytes) -> int:
    view, count = memoryview(data), 0
    while view:
        if len(view) < 9:
            raise InvariantViolation("a partial frame header in the output")
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            raise InvariantViolation("a truncated frame in the output")
        frame.parse_body(view[9 : 9 + length])
        view, count = view[9 + length :], count + 1
    return count


def _bounded(s: H2Session) -> None:
    if s.frames.buffered > 9 + 1024 * 1024 and s.frames.has_frame():
        raise InvariantViolation(f"{s.frames.buffered} bytes buffered")
    held = sum(len(f.data) for f in s.frames._headers_buffer)
    if held > s.guard.max_header_block:
        raise InvariantViolation(f"a header block of {held} bytes kept")


def _answer(s: H2Session, sid: int, now: float) -> list[object]:
    """A handler answers its request and returns."""
    try:
        s.send_headers(sid, [(b":status", b"200")], end_stream=False)
        s.send_data(sid, memoryview(b"answer"))
        s.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        ok = True
    except StreamClosed:
        ok = False
    return list(s.handler_done(sid, now, answered=ok))


def _run(chunks: list[bytes]) -> str | None:
    """Feed ``chunks`` as a driver would; the close reason (None: still open)."""
    s = H2Session(SETTINGS, idle_timeout=30.0)
    sent = answered = 0
    received = len(PREFACE)
    running: list[int] = []
    now = 0.0  # all within one flood window: chunking must not change the verdict

    def act(events: list[object]) -> None:
        nonlocal answered
        ended = []
        for event in events:
            if isinstance(event, RequestStarted):
                running.append(event.stream_id)
            elif isinstance(event, DataReceived):
                s.acknowledge(event.stream_id, event.flow)
            elif isinstance(event, StreamEnded | StreamReset) and event.stream_id in running:
                ended.append(event.stream_id)  # its handler answers and returns
        if len(running) > SETTINGS.max_concurrent_streams:
            raise InvariantViolation(f"{len(running)} handlers running")
        for sid in ended:
            if sid not in running:  # answered already, from a nested call
                continue
            running.remove(sid)
            answered += 1
            act(_answer(s, sid, now))

    for chunk in [PREFACE, *chunks]:
        received += len(chunk)
        act(s.receive_data(chunk, now))
        while True:
            while s.more_input:
                act(s.next_slice(now))
            _bounded(s)
            out = s.data_to_send()
            _frames_of(out)
            sent += len(out)
            s.wrote()  # the client reads everything
            if not s.more_input:
                break
        if s.closed:
            break
    act(s.tick(now + 1.0))
    sent += len(s.data_to_send())
    if sent > AMPLIFICATION * received + ANSWER * answered + 1024:
        raise InvariantViolation(f"{sent} bytes sent for {received} received")
    return None if s.close_reason is None else s.close_reason.value


def check(data: bytes) -> str | None:
    """Whole, bytewise and split feedings must all hold and agree on the close reason."""
    whole = _run([data])
    rng = random.Random(zlib.crc32(data))
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, 5)))
    split = _run([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    bytewise = _run([data[i : i + 1] for i in range(len(data))]) if len(data) <= 4096 else whole
    verdicts = {whole, split, bytewise}
    # when a handler answers (between slices) may decide whether a late frame is a
    # stream error or a connection error; the budgets must agree whatever the feeding
    if len(verdicts) > 1 and "protocol_error" not in verdicts:
        raise InvariantViolation(f"feedings disagree: {whole}, {split}, {bytewise}")
    return whole


# -- seeds and mutations -------------------------------------------------------------


def _client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def _after_preface(conn: h2.connection.H2Connection) -> bytes:
    data = bytes(conn.data_to_send())
    return data[len(PREFACE) :] if data.startswith(PREFACE) else data


def _raw(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", sid)
        + payload
    )


def seeds() -> dict[str, bytes]:
    """Requests, resets, floods and header blocks, as a client sends them."""
    out: dict[str, bytes] = {}
    c = _client()
    c.send_headers(1, REQUEST)
    c.send_data(1, b"\x00\x00\x00\x00\x05hello", end_stream=True)
    out["request"] = _after_preface(c)
    c = _client()
    for sid in range(1, 21, 2):
        c.send_headers(sid, REQUEST)
        c.reset_stream(sid)
    out["resets"] = _after_preface(c)
    c = _client()
    c.send_headers(1, REQUEST)
    c.send_data(1, b"x" * 3000)
    c.ping(b"12345678")
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    c.increment_flow_control_window(1000)
    c.end_stream(1)
    out["mixed"] = _after_preface(c)
    ping = _raw(6, 0, 0, b"p" * 8)
    out["pings"] = _after_preface(_client()) + ping * 30
    out["ping_acks"] = _after_preface(_client()) + _raw(6, 1, 0, b"a" * 8) * 12
    head = _after_preface(_client()) + _raw(1, 0, 1, b"\x82\x86")
    out["continuation"] = head + _raw(9, 0, 1, b"\x00" * 1500) * 16
    c = _client()
    c.send_headers(1, REQUEST)
    out["empty_data"] = _after_preface(c) + _raw(0, 0, 1, b"") * 12
    out["priority"] = _after_preface(_client()) + _raw(2, 0, 3, b"\x00\x00\x00\x01\x10") * 120
    return out


def _split(data: bytes) -> list[bytes]:
    frames, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        frames.append(data[i : i + 9 + length])
        i += 9 + length
    if i < len(data):
        frames.append(data[i:])
    return frames


def mutate(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """Rewrite frames: duplicate, drop, reorder, retype, reflag, restream, resize, splice."""
    frames = _split(data) or [b""]
    i = rng.randrange(len(frames))
    frame = bytearray(frames[i])
    op = rng.randrange(8)
    if op == 0:
        frames[i:i] = [bytes(frame)] * rng.choice((1, 2, 10, 100))
    elif op == 1 and len(frames) > 1:
        del frames[i]
    elif op == 2:
        rng.shuffle(frames)
    elif op == 3 and len(frame) >= 9:
        frame[3] = rng.randrange(11)
    elif op == 4 and len(frame) >= 9:
        frame[4] ^= 1 << rng.randrange(8)
    elif op == 5 and len(frame) >= 9:
        frame[5:9] = struct.pack(">I", rng.choice((0, 1, 2, 3, 5, 2**31 - 1, rng.randrange(64))))
    elif op == 6 and len(frame) >= 9:
        frame[0:3] = rng.randrange(1 << 24 if rng.random() < 0.1 else 64).to_bytes(3, "big")
    else:
        donor = _split(rng.choice(donors)) if donors else []
        if donor:
            frames.insert(i, rng.choice(donor))
    if op in (3, 4, 5, 6):
        frames[i] = bytes(frame)
    return b"".join(frames)[: 1 << 16]
