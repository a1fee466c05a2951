"""A minimal, bounds-checked reader for the Arrow IPC ``Message`` flatbuffer.

It reads only what the framer needs before pyarrow sees a message: the header
type, ``bodyLength``, and for record and dictionary batches the row count, the
buffer list and the compression codec, so that limits are checked before
anything is allocated or decompressed. Every offset is checked against the
buffer; a malformed flatbuffer raises ``LocalProtocolError``. pyarrow verifies
the full flatbuffer again when it reads the message.

Field numbers follow Arrow's ``Message.fbs`` and ``Schema.fbs``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from .errors import invalid

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_BUFFER = struct.Struct("<qq")


class HeaderType(enum.IntEnum):
    """``MessageHeader`` union tags."""

    NONE = 0
    SCHEMA = 1
    DICTIONARY_BATCH = 2
    RECORD_BATCH = 3
    TENSOR = 4
    SPARSE_TENSOR = 5


class Codec(enum.IntEnum):
    """``CompressionType`` values."""

    LZ4_FRAME = 0
    ZSTD = 1


@dataclass(frozen=True, slots=True)
class BufferSpec:
    offset: int
    length: int


class BufferTable(Sequence[BufferSpec]):
    """The ``buffers`` vector, read on demand.

    A 64 MiB metadata block can declare millions of buffers; they are not
    materialized as Python objects, only unpacked while iterated.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: memoryview) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw) // 16

    @overload
    def __getitem__(self, index: int) -> BufferSpec: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[BufferSpec]: ...
    def __getitem__(self, index: int | slice) -> BufferSpec | Sequence[BufferSpec]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return _spec(*_BUFFER.unpack_from(self._raw, 16 * index))

    def __iter__(self) -> Iterator[BufferSpec]:
        for offset, length in _BUFFER.iter_unpack(self._raw):
            yield _spec(offset, length)


def _spec(offset: int, length: int) -> BufferSpec:
    if offset < 0 or length < 0:
        raise _malformed("negative buffer offset or length")
    return BufferSpec(offset, length)


class NodeTable:
    """The ``nodes`` vector (``FieldNode``: length, null count), read on demand."""

    __slots__ = ("_raw",)

    def __init__(self, raw: memoryview) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw) // 16

    def length(self, index: int) -> int:
        """The length of node ``index``; 0 past the end (pyarrow refuses such a batch)."""
        if not 0 <= index < len(self):
            return 0
        return max(0, int(_BUFFER.unpack_from(self._raw, 16 * index)[0]))


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What the framer needs of a RecordBatch (or a dictionary's data)."""

    length: int
    buffers: BufferTable
    codec: Codec | None
    nodes: NodeTable


@dataclass(frozen=True, slots=True)
class MessageHeader:
    version: int
    header_type: int
    body_length: int
    batch: BatchHeader | None
    dictionary_id: int | None = None
    is_delta: bool = False


def _malformed(what: str) -> Exception:
    return invalid(f"malformed IPC message metadata: {what}", error="invalid_ipc_metadata")


class _Table:
    """A flatbuffer table at ``pos`` in ``buf``."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: memoryview, pos: int) -> None:
        size = len(buf)
        if pos < 0 or pos + 4 > size:
            raise _malformed("table offset out of range")
        vt = pos - _I32.unpack_from(buf, pos)[0]
        if vt < 0 or vt + 4 > size:
            raise _malformed("vtable offset out of range")
        vt_len = _U16.unpack_from(buf, vt)[0]
        if vt_len < 4 or vt_len % 2 or vt + vt_len > size:
            raise _malformed("bad vtable size")
        self.buf, self.pos, self.vt, self.vt_len = buf, pos, vt, vt_len

    def _field(self, index: int, width: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self.vt_len:
            return None
        off: int = _U16.unpack_from(self.buf, self.vt + slot)[0]
        if off == 0:
            return None
        loc = self.pos + off
        if loc + width > len(self.buf):
            raise _malformed("field out of range")
        return loc

    def scalar(self, index: int, fmt: struct.Struct, default: int) -> int:
        loc = self._field(index, fmt.size)
        return default if loc is None else int(fmt.unpack_from(self.buf, loc)[0])

    def byte(self, index: int, default: int) -> int:
        loc = self._field(index, 1)
        return default if loc is None else self.buf[loc]

    def _indirect(self, index: int) -> int | None:
        loc = self._field(index, 4)
        if loc is None:
            return None
        target: int = loc + _U32.unpack_from(self.buf, loc)[0]
        return target

    def table(self, index: int) -> _Table | None:
        target = self._indirect(index)
        return None if target is None else _Table(self.buf, target)

    def struct_vector(self, index: int, elem_size: int) -> tuple[int, int]:
        """Return (start, count) of a vector of fixed-size structs."""
        target = self._indirect(index)
        if target is None:
            return 0, 0
        if target + 4 > len(self.buf):
            raise _malformed("vector out of range")
        count = _U32.unpack_from(self.buf, target)[0]
        start = target + 4
        if start + count * elem_size > len(self.buf):
            raise _malformed("vector runs past the metadata")
        return start, count


def _batch_header(table: _Table) -> BatchHeader:
    length = table.scalar(0, _I64, 0)
    if length < 0:
        raise _malformed("negative record batch length")
    start, count = table.struct_vector(2, 16)
    buffers = BufferTable(table.buf[start : start + 16 * count])
    start, count = table.struct_vector(1, 16)
    nodes = NodeTable(table.buf[start : start + 16 * count])
    codec: Codec | None = None
    compression = table.table(3)
    if compression is not None:
        raw = compression.byte(0, Codec.LZ4_FRAME)
        if raw not in (Codec.LZ4_FRAME, Codec.ZSTD):
            raise invalid(f"unknown body compression codec {raw}", error="unsupported_compression")
        codec = Codec(raw)
    return BatchHeader(length=length, buffers=buffers, codec=codec, nodes=nodes)


def parse_message(metadata: bytes | memoryview) -> MessageHeader:
    """Parse the ``Message`` flatbuffer in ``metadata`` (without prefix)."""
    buf = memoryview(metadata).cast("B")
    if len(buf) < 4:
        raise _malformed("shorter than a flatbuffer root")
    root = _Table(buf, _U32.unpack_from(buf, 0)[0])
    version = root.scalar(0, struct.Struct("<h"), 0)
    header_type = root.byte(1, HeaderType.NONE)
    body_length = root.scalar(3, _I64, 0)
    if body_length < 0:
        raise _malformed("negative body length")
    header = root.table(2)
    if header_type != HeaderType.NONE and header is None:
        raise _malformed("message header missing")
    if header_type == HeaderType.RECORD_BATCH:
        assert header is not None
        return MessageHeader(version, header_type, body_length, _batch_header(header))
    if header_type == HeaderType.DICTIONARY_BATCH:
        assert header is not None
        data = header.table(1)
        if data is None:
            raise _malformed("dictionary batch without data")
        return MessageHeader(
            version,
            header_type,
            body_length,
            _batch_header(data),
            dictionary_id=header.scalar(0, _I64, 0),
            is_delta=bool(header.byte(2, 0)),
        )
    return MessageHeader(version, header_type, body_length, None)
