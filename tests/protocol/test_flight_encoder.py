"""FlightDataEncoder: batches in, FlightData out, as pyarrow's stream writer would carry them.

Each case checks three things of the encoder's messages: the IPC stream rebuilt
from their ``data_header`` and ``data_body`` fields is byte for byte what
``pa.ipc.new_stream`` writes (end marker aside); pyarrow's reader reads it back
equal; and Arrowport's own ``FlightDataDecoder`` decodes the gRPC-framed
messages to the same batches.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pytest
from flight_testing import decode_chunks, write_ipc
from ipc_testing import EOS, GOLDENS

from arrowport.errors import ArrowportError
from arrowport.protocol import GrpcStatus, LocalProtocolError
from arrowport.protocol._flatbuf import HeaderType, parse_message
from arrowport.protocol.flight_encoder import (
    EncodedFlightData,
    FlightDataEncoder,
    has_dictionaries,
)
from arrowport.protocol.flight_pb import FLIGHT_DATA_BODY, FLIGHT_DATA_HEADER, iter_fields
from arrowport.protocol.grpc import prefix

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "arrow-testing" / "data"


def _corpus() -> Path | None:
    """The arrow-testing ``data`` directory: ``ARROW_TEST_DATA``, else ../shared beside the repo."""
    env = os.environ.get("ARROW_TEST_DATA")
    path = Path(env) if env else CORPUS.resolve()
    return path if path.is_dir() else None


def encode_all(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch], limit: int | None = None
) -> list[EncodedFlightData]:
    encoder = FlightDataEncoder(schema, max_message_size=limit)
    out: list[EncodedFlightData] = []
    for batch in batches:
        out += encoder.encode(batch)
    out += encoder.finish()
    assert encoder.finish() == []  # the schema is owed once
    return out


def fields(message: EncodedFlightData) -> tuple[bytes, bytes]:
    """(data_header, data_body) as a Flight client reads them from the protobuf."""
    found = {number: bytes(value) for number, _, value in iter_fields(message.to_bytes())}
    assert set(found) <= {FLIGHT_DATA_HEADER, FLIGHT_DATA_BODY}, found.keys()
    return found[FLIGHT_DATA_HEADER], found.get(FLIGHT_DATA_BODY, b"")


def ipc_stream(messages: Sequence[EncodedFlightData]) -> bytes:
    """The IPC stream the messages carry (without an end marker)."""
    parts = []
    for message in messages:
        header, body = fields(message)
        assert len(header) % 8 == 0, "data_header is the padded flatbuffer"
        parts.append(b"\xff\xff\xff\xff" + struct.pack("<i", len(header)) + header + body)
    return b"".join(parts)


def check(
    schema: pa.Schema,
    batches: Sequence[pa.RecordBatch],
    limit: int | None = None,
    *,
    valid: bool = True,
) -> list[EncodedFlightData]:
    """Encode; assert the three properties of the module docstring; return the messages.

    ``valid=False``: the batches hold values ``validate(full=True)`` refuses,
    which the decoder is then told not to check.
    """
    messages = encode_all(schema, batches, limit)
    data = ipc_stream(messages)
    if limit is None:
        assert data + EOS == write_ipc(schema, batches), "not pyarrow's stream writer's bytes"
    expected = pa.Table.from_batches(batches, schema=schema)
    reader = pa.ipc.open_stream(data)
    assert reader.schema.equals(schema, check_metadata=True)
    assert reader.read_all().equals(expected)
    wire = b"".join(prefix(m.size) + m.to_bytes() for m in messages)
    decoded = decode_chunks([wire], validate=valid).ok()
    assert decoded.schema.equals(schema)
    assert pa.Table.from_batches(decoded.batches, schema=schema).equals(expected)
    for message in messages:
        header, body = fields(message)
        parsed = parse_message(header)
        assert parsed.header_type == message.kind
        assert parsed.body_length == len(body)
        if parsed.batch is not None:
            assert parsed.batch.codec is None, "DoGet messages are uncompressed"
    return messages


def kinds(messages: Sequence[EncodedFlightData]) -> list[str]:
    return [m.kind.name for m in messages]


def numbers(start: int, n: int) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "flag": pa.array([i % 3 == 0 if i % 5 else None for i in range(start, start + n)]),
            "name": pa.array(
                [f"row {i}" * (i % 4) if i % 7 else None for i in range(start, start + n)]
            ),
            "tags": pa.array([[str(i)] * (i % 3) for i in range(start, start + n)]),
        }
    )


def test_plain_batches_are_pyarrows_stream() -> None:
    """Schema then one message per batch; the body is the serialized buffer, not a copy."""
    batches = [numbers(0, 100), numbers(100, 37)]
    messages = check(batches[0].schema, batches)
    assert kinds(messages) == ["SCHEMA", "RECORD_BATCH", "RECORD_BATCH"]
    assert messages[0].body is None and messages[1].rows == 100 and messages[2].rows == 37
    assert all(m.size == len(m.to_bytes()) for m in messages)


def test_no_batches_is_the_schema_alone() -> None:
    """A stream without batches is one FlightData: the schema, from finish()."""
    schema = pa.schema([("a", pa.int32()), ("d", pa.dictionary(pa.int8(), pa.string()))])
    messages = check(schema, [])
    assert kinds(messages) == ["SCHEMA"]


def test_empty_batches_are_sent() -> None:
    """Zero-row batches are messages too, as pyarrow's writer sends them."""
    batch = numbers(0, 10)
    messages = check(batch.schema, [batch.slice(0, 0), batch, batch.slice(10, 0)])
    assert [m.rows for m in messages] == [0, 0, 10, 0]


