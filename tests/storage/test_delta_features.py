"""Delta writer features on real tables: partitions, schema modes, idempotency,
CDC, checkpoints, compaction, versions, multi-process concurrency, rollback.

Every table is a real Delta table under ``tmp_path``, written through
``DeltaStore`` and read back with ``deltalake.DeltaTable``; nothing is mocked.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from arrowport.config import DeltaOptions
from arrowport.io.status import http_status
from arrowport.names import InvalidIdempotencyKeyError
from arrowport.storage import (
    DeltaStore,
    DeltaWrite,
    SchemaMismatchError,
    UnrepresentableValueError,
    WriteRejectedError,
    WriteResult,
)

HERE = Path(__file__).resolve().parent
WRITER = HERE / "delta_writer_proc.py"
PROC_ROWS = 4  # rows per request written by delta_writer_proc.py


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def store(lake: Path) -> DeltaStore:
    s = DeltaStore(lake)
    s.open()
    return s


def _ids(start: int, n: int = 10, **extra: pa.Array) -> pa.RecordBatch:
    return pa.record_batch({"id": pa.array(range(start, start + n), pa.int64()), **extra})


def _append(
    store: DeltaStore,
    table: str,
    batches: pa.RecordBatch | list[pa.RecordBatch],
    **kw: Any,
) -> WriteResult:
    if isinstance(batches, pa.RecordBatch):
        batches = [batches]
    w = store.open_write(table, batches[0].schema, **kw)
    for batch in batches:
        w.insert([batch])
    return w.finish()


def _parquet(path: Path) -> list[str]:
    """Every Parquet file under ``path`` (data files only), relative, sorted."""
    if not path.exists():
        return []
    return sorted(
        str(p.relative_to(path))
        for p in path.rglob("*.parquet")
        if "_delta_log" not in p.relative_to(path).parts
    )


def _dirs(path: Path) -> list[str]:
    """Every directory under ``path`` except the log, relative, sorted."""
    return sorted(
        str(p.relative_to(path))
        for p in path.rglob("*")
        if p.is_dir() and "_delta_log" not in p.relative_to(path).parts
    )


def _adds(dt: DeltaTable) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    return sorted(rows, key=lambda r: str(r["path"]))


def _sorted_rows(table: pa.Table, key: str = "id") -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r[key])


def _checkpoints(path: Path) -> list[int]:
    log = path / "_delta_log"
    return sorted(int(p.name.split(".")[0]) for p in log.glob("*.checkpoint.parquet"))


def _hashed(column: str, value: str) -> str:
    return f"{column}=h{hashlib.sha256(value.encode()).hexdigest()[:16]}"


# ---- 1. partitioned tables -------------------------------------------------


def test_rows_land_in_their_name_partitions(store: DeltaStore, lake: Path) -> None:
    """partition_by=("name",): one directory and one add action per value, filters prune."""
    batch = _ids(0, 6, name=pa.array(["a", "b", "a", "c", "b", "a"]))
    result = _append(store, "t", batch, options=DeltaOptions(partition_by=("name",)))
    assert (result.rows, result.version, result.created) == (6, 0, True)
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.metadata().partition_columns == ["name"]
    assert sorted(p["name"] for p in dt.partitions()) == ["a", "b", "c"]
    adds = _adds(dt)
    assert [(a["partition.name"], a["num_records"]) for a in adds] == [
        ("a", 3),
        ("b", 2),
        ("c", 1),
    ]
    files = _parquet(path)
    assert [f.split("/")[0] for f in files] == ["name=a", "name=b", "name=c"]
    assert files == sorted(a["path"] for a in adds)
    # partition values live in the log, not in the files
    assert pq.read_schema(path / files[0]).names == ["id"]
    eq_a = dt.to_pyarrow_table(filters=[("name", "=", "a")])
    assert sorted(eq_a.column("id").to_pylist()) == [0, 2, 5]
    assert _sorted_rows(dt.to_pyarrow_table()) == _sorted_rows(pa.Table.from_batches([batch]))


def test_two_partition_columns_string_and_date(store: DeltaStore, lake: Path) -> None:
    """partition_by=(region, day): nested dirs, typed partition values, exact read back."""
    d = datetime.date
    batch = pa.record_batch(
        {
            "region": pa.array(["eu", "us", "eu", "eu", None], pa.string()),
            "day": pa.array([d(2024, 1, 1), d(2024, 1, 2), d(2024, 1, 1), d(2024, 2, 29), None]),
            "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "v": pa.array([1.5, 2.5, 3.5, 4.5, 5.5]),
        }
    )
    assert batch.schema.field("day").type == pa.date32()
    options = DeltaOptions(partition_by=("region", "day"))
    assert _append(store, "t", batch, options=options).version == 0
    assert _append(store, "t", batch.slice(0, 1), options=options).version == 1
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.metadata().partition_columns == ["region", "day"]
    dirs = sorted({f.rsplit("/", 1)[0] for f in _parquet(path)})
    assert dirs == [
        "region=__HIVE_DEFAULT_PARTITION__/day=__HIVE_DEFAULT_PARTITION__",
        "region=eu/day=2024-01-01",
        "region=eu/day=2024-02-29",
        "region=us/day=2024-01-02",
    ]
    counts: Counter[tuple[str | None, datetime.date | None]] = Counter()
    for a in _adds(dt):
        counts[(a["partition.region"], a["partition.day"])] += a["num_records"]
    assert counts == {
        ("eu", d(2024, 1, 1)): 3,
        ("us", d(2024, 1, 2)): 1,
        ("eu", d(2024, 2, 29)): 1,
        (None, None): 1,
    }
    got = dt.to_pyarrow_table()
    assert got.schema.field("day").type == pa.date32()
    expected = pa.Table.from_batches([batch, batch.slice(0, 1)])
    assert _sorted_rows(got) == _sorted_rows(expected)
    feb = dt.to_pyarrow_table(filters=[("day", "=", d(2024, 2, 29))])
    assert feb.column("id").to_pylist() == [4]


def test_int_partition_column(store: DeltaStore, lake: Path) -> None:
    """An int32 partition column: negative values and nulls get their own partitions."""
    batch = pa.record_batch(
        {
            "n": pa.array([1, -4, 1, None, 70000], pa.int32()),
            "id": pa.array([10, 11, 12, 13, 14], pa.int64()),
        }
    )
    _append(store, "t", batch, options=DeltaOptions(partition_by=("n",)))
    path = lake / "t"
    assert [f.split("/")[0] for f in _parquet(path)] == [
        "n=-4",
        "n=1",
        "n=70000",
        "n=__HIVE_DEFAULT_PARTITION__",
    ]
    dt = DeltaTable(str(path))
    got = dt.to_pyarrow_table()
    assert got.schema.field("n").type == pa.int32()
    assert _sorted_rows(got) == _sorted_rows(pa.Table.from_batches([batch]))
    assert dt.to_pyarrow_table(filters=[("n", "=", -4)]).column("id").to_pylist() == [11]
    assert sorted(dt.to_pyarrow_table(filters=[("n", ">", 0)]).column("id").to_pylist()) == [
        10,
        12,
        14,
    ]


@pytest.mark.parametrize(
    ("kind", "values", "dirs"),
    [
        (pa.large_string(), ["a", "b c", None, "a"], ["k=a", _hashed("k", "b c")]),
        (pa.string_view(), ["a", "b c", None, "a"], ["k=a", _hashed("k", "b c")]),
        (pa.bool_(), [True, False, None, True], ["k=false", "k=true"]),
        (pa.int8(), [1, -2, None, 1], ["k=-2", "k=1"]),
        (pa.int64(), [2**40, -1, None, 2**40], ["k=-1", f"k={2**40}"]),
    ],
)
def test_partition_column_types(
    store: DeltaStore, lake: Path, kind: pa.DataType, values: list[Any], dirs: list[str]
) -> None:
    """String (large, view), bool and int partition columns: the right dirs, exact read back."""
    batch = pa.record_batch({"k": pa.array(values, kind), "id": pa.array([1, 2, 3, 4])})
    _append(store, "t", batch, options=DeltaOptions(partition_by=("k",)))
    path = lake / "t"
    assert sorted({f.split("/")[0] for f in _parquet(path)}) == sorted(
        [*dirs, "k=__HIVE_DEFAULT_PARTITION__"]
    )
    got = sorted((r["id"], r["k"]) for r in DeltaTable(str(path)).to_pyarrow_table().to_pylist())
    assert got == [(i + 1, v) for i, v in enumerate(values)]


def test_dictionary_string_partition_column(store: DeltaStore, lake: Path) -> None:
    """A dictionary-encoded string column (a pandas/Polars categorical), stored as a plain
    Delta string, can be a partition column like any string column."""
    names = pa.array(["a", "b", None, "a"]).dictionary_encode()
    batch = pa.record_batch({"name": names, "id": pa.array([1, 2, 3, 4])})
    _append(store, "t", batch, options=DeltaOptions(partition_by=("name",)))
    dt = DeltaTable(str(lake / "t"))
    assert dt.metadata().partition_columns == ["name"]
    got = sorted((r["id"], r["name"]) for r in dt.to_pyarrow_table().to_pylist())
    assert got == [(1, "a"), (2, "b"), (3, None), (4, "a")]


def test_unsafe_partition_values_are_hashed_and_stay_inside(
    store: DeltaStore, tmp_path: Path, lake: Path
) -> None:
    """Values like "a/b", "x y", "ü", "../x" get hashed dirs inside the table and read back."""
    unsafe = ["a/b", "x y", "ü", "../../escape", "/abs", "a\\b", "q?x", "s" * 65]
    safe = ["..", ".", "plain-1.2_x"]
    values = unsafe + safe
    batch = _ids(0, len(values), name=pa.array(values))
    _append(store, "t", batch, options=DeltaOptions(partition_by=("name",)))
    path = lake / "t"
    files = _parquet(path)
    assert len(files) == len(values)
    expected_dirs = sorted([_hashed("name", v) for v in unsafe] + [f"name={v}" for v in safe])
    assert sorted(f.split("/")[0] for f in files) == expected_dirs
    for f in files:
        assert f.count("/") == 1  # exactly one partition directory level
        assert (path / f).resolve().parent.parent == path.resolve()
    assert sorted(os.listdir(tmp_path)) == ["lake"]
    assert sorted(os.listdir(lake)) == ["t"]
    dt = DeltaTable(str(path))
    by_value = {a["partition.name"]: a["path"].split("/")[0] for a in _adds(dt)}
    assert by_value["a/b"] == _hashed("name", "a/b")
    assert by_value["ü"] == _hashed("name", "ü")
    assert by_value[".."] == "name=.."
    assert _sorted_rows(dt.to_pyarrow_table()) == _sorted_rows(pa.Table.from_batches([batch]))
    only = dt.to_pyarrow_table(filters=[("name", "=", "x y")])
    assert only.column("id").to_pylist() == [1]


def test_null_partition_values(store: DeltaStore, lake: Path) -> None:
    """Nulls go to __HIVE_DEFAULT_PARTITION__ with a null partition value; the literal
    string "__HIVE_DEFAULT_PARTITION__" stays a string."""
    batch = _ids(0, 4, name=pa.array([None, "x", None, "__HIVE_DEFAULT_PARTITION__"]))
    _append(store, "t", batch, options=DeltaOptions(partition_by=("name",)))
    path = lake / "t"
    dt = DeltaTable(str(path))
    nulls = [a for a in _adds(dt) if a["partition.name"] is None]
    assert len(nulls) == 1
    assert nulls[0]["num_records"] == 2
    assert nulls[0]["path"].startswith("name=__HIVE_DEFAULT_PARTITION__/")
    got = {r["id"]: r["name"] for r in dt.to_pyarrow_table().to_pylist()}
    assert got == {0: None, 1: "x", 2: None, 3: "__HIVE_DEFAULT_PARTITION__"}
    null_rows = dt.to_pyarrow_table().filter(pa.compute.is_null(pa.compute.field("name")))
    assert sorted(null_rows.column("id").to_pylist()) == [0, 2]


@pytest.mark.parametrize(
    "kind", [pa.float64(), pa.float32(), pa.timestamp("us"), pa.timestamp("us", tz="UTC")]
)
def test_unsupported_partition_type_is_refused(
    store: DeltaStore, lake: Path, kind: pa.DataType
) -> None:
    """A float or timestamp partition column is refused, named, before anything is written."""
    schema = pa.schema([("id", pa.int64()), ("score", kind)])
    with pytest.raises(SchemaMismatchError, match="'score'") as info:
        store.open_write("t", schema, options=DeltaOptions(partition_by=("score",)))
    assert "partition column" in info.value.detail
    assert info.value.error == "schema_mismatch"
    assert not (lake / "t").exists()


def test_missing_partition_column_is_refused(store: DeltaStore, lake: Path) -> None:
    """A partition column the stream lacks is refused with the column named as missing."""
    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    with pytest.raises(SchemaMismatchError, match="region") as info:
        store.open_write("t", schema, options=DeltaOptions(partition_by=("name", "region")))
    assert info.value.missing == ("region",)
    assert not (lake / "t").exists()


@pytest.mark.parametrize("later", [(), ("id",), ("name", "id")])
def test_existing_table_keeps_its_partition_columns(
    store: DeltaStore, lake: Path, later: tuple[str, ...]
) -> None:
    """Later writes with other partition_by options still partition by the table's columns."""
    first = _ids(0, 2, name=pa.array(["a", "b"]))
    _append(store, "t", first, options=DeltaOptions(partition_by=("name",)))
    second = _ids(2, 2, name=pa.array(["b", "c"]))
    result = _append(store, "t", second, options=DeltaOptions(partition_by=later))
    assert result.version == 1
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.metadata().partition_columns == ["name"]
    assert sorted(f.split("/")[0] for f in _parquet(path)) == [
        "name=a",
        "name=b",
        "name=b",
        "name=c",
    ]
    assert sorted(a["partition.name"] for a in _adds(dt)) == ["a", "b", "b", "c"]
    assert _sorted_rows(dt.to_pyarrow_table()) == _sorted_rows(
        pa.Table.from_batches([first, second])
    )


