"""The hand-written Flight protobuf codec: cross-checked against pyarrow's own encoders.

Bytes only: pyarrow's ``serialize()`` / ``deserialize()`` are the reference.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arrowport.protocol import GrpcStatus, LocalProtocolError
from arrowport.protocol.flight_pb import (
    DESCRIPTOR_CMD,
    DESCRIPTOR_PATH,
    FLIGHT_DATA_APP_METADATA,
    FLIGHT_DATA_BODY,
    FLIGHT_DATA_DESCRIPTOR,
    FLIGHT_DATA_HEADER,
    TAG_APP_METADATA,
    TAG_DATA_BODY,
    TAG_DATA_HEADER,
    TAG_FLIGHT_DESCRIPTOR,
    Action,
    ActionType,
    Criteria,
    Empty,
    FlightDescriptor,
    FlightEndpoint,
    FlightInfo,
    HandshakeRequest,
    HandshakeResponse,
    Location,
    Message,
    PutResult,
    Result,
    SchemaResult,
    Ticket,
    decode_varint,
    encode_field_bytes,
    encode_field_varint,
    encode_flight_data_prefix,
    encode_tag,
    encode_varint,
    iter_fields,
)

SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.dictionary(pa.int32(), pa.string()))])
SCHEMA_BYTES = SCHEMA.serialize().to_pybytes()
U64 = (1 << 64) - 1

# -- cross-checks against pyarrow ----------------------------------------------


def test_path_descriptor_matches_pyarrow() -> None:
    """A path descriptor decodes from pyarrow's bytes and encodes to the very same bytes."""
    theirs = fl.FlightDescriptor.for_path("a", "b/c", "ü").serialize()
    ours = FlightDescriptor.decode(theirs)
    assert ours == FlightDescriptor(type=DESCRIPTOR_PATH, path=("a", "b/c", "ü"))
    assert ours.encode() == theirs
    back = fl.FlightDescriptor.deserialize(ours.encode())
    assert back.descriptor_type == fl.DescriptorType.PATH
    assert back.path == [b"a", b"b/c", "ü".encode()]


def test_command_descriptor_matches_pyarrow() -> None:
    """A command descriptor round-trips through pyarrow byte for byte."""
    theirs = fl.FlightDescriptor.for_command(b"\x00cmd\xff").serialize()
    ours = FlightDescriptor.decode(theirs)
    assert ours == FlightDescriptor(type=DESCRIPTOR_CMD, cmd=b"\x00cmd\xff")
    assert ours.encode() == theirs
    back = fl.FlightDescriptor.deserialize(ours.encode())
    assert back.descriptor_type == fl.DescriptorType.CMD
    assert back.command == b"\x00cmd\xff"


def test_ticket_action_result_match_pyarrow() -> None:
    """Ticket, Action and Result decode from pyarrow and encode to pyarrow's bytes."""
    ticket = fl.Ticket(b"x\x00y").serialize()
    assert Ticket.decode(ticket) == Ticket(ticket=b"x\x00y")
    assert Ticket(ticket=b"x\x00y").encode() == ticket
    assert fl.Ticket.deserialize(Ticket(ticket=b"abc").encode()).ticket == b"abc"

    action = fl.Action("do-it", b"body").serialize()
    assert Action.decode(action) == Action(type="do-it", body=b"body")
    assert Action(type="do-it", body=b"body").encode() == action
    back = fl.Action.deserialize(Action(type="é", body=b"\x01").encode())
    assert (back.type, back.body.to_pybytes()) == ("é", b"\x01")

    result = fl.Result(b"r").serialize()
    assert Result.decode(result) == Result(body=b"r")
    assert fl.Result.deserialize(Result(body=b"rr").encode()).body.to_pybytes() == b"rr"


def test_schema_result_carries_the_ipc_schema() -> None:
    """SchemaResult.schema is the IPC-serialized schema, as pyarrow writes and reads it."""
    theirs = fl.SchemaResult(SCHEMA).serialize()
    assert SchemaResult.decode(theirs).schema == SCHEMA_BYTES
    assert SchemaResult(schema=SCHEMA_BYTES).encode() == theirs
    assert fl.SchemaResult.deserialize(SchemaResult(schema=SCHEMA_BYTES).encode()).schema == SCHEMA


