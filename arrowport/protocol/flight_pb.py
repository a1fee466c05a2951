"""The Arrow Flight protobuf messages (``Flight.proto``), on the codec in
``protobuf.py``; plus the ``FlightData`` field numbers and tags, and the
encoder of a ``FlightData`` prefix for sending a body uncopied.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protobuf import (
    WIRE_FIXED32,
    WIRE_FIXED64,
    WIRE_LEN,
    WIRE_VARINT,
    BytesLike,
    Kind,
    Message,
    decode_varint,
    encode_field_bytes,
    encode_field_varint,
    encode_tag,
    encode_varint,
    iter_fields,
    pb,
)

__all__ = [
    "WIRE_FIXED32",
    "WIRE_FIXED64",
    "WIRE_LEN",
    "WIRE_VARINT",
    "Message",
    "decode_varint",
    "encode_field_bytes",
    "encode_field_varint",
    "encode_tag",
    "encode_varint",
    "iter_fields",
]

# FlightData (arrow/flight/protocol Flight.proto): field numbers and their tag bytes.
FLIGHT_DATA_DESCRIPTOR = 1
FLIGHT_DATA_HEADER = 2
FLIGHT_DATA_APP_METADATA = 3
FLIGHT_DATA_BODY = 1000
TAG_FLIGHT_DESCRIPTOR = b"\x0a"
TAG_DATA_HEADER = b"\x12"
TAG_APP_METADATA = b"\x1a"
TAG_DATA_BODY = b"\xc2\x3e"

# FlightDescriptor.DescriptorType
DESCRIPTOR_UNKNOWN = 0
DESCRIPTOR_PATH = 1
DESCRIPTOR_CMD = 2


# -- the Flight messages -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FlightDescriptor(Message):
    """``type`` is ``DESCRIPTOR_PATH`` (1) or ``DESCRIPTOR_CMD`` (2)."""

    type: int = pb(1, Kind.INT32)
    cmd: bytes = pb(2, Kind.BYTES)
    path: tuple[str, ...] = pb(3, Kind.STRING, repeated=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket(Message):
    ticket: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Location(Message):
    uri: str = pb(1, Kind.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlightEndpoint(Message):
    """``expiration_time`` (field 3, a Timestamp) is skipped on decode and never written."""

    IGNORED_FIELDS = {3: "expiration_time"}
    ticket: Ticket | None = pb(1, Kind.MESSAGE, message=Ticket)  # noqa: RUF009 (pb() returns a dataclasses.Field)
    location: tuple[Location, ...] = pb(2, Kind.MESSAGE, repeated=True, message=Location)
    app_metadata: bytes = pb(4, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlightInfo(Message):
    """``schema`` is an IPC-serialized schema (``pa.Schema.serialize()``).

    ``total_records`` and ``total_bytes`` default to -1 (unknown) as in pyarrow;
    an absent field still decodes to the proto3 default 0.
    """

    schema: bytes = pb(1, Kind.BYTES)
    flight_descriptor: FlightDescriptor | None = pb(  # noqa: RUF009 (pb() returns a dataclasses.Field)
        2, Kind.MESSAGE, message=FlightDescriptor
    )
    endpoint: tuple[FlightEndpoint, ...] = pb(
        3, Kind.MESSAGE, repeated=True, message=FlightEndpoint
    )
    total_records: int = pb(4, Kind.INT64, default=-1)
    total_bytes: int = pb(5, Kind.INT64, default=-1)
    ordered: bool = pb(6, Kind.BOOL)
    app_metadata: bytes = pb(7, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaResult(Message):
    schema: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Criteria(Message):
    expression: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Action(Message):
    type: str = pb(1, Kind.STRING)
    body: bytes = pb(2, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionType(Message):
    type: str = pb(1, Kind.STRING)
    description: str = pb(2, Kind.STRING)


@dataclass(frozen=True, slots=True, kw_only=True)
class Result(Message):
    body: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class PutResult(Message):
    app_metadata: bytes = pb(1, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeRequest(Message):
    protocol_version: int = pb(1, Kind.UINT64)
    payload: bytes = pb(2, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeResponse(Message):
    protocol_version: int = pb(1, Kind.UINT64)
    payload: bytes = pb(2, Kind.BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Empty(Message):
    pass


# -- FlightData ----------------------------------------------------------------


def encode_flight_data_prefix(
    header: BytesLike,
    app_metadata: BytesLike | None,
    body_length: int,
    descriptor: FlightDescriptor | None = None,
) -> bytes:
    """Encode a ``FlightData`` up to and including the ``data_body`` tag and length.

    The caller sends the body (``body_length`` bytes) right after, uncopied.
    Fields are written in the order 1, 2, 3, 1000; empty ones are omitted, and
    with ``body_length == 0`` so is the body's tag: the prefix is the whole message.
    The FlightData's length (for the gRPC prefix) is ``len(prefix) + body_length``.
    """
    if body_length < 0:
        raise ValueError(f"negative body length {body_length}")
    parts: list[bytes] = []
    if descriptor is not None:
        parts.append(encode_field_bytes(FLIGHT_DATA_DESCRIPTOR, descriptor.encode()))
    if header:
        parts.append(encode_field_bytes(FLIGHT_DATA_HEADER, header))
    if app_metadata:
        parts.append(encode_field_bytes(FLIGHT_DATA_APP_METADATA, app_metadata))
    if body_length:
        parts.append(TAG_DATA_BODY + encode_varint(body_length))
    return b"".join(parts)