def test_rollback_of_a_partitioned_write(lake: Path) -> None:
    """A rolled-back partitioned write leaves no files and no new partition dirs."""
    store = DeltaStore(lake, defaults=DeltaOptions(partition_by=("name",), target_file_size=1))
    store.open()
    _append(store, "t", _ids(0, 2, name=pa.array(["a", "a"])))
    path = lake / "t"
    before_files, before_dirs = _parquet(path), _dirs(path)
    assert before_dirs == ["name=a"]
    w = store.open_write("t", pa.schema([("id", pa.int64()), ("name", pa.string())]))
    w.insert([_ids(10, 4, name=pa.array(["a", "b", "x/y", None]))])  # closed files (size 1)
    w.insert([_ids(20, 2, name=pa.array(["c", "a"]))])
    assert len(_parquet(path)) == len(before_files) + 6  # the files really were written
    assert len(_dirs(path)) == 5
    w.rollback()
    assert _parquet(path) == before_files
    assert _dirs(path) == before_dirs
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 1]


def test_rollback_of_a_partitioned_new_table(store: DeltaStore, lake: Path) -> None:
    """Rolling back the first, partitioned write of a table leaves no table directory."""
    batch = _ids(0, 3, name=pa.array(["a", "b/c", None]))
    w = store.open_write("fresh", batch.schema, options=DeltaOptions(partition_by=("name",)))
    w.insert([batch])
    assert len(_dirs(lake / "fresh")) == 3
    w.rollback()
    assert not (lake / "fresh").exists()
    assert os.listdir(lake) == []


