"""Malformed input: every bad stream raises a specific ProtocolError, nothing else.

Each test runs three ways (the ``mode`` fixture): whole, byte by byte, trailing bytes.
"""

from __future__ import annotations

import io
import pickle
import random
import struct

import pyarrow as pa
import pytest
from ipc_testing import (
    CONTINUATION,
    EOS,
    Frame,
    decode,
    edit_buffer,
    frame,
    golden_bytes,
    join,
    patch_batch,
    patch_buffer_spec,
    patch_message,
    split_stream,
    write_stream,
)

from arrowport.protocol import (
    GrpcStatus,
    ProtocolError,
    RemoteProtocolError,
    State,
)
from arrowport.protocol._flatbuf import HeaderType


def _assert_invalid(error: RemoteProtocolError, code: str) -> None:
    assert isinstance(error, ProtocolError)
    assert (error.error, error.http_status) == (code, 400), error.detail
    assert error.grpc_status == GrpcStatus.INVALID_ARGUMENT


def test_empty_input(mode: str) -> None:
    """No bytes at all is 'empty_stream' (400); the trailer alone is not a stream either."""
    decoded = decode(b"", mode)
    if mode == "trailing":
        _assert_invalid(decoded.raised(), "invalid_ipc_framing")
    else:
        _assert_invalid(decoded.raised(), "empty_stream")
    assert decoded.events == []


@pytest.mark.parametrize("end", [EOS, b"\x00\x00\x00\x00"], ids=["eos", "legacy_eos"])
def test_end_marker_without_schema(end: bytes, mode: str) -> None:
    """An end-of-stream marker before any schema is 'empty_stream'."""
    _assert_invalid(decode(end, mode).raised(), "empty_stream")


def _arrow_file() -> bytes:
    sink = io.BytesIO()
    schema = pa.schema([pa.field("a", pa.int64())])
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([pa.array([1, 2])], schema=schema))
    return sink.getvalue()


GARBAGE = {
    "text": b"hello, this is not an Arrow stream at all\n",
    "json": b'{"rows": [{"a": 1}, {"a": 2}]}',
    "csv": b"a,b,c\n1,2,3\n4,5,6\n",
    "parquet_magic": b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00PAR1",
    "random": random.Random(1).randbytes(300),
    "framed_random": CONTINUATION + struct.pack("<i", 64) + random.Random(2).randbytes(64),
    "zero_flatbuffer": CONTINUATION + struct.pack("<i", 16) + bytes(16),
    "short_flatbuffer": CONTINUATION + struct.pack("<i", 3) + b"\x01\x02\x03",
    "root_out_of_range": CONTINUATION + struct.pack("<i", 8) + b"\xf0\x00\x00\x00" + bytes(4),
    "negative_length": CONTINUATION + struct.pack("<i", -8),
    "arrow_file": _arrow_file(),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_is_a_400(name: str, mode: str) -> None:
    """Bytes that are not an IPC stream raise a 400 ProtocolError with no events."""
    decoded = decode(GARBAGE[name], mode)
    error = decoded.raised()
    assert error.http_status == 400 and error.error != "limit_exceeded", error.detail
    assert error.error in {"invalid_ipc_framing", "invalid_ipc_metadata", "truncated_stream"}
    assert decoded.events == []
    if name == "arrow_file":
        assert "file format" in error.detail


def _small_stream() -> bytes:
    """A few hundred bytes with every message kind: schema, dictionary, delta, batches."""
    schema = pa.schema(
        [pa.field("i", pa.int64()), pa.field("w", pa.dictionary(pa.int32(), pa.string()))]
    )

    def batch(words: list[str], indices: list[int]) -> pa.RecordBatch:
        word = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(words))
        return pa.record_batch([pa.array(indices, pa.int64()), word], schema=schema)

    batches = [batch(["a", "b"], [0, 1]), batch(["a", "b", "c"], [2, 0])]
    return write_stream(schema, batches, emit_dictionary_deltas=True)


