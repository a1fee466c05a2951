"""The Arrow -> storage type plans (storage/typemap.py) and docs/types.md, which publishes them."""

from __future__ import annotations

import re
import struct
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.lib
import pytest

from arrowport.io.status import http_status
from arrowport.storage import (
    SchemaMismatchError,
    UnrepresentableValueError,
    UnsupportedTypeError,
    typemap,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "types.md"
BACKENDS = ("duckdb", "ducklake", "delta")
MDN = pa.month_day_nano_interval()

# One type per Arrow type id (the two pyarrow cannot build are checked for presence only).
REPRESENTATIVE: dict[str, pa.DataType] = {
    "NA": pa.null(),
    "BOOL": pa.bool_(),
    "UINT8": pa.uint8(),
    "INT8": pa.int8(),
    "UINT16": pa.uint16(),
    "INT16": pa.int16(),
    "UINT32": pa.uint32(),
    "INT32": pa.int32(),
    "UINT64": pa.uint64(),
    "INT64": pa.int64(),
    "HALF_FLOAT": pa.float16(),
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "STRING": pa.string(),
    "BINARY": pa.binary(),
    "FIXED_SIZE_BINARY": pa.binary(16),
    "DATE32": pa.date32(),
    "DATE64": pa.date64(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIME32": pa.time32("ms"),
    "TIME64": pa.time64("us"),
    "DECIMAL128": pa.decimal128(10, 2),
    "DECIMAL256": pa.decimal256(20, 2),
    "LIST": pa.list_(pa.int64()),
    "STRUCT": pa.struct([("a", pa.int64())]),
    "SPARSE_UNION": pa.sparse_union([pa.field("a", pa.int64()), pa.field("b", pa.string())]),
    "DENSE_UNION": pa.dense_union([pa.field("a", pa.int64()), pa.field("b", pa.string())]),
    "DICTIONARY": pa.dictionary(pa.int32(), pa.string()),
    "MAP": pa.map_(pa.string(), pa.int64()),
    "FIXED_SIZE_LIST": pa.list_(pa.int64(), 2),
    "DURATION": pa.duration("us"),
    "LARGE_STRING": pa.large_string(),
    "LARGE_BINARY": pa.large_binary(),
    "LARGE_LIST": pa.large_list(pa.int64()),
    "INTERVAL_MONTH_DAY_NANO": pa.month_day_nano_interval(),
    "RUN_END_ENCODED": pa.run_end_encoded(pa.int32(), pa.string()),
    "STRING_VIEW": pa.string_view(),
    "BINARY_VIEW": pa.binary_view(),
    "LIST_VIEW": pa.list_view(pa.int64()),
    "LARGE_LIST_VIEW": pa.large_list_view(pa.int64()),
    "DECIMAL32": pa.decimal32(9, 2),
    "DECIMAL64": pa.decimal64(18, 2),
}


def _doc_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`([A-Z0-9_]+)`", cells[0]):
            rows[name] = cells[1:]
    return rows


def _outcome(t: pa.DataType, backend: str) -> str:
    try:
        plan = typemap.plan(pa.schema([("c", t)]), backend)
    except UnsupportedTypeError:
        return "refused"
    return "kept" if plan.target.field(0).type == t else "converted"


def test_every_arrow_type_id_is_in_docs_types() -> None:
    """docs/types.md has a row for every Arrow type id pyarrow knows, with one cell per backend."""
    ids = {n[len("Type_") :] for n in dir(pyarrow.lib) if n.startswith("Type_")}
    rows = _doc_rows()
    assert not sorted(ids - set(rows)), "missing from docs/types.md"
    assert "EXTENSION" in rows
    assert all(len(cells) == len(BACKENDS) for cells in rows.values())


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE))
def test_docs_types_says_what_the_plan_does(name: str) -> None:
    """Each backend cell starts with what the plan does: kept, converted or refused."""
    cells = _doc_rows()[name]
    for backend, cell in zip(BACKENDS, cells, strict=True):
        outcome = _outcome(REPRESENTATIVE[name], backend)
        if cell.startswith("as DuckDB"):
            cell = cells[0]
        first = cell.split()[0].strip(",;:")
        assert first == outcome, (name, backend, outcome, cell)


