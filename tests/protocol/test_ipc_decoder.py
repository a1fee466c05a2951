"""The IPC stream decoder on well-formed input: goldens, framing variants, zero-copy.

Every test takes the ``mode`` fixture and so runs three ways: the whole buffer
at once, one byte at a time, and with trailing bytes after the stream.
"""

from __future__ import annotations

import struct
from typing import Any

import pyarrow as pa
import pytest
from ipc_testing import (
    EOS,
    GOLDENS,
    TRAILER,
    Decoded,
    Frame,
    assert_tables_equal,
    chunks_for,
    decode,
    decode_chunks,
    golden_bytes,
    join,
    split_stream,
    write_stream,
)

from arrowport.protocol import (
    NEED_DATA,
    IPCStreamDecoder,
    SchemaReceived,
    State,
    StreamEnded,
)
from arrowport.protocol._flatbuf import HeaderType, parse_message


def _expect_clean_end(decoded: Decoded, golden: Any, mode: str) -> None:
    """Shared end-of-stream checks for a golden decoded in ``mode``."""
    if golden.eos_marker:
        decoded.ok()
        assert decoded.ended == StreamEnded(eos_marker=True)
        trailing = TRAILER if mode == "trailing" else b""
        assert decoded.decoder.trailing_data == (trailing, True)
    elif mode == "trailing":
        # Without an end-of-stream marker, bytes after the last message are
        # read as the next message: they cannot be told apart from one.
        assert decoded.raised().error == "invalid_ipc_framing"
    else:
        decoded.ok()
        assert decoded.ended == StreamEnded(eos_marker=False)


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden_decodes_to_expected_table(name: str, mode: str) -> None:
    """Every golden stream decodes to exactly the table its builders made."""
    golden = GOLDENS[name]
    decoded = decode(golden_bytes(name), mode)
    _expect_clean_end(decoded, golden, mode)
    assert isinstance(decoded.events[0], SchemaReceived)
    assert decoded.schema.equals(golden.schema, check_metadata=True)
    expected = golden.batches()
    assert len(decoded.batches) == len(expected)
    for got, want in zip(decoded.batches, expected, strict=True):
        assert got.equals(want)
    assert_tables_equal(decoded.table, golden.expected_table())
    assert decoded.decoder.schema == golden.schema


@pytest.mark.parametrize("name", sorted(n for n in GOLDENS if "dictionary" in n or "legacy" in n))
def test_dictionary_columns_decode_to_their_values(name: str, mode: str) -> None:
    """Dictionary columns carry the dictionary in force for each batch (deltas, replacements)."""
    golden = GOLDENS[name]
    decoded = decode(golden_bytes(name), mode).ok()
    for got, want in zip(decoded.batches, golden.batches(), strict=True):
        for column in ("word", "code"):
            assert got[column].dictionary.equals(want[column].dictionary)
            assert got[column].dictionary_decode().equals(want[column].dictionary_decode())
        assert got["tags"].to_pylist() == want["tags"].to_pylist()


def test_delta_golden_really_has_delta_messages(mode: str) -> None:
    """The delta golden carries isDelta dictionary messages, and they decode."""
    frames, _ = split_stream(golden_bytes("dictionary_delta"))
    deltas = [f for f in frames if f.header.is_delta]
    assert deltas and all(f.header.header_type == HeaderType.DICTIONARY_BATCH for f in deltas)
    decoded = decode(golden_bytes("dictionary_delta"), mode).ok()
    sizes = [len(b["word"].dictionary) for b in decoded.batches]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_wire_bytes_account_for_every_byte(mode: str) -> None:
    """wire_bytes of the schema, every batch and the EOS marker add up to the stream."""
    data = golden_bytes("dictionary_delta")
    frames, end = split_stream(data)
    decoded = decode(data, mode).ok()
    schema_bytes = len(frames[0].encode())
    assert sum(e.wire_bytes for e in decoded.received) == len(data) - schema_bytes - len(end)
    stats = decoded.decoder.statistics()
    assert stats["wire_bytes"] == len(data)
    assert stats["batches"] == len(decoded.batches)
    assert stats["rows"] == sum(b.num_rows for b in decoded.batches)
    assert stats["messages"] == len(frames)


def test_decoded_bytes_count_decompressed_sizes(mode: str) -> None:
    """decoded_bytes is the decompressed size: larger than the wire for compressible data."""
    decoded = decode(golden_bytes("compressed_zstd"), mode).ok()
    full = [e for e in decoded.received if e.batch.num_rows]
    assert full and all(e.decoded_bytes > e.wire_bytes for e in full)
    plain = decode(golden_bytes("compressed_lz4"), mode).ok()
    assert [e.decoded_bytes for e in plain.received] == [e.decoded_bytes for e in decoded.received]


