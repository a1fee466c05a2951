"""Feed bytes to ``IPCStreamDecoder`` three ways and collect what comes out.

Every decoder test runs in each of ``MODES``: the whole buffer at once, one
byte at a time, and the whole buffer followed by ``TRAILER``. The helpers
here also take streams apart into messages and put them back together, so
tests can craft bad input from real pyarrow output.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from arrowport.protocol import (
    NEED_DATA,
    BatchReceived,
    Event,
    IPCStreamDecoder,
    RemoteProtocolError,
    SchemaReceived,
    State,
    StreamEnded,
)
from arrowport.protocol._flatbuf import (
    BufferSpec,
    HeaderType,
    MessageHeader,
    _Table,
    parse_message,
)

HERE = Path(__file__).resolve().parent
GOLDEN_DIR = HERE / "golden"
MODES = ("whole", "bytewise", "trailing")
TRAILER = b"\x00\x01 trailing bytes \xff\xff\xff\xff\x00\x00\x00\x00"
CONTINUATION = b"\xff\xff\xff\xff"
EOS = CONTINUATION + b"\x00\x00\x00\x00"


def _load_generator() -> ModuleType:
    name = "arrowport_golden_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GOLDEN_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()
GOLDENS: dict[str, Any] = generate.GOLDENS


@functools.cache
def golden_bytes(name: str) -> bytes:
    """The checked-in bytes of golden ``name``."""
    return bytes(generate.path_of(name).read_bytes())


# -- decoding ------------------------------------------------------------------


@dataclass
class Decoded:
    """Everything a decoder produced for one input."""

    decoder: IPCStreamDecoder
    events: list[Event] = field(default_factory=list)
    error: RemoteProtocolError | None = None
    fed: int = 0  # bytes fed when decoding stopped

    @property
    def schema(self) -> pa.Schema:
        first = self.events[0]
        assert isinstance(first, SchemaReceived), first
        return first.schema

    @property
    def received(self) -> list[BatchReceived]:
        return [e for e in self.events if isinstance(e, BatchReceived)]

    @property
    def batches(self) -> list[pa.RecordBatch]:
        return [e.batch for e in self.received]

    @property
    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)

    @property
    def kinds(self) -> list[str]:
        """The events' class names, in order."""
        return [type(e).__name__ for e in self.events]

    @property
    def ended(self) -> StreamEnded | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, StreamEnded) else None

    def ok(self) -> Decoded:
        """Assert the stream decoded without error and ended; return self."""
        assert self.error is None, f"{self.error.error}: {self.error.detail}"
        assert self.ended is not None, self.events
        return self

    def raised(self) -> RemoteProtocolError:
        """Assert decoding failed, the decoder is in ERROR for good; return the error."""
        assert self.error is not None, f"expected an error, got {self.events}"
        assert self.decoder.state is State.ERROR
        return self.error


def _drain(decoder: IPCStreamDecoder, events: list[Event], *, eof: bool, budget: int) -> None:
    for _ in range(budget):
        event = decoder.next_event()
        if event is NEED_DATA:
            if eof:
                assert decoder.state is State.DONE, "decoder wants data after EOF (would hang)"
            return
        assert isinstance(event, Event), event
        assert not (events and isinstance(events[-1], StreamEnded)), "event after StreamEnded"
        events.append(event)
    raise AssertionError("decoder produced more events than its input can hold")


def decode_chunks(chunks: Iterable[bytes], *, eof: bool = True, **limits: int) -> Decoded:
    """Feed ``chunks`` one by one, draining events after each, then EOF."""
    out = Decoded(IPCStreamDecoder(**limits))
    try:
        for chunk in chunks:
            if not chunk:
                continue  # b"" would mean EOF
            out.decoder.receive_data(chunk)
            out.fed += len(chunk)
            _drain(out.decoder, out.events, eof=False, budget=len(chunk) + 2)
        if eof:
            out.decoder.receive_data(b"")
            _drain(out.decoder, out.events, eof=True, budget=out.fed + 2)
    except RemoteProtocolError as exc:
        out.error = exc
    return out


def chunks_for(data: bytes, mode: str, trailer: bytes = TRAILER) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    if mode == "trailing":
        return [data + trailer]
    raise ValueError(mode)


def decode(data: bytes, mode: str = "whole", *, eof: bool = True, **limits: int) -> Decoded:
    """Decode ``data`` fed as ``mode`` says (see ``MODES``)."""
    return decode_chunks(chunks_for(data, mode), eof=eof, **limits)


def plain_type(data_type: pa.DataType) -> pa.DataType:
    """``data_type`` with every dictionary replaced by its value type."""
    if isinstance(data_type, pa.DictionaryType):
        return plain_type(data_type.value_type)
    if isinstance(data_type, pa.MapType):
        return pa.map_(plain_type(data_type.key_type), plain_type(data_type.item_type))
    if isinstance(data_type, pa.StructType):
        return pa.struct([f.with_type(plain_type(f.type)) for f in data_type])
    if isinstance(data_type, pa.FixedSizeListType):
        return pa.list_(
            data_type.value_field.with_type(plain_type(data_type.value_type)), data_type.list_size
        )
    if isinstance(data_type, pa.LargeListType):
        return pa.large_list(data_type.value_field.with_type(plain_type(data_type.value_type)))
    if isinstance(data_type, pa.ListType):
        return pa.list_(data_type.value_field.with_type(plain_type(data_type.value_type)))
    return data_type