def test_truncation_at_every_cut_point(mode: str) -> None:
    """Cut anywhere: a message boundary ends cleanly, anywhere else is 'truncated_stream'."""
    data = _small_stream()
    frames, end = split_stream(data)
    assert end == EOS and len(frames) == 5
    boundaries = {len(join(frames[:k])): k for k in range(1, len(frames) + 1)}
    for cut in range(len(data)):
        decoded = decode(data[:cut], mode)
        if mode == "trailing":
            # the trailer then reads as more stream: it may fail anyhow, but only as a
            # ProtocolError (decode() lets any other exception through)
            assert decoded.error is not None or decoded.ended is not None
        elif cut == 0:
            _assert_invalid(decoded.raised(), "empty_stream")
        elif cut in boundaries:
            assert decoded.ok().ended.eos_marker is False  # type: ignore[union-attr]
            emitted = frames[: boundaries[cut]]
            batches = sum(f.header.header_type == HeaderType.RECORD_BATCH for f in emitted)
            assert len(decoded.batches) == batches
        else:
            _assert_invalid(decoded.raised(), "truncated_stream")
            assert "truncated" in decoded.raised().detail


def test_second_schema_message(mode: str) -> None:
    """A second Schema message in one stream is refused after the first is reported."""
    frames, end = split_stream(golden_bytes("primitives"))
    decoded = decode(join([frames[0], frames[0], *frames[1:]], end), mode)
    _assert_invalid(decoded.raised(), "invalid_ipc_framing")
    assert decoded.kinds == ["SchemaReceived"]


@pytest.mark.parametrize("first", ["record_batch", "dictionary_batch"])
def test_batch_before_schema(first: str, mode: str) -> None:
    """A stream must open with its Schema: a batch or dictionary first is refused."""
    frames, end = split_stream(golden_bytes("dictionary"))
    kind = HeaderType[first.upper()]
    rest = [f for f in frames[1:] if f.header.header_type == kind]
    decoded = decode(join(rest, end), mode)
    _assert_invalid(decoded.raised(), "invalid_ipc_framing")
    assert decoded.events == []


def test_framing_change_mid_stream(mode: str) -> None:
    """A legacy prefix after continuation-framed messages is refused, and vice versa."""
    frames, end = split_stream(golden_bytes("dictionary"))
    mixed = join([frames[0], Frame(frames[1].metadata, frames[1].body, legacy=True)], end)
    _assert_invalid(decode(mixed, mode).raised(), "invalid_ipc_framing")
    legacy, end = split_stream(golden_bytes("legacy_format"))
    mixed = join([legacy[0], Frame(legacy[1].metadata, legacy[1].body)], end)
    _assert_invalid(decode(mixed, mode).raised(), "invalid_ipc_framing")


def _string_dictionary_stream() -> tuple[list[Frame], bytes]:
    schema = pa.schema(
        [pa.field("s", pa.string()), pa.field("d", pa.dictionary(pa.int8(), pa.string()))]
    )
    d = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array(["x", "y"]))
    batch = pa.record_batch([pa.array(["a", "bc", "def"]), d], schema=schema)
    return split_stream(write_stream(schema, [batch]))


def _set_i32(index: int, value: int) -> object:
    return lambda part: struct.pack_into("<i", part, 4 * index, value)