def test_many_partitions_in_one_request(store: DeltaStore, lake: Path) -> None:
    """100 partitions (more than the open-writer limit) in one request: all rows, one commit."""
    names = pa.array([f"p{i:03d}" for i in range(100)])
    batches = [_ids(0, 100, name=names), _ids(100, 100, name=names)]
    result = _append(store, "t", batches, options=DeltaOptions(partition_by=("name",)))
    assert (result.rows, result.version) == (200, 0)
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    adds = _adds(dt)
    assert _parquet(path) == sorted(a["path"] for a in adds)
    per_partition: Counter[str] = Counter()
    for a in adds:
        per_partition[a["partition.name"]] += a["num_records"]
    assert per_partition == {f"p{i:03d}": 2 for i in range(100)}
    got = dt.to_pyarrow_table()
    assert sorted(got.column("id").to_pylist()) == list(range(200))
    assert {r["name"] for r in got.to_pylist() if r["id"] in (7, 107)} == {"p007"}


# ---- 2. schema_mode ---------------------------------------------------------


def test_merge_adds_a_nullable_column(store: DeltaStore, lake: Path) -> None:
    """schema_mode merge (default): a new column is added nullable; old rows read null."""
    assert _append(store, "t", _ids(0, 3)).version == 0
    wider = _ids(3, 2, extra=pa.array(["x", "y"]))
    result = _append(store, "t", wider)
    dt = DeltaTable(str(lake / "t"))
    assert [h["operation"] for h in dt.history()] == ["WRITE", "ADD COLUMN", "CREATE TABLE"]
    assert result.version == 2 == dt.version()
    assert [(f.name, f.nullable) for f in dt.schema().fields] == [("id", True), ("extra", True)]
    got = {r["id"]: r["extra"] for r in dt.to_pyarrow_table().to_pylist()}
    assert got == {0: None, 1: None, 2: None, 3: "x", 4: "y"}
    # a later request without the column fills it with nulls
    _append(store, "t", _ids(5, 1))
    got = {r["id"]: r["extra"] for r in DeltaTable(str(lake / "t")).to_pyarrow_table().to_pylist()}
    assert got[5] is None
    assert len(got) == 6


