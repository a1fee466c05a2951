"""A small hand-written proto3 codec (no protobuf or grpcio): wire helpers
and a ``Message`` base whose fields are declared with ``pb(number, kind)``;
one generic encoder and decoder walk the field tables. Invariants:

* ``decode`` raises nothing but ``LocalProtocolError`` (``invalid()``: 400,
  INVALID_ARGUMENT, error ``invalid_protobuf``) on malformed bytes, naming the
  message path (``FlightInfo.endpoint[0]``) and the field where known. Malformed:
  a truncated varint; one over 10 bytes or 64 bits; a length past the buffer;
  field number 0; wire types 3, 4, 6, 7; a known field of the wrong wire type
  (stricter than protobuf, which would skip it); invalid UTF-8 in a string.
* Unknown fields of wire types 0, 1, 2 and 5 are skipped.
* Proto3: a scalar seen twice keeps the last value, repeated fields accumulate,
  a message field seen twice is merged (decoded from the concatenation). Absent
  fields decode to the proto3 default; message fields have presence (``None``),
  and so do fields declared ``optional`` (``pb(..., optional=True)``).
* Repeated varint fields decode packed (proto3's default) or unpacked, and
  encode packed, as protobuf does.
* ``encode`` writes fields in number order and omits defaults (not inside
  repeated fields), so it matches pyarrow byte for byte. A value out of range
  is the caller's bug: ``ValueError``.
* Nesting is fixed by the message tables, so input cannot drive recursion.
* A message holds at most ``MAX_FIELDS`` fields, counting each element of a
  packed field and unknown fields; past it decode raises ``LocalProtocolError``
  at once. Decoding costs microseconds a field on the event loop: a 4 MiB
  control message of two-byte fields would take seconds and hundreds of MB.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Self

from .errors import LocalProtocolError, invalid

BytesLike = bytes | bytearray | memoryview

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LEN = 2
WIRE_FIXED32 = 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}
_MAX_FIELD = (1 << 29) - 1
_U64 = (1 << 64) - 1
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
ERROR_CODE = "invalid_protobuf"
MAX_FIELDS = 10_000  # fields of one message, packed elements included (module doc)


def _malformed(what: str, problem: str) -> LocalProtocolError:
    return invalid(f"malformed {what}: {problem}", error=ERROR_CODE)


# -- low-level wire helpers ----------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode ``value`` as a varint; negative values as 10-byte two's complement."""
    if not -(1 << 63) <= value <= _U64:
        raise ValueError(f"{value} does not fit in 64 bits")
    value &= _U64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: BytesLike, pos: int, what: str = "protobuf message") -> tuple[int, int]:
    """Read a varint at ``pos``; return ``(value, next_pos)``. ``value`` is unsigned 64-bit."""
    end = len(buf)
    if pos < end:
        first = buf[pos]
        if first < 0x80:
            return first, pos + 1
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _malformed(what, f"truncated varint at offset {start}")
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            if byte & 0x80:
                raise _malformed(what, f"varint at offset {start} is longer than 10 bytes")
            raise _malformed(what, f"varint at offset {start} overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_tag(field: int, wire_type: int) -> bytes:
    """The key of a field: ``(field << 3) | wire_type`` as a varint."""
    if not 1 <= field <= _MAX_FIELD:
        raise ValueError(f"invalid protobuf field number {field}")
    return encode_varint((field << 3) | wire_type)


def encode_field_bytes(field: int, data: BytesLike) -> bytes:
    """A length-delimited field (bytes, string or message): tag, length, data."""
    return b"".join((encode_tag(field, WIRE_LEN), encode_varint(len(data)), data))


def encode_field_varint(field: int, value: int) -> bytes:
    """A varint field (int32/int64/uint64/bool/enum): tag, value."""
    return encode_tag(field, WIRE_VARINT) + encode_varint(value)


def decode_tag(buf: BytesLike, pos: int, what: str = "protobuf message") -> tuple[int, int, int]:
    """Read a field key at ``pos``; return ``(field, wire_type, next_pos)``.

    Field number 0 and wire types 3, 4 (groups), 6 and 7 are refused.
    """
    start = pos
    key, pos = decode_varint(buf, pos, what)
    field, wire_type = key >> 3, key & 7
    if wire_type not in _WIRE_NAMES:
        kind = "a deprecated group" if wire_type in (3, 4) else "an invalid"
        raise _malformed(what, f"field {field} at offset {start} has {kind} wire type {wire_type}")
    if not 1 <= field <= _MAX_FIELD:
        raise _malformed(what, f"invalid field number {field} at offset {start}")
    return field, wire_type, pos


def read_length_delimited(
    buf: BytesLike, pos: int, what: str = "protobuf message"
) -> tuple[int, int]:
    """Read a length at ``pos`` and check the data fits; return ``(start, end)`` of the data."""
    length, start = decode_varint(buf, pos, what)
    left = len(buf) - start
    if length > left:
        raise _malformed(
            what,
            f"length-delimited field of {length} bytes at offset {pos} runs past the "
            f"end of the message ({left} bytes left)",
        )
    return start, start + length


def iter_fields(buf: BytesLike, what: str = "protobuf message") -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field, wire_type, value)`` for every field of a complete message.

    ``value`` is an ``int`` for varint and fixed fields and a ``memoryview`` slice
    of ``buf`` for length-delimited ones.
    """
    view = memoryview(buf).cast("B") if isinstance(buf, memoryview) else memoryview(buf)
    pos, end = 0, len(view)
    while pos < end:
        field, wire_type, pos = decode_tag(view, pos, what)
        if wire_type == WIRE_VARINT:
            value, pos = decode_varint(view, pos, f"{what} field {field}")
            yield field, wire_type, value
        elif wire_type == WIRE_LEN:
            start, pos = read_length_delimited(view, pos, f"{what} field {field}")
            yield field, wire_type, view[start:pos]
        else:
            size = 8 if wire_type == WIRE_FIXED64 else 4
            if end - pos < size:
                raise _malformed(what, f"truncated {_WIRE_NAMES[wire_type]} field {field}")
            codec = _FIXED64 if size == 8 else _FIXED32
            yield field, wire_type, codec.unpack_from(view, pos)[0]
            pos += size


# -- message tables ------------------------------------------------------------


class Kind(enum.Enum):
    """A field's proto3 type."""

    INT32 = enum.auto()  # also proto3 enums
    INT64 = enum.auto()
    UINT32 = enum.auto()
    UINT64 = enum.auto()
    BOOL = enum.auto()
    BYTES = enum.auto()
    STRING = enum.auto()
    MESSAGE = enum.auto()
    IGNORED = enum.auto()  # length-delimited, skipped on decode, never written


