"""Events emitted by the protocol core.

Received things are named as facts. Events are immutable value objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


class Event:
    """Base class of every protocol event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaReceived(Event):
    """The stream's schema arrived; it is the first event of every stream."""

    schema: pa.Schema


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchReceived(Event):
    """A fully validated record batch arrived.

    ``wire_bytes`` counts the framed message on the wire (prefix, metadata and
    body, plus any dictionary messages consumed for it); ``decoded_bytes`` is
    the batch's in-memory size after decompression. ``app_metadata`` is what
    a Flight client attached to the batch (None over HTTP).
    """

    batch: pa.RecordBatch
    wire_bytes: int
    decoded_bytes: int
    app_metadata: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded(Event):
    """The stream ended cleanly.

    ``eos_marker`` says whether the end-of-stream marker was seen, or the
    enclosing transport ended on a message boundary without one.
    """

    eos_marker: bool


class _NeedData:
    """Sentinel type of :data:`NEED_DATA`."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""Returned by ``next_event()`` when more bytes are needed."""