def test_endpoint_from_pyarrow_skips_expiration_time() -> None:
    """An endpoint with expiration_time decodes; the Timestamp is skipped, the rest kept."""
    expires = pa.scalar(1_700_000_000_123_456_789, pa.timestamp("ns", "UTC"))
    theirs = fl.FlightEndpoint(
        b"t", ["grpc://h:1", "grpc+tls://x:2"], expiration_time=expires, app_metadata=b"meta"
    ).serialize()
    ours = FlightEndpoint.decode(theirs)
    assert ours == FlightEndpoint(
        ticket=Ticket(ticket=b"t"),
        location=(Location(uri="grpc://h:1"), Location(uri="grpc+tls://x:2")),
        app_metadata=b"meta",
    )
    back = fl.FlightEndpoint.deserialize(ours.encode())
    assert back.ticket.ticket == b"t"
    assert [loc.uri for loc in back.locations] == [b"grpc://h:1", b"grpc+tls://x:2"]
    assert back.app_metadata == b"meta"
    assert back.expiration_time is None


@pytest.mark.parametrize(("records", "size"), [(10, 20), (None, None), (0, 0), (2**62, 1)])
def test_flight_info_from_pyarrow(records: int | None, size: int | None) -> None:
    """A pyarrow FlightInfo decodes field by field, re-encodes to the same bytes (-1 totals too)."""
    descriptor = fl.FlightDescriptor.for_path("a", "b")
    endpoint = fl.FlightEndpoint(b"t", ["grpc://h:1"])
    theirs = fl.FlightInfo(SCHEMA, descriptor, [endpoint], records, size).serialize()
    ours = FlightInfo.decode(theirs)
    assert ours.schema == SCHEMA_BYTES
    assert ours.flight_descriptor == FlightDescriptor(type=DESCRIPTOR_PATH, path=("a", "b"))
    assert ours.endpoint == (
        FlightEndpoint(ticket=Ticket(ticket=b"t"), location=(Location(uri="grpc://h:1"),)),
    )
    assert ours.total_records == (-1 if records is None else records)
    assert ours.total_bytes == (-1 if size is None else size)
    assert not ours.ordered
    assert ours.encode() == theirs


def test_flight_info_to_pyarrow() -> None:
    """Every FlightInfo field we encode reads back through pyarrow's deserialize."""
    ours = FlightInfo(
        schema=SCHEMA_BYTES,
        flight_descriptor=FlightDescriptor(type=DESCRIPTOR_CMD, cmd=b"SELECT 1"),
        endpoint=(
            FlightEndpoint(ticket=Ticket(ticket=b"t1"), location=(Location(uri="grpc://a:1"),)),
            FlightEndpoint(ticket=Ticket(ticket=b"t2"), app_metadata=b"m2"),
        ),
        total_records=-1,
        total_bytes=123,
        ordered=True,
        app_metadata=b"info-meta",
    )
    back = fl.FlightInfo.deserialize(ours.encode())
    assert back.schema == SCHEMA
    assert back.descriptor.command == b"SELECT 1"
    assert [e.ticket.ticket for e in back.endpoints] == [b"t1", b"t2"]
    assert [loc.uri for loc in back.endpoints[0].locations] == [b"grpc://a:1"]
    assert back.endpoints[1].app_metadata == b"m2"
    assert (back.total_records, back.total_bytes) == (-1, 123)
    assert back.ordered
    assert back.app_metadata == b"info-meta"
    assert FlightInfo.decode(back.serialize()) == ours