def _convert(arr: pa.Array, backend: str) -> pa.Array:
    batch = pa.record_batch({"c": arr})
    plan = typemap.plan(batch.schema, backend)
    out = plan.convert(batch)
    assert out.schema == plan.target
    return out.column(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_views_in_any_order_become_the_same_lists(backend: str) -> None:
    """Out-of-order, overlapping list views with NULL elements and NULL lists keep every list."""
    values = pa.array([1.0, None, 3.0, 4.0, 5.0])
    views = pa.ListViewArray.from_arrays(
        pa.array([3, 0, 1, 2, 0]),
        pa.array([1, 2, 3, 2, 0]),
        values,
        mask=pa.array([False, False, True, False, False]),
    )
    out = _convert(views, backend)
    assert pa.types.is_list(out.type)
    out.validate(full=True)
    assert out.to_pylist() == [[4.0], [1.0, None], None, [3.0, 4.0], []]
    assert _convert(views.slice(1, 3), backend).to_pylist() == [[1.0, None], None, [3.0, 4.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nested_dictionaries_are_decoded(backend: str) -> None:
    """dictionary<struct<dictionary<string>>> reaches no engine as a dictionary; values equal."""
    inner = pa.array(["x", "y", "x"]).dictionary_encode()
    struct = pa.StructArray.from_arrays([inner], names=["s"])
    outer = pa.DictionaryArray.from_arrays(pa.array([2, 0, None, 1], pa.int8()), struct)
    out = _convert(outer, backend)
    assert "dictionary" not in str(out.type)
    assert out.to_pylist() == outer.to_pylist()


@pytest.mark.parametrize(
    ("backend", "arr", "why"),
    [
        ("duckdb", pa.array([1_001], pa.timestamp("ns", "UTC")), "would lose data"),
        ("delta", pa.array([1_001], pa.timestamp("ns")), "would lose data"),
        ("duckdb", pa.array([1], pa.duration("ns")), "would lose data"),
        ("duckdb", pa.array([2**62], pa.duration("s")), "out of bounds"),
        ("duckdb", pa.array([1_000], pa.date64()), "would lose data"),
        ("ducklake", pa.array([-1], pa.time32("s")), "outside the range"),
        ("ducklake", pa.array([1_001], pa.time64("ns")), "would lose data"),
        ("ducklake", pa.array([-(2**31)], pa.date32()), "outside the range"),
        ("delta", pa.array([2**31 - 2], pa.date32()), "outside the range"),
        ("delta", pa.array([2**64 - 1], pa.uint64()), "not in range"),
        (
            "duckdb",
            pa.array([pa.scalar((1, 2, 1_001), pa.month_day_nano_interval()).as_py()]),
            "sub-microsecond",
        ),
        (
            "delta",
            pa.array([[("a", 1), ("a", 2)]], pa.map_(pa.string(), pa.int64())),
            "same key twice",
        ),
        ("ducklake", pa.array([1_500], pa.duration("us")), "not a multiple of 1000"),
        ("ducklake", pa.array([-1_000], pa.duration("us")), "outside the range"),
        (
            "ducklake",
            pa.array([pa.scalar((0, 0, 100 * 86_400 * 10**9), MDN).as_py()], MDN),
            "whole number of milliseconds below 2**32",
        ),
        ("ducklake", pa.array([pa.scalar((-1, 0, 0), MDN).as_py()], MDN), "negative"),
        (
            "duckdb",
            pa.UnionArray.from_sparse(
                pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", None])]
            ),
            "union value is null",
        ),
    ],
)
def test_values_a_backend_would_change_are_refused(backend: str, arr: pa.Array, why: str) -> None:
    """A value the backend would cut, wrap or drop is a 422 naming the column, not a change."""
    with pytest.raises(UnrepresentableValueError) as refused:
        _convert(arr, backend)
    assert http_status(refused.value) == 422
    assert "'c'" in refused.value.detail and why in refused.value.detail


@pytest.mark.parametrize(
    ("backend", "arr"),
    [
        ("delta", pa.array([0, 255, None], pa.uint8())),
        ("delta", pa.array([0, 2**63 - 1], pa.uint64())),
        ("delta", pa.array([1, None], pa.decimal32(9, 2))),
        ("duckdb", pa.array([1, None], pa.decimal256(38, 2))),
        (
            "duckdb",
            pa.array(
                [Decimal("9" * 28 + "." + "9" * 10), Decimal("-" + "9" * 28 + "." + "9" * 10)],
                pa.decimal128(38, 10),
            ),
        ),
        ("duckdb", pa.array([1.5, None], pa.float16())),
        ("ducklake", pa.array([1_000, None], pa.time64("ns"))),
        ("duckdb", pa.array([86_400_000 * 3, None], pa.date64())),
        ("delta", pa.array(["a", "b" * 40, None], pa.string_view()).dictionary_encode()),
        ("duckdb", pa.RunEndEncodedArray.from_arrays([2, 3], ["x", "y"])),
        ("delta", pa.array([[1, 2], None], pa.list_(pa.int32(), 2))),
    ],
)
def test_conversions_keep_every_value(backend: str, arr: pa.Array) -> None:
    """Converted columns hold the same values as sent."""
    out = _convert(arr, backend)
    out.validate(full=True)
    expected = arr.to_pylist()
    if pa.types.is_run_end_encoded(arr.type):
        expected = ["x", "x", "y"]
    got = out.to_pylist()
    if pa.types.is_date64(arr.type):
        got = [None if d is None else d for d in got]
    assert got == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_no_backend_takes_are_refused(backend: str) -> None:
    """No columns, a NUL in a name, a field-less struct, case-twin struct fields, 33 levels: 422."""
    with pytest.raises(SchemaMismatchError):
        typemap.plan(pa.schema([]), backend)
    deep: pa.DataType = pa.int64()
    for _ in range(typemap.MAX_NESTING[backend] + 1):
        deep = pa.list_(deep)
    for schema in (
        pa.schema([("x\0a", pa.int64())]),
        pa.schema([("s", pa.struct([]))]),
        pa.schema([("s", pa.struct([("a", pa.int64()), ("A", pa.int64())]))]),
        pa.schema([("d", deep)]),
    ):
        with pytest.raises(UnsupportedTypeError) as refused:
            typemap.plan(schema, backend)
        assert http_status(refused.value) == 422
        assert repr(schema.field(0).name) in refused.value.detail


def test_kept_columns_are_not_copied() -> None:
    """A stream of kept types is passed through as the same buffers (zero-copy)."""
    batch = pa.record_batch({"i": pa.array([1, 2]), "s": pa.array(["a", None])})
    plan = typemap.plan(batch.schema, "duckdb")
    assert plan.identity and plan.target == batch.schema
    out = plan.convert(batch)
    assert out.column(0).buffers()[1].address == batch.column(0).buffers()[1].address


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_null_map_hides_its_keys(backend: str) -> None:
    """Keys in a null map's offset range are not data: no false duplicate, nothing dropped."""
    maps = pa.MapArray.from_arrays(
        pa.array([0, 2, 4, 5], pa.int32()),
        pa.array(["a", "b", "a", "a", "c"]),
        pa.array([1, 2, 3, 4, 5]),
        mask=pa.array([False, True, False]),
    )
    assert _convert(maps, backend).to_pylist() == [[("a", 1), ("b", 2)], None, [("c", 5)]]
    sliced = _convert(maps.slice(2, 1), backend)
    assert sliced.to_pylist() == [[("c", 5)]]


def test_field_metadata_does_not_reach_duckdb(tmp_path: Path) -> None:
    """A binary column labelled `geoarrow.wkb` (unregistered in pyarrow) is stored as the
    bytes sent in a BLOB; DuckDB would otherwise make it GEOMETRY and rewrite the WKB."""
    from arrowport.storage import DuckDBStore

    wkb = b"\x00" + struct.pack(">I", 1) + struct.pack(">dd", 1.5, 2.5)  # big-endian point
    label = {"ARROW:extension:name": "geoarrow.wkb"}
    schema = pa.schema([pa.field("g", pa.binary(), metadata=label)])
    batch = pa.record_batch([pa.array([wkb, None])], schema=schema)
    plan = typemap.plan(schema, "duckdb")
    assert plan.target.field(0).metadata is None and plan.identity
    store = DuckDBStore(tmp_path / "x.duckdb")
    store.open()
    try:
        store.write("geo", schema, [batch])
        assert store.scan("geo").read_all().column("g").to_pylist() == [wkb, None]
    finally:
        store.close()
    with duckdb.connect(str(tmp_path / "x.duckdb"), read_only=True) as con:
        assert con.execute("SELECT typeof(g) FROM geo LIMIT 1").fetchone() == ("BLOB",)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_end_encoded_dictionaries_are_decoded(backend: str) -> None:
    """run_end_encoded<int32, dictionary<string>> (pyarrow has no decode kernel for it),
    whole and sliced, holds the same values."""
    values = pa.array(["a", "b", None]).dictionary_encode()
    runs = pa.RunEndEncodedArray.from_arrays(pa.array([2, 5, 6], pa.int32()), values)
    assert _convert(runs, backend).to_pylist() == ["a", "a", "b", "b", "b", None]
    assert _convert(runs.slice(1, 3), backend).to_pylist() == ["a", "b", "b"]


def test_delta_keeps_zoned_timestamps_as_utc_instants() -> None:
    """timestamp[us, Asia/Tokyo] goes to Delta (which has no zones) as the same instants in UTC."""
    arr = pa.array([0, 1_700_000_000_000_000, None], pa.timestamp("us", "Asia/Tokyo"))
    out = _convert(arr, "delta")
    assert out.type == pa.timestamp("us", "UTC")
    assert out.cast(pa.int64()).to_pylist() == arr.cast(pa.int64()).to_pylist()
