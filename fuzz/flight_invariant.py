"""The invariant every FlightData fuzzer checks, and structure-aware mutations.

Invariant: fed whole, one byte at a time, or split at (seeded) random points,
any input either decodes (events then ``StreamEnded``) or makes
``next_event`` raise a ``RemoteProtocolError`` with a 400 or 413 status and an
INVALID_ARGUMENT, RESOURCE_EXHAUSTED or UNIMPLEMENTED gRPC status, after which
the decoder stays in ``ERROR``. All feedings must agree. Any other exception,
a decoder that wants data after EOF (it would hang) or a disagreement is a
bug: :func:`check` lets the exception through or raises
:class:`InvariantViolation`.

:func:`mutate` rewrites a stream at every level: gRPC prefixes (flag, length),
protobuf fields (order, duplicates, wire types, unknown fields, non-minimal
varints) and the IPC messages inside (via ``ipc_invariant``'s flatbuffer and
body mutations), so mutants get past the framing and reach pyarrow.
:func:`seeds` turns the golden IPC streams into DoPut streams. The atheris
harness and the bounded CI fuzz test share all three.
"""

from __future__ import annotations

import itertools
import random
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from ipc_invariant import LIMITS as IPC_LIMITS
from ipc_invariant import InvariantViolation, _poke, _poke_buffer_spec
from ipc_invariant import _Message as _IpcMessage

from arrowport.protocol import (
    NEED_DATA,
    BatchReceived,
    Event,
    GrpcStatus,
    ProtocolError,
    RemoteProtocolError,
    SchemaReceived,
    StreamEnded,
)
from arrowport.protocol.flight import (
    DescriptorReceived,
    FlightDataDecoder,
    MetadataReceived,
    State,
)
from arrowport.protocol.flight_pb import (
    DESCRIPTOR_CMD,
    DESCRIPTOR_PATH,
    WIRE_FIXED32,
    WIRE_FIXED64,
    WIRE_LEN,
    WIRE_VARINT,
    FlightDescriptor,
    encode_flight_data_prefix,
    encode_varint,
    iter_fields,
)

__all__ = ["LIMITS", "InvariantViolation", "Outcome", "check", "join", "mutate", "run", "split"]

LIMITS: dict[str, int] = IPC_LIMITS | {
    "max_descriptor_size": 64 * 1024,
    "max_app_metadata_size": 1024 * 1024,
}
GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "protocol" / "golden"
HEADER, APP_METADATA, DESCRIPTOR, BODY = 2, 3, 1, 1000
_STATUSES = {GrpcStatus.INVALID_ARGUMENT, GrpcStatus.RESOURCE_EXHAUSTED, GrpcStatus.UNIMPLEMENTED}


@dataclass(frozen=True)
class Outcome:
    """What one feeding produced, comparable across feedings."""

    events: tuple[tuple[object, ...], ...]
    error: tuple[str, int] | None  # (error code, HTTP status)

    @property
    def parsed(self) -> bool:
        return self.error is None


def _summary(event: Event) -> tuple[object, ...]:
    if isinstance(event, DescriptorReceived):
        return ("descriptor", event.descriptor)
    if isinstance(event, MetadataReceived):
        return ("metadata", event.app_metadata)
    if isinstance(event, SchemaReceived):
        return ("schema", event.schema)
    if isinstance(event, BatchReceived):
        b, meta = event.batch, event.app_metadata
        return ("batch", b.num_rows, b.num_columns, event.wire_bytes, event.decoded_bytes, meta)
    if isinstance(event, StreamEnded):
        return ("end", event.eos_marker)
    raise InvariantViolation(f"unknown event {event!r}")


def _drain(decoder: FlightDataDecoder, events: list[tuple[object, ...]], eof: bool) -> None:
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            if eof and decoder.state is not State.DONE:
                raise InvariantViolation(f"NEED_DATA after EOF in state {decoder.state}")
            return
        if events and events[-1][0] == "end":
            raise InvariantViolation("an event after StreamEnded")
        if not isinstance(event, Event):
            raise InvariantViolation(f"next_event returned {event!r}")
        events.append(_summary(event))


