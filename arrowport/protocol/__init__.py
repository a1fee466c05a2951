"""Arrowport's sans-IO protocol core: bytes in, events out.

No I/O, threads, clocks or storage live here; everything can be tested and
fuzzed by feeding bytes.
"""

from .errors import (
    ArrowportError,
    GrpcStatus,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from .events import NEED_DATA, BatchReceived, Event, SchemaReceived, StreamEnded
from .ipc import IPCStreamDecoder, State

__all__ = [
    "NEED_DATA",
    "ArrowportError",
    "BatchReceived",
    "Event",
    "GrpcStatus",
    "IPCStreamDecoder",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SchemaReceived",
    "State",
    "StreamEnded",
]
