"""The one Arrow -> storage type mapping, per backend (published as docs/types.md).

Invariants:

* It is an allowlist. Every Arrow type a stream may carry is either kept
  as it is, converted to a type that holds exactly the same values, or
  refused (422, naming the column and the reason). A type not named in
  ``_map`` is refused. Nothing outside the set the conformance suite
  (tests/e2e/test_conformance.py) proves safe reaches DuckDB, DuckLake or
  delta-rs, whose faults on other input kill or disable the server.
* The plan is made from the schema, before anything is written; values a
  backend cannot hold (sub-microsecond parts where it stores microseconds,
  dates past its range, a map with a key twice) are refused when their
  batch is converted, which happens before the batch reaches the engine.
  Nothing is ever stored changed.
* A column whose type is kept is passed through zero-copy.
* Field metadata is dropped from what the engines see (the engines read
  extension types from it; the table keeps none of it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa

from . import arrays
from .arrays import Convert, ValueRefused, chain
from .errors import SchemaMismatchError, UnrepresentableValueError, UnsupportedTypeError

# Levels of list/struct/map inside a column: DuckDB fails at 63; a DuckLake read of a
# 32-level list ran for minutes; delta-rs breaks at 63 (tables it cannot read again).
MAX_NESTING = {"duckdb": 32, "ducklake": 16, "delta": 16}


class Backend(enum.Enum):
    DUCKDB = "duckdb"
    DUCKLAKE = "ducklake"
    DELTA = "delta"


# Canonical extension types DuckDB maps to its own types (UUID, JSON, BOOLEAN).
_DUCKDB_EXTENSIONS = frozenset({"arrow.uuid", "arrow.json", "arrow.bool8"})
_UNSIGNED_TO_SIGNED = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.int64(),  # values above 2**63 - 1 are refused
}
# DuckDB keeps +-(2**31 - 1) days for +-infinity; -2**31 breaks DuckLake reads.
_DATE_RANGE = (-(2**31) + 2, 2**31 - 2)
# Delta (as Spark) dates and timestamps run from 0001-01-01 to 9999-12-31; delta-rs
# panics on dates far outside it.
_DELTA_DATE_RANGE = (-719_162, 2_932_896)
_DELTA_TIMESTAMP_RANGE_US = (-62_135_596_800_000_000, 253_402_300_799_999_999)
_DAY_MS = 86_400_000
_PARQUET_INTERVAL_MAX_US = (2**32 - 1) * 1_000
_DUCKDB_TIMESTAMP_RANGE_US = (-9_223_372_022_400_000_000, 9_223_372_036_854_775_806)
# DuckLake's Parquet writer needs a time of day: 00:00 to 24:00 (others fail, are
# changed, or invalidate the database).
_TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_INTERVALS = frozenset({"month_interval", "day_time_interval", "month_day_nano_interval"})


class _Refused(Exception):
    """A type (not a value) the backend cannot store."""


@dataclass(frozen=True, slots=True)
class _Node:
    target: pa.DataType
    convert: Convert | None = None  # None: the array is kept as it is


@dataclass(frozen=True, slots=True)
class TypePlan:
    """How one stream's columns are stored in one backend."""

    backend: Backend
    source: pa.Schema
    target: pa.Schema
    converts: tuple[Convert | None, ...]

    @property
    def identity(self) -> bool:
        return all(c is None for c in self.converts)

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` in the target types; ``UnrepresentableValueError`` (422) names a
        column holding a value the backend cannot store exactly.

        Only converted columns are touched: pyarrow cannot wrap some arrays that
        the engines read directly (a year-month interval raises KeyError)."""
        for i, convert in enumerate(self.converts):
            if convert is None:
                continue
            field = self.source.field(i)
            try:
                column = convert(batch.column(i))
            except ValueRefused as exc:
                raise UnrepresentableValueError(
                    f"column {field.name!r} ({field.type}) holds a value "
                    f"{_label(self.backend)} cannot store exactly: {exc}"
                ) from None
            except (pa.ArrowException, ValueError) as exc:  # a shape no rule foresaw
                raise UnsupportedTypeError(
                    f"column {field.name!r} ({field.type}) could not be converted for "
                    f"{_label(self.backend)}: {arrays.one_line(exc)}"
                ) from None
            batch = batch.set_column(i, self.target.field(i), column)
        return batch


def plan(schema: pa.Schema, backend: str | Backend) -> TypePlan:
    """The plan for ``schema`` in ``backend``; 422 naming every column it cannot store."""
    kind = Backend(backend)
    if len(schema) == 0:
        raise SchemaMismatchError("stream schema has no columns")
    fields, converts, bad = [], [], []
    for field in schema:
        try:
            _check_name(field.name)
            node = _map(field.type, kind, 0)
        except _Refused as exc:
            bad.append(f"{field.name!r} ({field.type}: {exc})")
            continue
        # without metadata at any depth: DuckDB reads extension names from it (a
        # `geoarrow.wkb` binary column would become GEOMETRY and its bytes change)
        fields.append(pa.field(field.name, _bare(node.target), field.nullable))
        converts.append(node.convert)
    if bad:
        raise UnsupportedTypeError(f"{_label(kind)} cannot store these columns: " + "; ".join(bad))
    return TypePlan(backend=kind, source=schema, target=pa.schema(fields), converts=tuple(converts))


def _label(kind: Backend) -> str:
    return {"duckdb": "DuckDB", "ducklake": "DuckLake", "delta": "Delta"}[kind.value]


def _check_name(name: str) -> None:
    if "\0" in name:
        raise _Refused("a field name holds a NUL character, which DuckDB and Parquet cut")


def _field(f: pa.Field, kind: Backend, depth: int) -> tuple[pa.Field, Convert | None]:
    _check_name(f.name)
    node = _map(f.type, kind, depth)
    return pa.field(f.name, node.target, f.nullable), node.convert


def _map(t: pa.DataType, kind: Backend, depth: int) -> _Node:
    if depth > MAX_NESTING[kind.value]:
        raise _Refused(f"nested more than {MAX_NESTING[kind.value]} levels deep")
    delta = kind is Backend.DELTA
    lake = kind is Backend.DUCKLAKE
    if isinstance(t, pa.BaseExtensionType):
        if not delta and t.extension_name in _DUCKDB_EXTENSIONS:
            return _Node(t)
        inner = _map(t.storage_type, kind, depth)
        return _Node(inner.target, chain(arrays.storage, inner.convert))
    if pa.types.is_dictionary(t):
        inner = _map(t.value_type, kind, depth)
        if not delta and depth == 0 and inner.convert is None and _flat(t.value_type):
            return _Node(t)  # a top-level categorical of strings or numbers
        return _Node(arrays.plain_type(inner.target), arrays.dictionary_decode(inner.convert))
    if pa.types.is_run_end_encoded(t):
        inner = _map(t.value_type, kind, depth)
        return _Node(arrays.plain_type(inner.target), arrays.run_end_decode(inner.convert))
    if pa.types.is_null(t):
        if delta:  # delta-rs writes Delta's `void`, which other readers refuse
            return _Node(pa.string(), lambda a: pa.nulls(len(a), pa.string()))
        return _Node(t)
    if pa.types.is_boolean(t) or pa.types.is_signed_integer(t):
        return _Node(t)
    if pa.types.is_unsigned_integer(t):
        if delta:  # Delta has signed integers only
            wide = _UNSIGNED_TO_SIGNED[t]
            return _Node(wide, arrays.safe_cast(wide))
        return _Node(t)
    if pa.types.is_float16(t):
        return _Node(pa.float32(), arrays.safe_cast(pa.float32()))
    if pa.types.is_floating(t):
        return _Node(t)
    if pa.types.is_decimal(t):
        if t.precision > 38:
            raise _Refused("precision above 38 digits, the most DuckDB and Delta store")
        if not 0 <= t.scale <= t.precision:
            raise _Refused("a scale below 0 or above the precision, which no backend stores")
        digits = arrays.check_precision(t.precision, t.scale)
        if isinstance(t, pa.Decimal256Type) or (delta and not isinstance(t, pa.Decimal128Type)):
            wide = pa.decimal128(t.precision, t.scale)
            return _Node(wide, chain(digits, arrays.safe_cast(wide)))
        return _Node(t, digits)
    if pa.types.is_date(t):
        low, high = _DELTA_DATE_RANGE if delta else _DATE_RANGE
        days = arrays.check_range(low, high, "date (days since 1970-01-01)")
        if pa.types.is_date32(t):
            return _Node(t, days)
        millis = arrays.check_range(low * _DAY_MS, high * _DAY_MS, "date (ms since 1970-01-01)")
        return _Node(pa.date32(), chain(millis, arrays.safe_cast(pa.date32()), days))
    if pa.types.is_time(t):
        if delta:
            raise _Refused("Delta has no time-of-day type")
        if not lake:
            return _Node(t)
        day = arrays.check_range(0, 86_400 * _TIME_UNITS[t.unit], "time of day")
        if t.unit == "ns":  # DuckLake's Parquet writer aborts on TIME_NS
            return _Node(pa.time64("us"), chain(day, arrays.safe_cast(pa.time64("us"))))
        return _Node(t, day)
    if pa.types.is_timestamp(t):
        return _timestamp(t, kind)
    if pa.types.is_duration(t):
        if delta:
            raise _Refused("Delta has no duration type")
        if lake:  # Parquet's INTERVAL: unsigned milliseconds, at most 2**32 - 1
            parquet = arrays.check_range(0, _PARQUET_INTERVAL_MAX_US, "duration (us)")
            whole_ms = arrays.check_multiple(1_000, "duration (us)")
            return _Node(pa.duration("us"), chain(arrays.duration_micros, parquet, whole_ms))
        return _Node(pa.duration("us"), arrays.duration_micros)
    if str(t) in _INTERVALS:
        if delta:
            raise _Refused("Delta has no interval type")
        if t == pa.month_day_nano_interval():
            if lake:
                return _Node(t, arrays.month_day_nano_parquet)
            return _Node(t, arrays.month_day_nano_micros)
        if str(t) == "day_time_interval":
            # DuckDB folds the days into microseconds (1 day becomes 24 hours, which
            # differ across a DST change) and fails on large values; pyarrow 26 cannot
            # convert the array either.
            raise _Refused("day-time intervals are not stored; send month_day_nano_interval")
        if lake:  # pyarrow cannot read the months to check them for Parquet's INTERVAL
            raise _Refused(
                "DuckLake refuses negative year-month intervals and pyarrow cannot check "
                "them; send month_day_nano_interval"
            )
        return _Node(t)  # DuckDB reads year-month intervals exactly
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        if delta:
            plain = pa.large_string() if pa.types.is_string_view(t) else pa.large_binary()
            return _Node(plain, arrays.safe_cast(plain))
        return _Node(t)
    if pa.types.is_fixed_size_binary(t):  # incl. decimals handled above
        if delta:
            return _Node(pa.binary(), arrays.safe_cast(pa.binary()))
        return _Node(t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _Node(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _Node(t)
    return _nested(t, kind, depth)


def _timestamp(t: pa.TimestampType, kind: Backend) -> _Node:
    micros = pa.timestamp("us", t.tz)
    to_micros = None if t.unit == "us" else arrays.safe_cast(micros)
    if kind is Backend.DELTA:  # Delta stores microseconds, years 1 to 9999
        span = arrays.check_range(*_DELTA_TIMESTAMP_RANGE_US, "timestamp (us since 1970)")
        if t.tz is not None and t.tz != "UTC":  # Delta's timestamp is a UTC instant
            utc = pa.timestamp("us", "UTC")
            return _Node(utc, chain(to_micros, arrays.safe_cast(utc), span))
        return _Node(micros, chain(to_micros, span))
    # DuckDB's range (int64 max and -max are its +-infinity); outside it a read fails
    low, high = _DUCKDB_TIMESTAMP_RANGE_US
    span = arrays.check_range(low, high, "timestamp (us since 1970)")
    if t.tz is not None:  # DuckDB's TIMESTAMP WITH TIME ZONE holds microseconds
        return _Node(micros, chain(to_micros, span))
    if t.unit == "ns":
        return _Node(t, arrays.check_range(-(2**63) + 2, 2**63 - 2, "timestamp (ns since 1970)"))
    per = {"s": 1_000_000, "ms": 1_000, "us": 1}[t.unit]
    return _Node(t, arrays.check_range(-(-low // per), high // per, "timestamp"))


def _nested(t: pa.DataType, kind: Backend, depth: int) -> _Node:
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        item, convert = _field(t.value_field, kind, depth + 1)
        if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
            large = pa.types.is_large_list_view(t)
            plain = pa.large_list(t.value_field) if large else pa.list_(t.value_field)
            target = pa.large_list(item) if large else pa.list_(item)
            steps = [arrays.list_view_to_list(plain)]
            if convert is not None:
                steps.append(arrays.rebuild_list(target, convert))
            return _Node(target, chain(*steps))
        if pa.types.is_fixed_size_list(t):
            if kind is not Backend.DUCKDB:  # Delta and DuckLake: a list of the same values
                plain = pa.list_(t.value_field)
                target = pa.list_(item)
                fixed = arrays.fixed_size_list_to_list(plain)
                rebuilt = arrays.rebuild_list(target, convert) if convert is not None else None
                return _Node(target, chain(fixed, rebuilt))
            target = pa.list_(item, t.list_size)
        else:
            target = pa.large_list(item) if pa.types.is_large_list(t) else pa.list_(item)
        if convert is None and target == t:
            return _Node(t)
        return _Node(target, arrays.rebuild_list(target, convert or (lambda a: a)))
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            raise _Refused("a struct with no fields")
        names = [t.field(i).name.lower() for i in range(t.num_fields)]
        if len(set(names)) != len(names):
            raise _Refused("a struct with two fields of the same name (ignoring case)")
        mapped = [_field(t.field(i), kind, depth + 1) for i in range(t.num_fields)]
        target = pa.struct([f for f, _ in mapped])
        children = [c for _, c in mapped]
        if all(c is None for c in children) and target == t:
            return _Node(t)
        return _Node(target, arrays.rebuild_struct(target, children))
    if pa.types.is_map(t):
        key, key_convert = _field(t.key_field, kind, depth + 1)
        item, item_convert = _field(t.item_field, kind, depth + 1)
        target = pa.map_(key, item, t.keys_sorted)
        rebuild = None
        if key_convert is not None or item_convert is not None or target != t:
            rebuild = arrays.rebuild_map(target, key_convert, item_convert)
        return _Node(target, chain(rebuild, _unique_keys))
    if pa.types.is_union(t):
        if kind is not Backend.DUCKDB:
            raise _Refused(f"{_label(kind)} has no union type")
        if t.mode != "sparse":
            raise _Refused("DuckDB reads sparse unions only; send a sparse union")
        for i in range(t.num_fields):
            _, convert = _field(t.field(i), kind, depth + 1)
            if convert is not None or t.type_codes[i] != i:
                raise _Refused("a union member that needs conversion, or out-of-order type codes")
        return _Node(t, arrays.union_without_nulls)
    raise _Refused("no storage type for it")


def _bare(t: pa.DataType) -> pa.DataType:
    """``t`` with no field metadata at any depth (an equal type: pyarrow compares
    types without it, so the arrays need no conversion)."""
    if isinstance(t, pa.BaseExtensionType) or not t.num_fields:
        return t
    if pa.types.is_struct(t):
        return pa.struct([_bare_field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(_bare_field(t.key_field), _bare_field(t.item_field), t.keys_sorted)
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_bare_field(t.value_field), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(_bare_field(t.value_field))
    if pa.types.is_list(t):
        return pa.list_(_bare_field(t.value_field))
    if pa.types.is_union(t):
        members = [_bare_field(t.field(i)) for i in range(t.num_fields)]
        return pa.union(members, t.mode, list(t.type_codes))
    return t


def _bare_field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, _bare(f.type), f.nullable)


def _unique_keys(arr: pa.Array) -> pa.Array:
    arrays.check_unique_keys(arr)
    return arr


def _flat(t: pa.DataType) -> bool:
    """A dictionary value type DuckDB reads in place (strings, binaries, numbers)."""
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_signed_integer(t)
        or (pa.types.is_floating(t) and not pa.types.is_float16(t))
    )