def test_strict_refuses_a_new_column_and_commits_nothing(store: DeltaStore, lake: Path) -> None:
    """schema_mode strict: a new column is refused, named, and nothing is committed or written."""
    _append(store, "t", _ids(0, 3))
    path = lake / "t"
    files = _parquet(path)
    schema = pa.schema([("id", pa.int64()), ("newcol", pa.string())])
    with pytest.raises(SchemaMismatchError) as info:
        store.open_write("t", schema, options=DeltaOptions(schema_mode="strict"))
    assert "newcol" in info.value.detail
    assert "schema_mode: strict" in info.value.detail
    assert info.value.extra == ("newcol",)
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    assert [f.name for f in dt.schema().fields] == ["id"]
    assert _parquet(path) == files


def test_two_writes_adding_the_same_column(lake: Path) -> None:
    """Two writes opened before either commits both add column x: one ADD COLUMN, all rows."""
    s1, s2 = DeltaStore(lake), DeltaStore(lake)
    s1.open()
    _append(s1, "t", _ids(0, 1))
    w1 = s1.open_write("t", _ids(0, x=pa.array(["a"] * 10)).schema)
    w2 = s2.open_write("t", _ids(0, x=pa.array(["a"] * 10)).schema)
    w1.insert([_ids(10, 1, x=pa.array(["p"]))])
    w2.insert([_ids(20, 1, x=pa.array(["q"]))])
    assert w1.finish().version == 2
    assert w2.finish().version == 3
    dt = DeltaTable(str(lake / "t"))
    ops = [h["operation"] for h in dt.history()]
    assert ops == ["WRITE", "WRITE", "ADD COLUMN", "CREATE TABLE"]
    got = {r["id"]: r["x"] for r in dt.to_pyarrow_table().to_pylist()}
    assert got == {0: None, 10: "p", 20: "q"}


def test_two_writes_adding_a_column_with_different_types(lake: Path) -> None:
    """The second of two writes adding column x with another type is refused at commit,
    naming x, and leaves no file and no commit."""
    s1, s2 = DeltaStore(lake), DeltaStore(lake)
    s1.open()
    _append(s1, "t", _ids(0, 1))
    text = _ids(10, 1, x=pa.array(["s"]))
    number = _ids(20, 1, x=pa.array([7], pa.int64()))
    w1, w2 = s1.open_write("t", text.schema), s2.open_write("t", number.schema)
    w1.insert([text])
    w2.insert([number])
    assert w1.finish().version == 2
    path = lake / "t"
    assert len(_parquet(path)) == 3
    with pytest.raises(SchemaMismatchError) as info:
        w2.finish()
    assert info.value.mistyped == (("x", "STRING", "BIGINT"),)
    dt = DeltaTable(str(path))
    assert dt.version() == 2
    assert _parquet(path) == sorted(a["path"] for a in _adds(dt))
    assert len(_parquet(path)) == 2
    got = {r["id"]: r["x"] for r in dt.to_pyarrow_table().to_pylist()}
    assert got == {0: None, 10: "s"}


@pytest.mark.parametrize("mode", ["merge", "strict"])
def test_retyped_column_is_refused(store: DeltaStore, lake: Path, mode: str) -> None:
    """A column with a conflicting type is refused in both modes, with nothing committed
    (in merge mode not even the new column beside it)."""
    _append(store, "t", _ids(0, 3))
    path = lake / "t"
    files = _parquet(path)
    schema = pa.schema([("id", pa.string()), ("newcol", pa.int64())])
    with pytest.raises(SchemaMismatchError) as info:
        store.open_write("t", schema, options=DeltaOptions(schema_mode=mode))
    assert [m[0] for m in info.value.mistyped] == ["id"]
    assert info.value.mistyped[0][1] == "BIGINT"
    assert "id" in info.value.detail
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    assert [f.name for f in dt.schema().fields] == ["id"]
    assert _parquet(path) == files


# ---- 3. idempotency -------------------------------------------------------------


def test_same_key_twice_writes_once(store: DeltaStore, lake: Path) -> None:
    """A key already committed: one copy of the rows, no new file, the original result."""
    _append(store, "t", _ids(100, 1))
    batches = [_ids(0, 5), _ids(5, 5)]
    first = _append(store, "t", batches, idempotency_key="k1")
    assert (first.rows, first.batches, first.version, first.replayed) == (10, 2, 1, False)
    path = lake / "t"
    files = _parquet(path)
    assert len(files) == 2
    w = store.open_write("t", batches[0].schema, idempotency_key="k1")
    for batch in batches:
        w.insert([batch])
    second = w.finish()
    assert second.replayed is True
    assert (second.rows, second.batches, second.version) == (10, 2, 1)
    assert second.created is False
    assert _parquet(path) == files
    dt = DeltaTable(str(path))
    assert dt.version() == 1
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [*range(10), 100]
    assert dt.transaction_version("arrowport:k1") == 1
    assert dt.transaction_version("arrowport:k2") is None
    assert store.statistics()["replays"] == 1


def test_replay_differs_from_original_still_writes_nothing(store: DeltaStore, lake: Path) -> None:
    """A replay with other rows (a client bug) writes nothing and answers the original."""
    first = _append(store, "t", _ids(0, 3), idempotency_key="same")
    again = _append(store, "t", [_ids(50, 7), _ids(60, 1)], idempotency_key="same")
    assert (again.replayed, again.rows, again.batches, again.version) == (True, 3, 1, 0)
    assert first.version == 0
    dt = DeltaTable(str(lake / "t"))
    assert dt.version() == 0
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 1, 2]
    assert len(_parquet(lake / "t")) == 1


def test_a_different_key_writes_again(store: DeltaStore, lake: Path) -> None:
    """Another key is another request: the same rows are appended a second time."""
    a = _append(store, "t", _ids(0, 4), idempotency_key="k1")
    b = _append(store, "t", _ids(0, 4), idempotency_key="k2")
    assert (a.version, a.replayed, b.version, b.replayed) == (0, False, 1, False)
    dt = DeltaTable(str(lake / "t"))
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert dt.transaction_version("arrowport:k1") == 1
    assert dt.transaction_version("arrowport:k2") == 1
    assert len(_parquet(lake / "t")) == 2


