"""Every decoder limit: 413 ``limit_exceeded``, raised before the oversized thing is read.

Each test runs three ways (the ``mode`` fixture): whole, byte by byte, trailing bytes.
"""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest
from ipc_testing import (
    CONTINUATION,
    Frame,
    decode,
    golden_bytes,
    join,
    patch_batch,
    patch_buffer_spec,
    patch_message,
    split_stream,
    write_stream,
)

from arrowport.protocol import GrpcStatus, RemoteProtocolError
from arrowport.protocol._flatbuf import HeaderType


def _assert_limit(error: RemoteProtocolError) -> None:
    assert error.error == "limit_exceeded"
    assert error.http_status == 413
    assert error.grpc_status == GrpcStatus.RESOURCE_EXHAUSTED


def test_metadata_limit_from_the_prefix_alone(mode: str) -> None:
    """An over-limit metadata length is refused from the 8-byte prefix, before any metadata."""
    prefix = CONTINUATION + struct.pack("<i", 1032)
    decoded = decode(prefix, mode, eof=False, max_metadata_size=1024)
    _assert_limit(decoded.raised())
    assert decoded.events == []
    if mode == "bytewise":
        assert decoded.fed == 8  # raised on the byte that completed the prefix


def test_metadata_limit_at_exactly_the_limit(mode: str) -> None:
    """A metadata length equal to the limit is accepted (the limit is inclusive)."""
    frames, _ = split_stream(golden_bytes("dictionary"))
    largest = max(len(f.metadata) for f in frames)
    decode(golden_bytes("dictionary"), mode, max_metadata_size=largest).ok()
    _assert_limit(decode(golden_bytes("dictionary"), mode, max_metadata_size=largest - 1).raised())


def test_metadata_limit_on_a_later_message(mode: str) -> None:
    """A batch whose metadata is over the limit fails after the schema was accepted."""
    data = golden_bytes("primitives")
    frames, _ = split_stream(data)
    limit = len(frames[1].metadata) - 8
    assert len(frames[0].metadata) > limit  # the schema itself is bigger...
    decoded = decode(data, mode, max_metadata_size=limit)
    _assert_limit(decoded.raised())  # ...so the very first message fails
    assert decoded.events == []


def test_body_limit_before_the_body_arrives(mode: str) -> None:
    """An over-limit bodyLength is refused once the metadata is in, before the body."""
    frames, _ = split_stream(golden_bytes("primitives"))
    big = max(frames[1:], key=lambda f: len(f.body))
    head = frames[0].encode() + CONTINUATION + struct.pack("<i", len(big.metadata)) + big.metadata
    decoded = decode(head, mode, eof=False, max_body_size=len(big.body) - 1)
    _assert_limit(decoded.raised())
    assert decoded.kinds == ["SchemaReceived"]
    if mode == "bytewise":
        assert decoded.fed == len(head)


def test_body_limit_on_a_whole_stream(mode: str) -> None:
    """Batches under the body limit arrive; the first one over it stops the stream."""
    data = golden_bytes("primitives")
    frames, _ = split_stream(data)
    sizes = [len(f.body) for f in frames[1:]]
    limit = max(sizes) - 1
    decoded = decode(data, mode, max_body_size=limit)
    _assert_limit(decoded.raised())
    assert len(decoded.batches) == sizes.index(max(sizes))
    decode(data, mode, max_body_size=max(sizes)).ok()


def _zeros_stream(rows: int, codec: str) -> bytes:
    zeros = pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(bytes(8 * rows))])
    schema = pa.schema([pa.field("z", pa.int64())])
    return write_stream(schema, [pa.record_batch([zeros], schema=schema)], compression=codec)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_decompressed_limit(codec: str, mode: str) -> None:
    """A small, highly compressible body that would inflate past the limit is refused."""
    rows = 1 << 20  # 8 MiB of zeros
    data = _zeros_stream(rows, codec)
    assert len(data) < 64 * 1024
    decoded = decode(data, mode, max_decompressed_size=1 << 20)
    _assert_limit(decoded.raised())
    assert "decompress" in decoded.raised().detail
    assert decoded.kinds == ["SchemaReceived"]
    ok = decode(data, mode, max_decompressed_size=8 * rows).ok()
    assert ok.received[0].decoded_bytes == 8 * rows


