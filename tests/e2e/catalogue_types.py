"""Catalogue inputs that are valid Arrow a backend cannot store exactly (issue 16).

Each must be refused 422 (or 400 for a schema that is not valid Arrow) naming the column,
before anything is written, on every backend it applies to; the server keeps serving. The
cases build on ``catalogue_inputs``' helpers and are appended to its ``CASES``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from catalogue_inputs import INVALID, Case, Grpc, Http, Msg, _both, messages, write_stream


def _stream(columns: dict[str, pa.Array]) -> Callable[[], list[Msg]]:
    def build() -> list[Msg]:
        batch = pa.record_batch(columns)
        return messages(write_stream(batch.schema, [batch]))

    return build


def _empty_schema() -> list[Msg]:
    return messages(write_stream(pa.schema([]), []))


def _bad_utf8_name() -> list[Msg]:
    msgs = _stream({"id": pa.array([1, 2]), "qzq": pa.array([3, 4])})()
    schema = msgs[0]
    return [Msg(schema.metadata.replace(b"qzq", b"\xff\xfeq"), schema.body), *msgs[1:]]


def _deep_list(levels: int) -> pa.Array:
    arr: pa.Array = pa.array([1], pa.int64())
    for _ in range(levels - 1):
        arr = pa.ListArray.from_arrays(pa.array([0, len(arr)], pa.int32()), arr)
    return arr


def _refused(
    name: str,
    what: str,
    msgs: Callable[[], list[Msg]],
    error: str,
    says: str,
    servers: tuple[str, ...] = ("plain", "lake", "ducklake"),
    status: int = 422,
) -> Case:
    return Case(
        name,
        what,
        **_both(msgs, Http(status, error, says), Grpc(INVALID, says), servers=servers),  # type: ignore[arg-type]
    )


MDN = pa.month_day_nano_interval()
TYPE_CASES: list[Case] = [
    _refused(
        "type_timestamp_ns_tz_cut",
        "a timestamp[ns, UTC] column holding 1,001 ns (every backend stores microseconds)",
        _stream({"ts": pa.array([1_001], pa.timestamp("ns", "UTC"))}),
        "unrepresentable_value",
        "column 'ts'.*would lose data",
    ),
    _refused(
        "type_interval_sub_micro",
        "a month_day_nano interval with 1,001 ns (DuckDB's INTERVAL holds microseconds)",
        _stream({"iv": pa.array([pa.scalar((1, 2, 1_001), MDN).as_py()], MDN)}),
        "unrepresentable_value",
        "column 'iv'.*sub-microsecond",
        servers=("plain",),
    ),
    _refused(
        "type_interval_sub_milli_ducklake",
        "a month_day_nano interval with 1,001 ns sent to DuckLake (Parquet intervals hold "
        "milliseconds)",
        _stream({"iv": pa.array([pa.scalar((1, 2, 1_001), MDN).as_py()], MDN)}),
        "unrepresentable_value",
        "column 'iv'.*whole number of milliseconds",
        servers=("ducklake",),
    ),
    _refused(
        "type_interval_delta",
        "a month_day_nano interval column sent to Delta (no interval type)",
        _stream({"iv": pa.array([pa.scalar((1, 2, 3_000), MDN).as_py()], MDN)}),
        "unsupported_type",
        "'iv'.*Delta has no interval type",
        servers=("lake",),
    ),
    _refused(
        "type_time_ns_ducklake",
        "a time64[ns] column with 1,001 ns (DuckLake's Parquet writer aborts on TIME_NS)",
        _stream({"t": pa.array([1_001], pa.time64("ns"))}),
        "unrepresentable_value",
        "column 't'.*would lose data",
        servers=("ducklake",),
    ),
    _refused(
        "type_time_negative",
        "a time32[s] column holding -1 s (invalid Arrow; it invalidated the DuckLake database)",
        _stream({"t": pa.array([-1], pa.time32("s"))}),
        "invalid_batch",
        "column 0.*not within the acceptable range",
        servers=("plain", "ducklake"),
        status=400,
    ),
    _refused(
        "type_duration_sub_ms_ducklake",
        "a duration[us] of 1,500 us sent to DuckLake (Parquet intervals hold milliseconds: "
        "it was stored as 1 ms)",
        _stream({"d": pa.array([1_500], pa.duration("us"))}),
        "unrepresentable_value",
        "column 'd'.*not a multiple of 1000",
        servers=("ducklake",),
    ),
    _refused(
        "type_interval_wrap_ducklake",
        "a month_day_nano interval of 100 days in nanoseconds sent to DuckLake (it was stored as "
        "about 14 hours)",
        _stream({"iv": pa.array([pa.scalar((0, 0, 100 * 86_400 * 10**9), MDN).as_py()], MDN)}),
        "unrepresentable_value",
        "column 'iv'.*below 2\\*\\*32",
        servers=("ducklake",),
    ),
    _refused(
        "type_union_null",
        "a sparse union holding a null (DuckDB reads it back as a null of another member)",
        _stream(
            {
                "u": pa.UnionArray.from_sparse(
                    pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", None])]
                )
            }
        ),
        "unrepresentable_value",
        "column 'u'.*union value is null",
        servers=("plain",),
    ),
    _refused(
        "type_date_min",
        "a date32 column holding -2**31 days (broke every later DuckLake read)",
        _stream({"d": pa.array([-(2**31)], pa.date32())}),
        "unrepresentable_value",
        "column 'd'.*outside the range",
    ),
    _refused(
        "type_date64_part_day",
        "a date64 column holding 1,000 ms (not a whole day, invalid Arrow: DuckDB would cut it)",
        _stream({"d": pa.array([1_000], pa.date64())}),
        "invalid_batch",
        "column 0.*whole number of days",
        status=400,
    ),
    _refused(
        "type_duration_ns",
        "a duration[ns] column holding 1 ns (DuckDB's INTERVAL holds microseconds)",
        _stream({"d": pa.array([1], pa.duration("ns"))}),
        "unrepresentable_value",
        "column 'd'.*would lose data",
        servers=("plain", "ducklake"),
    ),
    _refused(
        "type_uint64_delta",
        "a uint64 column holding 2**64 - 1 sent to Delta (signed integers only)",
        _stream({"u": pa.array([2**64 - 1], pa.uint64())}),
        "unrepresentable_value",
        "column 'u'",
        servers=("lake",),
    ),
    _refused(
        "type_decimal_over_precision",
        "a decimal128(3, 2) column holding -321.39 (more digits than declared)",
        _stream({"x": pa.array([-32139], pa.int64()).cast(pa.decimal128(38, 0))}),
        "unrepresentable_value",
        "column 'x'",
        servers=(),
    ),
    _refused(
        "type_decimal256_wide",
        "a decimal256(40, 5) column (more than 38 digits: no backend stores it)",
        _stream({"x": pa.array([1], pa.decimal256(40, 5))}),
        "unsupported_type",
        "'x'.*precision above 38",
    ),
    _refused(
        "type_map_duplicate_key",
        "a map holding the key 'a' twice (one value would be dropped)",
        _stream({"m": pa.array([[("a", 1), ("a", 2)]], pa.map_(pa.string(), pa.int64()))}),
        "unrepresentable_value",
        "column 'm'.*same key twice",
    ),
    _refused(
        "type_dense_union",
        "a dense union column (DuckDB reads sparse unions only; no union in Delta or DuckLake)",
        _stream(
            {
                "u": pa.UnionArray.from_dense(
                    pa.array([0], pa.int8()), pa.array([0], pa.int32()), [pa.array([1])]
                )
            }
        ),
        "unsupported_type",
        "'u'",
    ),
    _refused(
        "type_struct_no_fields",
        "a struct column with no fields",
        _stream({"s": pa.array([{}], pa.struct([]))}),
        "unsupported_type",
        "'s'.*no fields",
    ),
    _refused(
        "type_nested_63",
        "a list nested 63 levels deep (DuckDB failed with 503)",
        _stream({"deep": _deep_list(63)}),
        "unsupported_type",
        "'deep'.*nested more than (32|16) levels",
    ),
    _refused(
        "type_name_nul",
        "a column named `x\\x00y` (DuckDB stored it as `x`)",
        _stream({"x\0y": pa.array([1])}),
        "unsupported_type",
        "NUL",
    ),
    _refused(
        "type_names_nul_twins",
        "two columns `x\\x00a` and `x\\x00b` (both `x` to DuckDB: 503 before)",
        _stream({"x\0a": pa.array([1]), "x\0b": pa.array([2])}),
        "unsupported_type",
        "NUL",
    ),
    _refused(
        "type_empty_schema",
        "a stream whose schema has no columns (503 before)",
        _empty_schema,
        "schema_mismatch",
        "no columns",
    ),
    _refused(
        "type_name_not_utf8",
        "a column name that is not valid UTF-8 (500 before)",
        _bad_utf8_name,
        "invalid_schema",
        "not valid UTF-8",
        status=400,
    ),
]
TYPE_CASES = [case for case in TYPE_CASES if case.servers]
