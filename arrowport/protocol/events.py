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
    the batch's in-memory size after decompression, with null, run-end-encoded
    and dictionary columns counted at the size a backend expands them to. ``app_metadata`` is what
    a Flight client attached to the batch (None over HTTP). ``validated`` says
    the decoder fully validated it (with ``validate=True``, or when it had to
    read offsets or indices to size the batch).
    """

    batch: pa.RecordBatch
    wire_bytes: int
    decoded_bytes: int
    app_metadata: bytes | None = None
    validated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyAnnounced(Event):
    """The decoder will allocate a message body of ``nbytes`` at the next ``next_event``.

    Emitted only by decoders made with ``announce=True``, so that the caller
    can reserve the memory (and wait for it) before it is allocated.
    """

    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchAnnounced(Event):
    """A record batch's message is complete and checked, not yet decoded (``announce=True``).

    ``decoded_bytes`` is its size before decompression or expansion: the
    buffers' uncompressed lengths, plus what the null, run-end-encoded and
    dictionary columns expand to as far as the header tells (a dictionary's
    values are added exactly once decoded). ``decoder.decode_announced()``
    (safe to run in a worker thread while nothing else uses the decoder)
    returns its ``BatchReceived``; so does the next ``next_event()``.
    """

    rows: int
    decoded_bytes: int
    compressed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DictionaryReceived(Event):
    """A dictionary batch arrived (``announce=True`` only); kept until the stream ends.

    ``decoded_bytes`` is its decompressed size; it is decompressed when the
    next batch is decoded.
    """

    decoded_bytes: int
    compressed: bool


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