def run(chunks: Iterable[bytes], limits: dict[str, int] | None = None) -> Outcome:
    """Feed ``chunks`` then EOF, draining events after each; return the outcome."""
    decoder = FlightDataDecoder(**(LIMITS if limits is None else limits))
    events: list[tuple[object, ...]] = []
    fed = 0
    try:
        for chunk in chunks:
            if chunk:
                decoder.receive_data(chunk)
                fed += len(chunk)
                _drain(decoder, events, eof=False)
        decoder.receive_data(b"")
        _drain(decoder, events, eof=True)
    except ProtocolError as exc:
        if not isinstance(exc, RemoteProtocolError):
            raise InvariantViolation(f"next_event raised the local kind: {exc!r}") from exc
        if (
            exc.http_status not in (400, 413)
            or exc.grpc_status not in _STATUSES
            or decoder.state is not State.ERROR
        ):
            raise InvariantViolation(f"bad error state: {exc!r}, {decoder.state}") from exc
        try:
            decoder.next_event()
        except RemoteProtocolError:
            pass
        else:
            raise InvariantViolation("the decoder left ERROR") from exc
        return Outcome(tuple(events), (exc.error, exc.http_status))
    if not events or events[-1] != ("end", False):
        raise InvariantViolation("decoding ended without StreamEnded(eos_marker=False)")
    stats = decoder.statistics()
    if stats["buffered_bytes"] or stats["wire_bytes"] > fed:
        raise InvariantViolation(f"statistics do not add up: {stats}, {fed} bytes fed")
    return Outcome(tuple(events), None)


def _random_split(data: bytes) -> list[bytes]:
    rng = random.Random(zlib.crc32(data))
    cuts = sorted({rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 16))})
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def check(data: bytes, limits: dict[str, int] | None = None) -> Outcome:
    """Check the invariant on ``data``; return the (agreed) outcome."""
    whole = run([data], limits)
    for how, chunks in (
        ("byte by byte", (data[i : i + 1] for i in range(len(data)))),
        ("split", _random_split(data)),
    ):
        other = run(chunks, limits)
        if other != whole:
            raise InvariantViolation(f"whole {whole} != {how} {other}")
    return whole


# -- the streams fuzzing starts from ---------------------------------------------


def from_ipc(
    data: bytes, descriptor: FlightDescriptor | None = None, app_metadata: bool = False
) -> bytes:
    """The DoPut stream a Flight client sends for IPC stream ``data``."""
    descriptor = descriptor or FlightDescriptor(type=DESCRIPTOR_PATH, path=("fuzz",))
    out = bytearray()
    for i, message in enumerate(pa.ipc.MessageReader.open_stream(pa.py_buffer(data))):
        body = b"" if message.body is None else message.body.to_pybytes()
        meta = f"batch {i}".encode() if app_metadata and message.type == "record batch" else None
        head = encode_flight_data_prefix(
            message.metadata.to_pybytes(), meta, len(body), descriptor if i == 0 else None
        )
        payload = head + body
        out += struct.pack(">BI", 0, len(payload)) + payload
    return bytes(out)