def test_sliced_inputs_carry_only_their_rows() -> None:
    """Slices at odd offsets (bitmaps, offsets, lists) encode as the rows they show."""
    batch = numbers(0, 1000)
    slices = [batch.slice(3, 5), batch.slice(9, 400), batch.slice(997)]
    messages = check(batch.schema, slices)
    assert sum(m.size for m in messages) < pa.ipc.get_record_batch_size(batch)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_input_is_sent_uncompressed(codec: str) -> None:
    """Batches read from a compressed stream go out with compression none (check asserts it)."""
    batch = numbers(0, 500)
    data = write_ipc(batch.schema, [batch], pa.ipc.IpcWriteOptions(compression=codec))
    assert parse_message(_first_batch_header(data)).batch.codec is not None  # type: ignore[union-attr]
    check(batch.schema, list(pa.ipc.open_stream(data)))


def _first_batch_header(data: bytes) -> bytes:
    for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
        if message.type == "record batch":
            return bytes(message.metadata.to_pybytes())
    raise AssertionError("no record batch")


def dict_batch(words: list[str], indices: list[int | None]) -> pa.RecordBatch:
    column = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(words))
    return pa.record_batch({"n": pa.array(range(len(indices))), "word": column})


def test_dictionaries_go_before_their_batch_once_and_again_when_replaced() -> None:
    """A dictionary goes before its first batch, not again while unchanged, again when changed."""
    first = dict_batch(["a", "b", "c"], [0, 1, None, 2])
    same = dict_batch(["a", "b", "c"], [2, 2])  # equal, another buffer: not resent
    other = dict_batch(["x", "y"], [1, 0])  # replaced
    batches = [first, first.slice(1, 2), same, other, other]
    messages = check(first.schema, batches)
    assert kinds(messages) == [
        "SCHEMA",
        "DICTIONARY_BATCH",
        *["RECORD_BATCH"] * 3,
        "DICTIONARY_BATCH",
        *["RECORD_BATCH"] * 2,
    ]


def nested_dictionary_batch(words: list[str]) -> pa.RecordBatch:
    inner = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int8()), pa.array(words))
    structs = pa.StructArray.from_arrays([inner, pa.array([1, 2, 3])], ["w", "k"])
    outer = pa.DictionaryArray.from_arrays(pa.array([2, 0, None, 1], pa.int16()), structs)
    listed = pa.array(
        [["p", "q"], [], None, ["q"]], pa.list_(pa.dictionary(pa.int8(), pa.string()))
    )
    return pa.record_batch({"outer": outer, "listed": listed})


def test_nested_dictionaries_inner_first_and_replaced() -> None:
    """Dictionaries inside dictionaries and lists: every id sent, inner before outer, as pyarrow."""
    first, second = nested_dictionary_batch(["u", "v"]), nested_dictionary_batch(["v", "w"])
    assert has_dictionaries(first.schema)
    messages = check(first.schema, [first, first, second])
    ids = [parse_message(fields(m)[0]).dictionary_id for m in messages if m.kind.name[0] == "D"]
    assert ids[:3] == [1, 0, 2]  # inner (1) before outer (0), then the list's (2)
    assert len(ids) == 5  # the second batch's new inner dictionary changes the outer too


def test_slices_fit_the_limit_in_order() -> None:
    """With a limit, a large batch is several messages each within it, rows in order."""
    batch = numbers(0, 20_000)
    limit = 64 * 1024
    messages = check(batch.schema, [batch], limit)
    sizes = [m.size for m in messages if m.kind == HeaderType.RECORD_BATCH]
    assert len(sizes) > 4 and max(sizes) <= limit