@pytest.mark.parametrize(
    "key", ["", "a b", "k" * 300, "k" * 257, "a\x01b", "tab\there", "ü", "new\nline"]
)
def test_invalid_keys_are_refused(store: DeltaStore, lake: Path, key: str) -> None:
    """Empty, spaced, over-long, control-character or non-ASCII keys are refused up front."""
    with pytest.raises(InvalidIdempotencyKeyError) as info:
        store.open_write("t", _ids(0).schema, idempotency_key=key)
    assert info.value.error == "invalid_idempotency_key"
    assert http_status(info.value) == 400
    assert not (lake / "t").exists()


def test_longest_valid_key_is_accepted(store: DeltaStore, lake: Path) -> None:
    """A 256-character printable key is valid and recorded as a txn action."""
    key = "K" * 255 + "~"
    result = _append(store, "t", _ids(0, 2), idempotency_key=key)
    assert (result.rows, result.version, result.replayed) == (2, 0, False)
    assert DeltaTable(str(lake / "t")).transaction_version("arrowport:" + key) == 1


def test_batch_mode_with_a_key_is_refused(store: DeltaStore, lake: Path) -> None:
    """commit: batch with an idempotency key is refused (idempotency_unsupported, 400)."""
    with pytest.raises(WriteRejectedError) as info:
        store.open_write("t", _ids(0).schema, commit="batch", idempotency_key="k1")
    assert info.value.error == "idempotency_unsupported"
    assert http_status(info.value) == 400
    assert not (lake / "t").exists()


def test_same_key_race_second_finish_replays(lake: Path) -> None:
    """Two writes with one key, both opened before either commits: the second finish
    finds the key at commit time, deletes its files and answers replayed."""
    s1, s2 = DeltaStore(lake), DeltaStore(lake)
    s1.open()
    _append(s1, "t", _ids(1000, 1))
    path = lake / "t"
    base = _parquet(path)
    w1 = s1.open_write("t", _ids(0).schema, idempotency_key="race")
    w2 = s2.open_write("t", _ids(0).schema, idempotency_key="race")
    w1.insert([_ids(0, 3)])
    w2.insert([_ids(10, 4)])
    w2.insert([_ids(20, 4)])
    assert len(_parquet(path)) == len(base) + 2  # both have written their data
    r1 = w1.finish()
    assert (r1.rows, r1.batches, r1.version, r1.replayed) == (3, 1, 1, False)
    r2 = w2.finish()
    assert r2.replayed is True
    assert (r2.rows, r2.batches, r2.version) == (3, 1, 1)
    dt = DeltaTable(str(path))
    assert dt.version() == 1
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 1, 2, 1000]
    assert len(_parquet(path)) == len(base) + 1  # w2's file is gone
    assert _parquet(path) == sorted(a["path"] for a in _adds(dt))
    assert dt.transaction_version("arrowport:race") == 1
    assert (s2.statistics()["replays"], s2.statistics()["commits"]) == (1, 0)


def test_same_key_race_on_a_missing_table(lake: Path) -> None:
    """The same race when neither write finds the table: one creates it, the other replays."""
    s1, s2 = DeltaStore(lake), DeltaStore(lake)
    s1.open()
    w1 = s1.open_write("t", _ids(0).schema, idempotency_key="k")
    w2 = s2.open_write("t", _ids(0).schema, idempotency_key="k")
    w1.insert([_ids(0, 2)])
    w2.insert([_ids(10, 5)])
    r1, r2 = w1.finish(), w2.finish()
    assert (r1.rows, r1.version, r1.created, r1.replayed) == (2, 0, True, False)
    assert (r2.rows, r2.version, r2.created, r2.replayed) == (2, 0, False, True)
    dt = DeltaTable(str(lake / "t"))
    assert dt.version() == 0
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 1]
    assert len(_parquet(lake / "t")) == 1


def test_find_replay_version_with_a_table_read_before_later_commits(
    store: DeltaStore, lake: Path
) -> None:
    """find_replay reports the key's true commit version even when commits landed after
    the DeltaTable it is given was loaded (as happens between open_table and history)."""
    _append(store, "t", _ids(0, 1))
    assert _append(store, "t", _ids(1, 1), idempotency_key="k1").version == 1
    dt = store.open_table("t")
    assert dt is not None
    assert dt.version() == 1
    _append(store, "t", _ids(2, 1))  # another request commits version 2
    replay = store.find_replay(dt, "k1")
    assert replay is not None
    assert (replay.rows, replay.batches) == (1, 1)
    assert replay.version == 1


# ---- 4. CDC ------------------------------------------------------------------


def test_cdc_feed_lists_every_appended_row(lake: Path) -> None:
    """enable_cdc: the table property is set and load_cdf(0) lists each row as an insert."""
    store = DeltaStore(lake, enable_cdc=True)
    store.open()
    writes = [_ids(0, 3), _ids(3, 5), _ids(8, 2)]
    for i, batch in enumerate(writes):
        assert _append(store, "t", batch).version == i
    dt = DeltaTable(str(lake / "t"))
    assert dt.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    cdf = pa.table(dt.load_cdf(0)).to_pylist()
    assert len(cdf) == 10
    got = sorted((r["id"], str(r["_change_type"]), r["_commit_version"]) for r in cdf)
    assert got == [(i, "insert", 0) for i in range(3)] + [(i, "insert", 1) for i in range(3, 8)] + [
        (i, "insert", 2) for i in range(8, 10)
    ]
    later = pa.table(dt.load_cdf(2)).to_pylist()
    assert sorted(r["id"] for r in later) == [8, 9]


