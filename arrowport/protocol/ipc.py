"""A push-style, sans-IO decoder for the Arrow IPC streaming format.

Invariants:

* Bytes go in through ``receive_data`` (``b""`` means EOF); events come out of
  ``next_event``, which never blocks and returns ``NEED_DATA`` when it cannot
  make progress. The decoder buffers at most one partial message beyond what
  the caller fed it, so the caller owns backpressure.
* Every limit is checked from the prefix and the message's flatbuffer before
  the message buffer is allocated, and compressed sizes are checked before
  pyarrow decompresses anything.
* A message is reassembled once into an Arrow-allocated buffer laid out as a
  canonical, 8-byte aligned IPC message; pyarrow reads it zero-copy.
* Every batch passes ``validate(full=True)`` before it is emitted.
* Whatever pyarrow (or a registered extension type) raises while reading the
  peer's bytes becomes a ``LocalProtocolError``; only ``MemoryError`` (the
  server's problem, not the peer's) passes through.
* Any error moves the decoder to ``ERROR`` for good.

Framing: each message is ``0xFFFFFFFF``, an int32 metadata length, the
``Message`` flatbuffer and the body; a length of 0 ends the stream. Legacy
(pre-0.15) streams omit the ``0xFFFFFFFF`` marker.
"""

from __future__ import annotations

import enum
import struct

import pyarrow as pa

from ._flatbuf import BatchHeader, HeaderType, MessageHeader, parse_message
from .errors import LocalProtocolError, RemoteProtocolError, invalid, limit_exceeded
from .events import NEED_DATA, BatchReceived, Event, SchemaReceived, StreamEnded, _NeedData
from .feed import MessageFeed
from .input import InputBuffer

_CONTINUATION = b"\xff\xff\xff\xff"
_FILE_MAGIC = b"ARROW1"
_ZERO = b"\x00\x00\x00\x00"
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_SUPPORTED_VERSIONS = (3, 4)  # MetadataVersion V4 and V5

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class State(enum.Enum):
    PREFIX = enum.auto()
    METADATA = enum.auto()
    BODY = enum.auto()
    DONE = enum.auto()
    ERROR = enum.auto()


class _Input(enum.Enum):
    LENGTH = enum.auto()  # a non-zero metadata length was read
    END_MARKER = enum.auto()  # a zero length was read
    METADATA = enum.auto()  # the metadata was read and checked
    BODY = enum.auto()  # the body is complete
    CLEAN_EOF = enum.auto()  # EOF on a message boundary


_TRANSITIONS: dict[tuple[State, _Input], State] = {
    (State.PREFIX, _Input.LENGTH): State.METADATA,
    (State.PREFIX, _Input.END_MARKER): State.DONE,
    (State.PREFIX, _Input.CLEAN_EOF): State.DONE,
    (State.METADATA, _Input.METADATA): State.BODY,
    (State.BODY, _Input.BODY): State.PREFIX,
}


def _pad8(n: int) -> int:
    return (n + 7) & ~7


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


