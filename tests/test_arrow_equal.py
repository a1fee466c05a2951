"""tests/arrow_equal.py: lossless encodings compare equal, every changed value is reported."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from arrow_equal import canonical, differences

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "arrow-testing" / "data"


def one(name: str, arr: pa.Array) -> pa.Table:
    return pa.table({name: arr})


def test_identical_tables_have_no_differences() -> None:
    """A table compared with itself has no differences, NaN included."""
    t = pa.table(
        {
            "a": pa.array([1, None, 3], pa.int64()),
            "f": pa.array([1.5, float("nan"), None], pa.float64()),
            "s": pa.array(["x", None, "z"]),
        }
    )
    assert differences(t, t) == []


def test_ns_timestamp_cut_to_us_is_a_difference() -> None:
    """A tz-aware ns timestamp stored as µs is reported, with the row and both values."""
    sent = one("ts", pa.array([1_000_000_001, 5], pa.timestamp("ns", tz="UTC")))
    stored = one("ts", pa.array([1_000_000, 0], pa.timestamp("us", tz="UTC")))
    (diff,) = differences(sent, stored)
    assert "'ts'" in diff and "2 of 2 rows differ" in diff and "1000000001" in diff


def test_instants_compare_equal_across_units_and_zones() -> None:
    """The same instant in another unit and time zone is equal; a naive one is not."""
    sent = one("ts", pa.array([1_000_000_000], pa.timestamp("ns", tz="US/Eastern")))
    assert differences(sent, one("ts", pa.array([1_000_000], pa.timestamp("us", tz="UTC")))) == []
    assert differences(sent, one("ts", pa.array([1_000_000], pa.timestamp("us")))) != []


def test_list_view_null_element_stored_as_zero_is_a_difference() -> None:
    """A NULL inside a list_view stored as 0.0 is reported (the DuckDB import bug)."""
    sent = one(
        "lv",
        pa.ListViewArray.from_arrays([2, 0], [1, 2], pa.array([None, 2.0, 3.0], pa.float32())),
    )
    assert canonical(sent.column(0)) == [[3.0], [None, 2.0]]
    stored = one("lv", pa.array([[3.0], [0.0, 2.0]], pa.list_(pa.float32())))
    assert differences(sent, stored) != []
    fine = one("lv", pa.array([[3.0], [None, 2.0]], pa.list_(pa.float64())))
    assert differences(sent, fine) == []


def test_sliced_nested_arrays_match_to_pylist() -> None:
    """Canonical values of sliced list views, maps, fixed-size lists, REE and unions are right."""
    lv = pa.ListViewArray.from_arrays([3, 0, 1, 0], [1, 2, 2, 0], pa.array([1, 2, 3, 4]))[1:]
    assert canonical(lv) == [[1, 2], [2, 3], []]
    fsl = pa.array([[1, 2], None, [5, 6]], pa.list_(pa.int8(), 2))[1:]
    assert canonical(fsl) == [None, [5, 6]]
    m = pa.array([[("a", 1)], [("b", 2), ("c", None)]], pa.map_(pa.string(), pa.int32()))[1:]
    assert canonical(m) == [[("b", 2), ("c", None)]]
    ree = pc.run_end_encode(pa.array([1, 1, 2, 2, 2, None]))[1:5]
    assert canonical(ree) == [1, 2, 2, 2]
    dense = pa.UnionArray.from_dense(
        pa.array([0, 1, 0], pa.int8()),
        pa.array([0, 0, 1], pa.int32()),
        [pa.array([7, 8]), pa.array(["x"])],
        ["i", "s"],
    )[1:]
    assert canonical(dense) == [("union", "s", "x"), ("union", "i", 8)]


def test_encodings_and_widenings_compare_equal() -> None:
    """Nested dictionaries, REE, views, uint widening, null type, maps, struct case: equal."""
    inner = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), pa.array(["a", "b"]))
    nested = pa.DictionaryArray.from_arrays(
        pa.array([1, 0, None], pa.int8()), pa.StructArray.from_arrays([inner], ["K"])
    )
    plain = pa.array([{"k": "b"}, {"k": "a"}, None], pa.struct([("k", pa.string())]))
    assert differences(one("d", nested), one("d", plain)) == []
    ree = pc.run_end_encode(pa.array(["x", "x", None]))
    assert differences(one("r", ree), one("r", pa.array(["x", "x", None]))) == []
    view = pa.array(["p", None], pa.string_view())
    assert differences(one("v", view), one("v", pa.array(["p", None], pa.large_string()))) == []
    u8 = pa.array([0, 255, None], pa.uint8())
    assert differences(one("u", u8), one("u", pa.array([0, 255, None], pa.int16()))) == []
    assert differences(one("n", pa.nulls(2)), one("n", pa.nulls(2, pa.int32()))) == []
    m1 = pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int8()))
    m2 = pa.MapArray.from_arrays([0, 1], pa.array(["k"]), pa.array([1], pa.int64()))
    assert differences(one("m", m1), one("M", m2)) == []
    h = pa.array([1.5, None], pa.float16())
    assert differences(one("h", h), one("h", pa.array([1.5, None], pa.float32()))) == []
    d32 = pa.array([decimal.Decimal("1.25")], pa.decimal32(3, 2))
    assert differences(one("d", d32), one("d", pa.array([decimal.Decimal("1.250")]))) == []


def test_duration_stored_as_interval_is_equal() -> None:
    """A duration compares as (0, 0, ns): a month_day_nano holding it is equal, a cut one not."""
    sent = one("d", pa.array([1_500, None], pa.duration("ns")))
    mdn = pa.array([(0, 0, 1_500), None], pa.month_day_nano_interval())
    assert differences(sent, one("d", mdn)) == []
    cut = pa.array([(0, 0, 1_000), None], pa.month_day_nano_interval())
    assert differences(sent, one("d", cut)) != []


def test_date64_that_is_not_a_whole_day_differs_from_every_date() -> None:
    """date64 compares as days; one with a time of day left is a difference."""
    day = 86_400_000
    assert (
        differences(
            one("d", pa.array([day * 3], pa.date64())), one("d", pa.array([3], pa.date32()))
        )
        == []
    )
    assert (
        differences(
            one("d", pa.array([day * 3 + 1], pa.date64())), one("d", pa.array([3], pa.date32()))
        )
        != []
    )


def test_values_changed_or_retyped_are_differences() -> None:
    """NULL→0.0, bool→int, string→bytes, a lost NaN and a changed time are each reported."""
    pairs = [
        (pa.array([None, 1.0]), pa.array([0.0, 1.0])),
        (pa.array([True]), pa.array([1], pa.int8())),
        (pa.array(["a"]), pa.array([b"a"])),
        (pa.array([math.nan]), pa.array([None], pa.float64())),
        (pa.array([dt.time(1, 2, 3, 4)], pa.time64("us")), pa.array([3723], pa.time32("s"))),
    ]
    for sent, stored in pairs:
        assert differences(one("c", sent), one("c", stored)) != [], (sent, stored)


def test_shape_differences_are_reported() -> None:
    """A missing column, an extra column and a different row count are reported."""
    sent = pa.table({"a": [1, 2], "b": [3, 4]})
    assert any("missing" in d for d in differences(sent, pa.table({"a": [1, 2]})))
    extra = pa.table({"a": [1, 2], "b": [3, 4], "c": [5, 6]})
    assert any("not sent" in d for d in differences(sent, extra))
    assert any("row count" in d for d in differences(sent, pa.table({"a": [1], "b": [3]})))


def test_legacy_intervals_read_from_the_corpus_compare_as_month_day_nano() -> None:
    """month_interval and day_time_interval (which pyarrow cannot wrap) compare by value."""
    path = CORPUS / "arrow-ipc-stream/integration/cpp-21.0.0/generated_interval.stream"
    if not path.exists():
        pytest.skip("apache/arrow-testing is not at ../shared/arrow-testing")
    sent = pa.ipc.open_stream(path.read_bytes()).read_all()
    values = canonical(sent.column("f5")) + canonical(sent.column("f6"))
    as_mdn = pa.table(
        {
            "f5": pa.array(
                [v and v[1:] for v in values[: sent.num_rows]], pa.month_day_nano_interval()
            ),
            "f6": pa.array(
                [v and v[1:] for v in values[sent.num_rows :]], pa.month_day_nano_interval()
            ),
        }
    )
    assert differences(sent, as_mdn) == []
    changed = as_mdn.set_column(1, "f6", pa.nulls(sent.num_rows, pa.month_day_nano_interval()))
    assert differences(sent, changed) != []


def test_duckdb_lossless_export_compares_by_value() -> None:
    """DuckDB's lossless Arrow export (UUID, HUGEINT, TIMESTAMP_NS) compares equal to the values."""
    import uuid

    import duckdb

    u = uuid.UUID("16f75bb9-8e26-f400-69d8-e4eea676391a")
    sent = pa.table(
        {
            "u": pa.array([u.bytes, None], pa.binary(16)),
            "h": pa.array([-(2**100), 7], pa.decimal128(38, 0)),
            "t": pa.array([1_000_000_001, None], pa.timestamp("ns")),
        }
    )
    with duckdb.connect(config={"arrow_lossless_conversion": True}) as con:
        stored = con.execute(
            f"SELECT '{u}'::UUID AS u, (-(2::HUGEINT ** 100))::HUGEINT AS h, "
            "'1970-01-01 00:00:01.000000001'::TIMESTAMP_NS AS t "
            "UNION ALL SELECT NULL, 7, NULL"
        ).to_arrow_table()
    assert differences(sent, stored) == []