def test_dictionary_batches_are_sliced_after_their_dictionary() -> None:
    """A dictionary-encoded batch over the limit: its dictionary once, then every slice."""
    words = [f"word {i}" for i in range(50)]
    batch = dict_batch(words, [i % 50 for i in range(30_000)])
    messages = check(batch.schema, [batch], 32 * 1024)
    assert kinds(messages)[:3] == ["SCHEMA", "DICTIONARY_BATCH", "RECORD_BATCH"]
    assert kinds(messages).count("DICTIONARY_BATCH") == 1 and len(messages) > 4


def test_one_row_over_the_limit_is_resource_exhausted_and_sends_nothing() -> None:
    """A row larger than the limit: RESOURCE_EXHAUSTED naming it; no message of that batch."""
    small = pa.record_batch({"s": pa.array(["a"])})
    big = pa.record_batch({"s": pa.array(["a", "b" * 100_000, "c"])})
    encoder = FlightDataEncoder(small.schema, max_message_size=64 * 1024)
    with pytest.raises(LocalProtocolError) as raised:
        encoder.encode(big)
    assert raised.value.grpc_status is GrpcStatus.RESOURCE_EXHAUSTED
    assert "flight.max_message_size (65536 bytes)" in raised.value.detail
    assert isinstance(raised.value, ArrowportError)
    assert encoder.messages == 0
    assert kinds(encoder.encode(small)) == ["SCHEMA", "RECORD_BATCH"]


def test_iterencode_checks_first_and_serializes_as_it_goes() -> None:
    """iterencode raises before any message; then it serializes one slice per step, in order."""
    big = pa.record_batch({"s": pa.array(["a", "b" * 100_000])})
    encoder = FlightDataEncoder(big.schema, max_message_size=64 * 1024)
    with pytest.raises(LocalProtocolError):
        encoder.iterencode(big)  # not iterated: the check ran anyway
    batch = numbers(0, 20_000)
    encoder = FlightDataEncoder(batch.schema, max_message_size=64 * 1024)
    messages = encoder.iterencode(batch)
    assert encoder.statistics()["batches"] == 0  # nothing serialized yet
    first, second = next(messages), next(messages)
    assert (first.kind, second.kind, encoder.batches) == (
        HeaderType.SCHEMA,
        HeaderType.RECORD_BATCH,
        1,
    )
    rest = list(messages)
    assert encoder.batches == 1 + len(rest) > 2
    assert [m.to_bytes() for m in [first, second, *rest]] == [
        m.to_bytes() for m in encode_all(batch.schema, [batch], 64 * 1024)
    ]


def test_a_batch_of_another_schema_is_refused() -> None:
    """The encoder is for one schema: another one's batch is a bug, said plainly."""
    encoder = FlightDataEncoder(pa.schema([("a", pa.int64())]))
    with pytest.raises(ValueError, match="schema"):
        encoder.encode(pa.record_batch({"b": pa.array([1])}))


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden_streams(name: str) -> None:
    """Each checked-in golden stream's batches (dictionaries, compression, empties) round-trip."""
    golden = GOLDENS[name]
    check(golden.schema, golden.batches())


def _gold_cases() -> list[object]:
    data = _corpus()
    if data is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no arrow-testing corpus"))]
    root = data / "arrow-ipc-stream" / "integration"
    return [
        pytest.param(path, id=str(path.relative_to(root))[: -len(".stream")])
        for path in sorted(root.rglob("*.stream"))
    ]


@pytest.mark.parametrize("path", _gold_cases())
def test_arrow_integration_gold_streams(path: Path) -> None:
    """Every Arrow integration gold stream pyarrow can read: pyarrow's bytes, read back equal.

    Then again with a limit that slices them: equal, or RESOURCE_EXHAUSTED
    exactly when one row does not fit.
    """
    try:
        reader = pa.ipc.open_stream(path.read_bytes())
        batches = list(reader)
    except (pa.ArrowException, OSError) as exc:
        pytest.skip(f"pyarrow cannot read it: {exc}")
    try:
        for batch in batches:
            batch.validate(full=True)
        valid = True
    except pa.ArrowInvalid:  # out-of-range decimals and dates: still bytes to carry
        valid = False
    check(reader.schema, batches, valid=valid)
    limit = 2048
    too_large = any(
        pa.ipc.get_record_batch_size(batch.slice(i, 1)) > limit - 64
        for batch in batches
        for i in range(batch.num_rows)
    )
    if too_large:
        with pytest.raises(LocalProtocolError) as raised:
            encode_all(reader.schema, batches, limit)
        assert raised.value.grpc_status is GrpcStatus.RESOURCE_EXHAUSTED
    else:
        messages = check(reader.schema, batches, limit, valid=valid)
        assert all(m.size <= limit for m in messages if m.kind == HeaderType.RECORD_BATCH)