def test_schema_only_stream(mode: str) -> None:
    """A stream with a schema and no batches yields SchemaReceived then StreamEnded."""
    decoded = decode(golden_bytes("schema_only"), mode).ok()
    assert decoded.kinds == ["SchemaReceived", "StreamEnded"]
    assert decoded.ended == StreamEnded(eos_marker=True)


def test_missing_eos_marker_with_clean_eof(mode: str) -> None:
    """EOF on a message boundary without the EOS marker ends the stream (eos_marker=False)."""
    data = golden_bytes("no_eos")
    decoded = decode(data, mode)
    assert len(decoded.batches) == 2  # every batch arrives, trailing bytes or not
    if mode == "trailing":
        error = decoded.raised()
        assert error.error == "invalid_ipc_framing" and error.http_status == 400
    else:
        assert decoded.ok().ended == StreamEnded(eos_marker=False)


def test_schema_then_clean_eof(mode: str) -> None:
    """A schema message alone, then EOF, is a complete (empty) stream without EOS."""
    frames, _ = split_stream(golden_bytes("primitives"))
    decoded = decode(frames[0].encode(), mode)
    assert isinstance(decoded.events[0], SchemaReceived)
    if mode == "trailing":
        assert decoded.raised().error == "invalid_ipc_framing"
    else:
        assert decoded.ok().kinds == ["SchemaReceived", "StreamEnded"]


def test_no_eof_means_no_stream_end(mode: str) -> None:
    """Without EOF or the EOS marker the decoder waits: NEED_DATA, never StreamEnded."""
    decoded = decode(golden_bytes("no_eos"), mode, eof=False)
    assert len(decoded.batches) == 2
    if mode == "trailing":  # the trailer is no message: refused without waiting for EOF
        assert decoded.raised().error == "invalid_ipc_framing"
    else:
        assert decoded.error is None and decoded.ended is None
        assert decoded.decoder.next_event() is NEED_DATA


def test_legacy_framing(mode: str) -> None:
    """Pre-0.15 framing (no continuation marker) decodes and is reported as legacy."""
    decoded = decode(golden_bytes("legacy_format"), mode).ok()
    assert decoded.decoder.legacy_format is True
    assert_tables_equal(decoded.table, GOLDENS["legacy_format"].expected_table())
    modern = decode(golden_bytes("dictionary"), mode).ok()
    assert modern.decoder.legacy_format is False


def test_legacy_golden_has_unaligned_metadata_lengths() -> None:
    """The legacy golden's metadata lengths are not multiples of 8 (only prefix+metadata are)."""
    frames, end = split_stream(golden_bytes("legacy_format"))
    assert all(f.legacy for f in frames) and end == b"\x00\x00\x00\x00"
    assert any(len(f.metadata) % 8 for f in frames)


def _flatbuffer_ok(metadata: bytes, body: bytes) -> bool:
    try:
        parse_message(metadata)
        pa.ipc.read_message(pa.py_buffer(Frame(metadata, body).encode()))
    except Exception:
        return False
    return True


def _misalign(frame: Frame, extra: int) -> Frame:
    """The frame re-framed with ``extra`` (1..7) bytes after its flatbuffer.

    pyarrow's flatbuffers already end on an 8-byte boundary, and their last
    bytes are data, so nothing can be stripped; appending bytes that the
    flatbuffer does not reference gives the same unaligned metadata length.
    """
    assert 0 < extra < 8
    return Frame(frame.metadata + b"\xab" * extra, frame.body)


@pytest.mark.parametrize("name", ["primitives", "dictionary_delta", "compressed_lz4", "nested"])
def test_metadata_not_8_byte_aligned(name: str, mode: str) -> None:
    """Metadata lengths that are not multiples of 8 (unaligned bodies on the wire) decode."""
    frames, end = split_stream(golden_bytes(name))
    crafted = [_misalign(f, 1 + i % 7) for i, f in enumerate(frames)]
    assert all(len(f.metadata) % 8 for f in crafted)
    assert all(_flatbuffer_ok(f.metadata, f.body) for f in crafted)
    decoded = decode(join(crafted, end), mode).ok()
    assert_tables_equal(decoded.table, GOLDENS[name].expected_table())


@pytest.mark.parametrize("strip", [1, 3, 4])
def test_metadata_with_padding_stripped(strip: int, mode: str) -> None:
    """Legacy messages whose flatbuffer padding is stripped (bodies unaligned) decode."""
    frames, end = split_stream(golden_bytes("legacy_format"))
    crafted = []
    for f in frames:
        assert f.metadata.endswith(bytes(strip))  # padding, not flatbuffer data
        metadata = f.metadata[:-strip]
        assert _flatbuffer_ok(metadata, f.body)
        crafted.append(Frame(metadata, f.body, legacy=True))
    assert all((4 + len(f.metadata)) % 8 for f in crafted)
    decoded = decode(join(crafted, end), mode).ok()
    assert_tables_equal(decoded.table, GOLDENS["legacy_format"].expected_table())