def test_decompressed_limit_trusts_no_lying_prefix(mode: str) -> None:
    """A compressed buffer claiming a small size but inflating to more is a bad batch."""
    data = _zeros_stream(1 << 16, "zstd")
    frames, end = split_stream(data)
    batch = frames[1]
    data_index = 1  # validity, data
    lying = batch.buffers[data_index]
    body = bytearray(batch.body)
    struct.pack_into("<q", body, lying.offset, 1024)
    crafted = [frames[0], Frame(batch.metadata, bytes(body))]
    decoded = decode(b"".join(f.encode() for f in crafted) + end, mode)
    error = decoded.raised()
    assert error.error == "invalid_batch" and error.http_status == 400


def _nested(depth: int, kind: str) -> pa.DataType:
    """A type ``depth`` levels deep: a flat type is 1, a list adds 1, a map adds 2
    (it is a list of key/value structs), as does a large_list of structs."""
    data_type: pa.DataType = pa.int32()
    level = 1
    while level < depth:
        if kind == "list" or depth - level == 1:
            data_type, level = pa.list_(data_type), level + 1
        elif kind == "struct":
            data_type, level = pa.struct([pa.field("f", data_type)]), level + 1
        elif kind == "map":
            data_type, level = pa.map_(pa.string(), data_type), level + 2
        else:
            data_type, level = pa.large_list(pa.struct([pa.field("g", data_type)])), level + 2
    return data_type


@pytest.mark.parametrize("kind", ["list", "struct", "map", "mixed"])
def test_nesting_depth_limit(kind: str, mode: str) -> None:
    """Types deeper than max_nesting_depth are refused at the schema; equal depth passes."""
    for depth, fails in ((4, False), (5, True)):
        data_type = _nested(depth, kind)
        schema = pa.schema([pa.field("flat", pa.int8()), pa.field("deep", data_type)])
        decoded = decode(write_stream(schema), mode, max_nesting_depth=4)
        if fails:
            _assert_limit(decoded.raised())
            assert "'deep'" in decoded.raised().detail
            assert decoded.events == []
        else:
            assert decoded.ok().schema == schema


def test_nesting_depth_counts_through_dictionaries_and_extensions(mode: str) -> None:
    """Dictionary and extension types do not hide the nesting of their values."""
    deep = _nested(5, "list")
    tensor = pa.fixed_shape_tensor(pa.int32(), [2, 2])  # extension over fixed_size_list
    schema = pa.schema([pa.field("d", pa.dictionary(pa.int32(), deep)), pa.field("t", tensor)])
    _assert_limit(decode(write_stream(schema), mode, max_nesting_depth=4).raised())
    shallow = pa.schema([pa.field("t", tensor)])
    _assert_limit(decode(write_stream(shallow), mode, max_nesting_depth=1).raised())
    assert decode(write_stream(shallow), mode, max_nesting_depth=2).ok()


def test_too_many_columns(mode: str) -> None:
    """A schema with more than max_columns columns is refused; exactly max_columns passes."""
    schema = pa.schema([pa.field(f"c{i}", pa.int8()) for i in range(20)])
    data = write_stream(schema)
    _assert_limit(decode(data, mode, max_columns=19).raised())
    assert len(decode(data, mode, max_columns=20).ok().schema) == 20


def test_nested_fields_count_towards_max_columns(mode: str) -> None:
    """One struct column with 50 children is 51 fields against max_columns."""
    wide = pa.struct([pa.field(f"c{i}", pa.int8()) for i in range(50)])
    data = write_stream(pa.schema([pa.field("s", wide)]))
    _assert_limit(decode(data, mode, max_columns=50).raised())
    assert len(decode(data, mode, max_columns=51).ok().schema) == 1


def test_dictionary_growth_limit(mode: str) -> None:
    """Dictionary bodies add up; the message that takes them over the limit is refused."""
    data = golden_bytes("dictionary_delta")
    frames, _ = split_stream(data)
    total = sum(  # each counts as its framed metadata plus its body
        8 + (len(f.metadata) + 7) // 8 * 8 + len(f.body)
        for f in frames
        if f.header.header_type == HeaderType.DICTIONARY_BATCH
    )
    decoded = decode(data, mode, max_dictionary_bytes=total - 1)
    error = decoded.raised()
    _assert_limit(error)
    assert "dictionar" in error.detail
    assert 0 < len(decoded.batches) < 4  # the last delta comes after some batches
    ok = decode(data, mode, max_dictionary_bytes=total).ok()
    assert ok.decoder.statistics()["dictionary_bytes"] == total


def test_batch_rows_limit(mode: str) -> None:
    """A batch with more rows than max_batch_rows is refused from its metadata."""
    data = golden_bytes("primitives")
    decoded = decode(data, mode, max_batch_rows=22)
    _assert_limit(decoded.raised())
    assert [b.num_rows for b in decoded.batches] == [10]
    decode(data, mode, max_batch_rows=23).ok()


