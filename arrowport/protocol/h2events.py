"""What an ``H2Session`` tells its driver: frozen events, one per happening."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .h2limits import CloseReason

Headers = Sequence[tuple[bytes, bytes]]
Payload = bytes | memoryview  # DATA: a view of a received buffer, or a copy


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """Start a handler for this stream (never more than ``max_concurrent_streams`` at once)."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    """A DATA payload for a running handler; ``flow`` goes back to ``acknowledge`` once read."""

    stream_id: int
    data: Payload
    flow: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The client ended its side of the stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: the client reset it, or it waited on its client too long."""

    stream_id: int
    error_code: int
    by_peer: bool


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The client opened flow-control windows (or changed settings): senders may go on."""


@dataclass(frozen=True, slots=True)
class GoingAway:
    """The client sent GOAWAY: it opens no more streams; those in flight finish."""


@dataclass(frozen=True, slots=True)
class ConnectionIdle:
    """No stream has done anything but wait on the client for ``idle_timeout``."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Close the connection once the bytes to send (a GOAWAY, if any) are written."""

    reason: CloseReason
    detail: str


Event = (
    RequestStarted
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | GoingAway
    | ConnectionIdle
    | ConnectionClosed
)