def test_cdc_feed_of_a_partitioned_table(lake: Path) -> None:
    """CDF on a partitioned table returns the partition values, hashed dirs included."""
    store = DeltaStore(lake, enable_cdc=True)
    store.open()
    batch = _ids(0, 4, name=pa.array(["a/b", "x y", None, "ok"]))
    _append(store, "t", batch, options=DeltaOptions(partition_by=("name",)))
    cdf = pa.table(DeltaTable(str(lake / "t")).load_cdf(0)).to_pylist()
    got = sorted((r["id"], r["name"], str(r["_change_type"])) for r in cdf)
    assert got == [
        (0, "a/b", "insert"),
        (1, "x y", "insert"),
        (2, None, "insert"),
        (3, "ok", "insert"),
    ]


def test_cdc_is_off_by_default(store: DeltaStore, lake: Path) -> None:
    """Without enable_cdc the table has no change data feed property."""
    _append(store, "t", _ids(0, 1))
    conf = DeltaTable(str(lake / "t")).metadata().configuration
    assert "delta.enableChangeDataFeed" not in conf
    assert conf["delta.checkpointInterval"] == "100"


# ---- 5. checkpoints -------------------------------------------------------------


def test_checkpoint_interval_three(lake: Path) -> None:
    """checkpoint_interval=3: the table property is "3" and after 7 commits (versions
    0-6) delta-rs has checkpointed every 3 commits, at versions 2 and 5."""
    store = DeltaStore(lake, checkpoint_interval=3)
    store.open()
    for i in range(7):
        assert _append(store, "t", _ids(i * 10)).version == i
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.metadata().configuration["delta.checkpointInterval"] == "3"
    assert _checkpoints(path) == [2, 5]
    last = json.loads((path / "_delta_log" / "_last_checkpoint").read_text())
    assert last["version"] == 5
    assert dt.version() == 6
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == list(range(70))


def test_store_interval_checkpoints_a_table_with_another_interval(lake: Path) -> None:
    """A table created with interval 100 and written by a store with interval 3 gets
    arrowport's own checkpoints at versions 3 and 6."""
    _append(DeltaStore(lake), "t", _ids(0))
    store = DeltaStore(lake, checkpoint_interval=3)
    for i in range(1, 7):
        assert _append(store, "t", _ids(i * 10)).version == i
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.metadata().configuration["delta.checkpointInterval"] == "100"
    assert _checkpoints(path) == [3, 6]
    assert json.loads((path / "_delta_log" / "_last_checkpoint").read_text())["version"] == 6
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == list(range(70))


# ---- 6. compaction ------------------------------------------------------------


def test_compaction_is_due_every_three_commits(lake: Path) -> None:
    """compact_every=3: due after the 3rd commit; compact() leaves one file, same rows."""
    store = DeltaStore(lake, compact_every=3)
    store.open()
    options = DeltaOptions(target_file_size=1024 * 1024)
    for i in range(2):
        _append(store, "t", _ids(i * 10), options=options)
        assert store.compactions_due == {}
    _append(store, "t", _ids(20), options=options)
    assert store.compactions_due == {"t": options}
    path = lake / "t"
    before = DeltaTable(str(path))
    assert len(before.file_uris()) == 3
    rows_before = _sorted_rows(before.to_pyarrow_table())
    metrics = store.compact("t", store.compactions_due.pop("t"))
    assert (metrics["numFilesAdded"], metrics["numFilesRemoved"]) == (1, 3)
    dt = DeltaTable(str(path))
    assert dt.version() == 3
    assert dt.history(1)[0]["operation"] == "OPTIMIZE"
    assert len(dt.file_uris()) == 1
    assert _sorted_rows(dt.to_pyarrow_table()) == rows_before
    assert len(rows_before) == 30
    # the count restarts after it fell due
    _append(store, "t", _ids(30), options=options)
    _append(store, "t", _ids(40), options=options)
    assert store.compactions_due == {}
    _append(store, "t", _ids(50), options=options)
    assert list(store.compactions_due) == ["t"]


def test_compaction_is_never_due_by_default(store: DeltaStore) -> None:
    """compact_every=0 (default): no table ever falls due."""
    for i in range(5):
        _append(store, "t", _ids(i * 10))
    assert store.compactions_due == {}


def test_z_order_compaction(store: DeltaStore, lake: Path) -> None:
    """z_order_by=("id",): an OPTIMIZE commit that z-orders the rows into one sorted file."""
    for start in [30, 10, 40, 0, 20]:
        batch = pa.record_batch({"id": pa.array(range(start + 9, start - 1, -1), pa.int64())})
        _append(store, "t", batch)
    metrics = store.compact("t", DeltaOptions(z_order_by=("id",)))
    assert metrics["plannerStrategy"] == "zOrder"
    assert (metrics["numFilesAdded"], metrics["numFilesRemoved"]) == (1, 5)
    dt = DeltaTable(str(lake / "t"))
    top = dt.history(1)[0]
    assert (top["operation"], top["version"]) == ("OPTIMIZE", 5)
    assert top["operationMetrics"]["plannerStrategy"] == "zOrder"
    (uri,) = dt.file_uris()
    assert pq.read_table(uri).column("id").to_pylist() == list(range(50))


def test_compaction_of_a_partitioned_table(lake: Path) -> None:
    """Compaction of a partitioned table leaves one file per partition, same rows."""
    store = DeltaStore(lake, defaults=DeltaOptions(partition_by=("name",)))
    store.open()
    for i in range(3):
        _append(store, "t", _ids(i * 10, 4, name=pa.array(["a", "b", "a/b", None])))
    path = lake / "t"
    rows_before = _sorted_rows(DeltaTable(str(path)).to_pyarrow_table())
    store.compact("t", store.defaults)
    dt = DeltaTable(str(path))
    assert len(dt.file_uris()) == 4
    assert sorted(str(a["partition.name"]) for a in _adds(dt)) == ["None", "a", "a/b", "b"]
    assert _sorted_rows(dt.to_pyarrow_table()) == rows_before
    assert len(rows_before) == 12


