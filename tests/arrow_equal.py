"""Compare what a client sent with what a backend stored, by LOGICAL value.

``differences(sent, stored)`` matches columns by name (case-insensitively; duplicates by their
order) and compares every row after turning both sides into canonical Python values, so that
an encoding or a lossless widening is not a difference but any changed value is:

- dictionaries (at any depth), run-end encoding, string/binary views, list views, extension
  types (by their storage) are decoded; large and small offsets are the same;
- temporal values are exact integers tagged with their kind: timestamps as ns since the epoch
  (``tstz`` for time-zone aware ones, compared as instants; ``ts`` for naive ones), times as ns,
  dates as days (a date64 that is not a whole day stays a difference), and durations and all
  intervals as ``(months, days, ns)``, so a duration stored as an INTERVAL compares equal;
- arrow.bool8 as booleans, DuckDB's opaque HUGEINT/UHUGEINT (its lossless Arrow export) as ``int``;
- decimals as ``Decimal`` (equal by value, whatever the precision and scale), integers as ``int``
  (any width, signed or not), floats as ``float`` (float16 too) with NaN equal to NaN, booleans
  tagged so that they never equal an integer;
- a null-typed column equals an all-null column of any type; maps are lists of (key, value) in
  order whatever their field names; structs are compared by field names (case-insensitively);
  union values by member name and value.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import struct
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.types as pt

__all__ = ["canonical", "differences"]

SHOWN_PER_COLUMN = 3  # differing rows described per column (the count is always given)


class _NaN:
    """The one canonical NaN: equal to itself, unlike ``float('nan')``."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NaN)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "NaN"


NAN = _NaN()

_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_NS_PER_DAY = 86_400 * 1_000_000_000
_MS_PER_DAY = 86_400_000


def differences(sent: pa.Table, stored: pa.Table) -> list[str]:
    """Every way ``stored`` differs from ``sent`` in logical values (empty: stored exactly)."""
    sent, stored = _readable(sent), _readable(stored)
    out: list[str] = []
    if stored.num_rows != sent.num_rows:
        out.append(f"row count: sent {sent.num_rows}, stored {stored.num_rows}")
    remaining = list(range(stored.num_columns))
    for i, field in enumerate(sent.schema):
        match = next(
            (j for j in remaining if stored.schema.field(j).name.lower() == field.name.lower()),
            None,
        )
        if match is None:
            out.append(f"column {field.name!r} ({field.type}) is missing from the stored table")
            continue
        remaining.remove(match)
        if stored.num_rows != sent.num_rows:
            continue
        out += _column_differences(field.name, sent.column(i), stored.column(match))
    for j in remaining:
        extra = stored.schema.field(j)
        out.append(f"column {extra.name!r} ({extra.type}) was stored but not sent")
    return out