def _flat_buffers(batch: pa.RecordBatch) -> list[pa.Buffer | None]:
    out: list[pa.Buffer | None] = []
    for column in batch.columns:
        if column.type != pa.null():
            out.extend(column.buffers())
    return out


def test_uncompressed_batches_are_zero_copy(mode: str) -> None:
    """Each batch's buffers are slices of one message allocation, at the body offsets."""
    data = golden_bytes("primitives")
    frames, _ = split_stream(data)
    decoded = decode(data, mode).ok()
    for batch, frame in zip(decoded.batches, frames[1:], strict=True):
        specs = frame.buffers
        buffers = _flat_buffers(batch)
        assert len(buffers) == len(specs)
        i64 = batch.schema.get_field_index("i64")
        base = batch.column(i64).buffers()[1].address - specs[2 * i64 + 1].offset
        for buf, spec in zip(buffers, specs, strict=True):
            if buf is None:
                assert spec.length == 0
            else:
                assert buf.address - base == spec.offset
                assert buf.size <= spec.length


def test_int64_data_is_8_byte_aligned(mode: str) -> None:
    """Decoded fixed-width data is aligned even when the wire carried it unaligned."""
    frames, end = split_stream(golden_bytes("primitives"))
    data = join([_misalign(f, 5) for f in frames], end)
    for batch in decode(data, mode).ok().batches:
        assert batch["i64"].buffers()[1].address % 8 == 0


def test_events_after_stream_end_are_need_data(mode: str) -> None:
    """After StreamEnded the decoder stays DONE: NEED_DATA forever, bytes kept as trailing."""
    decoded = decode(golden_bytes("dictionary"), mode).ok()
    decoder = decoded.decoder
    assert decoder.state is State.DONE
    for _ in range(3):
        assert decoder.next_event() is NEED_DATA


def test_trailing_bytes_fed_later_stay_trailing(mode: str) -> None:
    """Bytes fed after the EOS marker (before EOF) are kept untouched in trailing_data."""
    data = golden_bytes("nested")
    decoded = decode(data, mode, eof=False)
    decoder = decoded.decoder
    assert decoded.ended == StreamEnded(eos_marker=True)
    decoder.receive_data(b"more")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_event() is NEED_DATA
    expected = (TRAILER if mode == "trailing" else b"") + b"more"
    assert decoder.trailing_data == (expected, True)


def test_eos_marker_in_one_stream_with_mixed_batches(mode: str) -> None:
    """Streams pyarrow writes from a table (chunked, sliced) decode to that table."""
    table = pa.concat_tables(
        [GOLDENS["compressed_zstd"].expected_table(), GOLDENS["empty_batches"].expected_table()]
    ).unify_dictionaries()
    data = write_stream(table.schema, table.to_batches(max_chunksize=77))
    decoded = decode(data, mode).ok()
    assert decoded.table.equals(table)
    assert data.endswith(EOS)


def test_receive_data_after_eof_is_a_caller_error() -> None:
    """Feeding bytes after EOF is a bug in the caller (RuntimeError), not a ProtocolError."""
    decoder = IPCStreamDecoder()
    decoder.receive_data(b"")
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"x")


@pytest.mark.parametrize("convert", [bytes, bytearray, memoryview])
def test_receive_accepts_bytes_like(convert: type, mode: str) -> None:
    """receive_data accepts bytes, bytearray and memoryview chunks alike."""
    data = golden_bytes("dictionary")
    decoded = decode_chunks([convert(c) for c in chunks_for(data, mode)])
    assert len(decoded.ok().batches) == 3


def test_receive_accepts_non_byte_memoryviews() -> None:
    """A memoryview of another item size is read as its raw bytes."""
    data = golden_bytes("dictionary")
    cut = len(data) // 4 * 4
    words = memoryview(bytearray(data[:cut])).cast("I")
    decoded = decode_chunks([words, data[cut:]])  # type: ignore[list-item]
    assert len(decoded.ok().batches) == 3


def test_message_prefix_is_little_endian() -> None:
    """The metadata length after the continuation marker is a little-endian int32."""
    frames, _ = split_stream(golden_bytes("schema_only"))
    raw = frames[0].encode()
    assert struct.unpack_from("<i", raw, 4)[0] == len(frames[0].metadata)


def test_bare_zero_word_ends_a_modern_stream(mode: str) -> None:
    """The 4-byte legacy end marker also ends a continuation-framed stream (as in Arrow C++)."""
    frames, end = split_stream(golden_bytes("dictionary"))
    assert end == EOS
    decoded = decode(join(frames, b"\x00\x00\x00\x00"), mode).ok()
    assert decoded.ended == StreamEnded(eos_marker=True)
    assert decoded.decoder.legacy_format is False
    assert decoded.decoder.trailing_data == (TRAILER if mode == "trailing" else b"", True)