_VARINT_KINDS = frozenset({Kind.INT32, Kind.INT64, Kind.UINT32, Kind.UINT64, Kind.BOOL})
_DEFAULTS: dict[Kind, Any] = {
    Kind.BOOL: False,
    Kind.BYTES: b"",
    Kind.STRING: "",
    Kind.MESSAGE: None,
}
_RANGES = {
    Kind.INT32: (-(1 << 31), (1 << 31) - 1),
    Kind.INT64: (-(1 << 63), (1 << 63) - 1),
    Kind.UINT32: (0, (1 << 32) - 1),
    Kind.UINT64: (0, _U64),
}


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    name: str
    kind: Kind
    repeated: bool = False
    message: type[Message] | None = None
    optional: bool = False  # proto3 ``optional``: absent is None, present is kept as sent

    @property
    def default(self) -> Any:
        if self.repeated:
            return ()
        return None if self.optional else _DEFAULTS.get(self.kind, 0)

    @property
    def packed(self) -> bool:
        return self.repeated and self.kind in _VARINT_KINDS

    @property
    def wire_type(self) -> int:
        return WIRE_VARINT if self.kind in _VARINT_KINDS else WIRE_LEN


def pb(
    number: int,
    kind: Kind,
    *,
    repeated: bool = False,
    message: type[Message] | None = None,
    default: Any = None,
    optional: bool = False,
) -> Any:
    """Declare a dataclass field as protobuf field ``number`` of type ``kind``."""
    spec = Field(number, "", kind, repeated, message, optional)
    return dataclasses.field(
        default=spec.default if default is None else default, metadata={"pb": spec}
    )


_TABLES: dict[type[Message], dict[int, Field]] = {}


def fields_of(cls: type[Message]) -> dict[int, Field]:
    """The field table of a message class, by field number (built once)."""
    table = _TABLES.get(cls)
    if table is None:
        table = {n: Field(n, name, Kind.IGNORED) for n, name in cls.IGNORED_FIELDS.items()}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            spec = f.metadata["pb"]
            table[spec.number] = dataclasses.replace(spec, name=f.name)
        table = _TABLES[cls] = dict(sorted(table.items()))
    return table