def test_singular_message_fields_merge_like_pyarrow() -> None:
    """A message field seen twice is merged (scalars: last wins; repeated: appended), as in C++."""
    endpoint = b"\x0a\x03\x0a\x01a\x0a\x03\x0a\x01b"
    assert FlightEndpoint.decode(endpoint).ticket == Ticket(ticket=b"b")
    assert fl.FlightEndpoint.deserialize(endpoint).ticket.ticket == b"b"
    info = b"\x12\x05\x08\x01\x1a\x01a\x12\x03\x1a\x01b"
    descriptor = FlightInfo.decode(info).flight_descriptor
    assert descriptor == FlightDescriptor(type=DESCRIPTOR_PATH, path=("a", "b"))
    assert fl.FlightInfo.deserialize(info).descriptor.path == [b"a", b"b"]


@given(st.lists(st.text(max_size=8), min_size=1, max_size=4))
def test_path_descriptors_agree_with_pyarrow(path: list[str]) -> None:
    """Any path descriptor encodes to exactly pyarrow's bytes."""
    theirs = fl.FlightDescriptor.for_path(*path).serialize()
    assert FlightDescriptor(type=DESCRIPTOR_PATH, path=tuple(path)).encode() == theirs
    assert FlightDescriptor.decode(theirs).path == tuple(path)


# -- messages pyarrow cannot serialize: known bytes ----------------------------


def test_messages_without_a_pyarrow_serializer() -> None:
    """Location, ActionType, Criteria, PutResult, Handshake* and Empty encode as proto3 says."""
    assert Location(uri="grpc://h:1").encode() == b"\x0a\x0agrpc://h:1"
    assert ActionType(type="t", description="dé").encode() == b"\x0a\x01t\x12\x03d\xc3\xa9"
    assert Criteria(expression=b"e").encode() == b"\x0a\x01e"
    assert PutResult(app_metadata=b"ack").encode() == b"\x0a\x03ack"
    request = HandshakeRequest(protocol_version=U64, payload=b"p")
    assert request.encode() == b"\x08" + b"\xff" * 9 + b"\x01\x12\x01p"
    assert HandshakeRequest.decode(request.encode()) == request
    assert HandshakeResponse.decode(b"\x08\x02") == HandshakeResponse(protocol_version=2)
    assert Empty().encode() == b""
    assert Empty.decode(b"\x08\x01\x12\x00") == Empty()


def test_defaults_are_omitted_and_absent_fields_decode_to_proto3_defaults() -> None:
    """Default values are not written; an empty message decodes to zeros (FlightInfo totals too)."""
    assert FlightDescriptor().encode() == b""
    assert FlightInfo(total_records=0, total_bytes=0).encode() == b""
    assert FlightInfo().encode() == b"\x20" + b"\xff" * 9 + b"\x01\x28" + b"\xff" * 9 + b"\x01"
    empty = FlightInfo.decode(b"")
    assert (empty.total_records, empty.total_bytes, empty.flight_descriptor) == (0, 0, None)
    assert FlightEndpoint(ticket=Ticket()).encode() == b"\x0a\x00"  # presence is kept
    assert FlightEndpoint.decode(b"\x0a\x00").ticket == Ticket()


def test_unknown_fields_of_every_valid_wire_type_are_skipped() -> None:
    """Unknown varint, fixed64, length-delimited and fixed32 fields are skipped."""
    unknown = (
        encode_field_varint(9, 1 << 40)
        + encode_tag(10, 1)
        + bytes(8)
        + encode_field_bytes(11, b"skip me")
        + encode_tag(536_870_911, 5)
        + bytes(4)
    )
    data = unknown + encode_field_bytes(1, b"t") + unknown
    assert Ticket.decode(data) == Ticket(ticket=b"t")
    assert fl.Ticket.deserialize(data).ticket == b"t"


def test_last_scalar_wins_and_repeated_fields_accumulate() -> None:
    """A scalar seen twice keeps the last value; repeated strings are appended in order."""
    assert Ticket.decode(b"\x0a\x01a\x0a\x01b") == Ticket(ticket=b"b")
    data = b"\x08\x02\x1a\x01x\x08\x01\x1a\x01y"
    assert FlightDescriptor.decode(data) == FlightDescriptor(type=1, path=("x", "y"))