def _column_differences(name: str, sent: pa.ChunkedArray, stored: pa.ChunkedArray) -> list[str]:
    try:
        left = canonical(sent)
    except Exception as exc:  # a test helper gap must show, not hide a column
        return [f"column {name!r}: cannot read the sent {sent.type}: {exc!r}"]
    try:
        right = canonical(stored)
    except Exception as exc:
        return [f"column {name!r}: cannot read the stored {stored.type}: {exc!r}"]
    rows = [r for r, (a, b) in enumerate(zip(left, right, strict=True)) if a != b]
    if not rows:
        return []
    shown = "; ".join(
        f"row {r}: sent {_show(left[r])}, stored {_show(right[r])}" for r in rows[:SHOWN_PER_COLUMN]
    )
    more = f" (and {len(rows) - SHOWN_PER_COLUMN} more)" if len(rows) > SHOWN_PER_COLUMN else ""
    return [
        f"column {name!r} ({sent.type} stored as {stored.type}): "
        f"{len(rows)} of {len(left)} rows differ: {shown}{more}"
    ]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def canonical(values: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The canonical Python value of every row of ``values`` (see the module docstring)."""
    if isinstance(values, pa.ChunkedArray):
        if _has_legacy_interval(values.type):
            values = _readable(pa.table({"c": values})).column(0)
        out: list[Any] = []
        for chunk in values.chunks:
            out += _canon(chunk)
        return out
    return _canon(values)


def _valid(arr: pa.Array) -> list[bool]:
    if arr.null_count == 0:
        return [True] * len(arr)
    return arr.is_valid().to_pylist()  # type: ignore[no-any-return]


def _canon(arr: pa.Array) -> list[Any]:
    t = arr.type
    if isinstance(t, _LegacyInterval):
        return _legacy_intervals(arr)
    if isinstance(t, pa.OpaqueType) and t.type_name in ("hugeint", "uhugeint"):
        signed = t.type_name == "hugeint"  # DuckDB's 128-bit integers, little-endian
        return [
            None if v is None else int.from_bytes(v, "little", signed=signed)
            for v in arr.storage.to_pylist()
        ]
    if isinstance(t, pa.Bool8Type):  # DuckDB's lossless export of BOOLEAN
        return [None if v is None else ("bool", v != 0) for v in arr.storage.to_pylist()]
    if isinstance(arr, pa.ExtensionArray):
        return _canon(arr.storage)
    if pt.is_dictionary(t):
        dictionary = _canon(arr.dictionary)
        return [None if i is None else dictionary[i] for i in arr.indices.to_pylist()]
    if pt.is_run_end_encoded(t):
        return _run_end_decoded(arr)
    if pt.is_null(t):
        return [None] * len(arr)
    if pt.is_boolean(t):
        return [None if v is None else ("bool", v) for v in arr.to_pylist()]
    if pt.is_integer(t):
        return arr.to_pylist()  # type: ignore[no-any-return]
    if pt.is_floating(t):
        return [_float(v) for v in arr.to_pylist()]
    if pt.is_decimal(t):
        return [None if v is None else Decimal(v) for v in arr.to_pylist()]
    if pt.is_timestamp(t):
        kind = "tstz" if t.tz is not None else "ts"
        return [None if v is None else (kind, v * _NS_PER[t.unit]) for v in _ints(arr)]
    if pt.is_time(t):
        return [None if v is None else ("time", v * _NS_PER[t.unit]) for v in _ints(arr)]
    if pt.is_date32(t):
        return [None if v is None else ("date", v) for v in _ints(arr)]
    if pt.is_date64(t):
        return [None if v is None else _date64(v) for v in _ints(arr)]
    if pt.is_duration(t):
        return [None if v is None else ("interval", 0, 0, v * _NS_PER[t.unit]) for v in _ints(arr)]
    if t.id in _INTERVAL_IDS:
        return _intervals(arr)
    if pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t):
        return arr.to_pylist()  # type: ignore[no-any-return]
    if (
        pt.is_binary(t)
        or pt.is_large_binary(t)
        or pt.is_binary_view(t)
        or pt.is_fixed_size_binary(t)
    ):
        return [None if v is None else bytes(v) for v in arr.to_pylist()]
    if pt.is_map(t):
        return _map(arr)
    if pt.is_list(t) or pt.is_large_list(t):
        items = _canon(arr.values)
        offsets = arr.offsets.to_pylist()
        return [
            items[offsets[i] : offsets[i + 1]] if ok else None for i, ok in enumerate(_valid(arr))
        ]
    if pt.is_list_view(t) or pt.is_large_list_view(t):
        items = _canon(arr.values)
        offsets, sizes = arr.offsets.to_pylist(), arr.sizes.to_pylist()
        return [
            items[offsets[i] : offsets[i] + sizes[i]] if ok else None
            for i, ok in enumerate(_valid(arr))
        ]
    if pt.is_fixed_size_list(t):
        size = t.list_size
        items = _canon(arr.values)
        base = arr.offset
        return [
            items[(base + i) * size : (base + i + 1) * size] if ok else None
            for i, ok in enumerate(_valid(arr))
        ]
    if pt.is_struct(t):
        return _struct(arr)
    if pt.is_union(t):
        return _union(arr)
    raise TypeError(f"no canonical form for Arrow type {t}")


def _float(v: float | None) -> Any:
    if v is None:
        return None
    v = float(v)
    return NAN if math.isnan(v) else v


def _ints(arr: pa.Array) -> list[int | None]:
    """The raw integer of every row of a temporal array."""
    width = pa.int32() if arr.type.bit_width == 32 else pa.int64()
    return arr.view(width).to_pylist()  # type: ignore[no-any-return]


def _date64(ms: int) -> tuple[str, int]:
    if ms % _MS_PER_DAY:
        return ("date64 not a whole day", ms)
    return ("date", ms // _MS_PER_DAY)


_INTERVAL_IDS = {pa.month_day_nano_interval().id}


def _intervals(arr: pa.Array) -> list[Any]:
    """(months, days, ns) of month_day_nano intervals."""
    return [
        None if v is None else ("interval", v.months, v.days, v.nanoseconds)
        for v in arr.to_pylist()
    ]


# -- month_interval and day_time_interval ------------------------------------------------------
# pyarrow 26 reads these from IPC but cannot wrap their arrays (KeyError on ``chunk``), cast or
# view them. Through the C data interface they are re-typed as extension types over int32
# (months) and int64 (a little-endian pair of int32 days and milliseconds), which pyarrow can.


class _LegacyInterval(pa.ExtensionType):  # type: ignore[misc]
    def __init__(self, unit: str) -> None:
        self.unit = unit
        storage = pa.int32() if unit == "month" else pa.int64()
        super().__init__(storage, f"arrow_equal.{unit}_interval")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> Any:
        return cls("month" if storage_type == pa.int32() else "day_time")


for _unit in ("month", "day_time"):
    with contextlib.suppress(pa.ArrowKeyError):  # imported twice under another module name
        pa.register_extension_type(_LegacyInterval(_unit))


def _legacy_intervals(arr: pa.Array) -> list[Any]:
    raw = arr.storage.to_pylist()
    if arr.type.unit == "month":
        return [None if v is None else ("interval", v, 0, 0) for v in raw]
    out: list[Any] = []
    for v in raw:
        if v is None:
            out.append(None)
            continue
        days, ms = struct.unpack("<ii", struct.pack("<q", v))
        out.append(("interval", 0, days, ms * 1_000_000))
    return out


def _has_legacy_interval(t: pa.DataType) -> bool:
    text = str(t)
    return "month_interval" in text or "day_time_interval" in text


class _CSchema(ctypes.Structure):
    pass


_CSchema._fields_ = [
    ("format", ctypes.c_void_p),
    ("name", ctypes.c_void_p),
    ("metadata", ctypes.c_void_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_CSchema))),
    ("dictionary", ctypes.POINTER(_CSchema)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _CArray(ctypes.Structure):
    _fields_ = [("words", ctypes.c_void_p * 10)]  # opaque here: passed through untouched


def _extension_metadata(name: str) -> bytes:
    pairs = [(b"ARROW:extension:name", name.encode()), (b"ARROW:extension:metadata", b"")]
    out = struct.pack("<i", len(pairs))
    for key, value in pairs:
        out += struct.pack("<i", len(key)) + key + struct.pack("<i", len(value)) + value
    return out


_RETYPE = {
    b"tiM": (ctypes.create_string_buffer(b"i"), _extension_metadata("arrow_equal.month_interval")),
    b"tiD": (
        ctypes.create_string_buffer(b"l"),
        _extension_metadata("arrow_equal.day_time_interval"),
    ),
}
_RETYPE_METADATA = {k: ctypes.create_string_buffer(v[1], len(v[1])) for k, v in _RETYPE.items()}


def _retype(schema: _CSchema) -> None:
    fmt = ctypes.string_at(schema.format) if schema.format else b""
    if fmt in _RETYPE:
        schema.format = ctypes.addressof(_RETYPE[fmt][0])
        schema.metadata = ctypes.addressof(_RETYPE_METADATA[fmt])
    for i in range(schema.n_children):
        _retype(schema.children[i].contents)
    if schema.dictionary:
        _retype(schema.dictionary.contents)


def _readable(table: pa.Table) -> pa.Table:
    """``table`` with month/day_time intervals (at any depth) re-typed as readable extensions."""
    if not any(_has_legacy_interval(f.type) for f in table.schema):
        return table
    batches = []
    for batch in table.to_batches():
        c_schema, c_array = _CSchema(), _CArray()
        batch._export_to_c(ctypes.addressof(c_array), ctypes.addressof(c_schema))
        _retype(c_schema)
        batches.append(
            pa.RecordBatch._import_from_c(ctypes.addressof(c_array), ctypes.addressof(c_schema))
        )
    if not batches:
        return table
    return pa.Table.from_batches(batches)


def _run_end_decoded(arr: pa.Array) -> list[Any]:
    values = _canon(arr.values)
    out: list[Any] = []
    start = 0
    for value, end in zip(values, arr.run_ends.to_pylist(), strict=False):
        out += [value] * (end - start)
        start = end
        if start >= arr.offset + len(arr):
            break
    return out[arr.offset : arr.offset + len(arr)]


def _struct(arr: pa.Array) -> list[Any]:
    names = _field_keys([arr.type.field(i).name for i in range(arr.type.num_fields)])
    children = [_canon(arr.field(i)) for i in range(arr.type.num_fields)]
    return [
        {name: child[r] for name, child in zip(names, children, strict=True)} if ok else None
        for r, ok in enumerate(_valid(arr))
    ]


def _field_keys(names: Sequence[str]) -> list[str | tuple[str, int]]:
    """Field names lowered; a repeated name keyed with its occurrence."""
    keys: list[str | tuple[str, int]] = []
    seen: dict[str, int] = {}
    for name in names:
        low = name.lower()
        n = seen.get(low, 0)
        seen[low] = n + 1
        keys.append(low if n == 0 else (low, n))
    return keys


def _map(arr: pa.Array) -> list[Any]:
    entries = arr.values
    pairs = list(zip(_canon(entries.field(0)), _canon(entries.field(1)), strict=True))
    offsets = arr.offsets.to_pylist()
    return [pairs[offsets[i] : offsets[i + 1]] if ok else None for i, ok in enumerate(_valid(arr))]


def _buffer_ints(t: pa.DataType, buffer: pa.Buffer, arr: pa.Array) -> list[int]:
    view = pa.Array.from_buffers(t, len(arr), [None, buffer], offset=arr.offset)
    return view.to_pylist()  # type: ignore[no-any-return]


def _union(arr: pa.Array) -> list[Any]:
    t = arr.type
    codes = list(t.type_codes)
    names = [t.field(j).name.lower() for j in range(t.num_fields)]
    children = [_canon(arr.field(j)) for j in range(t.num_fields)]
    if len(arr) == 0:  # pyarrow 26 crashes reading type_codes of an empty union
        return []
    # arr.type_codes / arr.offsets segfault in pyarrow 26 on some IPC-read unions: use buffers
    buffers = arr.buffers()
    type_codes = _buffer_ints(pa.int8(), buffers[1], arr)
    dense = t.mode == "dense"
    positions = _buffer_ints(pa.int32(), buffers[2], arr) if dense else range(len(arr))
    out: list[Any] = []
    for code, pos in zip(type_codes, positions, strict=True):
        j = codes.index(code)
        value = children[j][pos]
        out.append(None if value is None else ("union", names[j], value))
    return out