# buffers of the record batch: s validity, s offsets, s data, d validity, d indices
BAD_BATCHES = {
    "offset_past_data": (2, 1, _set_i32(3, 1000)),
    "offsets_decreasing": (2, 1, _set_i32(2, 0)),
    "negative_offset": (2, 1, _set_i32(1, -4)),
    "invalid_utf8": (2, 2, lambda part: part.__setitem__(slice(0, 3), b"\xff\xfe\xfd")),
    "dictionary_index_out_of_range": (2, 4, lambda part: part.__setitem__(1, 7)),
    "negative_dictionary_index": (2, 4, lambda part: part.__setitem__(0, 0x80)),
    # buffers of the dictionary batch: validity, offsets, data
    "dictionary_invalid_utf8": (1, 2, lambda part: part.__setitem__(0, 0xFF)),
    "dictionary_offset_past_data": (1, 1, _set_i32(2, 99)),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_invalid_batch_content(case: str, mode: str) -> None:
    """A batch that fails validate(full=True) is 'invalid_batch', never emitted."""
    frames, end = _string_dictionary_stream()
    frame_index, buffer_index, edit = BAD_BATCHES[case]
    frames[frame_index] = edit_buffer(frames[frame_index], buffer_index, edit)  # type: ignore[arg-type]
    decoded = decode(join(frames, end), mode)
    _assert_invalid(decoded.raised(), "invalid_batch")
    assert decoded.kinds == ["SchemaReceived"]


def test_unedited_string_dictionary_stream_is_valid(mode: str) -> None:
    """The stream the invalid-content cases start from decodes (so edits cause the errors)."""
    frames, end = _string_dictionary_stream()
    decoded = decode(join(frames, end), mode).ok()
    assert decoded.batches[0]["d"].to_pylist() == ["x", "y", "x"]


def _patched(index: int, patch: object) -> bytes:
    frames, end = split_stream(golden_bytes("compressed_zstd"))
    f = frames[index]
    frames[index] = Frame(patch(f.metadata), f.body)  # type: ignore[operator]
    return join(frames, end)


BAD_METADATA = {
    "unsupported_version": (
        0,
        lambda md: patch_message(md, "version", 2),
        "unsupported_ipc_version",
    ),
    "tensor_message": (2, lambda md: patch_message(md, "header_type", 4), "unsupported_message"),
    "unknown_message_type": (
        2,
        lambda md: patch_message(md, "header_type", 77),
        "unsupported_message",
    ),
    "none_message_type": (2, lambda md: patch_message(md, "header_type", 0), "unsupported_message"),
    "schema_is_a_tensor": (
        0,
        lambda md: patch_message(md, "header_type", 4),
        "invalid_ipc_framing",
    ),
    "negative_body_length": (
        2,
        lambda md: patch_message(md, "body_length", -1),
        "invalid_ipc_metadata",
    ),
    "buffer_outside_body": (
        2,
        lambda md: patch_buffer_spec(md, 1, offset=1 << 20),
        "invalid_ipc_metadata",
    ),
    "negative_buffer_length": (
        2,
        lambda md: patch_buffer_spec(md, 1, length=-1),
        "invalid_ipc_metadata",
    ),
    "negative_batch_length": (2, lambda md: patch_batch(md, "length", -1), "invalid_ipc_metadata"),
    "unknown_codec": (2, lambda md: patch_batch(md, "codec", 9), "unsupported_compression"),
    "compressed_buffer_too_short": (
        2,
        lambda md: patch_buffer_spec(md, 1, length=4),
        "invalid_compression",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_bad_message_metadata(case: str, mode: str) -> None:
    """Bad flatbuffer fields get a specific 400 error code, checked before pyarrow reads them."""
    index, patch, code = BAD_METADATA[case]
    decoded = decode(_patched(index, patch), mode)
    _assert_invalid(decoded.raised(), code)


def test_negative_uncompressed_length(mode: str) -> None:
    """A compressed buffer whose uncompressed-length prefix is negative (not -1) is refused."""
    frames, end = split_stream(golden_bytes("compressed_zstd"))
    batch = frames[2]
    spec = batch.buffers[1]
    body = bytearray(batch.body)
    struct.pack_into("<q", body, spec.offset, -5)
    frames[2] = Frame(batch.metadata, bytes(body))
    _assert_invalid(decode(join(frames, end), mode).raised(), "invalid_compression")


def test_body_length_too_short_for_buffers(mode: str) -> None:
    """A bodyLength smaller than the buffers it must hold is 'invalid_ipc_metadata'."""
    frames, end = split_stream(golden_bytes("primitives"))
    f = frames[1]
    short = len(f.body) - 64
    frames[1] = Frame(patch_message(f.metadata, "body_length", short), f.body[:short])
    _assert_invalid(decode(join(frames, end), mode).raised(), "invalid_ipc_metadata")


class _Unpickled(Exception):
    pass


def _explode() -> None:
    raise _Unpickled("the decoder unpickled extension metadata")


class _Bomb:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_explode, ())


def test_extension_metadata_is_never_unpickled(mode: str) -> None:
    """A field claiming the old pickle-based extension type stays plain storage plus metadata."""
    metadata = {
        b"ARROW:extension:name": b"arrow.py_extension_type",
        b"ARROW:extension:metadata": pickle.dumps(_Bomb()),
    }
    schema = pa.schema([pa.field("x", pa.int64(), metadata=metadata)])
    data = write_stream(schema, [pa.record_batch([pa.array([1, 2])], schema=schema)])
    decoded = decode(data, mode).ok()
    field = decoded.schema.field("x")
    assert field.type == pa.int64()
    assert field.metadata[b"ARROW:extension:name"] == b"arrow.py_extension_type"


class _StrictType(pa.ExtensionType):  # type: ignore[misc]
    """A Python extension type whose deserializer raises a non-Arrow exception."""

    def __init__(self) -> None:
        super().__init__(pa.int64(), "arrowport.test.strict")

    def __arrow_ext_serialize__(self) -> bytes:
        return b"ok"

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> object:
        if serialized != b"ok":
            raise RuntimeError("bad metadata for arrowport.test.strict")
        return cls()


@pytest.fixture
def strict_extension() -> object:
    pa.register_extension_type(_StrictType())
    yield
    pa.unregister_extension_type("arrowport.test.strict")


@pytest.mark.usefixtures("strict_extension")
def test_extension_deserializer_errors_become_protocol_errors(mode: str) -> None:
    """Whatever a registered extension type's deserializer raises is 'invalid_schema' (400)."""
    metadata = {
        b"ARROW:extension:name": b"arrowport.test.strict",
        b"ARROW:extension:metadata": b"not ok",
    }
    schema = pa.schema([pa.field("x", pa.int64(), metadata=metadata)])
    data = write_stream(schema, [pa.record_batch([pa.array([1])], schema=schema)])
    _assert_invalid(decode(data, mode).raised(), "invalid_schema")
    good = pa.schema([pa.field("x", _StrictType())])
    storage = pa.ExtensionArray.from_storage(_StrictType(), pa.array([1, 2]))
    decoded = decode(write_stream(good, [pa.record_batch([storage], schema=good)]), mode).ok()
    assert decoded.schema.field("x").type == _StrictType()


def test_errors_are_sticky_and_eof_after_error(mode: str) -> None:
    """After an error the decoder stays in ERROR: more data and EOF change nothing."""
    decoded = decode(GARBAGE["json"], mode, eof=False)
    decoded.raised()
    decoder = decoded.decoder
    decoder.receive_data(golden_bytes("schema_only"))
    decoder.receive_data(b"")
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as info:
            decoder.next_event()
        assert info.value.http_status == 400
        assert decoder.state is State.ERROR


@pytest.mark.parametrize("cut", range(1, 8))
def test_eof_inside_the_first_prefix(cut: int, mode: str) -> None:
    """EOF inside the first prefix is 'truncated_stream' (with more bytes, some ProtocolError)."""
    decoded = decode(EOS[:cut], mode)
    if mode == "trailing":
        assert isinstance(decoded.raised(), ProtocolError)
    else:
        _assert_invalid(decoded.raised(), "truncated_stream")


def test_frame_helper_matches_pyarrow() -> None:
    """The test helper frames messages byte-for-byte as pyarrow does."""
    data = golden_bytes("dictionary")
    frames, end = split_stream(data)
    assert join(frames, end) == data
    assert frame(frames[0].metadata) == data[: 8 + len(frames[0].metadata)]