def test_int_fields_decode_signed_and_reject_out_of_range_on_encode() -> None:
    """int64/int32 decode as two's complement; encoding a value out of range is a ValueError."""
    assert FlightInfo.decode(b"\x20" + b"\xff" * 9 + b"\x01").total_records == -1
    assert FlightDescriptor.decode(b"\x08" + b"\xff" * 9 + b"\x01").type == -1
    assert FlightDescriptor.decode(b"\x08\xff\xff\xff\xff\x0f").type == -1  # 32-bit form
    assert FlightDescriptor(type=-5).encode() == b"\x08" + encode_varint(-5)
    with pytest.raises(ValueError):
        FlightInfo(total_records=1 << 63).encode()
    with pytest.raises(ValueError):
        HandshakeRequest(protocol_version=-1).encode()
    with pytest.raises(ValueError):
        FlightDescriptor(type=1 << 31).encode()


def test_decode_accepts_memoryview_slices() -> None:
    """decode reads from a memoryview slice without needing a copy."""
    data = b"junk" + Action(type="t", body=b"b").encode() + b"junk"
    assert Action.decode(memoryview(data)[4:-4]) == Action(type="t", body=b"b")


# -- malformed input -----------------------------------------------------------

MALFORMED: list[tuple[type[Message], bytes, str]] = [
    (FlightInfo, b"\x20\xff", "FlightInfo field 4: truncated varint"),
    (FlightInfo, b"\x20" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (FlightInfo, b"\x20" + b"\xff" * 9 + b"\x02", "overflows 64 bits"),
    (Ticket, b"\x80", "Ticket: truncated varint at offset 0"),
    (Ticket, b"\x0a\x05ab", "5 bytes at offset 1 runs past the end of the message (2 bytes"),
    (Ticket, b"\x0a" + b"\xff" * 9 + b"\x01", "runs past the end"),
    (Ticket, b"\x0a", "Ticket field 1: truncated varint"),
    (Ticket, b"\x08\x01", "field 1 (ticket) has wire type 0 (varint), expected 2"),
    (FlightInfo, b"\x22\x00", "field 4 (total_records) has wire type 2"),
    (FlightInfo, b"\x35\x00\x00\x00\x00", "field 6 (ordered) has wire type 5"),
    (FlightEndpoint, b"\x18\x01", "field 3 (expiration_time) has wire type 0"),
    (Location, b"\x0a\x02\xc3\x28", "Location: field 1 (uri) is not valid UTF-8"),
    (FlightEndpoint, b"\x12\x03\x0a\x01\xff", "FlightEndpoint.location[0]: field 1 (uri) is not"),
    (FlightDescriptor, b"\x1a\x01a\x1a\x01\x80", "FlightDescriptor: field 3 (path[1]) is not"),
    (
        FlightInfo,
        b"\x1a\x00\x1a\x04\x0a\x02\x08\x01",
        "FlightInfo.endpoint[1].ticket: field 1 (ticket) has wire type 0",
    ),
    (FlightInfo, b"\x12\x02\x08\x80", "FlightInfo.flight_descriptor field 1: truncated"),
    (Ticket, b"\x0b", "deprecated group wire type 3"),
    (Ticket, b"\x0c", "deprecated group wire type 4"),
    (Ticket, b"\x0e", "invalid wire type 6"),
    (Ticket, b"\x0f", "invalid wire type 7"),
    (Ticket, b"\x00\x00", "invalid field number 0"),
    (Ticket, b"\x79\x00\x00", "truncated fixed64 field 15"),
    (Ticket, b"\x7d\x00", "truncated fixed32 field 15"),
    (Empty, b"\x0a\x01", "Empty field 1: length-delimited field of 1 bytes"),
]


@pytest.mark.parametrize(("cls", "data", "expected"), MALFORMED)
def test_malformed_input_raises_a_clear_error(
    cls: type[Message], data: bytes, expected: str
) -> None:
    """Each malformed message raises LocalProtocolError (400, INVALID_ARGUMENT) naming the spot."""
    with pytest.raises(LocalProtocolError) as info:
        cls.decode(data)
    error = info.value
    assert expected in error.detail
    assert error.detail.startswith(f"malformed {cls.__name__}")
    assert error.error == "invalid_protobuf"
    assert error.http_status == 400
    assert error.grpc_status == GrpcStatus.INVALID_ARGUMENT


_PYARROW_PARSERS: dict[type[Message], Any] = {
    Ticket: fl.Ticket,
    FlightEndpoint: fl.FlightEndpoint,
    FlightInfo: fl.FlightInfo,
}
# Two refusals are stricter than protobuf by design: it truncates a varint that
# overflows 64 bits and skips a known field of the wrong wire type as unknown.
PYARROW_ALSO_REJECTS = [
    (cls, data)
    for cls, data, expected in MALFORMED
    if cls in _PYARROW_PARSERS and "overflows" not in expected and "has wire type" not in expected
]


@pytest.mark.parametrize(("cls", "data"), PYARROW_ALSO_REJECTS)
def test_pyarrow_rejects_the_same_malformed_bytes(cls: type[Message], data: bytes) -> None:
    """pyarrow's own parser refuses the malformed bytes we refuse (the reference agrees)."""
    with pytest.raises((pa.ArrowInvalid, OSError)):
        _PYARROW_PARSERS[cls].deserialize(data)


# -- low-level helpers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        ((1 << 63) - 1, b"\xff" * 8 + b"\x7f"),
        (U64, b"\xff" * 9 + b"\x01"),
        (-1, b"\xff" * 9 + b"\x01"),
        (-(1 << 63), b"\x80" * 9 + b"\x01"),
    ],
)
def test_varint_known_values(value: int, encoded: bytes) -> None:
    """Varints encode as the protobuf spec's examples; negatives as 10-byte two's complement."""
    assert encode_varint(value) == encoded
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (value & U64, 1 + len(encoded))