def without_dictionaries(table: pa.Table) -> pa.Table:
    """``table`` with dictionary-encoded data decoded to plain values."""
    schema = pa.schema([f.with_type(plain_type(f.type)) for f in table.schema])
    return table.cast(schema)


def assert_tables_equal(actual: pa.Table, expected: pa.Table) -> None:
    """Equal schemas (with metadata), equal values, dictionaries decoded equally too."""
    assert actual.schema.equals(expected.schema, check_metadata=True)
    assert actual.equals(expected)
    assert without_dictionaries(actual).equals(without_dictionaries(expected))


# -- taking streams apart ------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One IPC message as found in a stream."""

    metadata: bytes  # as framed, padding included
    body: bytes
    legacy: bool = False

    @property
    def header(self) -> MessageHeader:
        return parse_message(self.metadata)

    @property
    def buffers(self) -> tuple[BufferSpec, ...]:
        """The buffer specs of a record or dictionary batch."""
        batch = self.header.batch
        assert batch is not None, "not a batch message"
        return batch.buffers

    def encode(self) -> bytes:
        return frame(self.metadata, self.body, legacy=self.legacy)


def frame(metadata: bytes, body: bytes = b"", *, legacy: bool = False) -> bytes:
    """Frame one message; ``metadata`` is written as is (no padding added)."""
    prefix = b"" if legacy else CONTINUATION
    return prefix + struct.pack("<i", len(metadata)) + metadata + body


def split_stream(data: bytes) -> tuple[list[Frame], bytes]:
    """Split a well-formed stream into its messages and what follows them."""
    frames, pos = [], 0
    while pos < len(data):
        legacy = data[pos : pos + 4] != CONTINUATION
        pos += 0 if legacy else 4
        (length,) = struct.unpack_from("<i", data, pos)
        if length == 0:
            break
        metadata = data[pos + 4 : pos + 4 + length]
        body_start = pos + 4 + length
        body_end = body_start + parse_message(metadata).body_length
        frames.append(Frame(metadata, data[body_start:body_end], legacy))
        pos = body_end
    return frames, data[len(join(frames)) :]


def join(frames: Iterable[Frame], end: bytes = b"") -> bytes:
    return b"".join(f.encode() for f in frames) + end


def write_stream(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch] = (), **options: Any
) -> bytes:
    """Write an IPC stream with ``pa.ipc.new_stream``."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def write_table(table: pa.Table, **options: Any) -> bytes:
    return write_stream(table.schema, table.to_batches(), **options)


# -- patching flatbuffers ------------------------------------------------------


def _root(metadata: bytes) -> _Table:
    buf = memoryview(metadata)
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _batch_table(metadata: bytes) -> _Table:
    header = _root(metadata).table(2)
    assert header is not None
    if parse_message(metadata).header_type == HeaderType.DICTIONARY_BATCH:
        header = header.table(1)
        assert header is not None
    return header


def _patch(metadata: bytes, loc: int | None, fmt: str, value: int) -> bytes:
    assert loc is not None, "field not present in this flatbuffer"
    out = bytearray(metadata)
    struct.pack_into(fmt, out, loc, value)
    return bytes(out)


def patch_message(metadata: bytes, field_name: str, value: int) -> bytes:
    """Set ``Message.version``, ``header_type`` or ``bodyLength``."""
    index, fmt = {"version": (0, "<h"), "header_type": (1, "<B"), "body_length": (3, "<q")}[
        field_name
    ]
    return _patch(metadata, _root(metadata)._field(index, struct.calcsize(fmt)), fmt, value)


def patch_batch(metadata: bytes, field_name: str, value: int) -> bytes:
    """Set a (record or dictionary) batch's ``length`` or compression ``codec``."""
    table = _batch_table(metadata)
    if field_name == "length":
        return _patch(metadata, table._field(0, 8), "<q", value)
    if field_name == "codec":
        compression = table.table(3)
        assert compression is not None
        return _patch(metadata, compression._field(0, 1), "<b", value)
    raise ValueError(field_name)


def patch_buffer_spec(
    metadata: bytes, index: int, *, offset: int | None = None, length: int | None = None
) -> bytes:
    """Rewrite the ``index``-th buffer's offset and/or length in a batch's metadata."""
    start, count = _batch_table(metadata).struct_vector(2, 16)
    assert index < count
    if offset is not None:
        metadata = _patch(metadata, start + 16 * index, "<q", offset)
    if length is not None:
        metadata = _patch(metadata, start + 16 * index + 8, "<q", length)
    return metadata


def edit_buffer(frame: Frame, index: int, edit: Callable[[bytearray], None]) -> Frame:
    """The frame with the ``index``-th body buffer changed in place by ``edit``."""
    spec = frame.buffers[index]
    body = bytearray(frame.body)
    part = bytearray(body[spec.offset : spec.offset + spec.length])
    edit(part)
    assert len(part) == spec.length
    body[spec.offset : spec.offset + spec.length] = part
    return replace(frame, body=bytes(body))
