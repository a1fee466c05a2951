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
* Whatever pyarrow (or a registered extension type) raises while reading the
  peer's bytes becomes a ``LocalProtocolError``; only ``MemoryError`` passes.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from ._flatbuf import BatchHeader, HeaderType, MessageHeader
from .errors import RemoteProtocolError, invalid, limit_exceeded
from .events import BatchReceived, SchemaReceived
from .feed import MessageFeed

_CONTINUATION = b"\xff\xff\xff\xff"
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_SUPPORTED_VERSIONS = (3, 4)  # MetadataVersion V4 and V5

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


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


def nesting_depth(data_type: pa.DataType, limit: int) -> int:
    """Depth of ``data_type`` (1 for a flat type); stops counting past ``limit``."""
    if isinstance(data_type, pa.DictionaryType):
        return nesting_depth(data_type.value_type, limit)
    if isinstance(data_type, pa.BaseExtensionType):  # num_fields is 0: look at the storage
        return nesting_depth(data_type.storage_type, limit)
    deepest = 1
    if limit <= 1:
        return deepest + int(data_type.num_fields > 0)
    for i in range(data_type.num_fields):
        deepest = max(deepest, 1 + nesting_depth(data_type.field(i).type, limit - 1))
    return deepest


def check_field_names(schema: pa.Schema) -> None:
    """Raise ``invalid_schema`` if a field name or a time zone, at any depth, is not
    valid UTF-8 (the IPC format says it is; pyarrow raises when the string is read)."""
    stack: list[pa.Field] = []
    try:
        stack.extend(schema)
        while stack:
            field = stack.pop()
            field.name  # noqa: B018 - decoding the name is the check
            data_type = field.type
            while isinstance(data_type, pa.DictionaryType | pa.BaseExtensionType):
                if isinstance(data_type, pa.DictionaryType):
                    data_type = data_type.value_type
                else:
                    data_type = data_type.storage_type
            if isinstance(data_type, pa.TimestampType):
                data_type.tz  # noqa: B018 - as the name
            stack.extend(data_type.field(i) for i in range(data_type.num_fields))
    except UnicodeDecodeError:
        raise invalid(
            "a field name or time zone in the schema is not valid UTF-8", error="invalid_schema"
        ) from None


def count_fields(schema: pa.Schema, limit: int) -> int:
    """Count fields, nested children included; stops counting at ``limit``."""
    count = 0
    stack = [field.type for field in schema]
    count += len(stack)
    while stack and count < limit:
        data_type = stack.pop()
        if isinstance(data_type, pa.DictionaryType):
            data_type = data_type.value_type
        if isinstance(data_type, pa.BaseExtensionType):
            data_type = data_type.storage_type
        children = [data_type.field(i).type for i in range(data_type.num_fields)]
        count += len(children)
        stack.extend(children)
    return count


def _metadata_size(metadata: dict[bytes, bytes] | None) -> int:
    return sum(len(k) + len(v) for k, v in (metadata or {}).items())


def metadata_bytes(schema: pa.Schema, limit: int) -> int:
    """Key and value bytes of the schema's metadata and of every field's metadata,
    nested fields included; stops counting past ``limit``."""
    total = _metadata_size(schema.metadata)
    stack = list(schema)
    while stack and total <= limit:
        field = stack.pop()
        total += _metadata_size(field.metadata)
        data_type = field.type
        if isinstance(data_type, pa.DictionaryType):
            data_type = data_type.value_type
        if isinstance(data_type, pa.BaseExtensionType):
            data_type = data_type.storage_type
        stack.extend(data_type.field(i) for i in range(data_type.num_fields))
    return total


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
        validate: bool = True,
    ) -> None:
        self.validate = validate
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
        batch = header.batch
        if batch is not None:
            if batch.length > self.max_batch_rows:
                raise limit_exceeded(
                    f"record batch of {batch.length} rows exceeds the limit of "
                    f"{self.max_batch_rows} rows"
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
    ) -> SchemaReceived | BatchReceived | None:
        """Read one checked message; ``wire`` is its size on the wire.

        Returns None for a dictionary message (it is used by later batches).
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
            return None
        self._push(framed, body)
        return self._on_batch(decoded)

    # -- internals ----------------------------------------------------------

    def _push(self, framed: pa.Buffer, body: pa.Buffer) -> None:
        self._feed.push(framed)
        if body.size:
            self._feed.push(body)

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
        self.wire_bytes += self._pending_wire_bytes
        self._pending_wire_bytes = 0
        return SchemaReceived(schema=schema)

    def _on_batch(self, decoded: int) -> BatchReceived:
        assert self._reader is not None
        try:
            batch = self._reader.read_next_batch()
            if self.validate:
                batch.validate(full=True)
        except StopIteration:
            raise invalid("record batch message could not be read", error="invalid_batch") from None
        except MemoryError:
            raise
        except Exception as exc:  # pyarrow, or a registered extension type's code
            raise invalid(f"invalid record batch: {exc}", error="invalid_batch") from None
        wire = self._pending_wire_bytes
        self._pending_wire_bytes = 0
        self.batches += 1
        self.rows += batch.num_rows
        self.wire_bytes += wire
        self.decoded_bytes += decoded
        return BatchReceived(batch=batch, wire_bytes=wire, decoded_bytes=decoded)
