"""Byte-level helpers for the HTTP/2 session tests and its fuzz harness.

A client is h2 itself (client side), plus hand-made hyperframe frames for what
no well-behaved client sends. ``feed`` hands bytes to a session whole, byte by
byte, or with a trailing partial frame, and runs every slice; ``frames_of``
parses what the session sent back.
"""

from __future__ import annotations

from collections.abc import Sequence

import h2.config
import h2.connection
from hyperframe.frame import Frame

from arrowport.config import Http2Settings
from arrowport.protocol.h2events import ConnectionClosed, Event
from arrowport.protocol.h2session import PREFACE, H2Session

MODES = ("whole", "bytewise", "trailing")
TRAILER = b"\x00\x00\x08\x06\x00\x00\x00\x00"  # 8 of a PING frame's 9 header bytes
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"localhost"),
    (b":path", b"/arrow.flight.protocol.FlightService/DoAction"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def session(**limits: object) -> H2Session:
    return H2Session(Http2Settings(**limits), idle_timeout=75.0)  # type: ignore[arg-type]


def feed(s: H2Session, data: bytes, mode: str = "whole", now: float = 0.0) -> list[Event]:
    """Give ``data`` to ``s`` (as ``mode`` says) and run slices until none is ready."""
    if mode == "trailing":
        data += TRAILER
    chunks: Sequence[bytes] = (
        [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
    )
    events: list[Event] = []
    for chunk in chunks:
        events += s.receive_data(chunk, now)
        while s.more_input:
            events += s.next_slice(now)
        if any(isinstance(e, ConnectionClosed) for e in events):
            break
    return events


def frames_of(data: bytes) -> list[Frame]:
    """Parse a server's output: whole frames only, nothing left over."""
    frames: list[Frame] = []
    view = memoryview(data)
    while view:
        assert len(view) >= 9, f"{len(view)} bytes of a frame header left over"
        frame, length = Frame.parse_frame_header(view[:9])
        assert len(view) >= 9 + length, "a truncated frame"
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def opening(conn: h2.connection.H2Connection) -> bytes:
    """The client's preface and SETTINGS (what ``initiate_connection`` queued)."""
    data = conn.data_to_send()
    assert data.startswith(PREFACE)
    return data