def test_limit_error_is_sticky(mode: str) -> None:
    """After a limit error every next_event raises again, even after EOF."""
    decoded = decode(golden_bytes("primitives"), mode, eof=False, max_columns=3)
    _assert_limit(decoded.raised())
    decoded.decoder.receive_data(b"")
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            decoded.decoder.next_event()


def _compressed_dictionary_deltas() -> bytes:
    """Deltas of long, repetitive strings: tiny bodies that inflate ~100x."""
    schema = pa.schema([pa.field("w", pa.dictionary(pa.int32(), pa.string()))])
    values: list[str] = []
    batches = []
    for i in range(4):
        values.append(chr(ord("a") + i) * 50_000)
        word = pa.DictionaryArray.from_arrays(pa.array([i], pa.int32()), pa.array(values))
        batches.append(pa.record_batch([word], schema=schema))
    return write_stream(schema, batches, compression="zstd", emit_dictionary_deltas=True)


def test_dictionary_growth_counts_decompressed_bytes(mode: str) -> None:
    """Compressed dictionaries count at their decompressed size against max_dictionary_bytes."""
    data = _compressed_dictionary_deltas()
    frames, _ = split_stream(data)
    dictionaries = [f for f in frames if f.header.header_type == HeaderType.DICTIONARY_BATCH]
    wire = sum(len(f.body) for f in dictionaries)
    assert wire < 4 * 1024  # 200 KB of strings compress to a few KB on the wire
    decoded = decode(data, mode, max_dictionary_bytes=64 * 1024)
    _assert_limit(decoded.raised())
    assert len(decoded.batches) == 1  # 50 KB fits, 100 KB does not
    ok = decode(data, mode, max_dictionary_bytes=1024 * 1024).ok()
    assert 200_000 <= ok.decoder.statistics()["dictionary_bytes"] < 1024 * 1024


def test_empty_dictionary_deltas_are_bounded(mode: str) -> None:
    """A flood of empty dictionary deltas (no batch to consume them) hits the dictionary limit."""
    data = golden_bytes("dictionary_delta")
    frames, _ = split_stream(data)
    delta = next(f for f in frames if f.header.is_delta)
    metadata = patch_message(patch_batch(delta.metadata, "length", 0), "body_length", 0)
    for index in range(len(delta.buffers)):
        metadata = patch_buffer_spec(metadata, index, offset=0, length=0)
    empty = Frame(metadata, b"")
    assert empty.header.body_length == 0
    flood = join([*frames[:5], *[empty] * 200])  # schema, 3 dictionaries, a batch, deltas
    decoded = decode(flood, mode, max_dictionary_bytes=16 * 1024)
    _assert_limit(decoded.raised())
    assert len(decoded.batches) == 1


def _metadata_schema(where: str, size: int) -> pa.Schema:
    """A schema with ``size`` bytes of metadata (key + value) at ``where``."""
    meta = {b"k": b"v" * (size - 1)}
    deep = pa.field("leaf", pa.int32(), metadata=meta if where == "deep" else None)
    inner = pa.struct([pa.field("s", pa.map_(pa.string(), pa.list_(deep)))])
    fields = [
        pa.field("top", pa.int8(), metadata=meta if where == "field" else None),
        pa.field("nested", inner),
    ]
    return pa.schema(fields, metadata=meta if where == "schema" else None)


@pytest.mark.parametrize("where", ["schema", "field", "deep"])
def test_schema_metadata_limit_counts_every_field_at_any_depth(where: str, mode: str) -> None:
    """Schema metadata, a field's, or a field's nested four levels down: over
    max_schema_metadata_bytes is 413 naming the limit; exactly at it passes."""
    decoded = decode(
        write_stream(_metadata_schema(where, 1001)), mode, max_schema_metadata_bytes=1000
    )
    _assert_limit(decoded.raised())
    assert "limits.max_schema_metadata_bytes (1000 bytes)" in decoded.raised().detail
    assert decoded.events == []
    at_limit = _metadata_schema(where, 1000)
    assert decode(write_stream(at_limit), mode, max_schema_metadata_bytes=1000).ok().schema == (
        at_limit
    )


def test_schema_metadata_limit_adds_up_many_small_entries(mode: str) -> None:
    """Many fields with a little metadata each add up to the limit like one big entry."""
    fields = [pa.field(f"c{i}", pa.int8(), metadata={b"k": b"v" * 99}) for i in range(11)]
    decoded = decode(write_stream(pa.schema(fields)), mode, max_schema_metadata_bytes=1000)
    _assert_limit(decoded.raised())