def test_compaction_while_a_write_is_open_loses_no_rows(store: DeltaStore, lake: Path) -> None:
    """A write opened before compaction and finished after it commits all its rows."""
    for i in range(3):
        _append(store, "t", _ids(i * 10))
    w = store.open_write("t", _ids(0).schema)
    w.insert([_ids(100, 5)])
    store.compact("t", DeltaOptions())
    w.insert([_ids(105, 5)])
    result = w.finish()
    assert result.version == 4
    dt = DeltaTable(str(lake / "t"))
    assert [h["operation"] for h in dt.history(2)] == ["WRITE", "OPTIMIZE"]
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [*range(30), *range(100, 110)]
    assert len(dt.file_uris()) == 2


# ---- 7. versions -------------------------------------------------------------


def test_versions_count_up_from_zero(store: DeltaStore, lake: Path) -> None:
    """WriteResult.version is the committed version: 0 when creating, then 1, 2, ..."""
    for i in range(4):
        result = _append(store, "t", _ids(i * 10))
        assert result.version == i
        assert DeltaTable(str(lake / "t")).version() == i
        assert result.created is (i == 0)


def test_version_skips_a_commit_by_another_store(lake: Path) -> None:
    """A commit by another store between open and finish: the version is the one after it."""
    s1, s2 = DeltaStore(lake), DeltaStore(lake)
    s1.open()
    assert _append(s1, "t", _ids(0)).version == 0
    w = s1.open_write("t", _ids(0).schema)
    w.insert([_ids(100, 3)])
    assert _append(s2, "t", _ids(10)).version == 1
    assert _append(s2, "t", _ids(20)).version == 2
    result = w.finish()
    assert result.version == 3
    history = {h["version"]: h for h in DeltaTable(str(lake / "t")).history()}
    assert history[3]["arrowport.rows"] == 3
    assert history[2]["arrowport.rows"] == 10


class _RacingStore(DeltaStore):
    """A DeltaStore after whose table loads another writer commits once, as soon as
    a load sees a version above ``race_after`` (a real commit, not a mock)."""

    race_after: int | None = None

    def open_table(self, table: str) -> DeltaTable | None:
        dt = super().open_table(table)
        if dt is not None and self.race_after is not None and dt.version() > self.race_after:
            self.race_after = None
            _append(DeltaStore(self.root), table, _ids(900, 2))
        return dt


def test_version_when_another_commit_lands_right_after_ours(lake: Path) -> None:
    """A commit by another writer just after ours (while the version is looked up) does
    not change the version reported: it is the version holding our rows."""
    store = _RacingStore(lake)
    store.open()
    _append(store, "t", _ids(0, 1))
    w = store.open_write("t", _ids(0).schema)
    w.insert([_ids(100, 3)])
    store.race_after = 0  # the first load that sees our commit (version 1) races
    result = w.finish()
    if store.race_after is not None:  # finish() did not reload the table after committing
        store.race_after = None
        _append(DeltaStore(lake), "t", _ids(900, 2))
    dt = DeltaTable(str(lake / "t"))
    assert dt.version() == 2
    history = {h["version"]: h for h in dt.history()}
    assert (history[1]["arrowport.rows"], history[2]["arrowport.rows"]) == (3, 2)
    assert result.version == 1


def test_two_writes_creating_the_same_table(lake: Path) -> None:
    """Two stores both open a missing table: both commit, versions 0 and 1, and only
    the one that created the table says created."""
    s1, s2 = DeltaStore(lake), DeltaStore(lake)
    s1.open()
    w1 = s1.open_write("t", _ids(0).schema)
    w2 = s2.open_write("t", _ids(0).schema)
    w1.insert([_ids(0, 2)])
    w2.insert([_ids(10, 3)])
    r1, r2 = w1.finish(), w2.finish()
    assert (r1.version, r2.version) == (0, 1)
    dt = DeltaTable(str(lake / "t"))
    assert [h["operation"] for h in dt.history()] == ["WRITE", "CREATE TABLE"]
    assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == [0, 1, 10, 11, 12]
    assert r1.created is True
    assert r2.created is False


def test_two_writers_creating_the_same_new_partitions(lake: Path) -> None:
    """Two stores (standing in for two processes) writing the same new table and new
    partition directories at the same moment both succeed: a directory the other writer
    made first is no error."""
    stores = [DeltaStore(lake), DeltaStore(lake)]
    stores[0].open()
    names = pa.array([f"p{i:03d}" for i in range(200)])
    errors: list[str] = []
    results: list[WriteResult] = []
    rounds = 8
    for r in range(rounds):
        barrier = threading.Barrier(2)

        def write(k: int, r: int = r, barrier: threading.Barrier = barrier) -> None:
            batch = _ids(1000 * k, 200, name=names)
            w = stores[k].open_write(
                f"t{r}", batch.schema, options=DeltaOptions(partition_by=("name",))
            )
            barrier.wait()
            try:
                w.insert([batch])
                results.append(w.finish())
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(results) == 2 * rounds
    for r in range(rounds):
        dt = DeltaTable(str(lake / f"t{r}"))
        ids = sorted(dt.to_pyarrow_table().column("id").to_pylist())
        assert ids == [*range(200), *range(1000, 1200)]
        assert dt.version() == 1


# ---- 8. concurrency across processes -------------------------------------------


