"""The message stage shared by every framing: check, decode and validate.

Both framings Arrowport reads (an Arrow IPC stream in an HTTP body, and
``FlightData`` messages in gRPC) deliver the same thing: an IPC ``Message``
flatbuffer plus its body. This stage takes those, one message at a time, and
turns them into events.

Invariants:

* ``check`` sees a message's parsed flatbuffer before its body is allocated;
  every limit that can be judged from it is judged there.
* ``read`` takes the message as two Arrow buffers: the canonical framed
  metadata (``0xFFFFFFFF``, padded length, flatbuffer, padding) and the body.
  Both are handed to ``pyarrow.ipc.open_stream`` through a ``MessageFeed``, so
  batches are views of the body: nothing is copied.
* Compressed sizes are checked before pyarrow decompresses anything, and every
  batch passes ``validate(full=True)`` before it is emitted, unless the caller
  turned that off (``validate=False``) to run ``validate_batch`` itself, for
  instance on another thread.
* A request's rows (``max_request_rows``) are counted from each batch's
  header, before its body is read; its decoded bytes
  (``max_request_decoded_bytes``, null, REE and dictionary columns at their
  expanded size, see ``sizes``) before the batch is decompressed, and again,
  exactly, before any dictionary is expanded.
* With ``announce=True`` a batch is not decoded inside ``read``: ``read``
  returns ``BatchAnnounced`` with its size, and ``decode_pending`` (the
  heavy step: decompression, run by the caller where it likes, e.g. in a
  worker thread) returns the ``BatchReceived``.
* Whatever pyarrow (or a registered extension type) raises while reading the
  peer's bytes becomes a ``LocalProtocolError``; only ``MemoryError`` passes.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from ._flatbuf import BatchHeader, HeaderType, MessageHeader
from .errors import RemoteProtocolError, invalid, limit_exceeded
from .events import BatchAnnounced, BatchReceived, DictionaryReceived, SchemaReceived
from .feed import MessageFeed
from .schema_checks import check_field_names, count_fields, metadata_bytes, nesting_depth
from .sizes import Site, decoded_extra, expansion_sites, header_extra

_CONTINUATION = b"\xff\xff\xff\xff"
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_SUPPORTED_VERSIONS = (3, 4)  # MetadataVersion V4 and V5

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

__all__ = [
    "GiB",
    "KiB",
    "MessageReader",
    "MiB",
    "count_fields",
    "frame_metadata",
    "nesting_depth",
    "validate_batch",
]


def pad8(n: int) -> int:
    return (n + 7) & ~7


def frame_metadata(metadata: bytes | memoryview) -> pa.Buffer:
    """The canonical framed form of ``metadata``: marker, padded length, padding."""
    length = len(metadata)
    padded = pad8(length)
    framed = pa.allocate_buffer(8 + padded)
    view = memoryview(framed).cast("B")
    view[0:4] = _CONTINUATION
    view[4:8] = _I32.pack(padded)
    view[8 : 8 + length] = metadata
    view[8 + length :] = bytes(padded - length)
    return framed


def validate_batch(batch: pa.RecordBatch) -> None:
    """Fully validate a batch a decoder emitted with ``validate=False``.

    Raises ``RemoteProtocolError`` (``invalid_batch``) for bad offsets, invalid
    UTF-8, out-of-range dictionary indices and the like.
    """
    try:
        batch.validate(full=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise RemoteProtocolError(f"invalid record batch: {exc}", error="invalid_batch") from None


class MessageReader:
    """Turn checked IPC messages into ``SchemaReceived`` and ``BatchReceived``.

    Limits (bytes unless named otherwise) are constructor arguments;
    ``max_dictionary_bytes`` bounds all dictionary messages of a stream
    together, each counted as its framed metadata plus decompressed body.
    """

    def __init__(
        self,
        *,
        max_metadata_size: int = 64 * MiB,
        max_body_size: int = 256 * MiB,
        max_decompressed_size: int = 1 * GiB,
        max_dictionary_bytes: int = 256 * MiB,
        max_nesting_depth: int = 64,
        max_columns: int = 10_000,
        max_batch_rows: int = 64 * 1024 * 1024,
        max_schema_metadata_bytes: int = 256 * KiB,
        max_request_rows: int | None = None,
        max_request_decoded_bytes: int | None = None,
        validate: bool = True,
        announce: bool = False,
    ) -> None:
        self.validate = validate
        self.announce = announce
        self.max_request_rows = max_request_rows
        self.max_request_decoded_bytes = max_request_decoded_bytes
        self.max_schema_metadata_bytes = max_schema_metadata_bytes
        self.max_metadata_size = max_metadata_size
        self.max_body_size = max_body_size
        self.max_decompressed_size = max_decompressed_size
        self.max_dictionary_bytes = max_dictionary_bytes
        self.max_nesting_depth = max_nesting_depth
        self.max_columns = max_columns
        self.max_batch_rows = max_batch_rows
        self.schema: pa.Schema | None = None
        self._feed = MessageFeed()
        self._reader: pa.RecordBatchStreamReader | None = None
        self._pending_wire_bytes = 0  # dictionaries' bytes, counted with the next batch
        self._sites: tuple[Site, ...] = ()  # the schema's columns a backend expands
        self._announced: tuple[int, int] | None = None  # queued, not decoded: sizes
        self.header_rows = 0  # rows of every batch header checked so far
        # statistics
        self.messages = 0
        self.batches = 0
        self.rows = 0
        self.wire_bytes = 0
        self.decoded_bytes = 0
        self.dictionary_bytes = 0

    def count_wire(self, size: int) -> None:
        """Count framing bytes that belong to no message (an end marker)."""
        self.wire_bytes += size

    def finish(self) -> None:
        """The stream ended cleanly: count dictionaries no batch followed."""
        self.wire_bytes += self._pending_wire_bytes
        self._pending_wire_bytes = 0

    def check(self, header: MessageHeader, metadata_length: int) -> None:
        """Judge a message by its flatbuffer, before its body is read."""
        if header.version not in _SUPPORTED_VERSIONS:
            raise invalid(
                f"unsupported IPC metadata version V{header.version + 1}; "
                "Arrowport reads V4 and V5 (Arrow >= 0.8)",
                error="unsupported_ipc_version",
            )
        kind = header.header_type
        if self.schema is None and kind != HeaderType.SCHEMA:
            raise invalid(
                "the stream must begin with a Schema message", error="invalid_ipc_framing"
            )
        if kind == HeaderType.SCHEMA:
            if self.schema is not None:
                raise invalid("a second Schema message in one stream", error="invalid_ipc_framing")
        elif kind not in (HeaderType.RECORD_BATCH, HeaderType.DICTIONARY_BATCH):
            name = HeaderType(kind).name if kind in HeaderType._value2member_map_ else str(kind)
            raise invalid(f"unsupported IPC message type {name}", error="unsupported_message")
        if header.body_length > self.max_body_size:
            raise limit_exceeded(
                f"IPC message body of {header.body_length} bytes exceeds the limit of "
                f"{self.max_body_size} bytes"
            )
        if kind == HeaderType.SCHEMA and header.body_length:
            raise invalid("a Schema message has a body", error="invalid_ipc_metadata")
        batch = header.batch
        if batch is not None:
            if batch.length > self.max_batch_rows:
                raise limit_exceeded(
                    f"record batch of {batch.length} rows exceeds the limit of "
                    f"{self.max_batch_rows} rows"
                )
            if kind == HeaderType.RECORD_BATCH:
                self.header_rows += batch.length
                limit = self.max_request_rows
                if limit is not None and self.header_rows > limit:
                    raise limit_exceeded(
                        f"the request's batches hold more than {limit} rows, over "
                        f"limits.max_request_rows ({limit})"
                    )
            for spec in batch.buffers:
                if spec.offset + spec.length > header.body_length:
                    raise invalid(
                        "a buffer lies outside the message body", error="invalid_ipc_metadata"
                    )
        if kind == HeaderType.DICTIONARY_BATCH and batch is not None and batch.codec is None:
            # uncompressed: the body is what the dictionary costs, so refuse it before
            # reading it; compressed ones are counted once their sizes are known
            self._dictionary_growth(8 + pad8(metadata_length) + header.body_length)

    def read(
        self, header: MessageHeader, framed: pa.Buffer, body: pa.Buffer, *, wire: int
    ) -> SchemaReceived | BatchReceived | BatchAnnounced | DictionaryReceived | None:
        """Read one checked message; ``wire`` is its size on the wire.

        Returns None for a dictionary message (it is used by later batches),
        or ``DictionaryReceived`` with ``announce``; ``BatchAnnounced`` for a
        record batch with ``announce`` (then call ``decode_pending``).
        """
        self.messages += 1
        self._pending_wire_bytes += wire
        kind = header.header_type
        if kind == HeaderType.SCHEMA:
            return self._on_schema(framed)
        batch = header.batch
        assert batch is not None
        decoded = self._decoded_size(batch, body)
        if kind == HeaderType.DICTIONARY_BATCH:
            # Decompressed size, so a compressed delta cannot grow dictionaries unseen,
            # plus the framed metadata, so a flood of empty deltas is bounded too.
            self.dictionary_bytes = self._dictionary_growth(framed.size + decoded)
            self._push(framed, body)
            if self.announce:
                return DictionaryReceived(
                    decoded_bytes=framed.size + decoded, compressed=batch.codec is not None
                )
            return None
        extra = header_extra(self._sites, batch.nodes) if self._sites else 0
        self._request_decoded(decoded + extra)
        self._push(framed, body)
        if self.announce:
            self._announced = (decoded, extra)
            return BatchAnnounced(
                rows=batch.length, decoded_bytes=decoded + extra, compressed=batch.codec is not None
            )
        return self._on_batch(decoded, extra)

    @property
    def pending(self) -> bool:
        """A ``BatchAnnounced`` batch waits for ``decode_pending``."""
        return self._announced is not None

    def decode_pending(self) -> BatchReceived:
        """Decode the announced batch: decompression happens here."""
        announced = self._announced
        assert announced is not None, "no announced batch"
        self._announced = None
        return self._on_batch(*announced)

    # -- internals ----------------------------------------------------------

    def _push(self, framed: pa.Buffer, body: pa.Buffer) -> None:
        self._feed.push(framed)
        if body.size:
            self._feed.push(body)

    def _request_decoded(self, size: int) -> None:
        limit = self.max_request_decoded_bytes
        if limit is not None and self.decoded_bytes + size > limit:
            raise limit_exceeded(
                f"the request's batches decode to more than {limit} bytes (null, run-end-encoded "
                f"and dictionary columns at their expanded size), over "
                f"limits.max_request_decoded_bytes ({limit})"
            )

    def _dictionary_growth(self, size: int) -> int:
        grown = self.dictionary_bytes + size
        if grown > self.max_dictionary_bytes:
            raise limit_exceeded(
                f"dictionaries would grow to {grown} bytes, over the limit of "
                f"{self.max_dictionary_bytes} bytes"
            )
        return grown

    def _decoded_size(self, batch: BatchHeader, body: pa.Buffer) -> int:
        if batch.codec is None:
            return int(body.size)
        view = memoryview(body).cast("B")
        total = 0
        for spec in batch.buffers:
            if spec.length == 0:
                continue
            if spec.length < 8:
                raise invalid(
                    "a compressed buffer is shorter than its length prefix",
                    error="invalid_compression",
                )
            size = _I64.unpack_from(view, spec.offset)[0]
            if size == -1:
                size = spec.length - 8
            elif size < 0:
                raise invalid("negative uncompressed buffer length", error="invalid_compression")
            total += size
            if total > self.max_decompressed_size:
                raise limit_exceeded(
                    f"message would decompress to more than {self.max_decompressed_size} bytes"
                )
        return total

    def _on_schema(self, framed: pa.Buffer) -> SchemaReceived:
        self._feed.push(framed)
        try:
            self._reader = pa.ipc.open_stream(self._feed)
        except MemoryError:
            raise
        except Exception as exc:  # pyarrow, or a registered extension type's deserializer
            raise invalid(f"invalid schema message: {exc}", error="invalid_schema") from None
        schema = self._reader.schema
        fields = count_fields(schema, self.max_columns + 1)
        check_field_names(schema)
        if fields > self.max_columns:
            raise limit_exceeded(
                f"schema has more than {self.max_columns} fields (nested fields included), "
                "over the column limit"
            )
        for field in schema:
            if nesting_depth(field.type, self.max_nesting_depth + 1) > self.max_nesting_depth:
                raise limit_exceeded(
                    f"column {field.name!r} is nested deeper than the limit of "
                    f"{self.max_nesting_depth} levels"
                )
        size = metadata_bytes(schema, self.max_schema_metadata_bytes)
        if size > self.max_schema_metadata_bytes:
            raise limit_exceeded(
                "schema and field metadata (keys and values, nested fields included) exceed "
                f"limits.max_schema_metadata_bytes ({self.max_schema_metadata_bytes} bytes)"
            )
        self.schema = schema
        self._sites = expansion_sites(schema)
        self.wire_bytes += self._pending_wire_bytes
        self._pending_wire_bytes = 0
        return SchemaReceived(schema=schema)

    def _on_batch(self, buffers: int, extra: int) -> BatchReceived:
        """Decode the queued batch, of ``buffers`` bytes plus ``extra`` (header's estimate)."""
        assert self._reader is not None
        try:
            batch = self._reader.read_next_batch()
            validated = self.validate or bool(self._sites)
            if validated:  # the sizes below read offsets and indices: valid ones only
                batch.validate(full=True)
            if self._sites:  # the exact expanded size replaces the header's lower bound
                extra = decoded_extra(batch)
        except StopIteration:
            raise invalid("record batch message could not be read", error="invalid_batch") from None
        except MemoryError:
            raise
        except Exception as exc:  # pyarrow, or a registered extension type's code
            raise invalid(f"invalid record batch: {exc}", error="invalid_batch") from None
        decoded = buffers + extra
        if self._sites:
            self._request_decoded(decoded)
        wire = self._pending_wire_bytes
        self._pending_wire_bytes = 0
        self.batches += 1
        self.rows += batch.num_rows
        self.wire_bytes += wire
        self.decoded_bytes += decoded
        return BatchReceived(
            batch=batch, wire_bytes=wire, decoded_bytes=decoded, validated=validated
        )