@given(st.integers(min_value=-(1 << 63), max_value=U64))
def test_varint_round_trip(value: int) -> None:
    """Every 64-bit value survives encode_varint/decode_varint."""
    encoded = encode_varint(value)
    assert decode_varint(encoded, 0) == (value & U64, len(encoded))


def test_varint_out_of_range_is_a_value_error() -> None:
    """Encoding a value wider than 64 bits is the caller's bug: ValueError."""
    for value in (1 << 64, -(1 << 63) - 1):
        with pytest.raises(ValueError):
            encode_varint(value)


def test_iter_fields_yields_raw_values() -> None:
    """iter_fields yields ints for varint/fixed fields and memoryview slices for the rest."""
    data = (
        encode_field_varint(1, 5) + encode_field_bytes(2, b"xy") + encode_tag(3, 5) + b"\x01\0\0\0"
    )
    fields = [(f, w, v if isinstance(v, int) else bytes(v)) for f, w, v in iter_fields(data)]
    assert fields == [(1, 0, 5), (2, 2, b"xy"), (3, 5, 1)]


# -- FlightData ----------------------------------------------------------------


def test_flight_data_tags() -> None:
    """The exported FlightData tags are the keys of fields 1, 2, 3 and 1000 (C2 3E)."""
    assert encode_tag(FLIGHT_DATA_DESCRIPTOR, 2) == TAG_FLIGHT_DESCRIPTOR
    assert encode_tag(FLIGHT_DATA_HEADER, 2) == TAG_DATA_HEADER
    assert encode_tag(FLIGHT_DATA_APP_METADATA, 2) == TAG_APP_METADATA
    assert encode_tag(FLIGHT_DATA_BODY, 2) == TAG_DATA_BODY == b"\xc2\x3e"