class IPCStreamDecoder:
    """Decode an Arrow IPC stream pushed in arbitrary chunks.

    Limits (all in bytes unless named otherwise) are checked before anything
    is allocated for the message that exceeds them. ``max_dictionary_bytes``
    bounds all dictionary messages of a stream together, each counted as its
    framed metadata plus its decompressed body.
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
    ) -> None:
        self.max_metadata_size = max_metadata_size
        self.max_body_size = max_body_size
        self.max_decompressed_size = max_decompressed_size
        self.max_dictionary_bytes = max_dictionary_bytes
        self.max_nesting_depth = max_nesting_depth
        self.max_columns = max_columns
        self.max_batch_rows = max_batch_rows

        self._state = State.PREFIX
        self._input = InputBuffer()
        self._feed = MessageFeed()
        self._reader: pa.RecordBatchStreamReader | None = None
        self._schema: pa.Schema | None = None
        self._legacy: bool | None = None
        self._metadata_length = 0
        self._header: MessageHeader | None = None
        self._message: pa.Buffer | None = None
        self._message_view: memoryview | None = None
        self._body_start = 0
        self._filled = 0
        self._pending_wire_bytes = 0
        # statistics
        self.messages = 0
        self.batches = 0
        self.rows = 0
        self.wire_bytes = 0
        self.decoded_bytes = 0
        self.dictionary_bytes = 0

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def schema(self) -> pa.Schema | None:
        return self._schema

    @property
    def legacy_format(self) -> bool | None:
        """True if the stream used pre-0.15 framing (None before the first message)."""
        return self._legacy

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; ``b""`` means the transport reached EOF."""
        self._input.feed(data)

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received after the stream ended, and whether EOF was seen."""
        return self._input.peek_all(), self._input.eof

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or ``NEED_DATA``. Raises ``RemoteProtocolError``."""
        if self._state is State.ERROR:
            raise RemoteProtocolError("the IPC stream decoder is in an error state")
        try:
            return self._next_event()
        except LocalProtocolError as exc:
            self._state = State.ERROR
            raise exc._reraise_as_remote_protocol_error() from exc

    def statistics(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "batches": self.batches,
            "rows": self.rows,
            "wire_bytes": self.wire_bytes,
            "decoded_bytes": self.decoded_bytes,
            "dictionary_bytes": self.dictionary_bytes,
            "buffered_bytes": self._input.size,
        }

    # -- internals ----------------------------------------------------------

    def _transition(self, what: _Input) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, what)]
        except KeyError:
            raise invalid(f"unexpected {what.name} in state {self._state.name}") from None

    def _truncated(self, where: str) -> LocalProtocolError:
        return invalid(f"stream truncated {where}", error="truncated_stream")

    def _next_event(self) -> Event | _NeedData:
        while True:
            state = self._state
            if state is State.PREFIX:
                event = self._read_prefix()
            elif state is State.METADATA:
                event = self._read_metadata()
            elif state is State.BODY:
                event = self._read_body()
            else:  # DONE
                return NEED_DATA
            if event is not None:
                return event

    def _read_prefix(self) -> Event | _NeedData | None:
        buffered = self._input.size
        if buffered == 0 and self._input.eof:
            if self._schema is None:
                raise invalid("empty body: no Arrow IPC stream received", error="empty_stream")
            self._transition(_Input.CLEAN_EOF)
            return StreamEnded(eos_marker=False)
        if buffered < 4:
            return self._need("in a message prefix")
        head = self._input.peek(4)
        legacy = head != _CONTINUATION
        # Framing never changes mid-stream, except that a bare zero word ends any
        # stream (the legacy end marker, which Arrow C++ also accepts).
        if self._legacy is not None and legacy != self._legacy and head != _ZERO:
            expected = "a legacy length prefix" if self._legacy else "the continuation marker"
            raise invalid(
                f"IPC message framing changed mid-stream: expected {expected}, got {head.hex()}",
                error="invalid_ipc_framing",
            )
        if legacy:
            length = _I32.unpack(self._input.take(4))[0]
            prefix = 4
        else:
            if buffered < 8:
                return self._need("in a message prefix")
            length = _I32.unpack(self._input.take(8)[4:])[0]
            prefix = 8
        first = self._legacy is None
        if first:
            self._legacy = legacy
        self._pending_wire_bytes += prefix
        if length == 0:
            if self._schema is None:
                raise invalid(
                    "end-of-stream marker before any schema message", error="empty_stream"
                )
            self.wire_bytes += self._pending_wire_bytes
            self._pending_wire_bytes = 0
            self._transition(_Input.END_MARKER)
            return StreamEnded(eos_marker=True)
        if length < 0:
            raise invalid(
                f"negative IPC metadata length {length}: not an Arrow IPC stream",
                error="invalid_ipc_framing",
            )
        if length > self.max_metadata_size:
            if first and legacy:
                # No continuation marker, and read as a legacy prefix the first
                # word is implausible: most likely not Arrow at all (JSON, CSV...).
                if head == _FILE_MAGIC[:4]:
                    raise invalid(
                        "this is the Arrow IPC file format (ARROW1 magic, as written by "
                        "Feather v2 or pyarrow.ipc.new_file); send the streaming format",
                        error="invalid_ipc_framing",
                    )
                raise invalid(
                    f"not an Arrow IPC stream: it starts with {head.hex()}, neither the "
                    "0xFFFFFFFF continuation marker nor a legacy metadata length within "
                    f"the limit of {self.max_metadata_size} bytes",
                    error="invalid_ipc_framing",
                )
            raise limit_exceeded(
                f"IPC message metadata of {length} bytes exceeds the limit of "
                f"{self.max_metadata_size} bytes"
            )
        self._metadata_length = length
        self._transition(_Input.LENGTH)
        return None

    def _need(self, where: str) -> _NeedData:
        if self._input.eof:
            raise self._truncated(where)
        return NEED_DATA

    def _read_metadata(self) -> Event | _NeedData | None:
        length = self._metadata_length
        if self._input.size < length:
            return self._need("in message metadata")
        metadata = self._input.take(length)
        header = parse_message(metadata)
        self._check_header(header)
        padded = _pad8(length)
        total = 8 + padded + header.body_length
        message = pa.allocate_buffer(total)
        view = memoryview(message).cast("B")
        view[0:4] = _CONTINUATION
        view[4:8] = _I32.pack(padded)
        view[8 : 8 + length] = metadata
        view[8 + length : 8 + padded] = bytes(padded - length)
        self._header = header
        self._message = message
        self._message_view = view
        self._body_start = 8 + padded
        self._filled = self._body_start
        self._pending_wire_bytes += length
        self._transition(_Input.METADATA)
        return None

    def _check_header(self, header: MessageHeader) -> None:
        if header.version not in _SUPPORTED_VERSIONS:
            raise invalid(
                f"unsupported IPC metadata version V{header.version + 1}; "
                "Arrowport reads V4 and V5 (Arrow >= 0.8)",
                error="unsupported_ipc_version",
            )
        kind = header.header_type
        if self._schema is None and kind != HeaderType.SCHEMA:
            raise invalid(
                "the stream must begin with a Schema message", error="invalid_ipc_framing"
            )
        if kind == HeaderType.SCHEMA:
            if self._schema is not None:
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
            self._check_dictionary_growth(8 + _pad8(self._metadata_length) + header.body_length)

    def _check_dictionary_growth(self, size: int) -> int:
        grown = self.dictionary_bytes + size
        if grown > self.max_dictionary_bytes:
            raise limit_exceeded(
                f"dictionaries would grow to {grown} bytes, over the limit of "
                f"{self.max_dictionary_bytes} bytes"
            )
        return grown

    def _read_body(self) -> Event | _NeedData | None:
        view = self._message_view
        assert view is not None and self._header is not None and self._message is not None
        end = len(view)
        if self._filled < end:
            self._filled += self._input.take_into(view, self._filled, end - self._filled)
            if self._filled < end:
                return self._need("in a message body")
        header, message = self._header, self._message
        self._header = self._message = self._message_view = None
        self._pending_wire_bytes += header.body_length
        self.messages += 1
        self._transition(_Input.BODY)
        return self._dispatch(header, message)

    def _decoded_size(self, batch: BatchHeader, message: pa.Buffer, body_length: int) -> int:
        if batch.codec is None:
            return body_length
        view = memoryview(message).cast("B")
        total = 0
        for spec in batch.buffers:
            if spec.length == 0:
                continue
            if spec.length < 8:
                raise invalid(
                    "a compressed buffer is shorter than its length prefix",
                    error="invalid_compression",
                )
            size = _I64.unpack_from(view, self._body_start + spec.offset)[0]
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

    def _dispatch(self, header: MessageHeader, message: pa.Buffer) -> Event | None:
        kind = header.header_type
        if kind == HeaderType.SCHEMA:
            return self._on_schema(message)
        batch = header.batch
        assert batch is not None
        decoded = self._decoded_size(batch, message, header.body_length)
        if kind == HeaderType.DICTIONARY_BATCH:
            # Decompressed size, so a compressed delta cannot grow dictionaries unseen,
            # plus the framed metadata, so a flood of empty deltas is bounded too.
            self.dictionary_bytes = self._check_dictionary_growth(self._body_start + decoded)
            self._feed.push(message)
            return None
        self._feed.push(message)
        return self._on_batch(decoded)

    def _on_schema(self, message: pa.Buffer) -> Event:
        self._feed.push(message)
        try:
            self._reader = pa.ipc.open_stream(self._feed)
        except MemoryError:
            raise
        except Exception as exc:  # pyarrow, or a registered extension type's deserializer
            raise invalid(f"invalid schema message: {exc}", error="invalid_schema") from None
        schema = self._reader.schema
        fields = count_fields(schema, self.max_columns + 1)
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
        self._schema = schema
        self.wire_bytes += self._pending_wire_bytes
        self._pending_wire_bytes = 0
        return SchemaReceived(schema=schema)

    def _on_batch(self, decoded: int) -> Event:
        assert self._reader is not None
        try:
            batch = self._reader.read_next_batch()
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