def seeds(
    golden_dir: Path = GOLDEN_DIR, streams: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    """DoPut streams for every golden IPC stream (or for ``streams``), some with
    app_metadata or a cmd descriptor."""
    if streams is None:
        streams = {p.stem: p.read_bytes() for p in sorted(golden_dir.glob("*.arrows"))}
    out = {}
    for i, (name, data) in enumerate(streams.items()):
        descriptor = None
        if i % 3 == 1:
            descriptor = FlightDescriptor(type=DESCRIPTOR_CMD, cmd=b"INSERT " + name.encode())
        out[name] = from_ipc(data, descriptor, app_metadata=i % 2 == 0)
    return out


# -- structure-aware mutation --------------------------------------------------


@dataclass
class _Field:
    number: int
    wire_type: int
    value: bytearray | int
    pad: int = 0  # extra (non-minimal) bytes in the length or value varint


@dataclass
class _Message:
    flag: int = 0
    fields: list[_Field] = field(default_factory=list)
    raw: bytearray | None = None  # the payload, when it does not parse as protobuf
    extra: int = 0  # added to the true length in the gRPC prefix

    def get(self, number: int) -> _Field | None:
        return next((f for f in self.fields if f.number == number), None)


def _padded_varint(value: int, pad: int) -> bytes:
    raw = bytearray(encode_varint(value))
    if pad:
        raw[-1] |= 0x80
        raw += b"\x80" * (pad - 1) + b"\x00"
    return bytes(raw)


def _encode_field(f: _Field) -> bytes:
    out = bytearray(_padded_varint((f.number << 3) | f.wire_type, 0))
    value = f.value
    if isinstance(value, bytearray):
        out += _padded_varint(len(value), f.pad) + value
    elif f.wire_type == WIRE_FIXED64:
        out += struct.pack("<Q", value & (2**64 - 1))
    elif f.wire_type == WIRE_FIXED32:
        out += struct.pack("<I", value & (2**32 - 1))
    else:
        out += _padded_varint(value & (2**64 - 1), f.pad)
    return bytes(out)


def _payload(m: _Message) -> bytes:
    return bytes(m.raw) if m.raw is not None else b"".join(map(_encode_field, m.fields))


def split(data: bytes) -> tuple[list[_Message], bytes]:
    """Split ``data`` into gRPC messages as far as it frames cleanly; return them and the rest."""
    messages, pos = [], 0
    while pos + 5 <= len(data):
        flag, length = struct.unpack_from(">BI", data, pos)
        if pos + 5 + length > len(data):
            break
        payload = data[pos + 5 : pos + 5 + length]
        message = _Message(flag)
        try:
            for number, wire_type, value in iter_fields(payload):
                value = bytearray(value) if wire_type == WIRE_LEN else value
                message.fields.append(_Field(number, wire_type, value))
        except ProtocolError:
            message = _Message(flag, raw=bytearray(payload))
        messages.append(message)
        pos += 5 + length
    return messages, data[pos:]


def join(messages: Iterable[_Message], rest: bytes = b"") -> bytes:
    out = bytearray()
    for m in messages:
        payload = _payload(m)
        length = min(max(len(payload) + m.extra, 0), 2**32 - 1)
        out += struct.pack(">BI", m.flag & 0xFF, length) + payload
    return bytes(out + rest)


def _copy_field(f: _Field) -> _Field:
    value = bytearray(f.value) if isinstance(f.value, bytearray) else f.value
    return _Field(f.number, f.wire_type, value, f.pad)


def _copy(m: _Message) -> _Message:
    fields = [_copy_field(f) for f in m.fields]
    return _Message(m.flag, fields, None if m.raw is None else bytearray(m.raw), m.extra)


def _ipc_parts(m: _Message) -> _IpcMessage | None:
    """The message's header and body (shared, so ``ipc_invariant``'s mutations land here)."""
    header, body = m.get(HEADER), m.get(BODY)
    if header is None or not isinstance(header.value, bytearray):
        return None
    if body is None or not isinstance(body.value, bytearray):
        body = _Field(BODY, WIRE_LEN, bytearray())
        m.fields.append(body)
    assert isinstance(body.value, bytearray)
    return _IpcMessage(header.value, body.value, False)


_UNKNOWN_NUMBERS = (0, 4, 5, 15, 16, 999, 1001, 2047, 2**29 - 1, 2**31)


def _unknown_field(rng: random.Random) -> _Field:
    wire_type = rng.choice((WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32, 3, 4, 6, 7))
    number = rng.choice(_UNKNOWN_NUMBERS)
    if wire_type == WIRE_LEN:
        return _Field(number, wire_type, bytearray(rng.randbytes(rng.choice((0, 1, 9, 300)))))
    return _Field(number, wire_type, rng.choice((0, 1, 2**63, 2**64 - 1)))


def _mutate_fields(m: _Message, rng: random.Random) -> None:
    """Reorder, duplicate, drop, retype or pad fields, or add an unknown one."""
    fields = m.fields
    op = rng.randrange(7)
    if not fields or op == 0:
        fields.insert(rng.randint(0, len(fields)), _unknown_field(rng))
        return
    f = rng.choice(fields)
    if op == 1:
        rng.shuffle(fields)
    elif op == 2:
        fields.insert(rng.randint(0, len(fields)), _copy_field(f))
    elif op == 3:
        fields.remove(f)
    elif op == 4:  # a known field with another wire type, or a field renumbered
        if rng.random() < 0.5:
            f.wire_type = rng.choice((WIRE_VARINT, WIRE_FIXED64, WIRE_FIXED32))
            f.value = len(f.value) if isinstance(f.value, bytearray) else f.value
        else:
            f.number = rng.choice((DESCRIPTOR, HEADER, APP_METADATA, BODY, 7))
    elif op == 5:
        f.pad = rng.choice((1, 3, 9, 10))  # 10 makes an 11-byte varint
    elif isinstance(f.value, bytearray):  # declared length off by a little
        m.raw = bytearray(_payload(m))
        at = m.raw.find(_encode_field(f))
        if at >= 0:
            key = len(_padded_varint((f.number << 3) | f.wire_type, 0))
            m.raw[at + key] = (m.raw[at + key] + rng.choice((1, 2, 8, 255))) & 0xFF


def mutate(data: bytes, rng: random.Random, donors: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """One to three structure-aware mutations of ``data``."""
    messages, rest = split(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(14)
        if not messages or op == 0:  # raw bytes anywhere
            buf = bytearray(join(messages, rest))
            for _ in range(rng.randint(1, 4)):
                _poke(buf, rng)
            messages, rest = split(bytes(buf))
            if not messages:
                return bytes(buf)
            continue
        m = rng.choice(messages)
        ipc = _ipc_parts(m) if m.raw is None and op in (1, 2, 3, 4) else None
        if op in (1, 2) and ipc is not None:
            _poke(ipc.metadata, rng)
        elif op == 3 and ipc is not None:
            _poke(ipc.body, rng)
        elif op == 4 and ipc is not None:
            _poke_buffer_spec(ipc, rng)
        elif op in (5, 6) and m.raw is None:
            _mutate_fields(m, rng)
        elif op == 7:  # drop, duplicate or swap messages
            i, j = rng.randrange(len(messages)), rng.randrange(len(messages))
            choice = rng.randrange(3)
            if choice == 0:
                del messages[i]
            elif choice == 1:
                messages.insert(j, _copy(m))
            else:
                messages[i], messages[j] = messages[j], messages[i]
        elif op == 8 and donors:  # splice in a message from another stream
            others, _ = split(rng.choice(donors))
            if others:
                messages.insert(rng.randrange(len(messages) + 1), rng.choice(others))
        elif op == 9:  # truncate the stream
            raw = join(messages, rest)
            return raw[: rng.randrange(len(raw) + 1)]
        elif op == 10:  # the gRPC prefix: flag or length
            if rng.random() < 0.2:
                m.flag = rng.choice((1, 2, 0x80, 0xFF))
            else:
                m.extra = rng.choice((-8, -1, 1, 3, 2**31, 2**32))
        elif op == 11:  # an empty, metadata-only or descriptor-only message
            extra = rng.choice(
                (
                    _Message(),
                    _Message(fields=[_Field(APP_METADATA, WIRE_LEN, bytearray(b"meta"))]),
                    _Message(
                        fields=[_Field(DESCRIPTOR, WIRE_LEN, bytearray(b"\x08\x02\x12\x01x"))]
                    ),
                )
            )
            messages.insert(rng.randrange(len(messages) + 1), extra)
        elif op == 12 and m.raw is None:  # truncate or pad a field's data
            lengthy = [f for f in m.fields if isinstance(f.value, bytearray)]
            if lengthy:
                part = rng.choice(lengthy).value
                assert isinstance(part, bytearray)
                if part and rng.random() < 0.5:
                    del part[rng.randrange(len(part)) :]
                else:
                    part += bytes(rng.choice((1, 3, 8, 64)))
        else:  # bytes after the last message
            rest = rest[: -rng.choice((1, 4))] if rest else rng.randbytes(rng.randint(1, 12))
    return join(messages, rest)