@pytest.mark.parametrize("body_length", [0, 1, 127, 128, 70_000])
@pytest.mark.parametrize("app_metadata", [None, b"", b"meta"])
@pytest.mark.parametrize("with_descriptor", [False, True])
def test_flight_data_prefix_then_body_is_one_message(
    body_length: int, app_metadata: bytes | None, with_descriptor: bool
) -> None:
    """Prefix plus the body parses as FlightData fields 1, 2, 3, 1000, in that order."""
    descriptor = FlightDescriptor(type=DESCRIPTOR_PATH, path=("s",)) if with_descriptor else None
    header = b"\x10\x00\x00\x00flatbuffer"
    body = bytes(range(256)) * (body_length // 256) + bytes(body_length % 256)
    prefix = encode_flight_data_prefix(header, app_metadata, body_length, descriptor)
    fields = [(f, bytes(v)) for f, _, v in iter_fields(prefix + body)]
    expected = [(FLIGHT_DATA_DESCRIPTOR, descriptor.encode())] if descriptor else []
    expected.append((FLIGHT_DATA_HEADER, header))
    if app_metadata:
        expected.append((FLIGHT_DATA_APP_METADATA, app_metadata))
    if body_length:
        expected.append((FLIGHT_DATA_BODY, body))
    assert fields == expected
    if body_length:
        assert prefix.endswith(TAG_DATA_BODY + encode_varint(body_length))


# -- property tests --------------------------------------------------------------

int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
tickets = st.builds(Ticket, ticket=st.binary(max_size=16))
locations = st.builds(Location, uri=st.text(max_size=16))
descriptors = st.builds(
    FlightDescriptor,
    type=st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1),
    cmd=st.binary(max_size=16),
    path=st.lists(st.text(max_size=8), max_size=4).map(tuple),
)
endpoints = st.builds(
    FlightEndpoint,
    ticket=st.none() | tickets,
    location=st.lists(locations, max_size=3).map(tuple),
    app_metadata=st.binary(max_size=8),
)
MESSAGES = st.one_of(
    descriptors,
    tickets,
    locations,
    endpoints,
    st.builds(
        FlightInfo,
        schema=st.binary(max_size=32),
        flight_descriptor=st.none() | descriptors,
        endpoint=st.lists(endpoints, max_size=3).map(tuple),
        total_records=int64s,
        total_bytes=int64s,
        ordered=st.booleans(),
        app_metadata=st.binary(max_size=8),
    ),
    st.builds(SchemaResult, schema=st.binary(max_size=16)),
    st.builds(Criteria, expression=st.binary(max_size=16)),
    st.builds(Action, type=st.text(max_size=8), body=st.binary(max_size=16)),
    st.builds(ActionType, type=st.text(max_size=8), description=st.text(max_size=16)),
    st.builds(Result, body=st.binary(max_size=16)),
    st.builds(PutResult, app_metadata=st.binary(max_size=16)),
    st.builds(
        HandshakeRequest,
        protocol_version=st.integers(min_value=0, max_value=U64),
        payload=st.binary(max_size=8),
    ),
    st.builds(
        HandshakeResponse,
        protocol_version=st.integers(min_value=0, max_value=U64),
        payload=st.binary(max_size=8),
    ),
    st.just(Empty()),
)
CLASSES = [
    FlightDescriptor,
    Ticket,
    Location,
    FlightEndpoint,
    FlightInfo,
    SchemaResult,
    Criteria,
    Action,
    ActionType,
    Result,
    PutResult,
    HandshakeRequest,
    HandshakeResponse,
    Empty,
]


@given(MESSAGES)
def test_every_message_round_trips(message: Message) -> None:
    """decode(encode(m)) == m for every message type and value."""
    assert type(message).decode(message.encode()) == message


@given(st.sampled_from(CLASSES), st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_local_protocol_error(
    cls: type[Message], data: bytes
) -> None:
    """Hostile bytes either decode or raise LocalProtocolError; what decodes re-encodes stably."""
    try:
        message = cls.decode(data)
    except LocalProtocolError as exc:
        assert exc.detail.startswith(f"malformed {cls.__name__}")
        return
    assert cls.decode(message.encode()) == message


@given(MESSAGES, st.data())
def test_truncated_encodings_never_escape_as_other_errors(message: Message, data: Any) -> None:
    """Any prefix of a valid encoding decodes or raises LocalProtocolError, nothing else."""
    encoded = message.encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    with contextlib.suppress(LocalProtocolError):
        type(message).decode(encoded[:cut])