def _run_writers(
    tmp_path: Path, lake: Path, table: str, procs: int, per_proc: int
) -> list[dict[str, Any]]:
    """Start ``procs`` writer processes together; return their exit codes and output."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE)])}
    started = [
        subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                str(lake),
                table,
                str(per_proc),
                str(10_000 * (i + 1)),
                "--go",
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(procs)
    ]
    time.sleep(0.2)
    go.touch()  # each process waits for this before its first write
    runs = []
    for p in started:
        out, err = p.communicate(timeout=120)
        runs.append(
            {
                "code": p.returncode,
                "err": err,
                "out": json.loads(out.strip().splitlines()[-1]) if p.returncode == 0 else None,
            }
        )
    return runs


def _expected_ids(procs: int, per_proc: int) -> list[int]:
    return sorted(10_000 * (i + 1) + j for i in range(procs) for j in range(per_proc * PROC_ROWS))


@pytest.mark.parametrize("procs", [2, 4])
def test_processes_append_concurrently(
    store: DeltaStore, tmp_path: Path, lake: Path, procs: int
) -> None:
    """N processes append 25 requests each to one table: every row once, one WRITE
    commit per request, no orphan files, and each request's own version reported."""
    per_proc = 25
    _append(store, "t", _ids(0, 1, writer=pa.array([0], pa.int64())))  # the writers' schema
    runs = _run_writers(tmp_path, lake, "t", procs, per_proc)
    assert [r["code"] for r in runs] == [0] * procs, [r["err"][-2000:] for r in runs]
    total = procs * per_proc
    for r in runs:
        stats = r["out"]["statistics"]
        assert (stats["commits"], stats["rollbacks"], stats["replays"]) == (per_proc, 0, 0)
        assert stats["files"] == per_proc  # a retried commit reuses its files
        assert [x["rows"] for x in r["out"]["results"]] == [PROC_ROWS] * per_proc
        assert not any(x["created"] for x in r["out"]["results"])
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.version() == total
    ids = dt.to_pyarrow_table().column("id").to_pylist()
    assert len(ids) == 1 + total * PROC_ROWS
    assert sorted(ids) == [0, *_expected_ids(procs, per_proc)]
    history = dt.history()
    assert Counter(h["operation"] for h in history) == {"WRITE": total, "CREATE TABLE": 1}
    assert sum(1 for h in history if h.get("arrowport.rows") == PROC_ROWS) == total
    assert _parquet(path) == sorted(a["path"] for a in _adds(dt))  # no orphan files
    versions = sorted(x["version"] for r in runs for x in r["out"]["results"])
    assert versions == list(range(1, total + 1))


def test_processes_create_the_table_concurrently(tmp_path: Path, lake: Path) -> None:
    """Two processes start on a missing table: one creates it, the other appends, and
    every request's rows land once."""
    per_proc = 10
    lake.mkdir()
    runs = _run_writers(tmp_path, lake, "t", 2, per_proc)
    assert [r["code"] for r in runs] == [0, 0], [r["err"][-2000:] for r in runs]
    total = 2 * per_proc
    path = lake / "t"
    dt = DeltaTable(str(path))
    assert dt.version() == total - 1
    ids = dt.to_pyarrow_table().column("id").to_pylist()
    assert sorted(ids) == _expected_ids(2, per_proc)
    history = dt.history()
    assert Counter(h["operation"] for h in history) == {"WRITE": total - 1, "CREATE TABLE": 1}
    assert _parquet(path) == sorted(a["path"] for a in _adds(dt))
    for r in runs:
        assert r["out"]["statistics"]["commits"] == per_proc
    results = [x for r in runs for x in r["out"]["results"]]
    assert sorted(x["version"] for x in results) == list(range(total))
    assert sum(x["created"] for x in results) == 1


# ---- 9. bad data in the middle ---------------------------------------------------


def test_failing_cast_in_the_second_insert_rolls_back(lake: Path) -> None:
    """A value Delta cannot hold exactly (a sub-microsecond timestamp) in the 2nd insert:
    refused 422, no version, no files (the 1st insert's closed file is deleted too)."""
    store = DeltaStore(lake, defaults=DeltaOptions(target_file_size=1))
    store.open()
    _append(store, "t", pa.record_batch({"ts": pa.array([1000], pa.timestamp("us"))}))
    path = lake / "t"
    files = _parquet(path)
    w = store.open_write("t", pa.schema([("ts", pa.timestamp("ns"))]))
    w.insert([pa.record_batch({"ts": pa.array([2000, 3000], pa.timestamp("ns"))})])
    assert len(_parquet(path)) == 2
    with pytest.raises(UnrepresentableValueError) as refused:
        w.insert([pa.record_batch({"ts": pa.array([4000, 4001], pa.timestamp("ns"))})])
    assert http_status(refused.value) == 422 and "'ts'" in refused.value.detail
    assert _parquet(path) == files
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    assert dt.to_pyarrow_table().column("ts").cast(pa.int64()).to_pylist() == [1000]
    assert store.statistics()["rollbacks"] == 1
    with pytest.raises(RuntimeError):
        w.finish()


def test_null_in_a_not_null_column_rolls_back(store: DeltaStore, lake: Path) -> None:
    """A null for a NOT NULL column in the 2nd insert: refused, nothing committed or left."""
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string())])
    _append(store, "t", pa.record_batch([pa.array([1]), pa.array(["a"])], schema=schema))
    path = lake / "t"
    files = _parquet(path)
    assert not DeltaTable(str(path)).schema().fields[0].nullable
    loose = pa.schema([("id", pa.int64()), ("v", pa.string())])
    w = store.open_write("t", loose)
    w.insert([pa.record_batch([pa.array([2]), pa.array(["b"])], schema=loose)])
    with pytest.raises(WriteRejectedError, match="id"):
        w.insert([pa.record_batch([pa.array([3, None]), pa.array(["c", "d"])], schema=loose)])
    assert _parquet(path) == files
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    assert dt.to_pyarrow_table().to_pylist() == [{"id": 1, "v": "a"}]


def test_bad_data_in_a_partitioned_new_table_leaves_nothing(store: DeltaStore, lake: Path) -> None:
    """The first write of a partitioned table failing in its 2nd insert leaves no
    table, no partition directory and no file."""
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])
    w: DeltaWrite = store.open_write("fresh", schema, options=DeltaOptions(partition_by=("name",)))
    w.insert([pa.record_batch([pa.array([1, 2]), pa.array(["a", "b/c"])], schema=schema)])
    assert len(_parquet(lake / "fresh")) == 2
    # a producer whose batch breaks its own schema's NOT NULL promise
    bad = pa.record_batch([pa.array([3, None]), pa.array(["a", "d"])], schema=schema)
    assert bad.column(0).null_count == 1
    with pytest.raises(WriteRejectedError, match="id"):
        w.insert([bad])
    assert not (lake / "fresh").exists()
    assert os.listdir(lake) == []