class Message:
    """Base of the message dataclasses: fields declared with ``pb()``, a generic codec."""

    __slots__ = ()
    IGNORED_FIELDS: ClassVar[dict[int, str]] = {}  # length-delimited fields to skip

    def encode(self) -> bytes:
        parts: list[bytes] = []
        for f in fields_of(type(self)).values():
            if f.kind is Kind.IGNORED:
                continue
            value = getattr(self, f.name)
            if f.packed:
                if value:
                    packed = b"".join(encode_varint(_checked(f, item)) for item in value)
                    parts.append(encode_field_bytes(f.number, packed))
            elif f.repeated:  # every element is written, defaults included
                parts.extend(_encode_value(f, item, keep=True) for item in value)
            elif f.optional:
                if value is not None:
                    parts.append(_encode_value(f, value, keep=True))
            else:
                parts.append(_encode_value(f, value, keep=False))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: BytesLike) -> Self:
        return cls._decode(data, cls.__name__)

    @classmethod
    def _decode(cls, data: BytesLike, path: str) -> Self:
        table = fields_of(cls)
        seen: dict[int, list[Any]] = {}
        count = 0
        for number, wire_type, raw in iter_fields(data, path):
            count += 1
            if count > MAX_FIELDS:
                raise _too_many(path)
            f = table.get(number)
            if f is None:
                continue
            expected = f.wire_type
            if f.packed and wire_type == WIRE_LEN:  # packed: a run of varints
                packed = _unpack(raw, f"{path} field {number}", MAX_FIELDS - count + 1)
                if packed is None:
                    raise _too_many(path)
                count += len(packed) - 1
                seen.setdefault(number, []).extend(packed)
                continue
            if wire_type != expected:
                raise _malformed(
                    path,
                    f"field {number} ({f.name}) has wire type {wire_type} "
                    f"({_WIRE_NAMES[wire_type]}), expected {expected} ({_WIRE_NAMES[expected]})",
                )
            seen.setdefault(number, []).append(raw)
        values: dict[str, Any] = {}
        for number, f in table.items():
            raws = seen.get(number, [])
            if f.kind is Kind.IGNORED:
                continue
            if f.repeated:
                labels = (f"{f.name}[{i}]" for i in range(len(raws)))
                values[f.name] = tuple(map(partial(_decode_value, f, path), raws, labels))
            elif not raws:
                values[f.name] = f.default
            elif f.kind is Kind.MESSAGE:  # occurrences merge
                values[f.name] = _decode_value(f, path, b"".join(raws), f.name)
            else:  # every occurrence is checked; the last one wins
                values[f.name] = [_decode_value(f, path, raw, f.name) for raw in raws][-1]
        return cls(**values)


def _unpack(raw: memoryview, what: str, limit: int) -> list[int] | None:
    """The varints of a packed field; None if there are more than ``limit``."""
    values: list[int] = []
    pos = 0
    while pos < len(raw):
        if len(values) == limit:
            return None
        value, pos = decode_varint(raw, pos, what)
        values.append(value)
    return values


def _too_many(path: str) -> LocalProtocolError:
    return _malformed(path, f"it has more than {MAX_FIELDS} fields (repeated elements included)")


def _encode_value(f: Field, value: Any, *, keep: bool) -> bytes:
    """One occurrence of field ``f``; ``b""`` for a default value unless ``keep``."""
    kind = f.kind
    if kind is Kind.MESSAGE:
        return b"" if value is None else encode_field_bytes(f.number, value.encode())
    if not value and not keep:
        return b""
    if kind is Kind.STRING:
        return encode_field_bytes(f.number, value.encode("utf-8"))
    if kind is Kind.BYTES:
        return encode_field_bytes(f.number, value)
    return encode_field_varint(f.number, _checked(f, value))


def _checked(f: Field, value: Any) -> int:
    """A varint field's value as an int; out of its kind's range is the caller's bug."""
    if f.kind is not Kind.BOOL:
        low, high = _RANGES[f.kind]
        if not low <= value <= high:
            raise ValueError(f"{f.name}={value} is out of range for {f.kind.name.lower()}")
    return int(value)


def _decode_value(f: Field, path: str, raw: Any, label: str) -> Any:
    kind = f.kind
    if kind is Kind.BYTES:
        return bytes(raw)
    if kind is Kind.STRING:
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            problem = f"field {f.number} ({label}) is not valid UTF-8: {exc}"
            raise _malformed(path, problem) from None
    if kind is Kind.MESSAGE:
        assert f.message is not None
        return f.message._decode(raw, f"{path}.{label}")
    if kind is Kind.BOOL:
        return raw != 0
    if kind is Kind.UINT64:
        return raw
    if kind is Kind.UINT32:
        return raw & 0xFFFFFFFF
    bits = 32 if kind is Kind.INT32 else 64
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw
