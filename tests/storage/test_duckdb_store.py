"""The DuckDB writer on its own: real database files, plain iterators, no server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from arrowport.errors import ArrowportError
from arrowport.io.status import http_status
from arrowport.storage import DuckDBStore, IngestAborted, SchemaMismatchError
from arrowport.storage.schema import Column, check_subset


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "w.duckdb")
    s.open()
    yield s
    s.close()


def _batches(n: int, rows: int = 10) -> list[pa.RecordBatch]:
    return [
        pa.record_batch(
            {"a": pa.array(range(i * rows, (i + 1) * rows)), "b": pa.array([str(i)] * rows)}
        )
        for i in range(n)
    ]


def test_request_mode_commits_all_batches_in_one_transaction(store: DuckDBStore) -> None:
    """Request mode writes every batch and reports rows and batches."""
    batches = _batches(5)
    result = store.write("t", batches[0].schema, iter(batches))
    assert (result.rows, result.batches, result.created) == (50, 5, True)
    assert store.count_rows("t") == 50
    assert store.commits == 1


def test_source_error_rolls_back_everything(store: DuckDBStore) -> None:
    """If the batch source raises mid-stream, nothing is written and the table is not created."""
    batches = _batches(5)

    def failing() -> Iterator[pa.RecordBatch]:
        yield from batches[:3]
        raise IngestAborted("client went away")

    with pytest.raises(IngestAborted):
        store.write("t", batches[0].schema, failing())
    with store._cursor() as cur:
        assert store.table_columns(cur, "t") is None
    assert store.rollbacks == 1


def test_batch_mode_keeps_committed_batches(store: DuckDBStore) -> None:
    """Batch mode commits each batch; a later failure keeps the earlier ones."""
    batches = _batches(5)

    def failing() -> Iterator[pa.RecordBatch]:
        yield from batches[:2]
        raise IngestAborted("cut")

    with pytest.raises(IngestAborted):
        store.write("t", batches[0].schema, failing(), commit="batch")
    assert store.count_rows("t") == 20
    assert store.commits == 2


def test_table_write_session_counts_and_rolls_back(store: DuckDBStore) -> None:
    """A TableWrite inserts groups in one transaction; rollback leaves nothing, even the table."""
    batches = _batches(4)
    write = store.open_write("s", batches[0].schema)
    write.insert(batches[:2])
    write.insert(batches[2:])
    assert (write.rows, write.batches) == (40, 4)
    write.rollback()
    write.rollback()  # safe twice
    with store._cursor() as cur:
        assert store.table_columns(cur, "s") is None
    write = store.open_write("s", batches[0].schema)
    write.insert(batches)
    assert write.finish().rows == 40
    assert store.count_rows("s") == 40


def test_groups_are_bounded_by_rows_bytes_and_count(tmp_path: Path) -> None:
    """INSERT groups close on rows, bytes or batch count, so tiny batches cannot pile up."""
    s = DuckDBStore(tmp_path / "g.duckdb", insert_group_rows=25, insert_group_batches=3)
    s.open()
    try:
        write = s.open_write("g", _batches(1)[0].schema)
        sizes = [len(g) for g in write.groups(_batches(7))]  # 10-row batches
        assert sizes == [3, 3, 1]
        tiny = [pa.record_batch({"a": pa.array([], pa.int64()), "b": pa.array([], pa.string())})]
        assert [len(g) for g in write.groups(tiny * 7)] == [3, 3, 1]
        write.rollback()
    finally:
        s.close()


def test_schema_mismatch_counts_and_writes_nothing(store: DuckDBStore) -> None:
    """A superset schema is refused, counted, and leaves the table as it was."""
    batches = _batches(1)
    store.write("t", batches[0].schema, iter(batches))
    extra = pa.record_batch({"a": [1], "zzz": [2.0]})
    with pytest.raises(SchemaMismatchError) as info:
        store.write("t", extra.schema, iter([extra]))
    assert info.value.extra == ("zzz",)
    assert store.schema_mismatches == 1
    assert store.count_rows("t") == 10


def test_duplicate_column_names_refused(store: DuckDBStore) -> None:
    """Columns equal up to case are refused (DuckDB names are case-insensitive)."""
    batch = pa.RecordBatch.from_arrays([pa.array([1]), pa.array([2])], names=["x", "X"])
    with pytest.raises(SchemaMismatchError, match="duplicate"):
        store.write("t", batch.schema, iter([batch]))


def test_types_are_kept(store: DuckDBStore, tmp_path: Path) -> None:
    """date32 stays DATE, timestamps stay TIMESTAMP, dictionaries become their value type."""
    batch = pa.record_batch(
        {
            "d": pa.array([1], pa.date32()),
            "ts": pa.array([1], pa.timestamp("us")),
            "tz": pa.array([1], pa.timestamp("us", tz="UTC")),
            "dict": pa.array(["x"]).dictionary_encode(),
            "dec": pa.array([1], pa.decimal128(12, 3)),
            "nested": pa.array([{"k": [1, 2]}]),
        }
    )
    store.write("typed", batch.schema, iter([batch]))
    with store._cursor() as cur:
        columns = {c.name: c.type for c in store.table_columns(cur, "typed") or []}
    assert columns == {
        "d": "DATE",
        "ts": "TIMESTAMP",
        "tz": "TIMESTAMP WITH TIME ZONE",
        "dict": "VARCHAR",
        "dec": "DECIMAL(12,3)",
        "nested": "STRUCT(k BIGINT[])",
    }


def test_missing_not_null_column_is_a_mismatch() -> None:
    """A stream that omits a NOT NULL column is refused and the column is named."""
    with pytest.raises(SchemaMismatchError) as info:
        check_subset(
            "t",
            [Column("a", "BIGINT")],
            [Column("a", "BIGINT"), Column("must", "VARCHAR", nullable=False)],
        )
    assert info.value.missing == ("must",)


def test_constraint_violation_is_write_rejected(store: DuckDBStore, tmp_path: Path) -> None:
    """A constraint the table declares is reported as a 422 write rejection; nothing lands."""
    with store._cursor() as cur:
        cur.execute("CREATE TABLE k (a BIGINT PRIMARY KEY)")
    batch = pa.record_batch({"a": [1, 1]})
    with pytest.raises(Exception) as info:
        store.write("k", batch.schema, iter([batch]))
    assert isinstance(info.value, ArrowportError) and http_status(info.value) == 422
    assert store.count_rows("k") == 0


def test_nothing_downloads_extensions(tmp_path: Path) -> None:
    """Autoinstall of extensions is off, so nothing is fetched at run time."""
    s = DuckDBStore(tmp_path / "x.duckdb")
    s.open()
    try:
        with s._cursor() as cur:
            value = cur.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()
        assert value == (False,)
    finally:
        s.close()
    assert duckdb.__version__ == "1.5.5"


def test_batch_mode_failure_before_first_batch_leaves_no_table(store: DuckDBStore) -> None:
    """Batch mode creates the table with its first committed batch, not before."""
    schema = _batches(1)[0].schema

    def failing() -> Iterator[pa.RecordBatch]:
        raise IngestAborted("cut before any batch")
        yield  # pragma: no cover

    with pytest.raises(IngestAborted):
        store.write("t", schema, failing(), commit="batch")
    with store._cursor() as cur:
        assert store.table_columns(cur, "t") is None


@pytest.mark.parametrize("filename", ["w.duckdb", "main.duckdb", 'a"b.duckdb'])
def test_table_columns_finds_only_the_table_in_main(tmp_path: Path, filename: str) -> None:
    """The lookup every write makes: case-insensitive, NOT NULL reported, None for a table
    that is missing or in another schema, and a miss inside a transaction leaves it usable.
    (A file named main.duckdb gets another catalog name, and one with a '"' in its name
    cannot be named to pragma_table_info: the lookup still finds their tables.)"""
    s = DuckDBStore(tmp_path / filename)
    s.open()
    try:
        with s._cursor() as cur:
            cur.execute('CREATE TABLE "Mixed Case" (id BIGINT NOT NULL, note VARCHAR)')
            cur.execute("CREATE SCHEMA other")
            cur.execute("CREATE TABLE other.elsewhere (x INTEGER)")
            assert s.table_columns(cur, "mixed case") == [
                Column("id", "BIGINT", False),
                Column("note", "VARCHAR", True),
            ]
            assert s.table_columns(cur, "elsewhere") is None
            assert s.table_columns(cur, "duckdb_tables") is None  # a system view, not a table
            cur.begin()
            assert s.table_columns(cur, "missing") is None
            cur.execute("INSERT INTO \"Mixed Case\" VALUES (1, 'kept')")
            cur.commit()
    finally:
        s.close()
    with duckdb.connect(str(tmp_path / filename)) as con:
        assert con.sql('SELECT * FROM "Mixed Case"').fetchall() == [(1, "kept")]
    s.open()  # and a write through the store, which looks the table up
    try:
        data = pa.table({"id": [2], "note": ["appended"]})
        assert s.write("mixed case", data.schema, iter(data.to_batches())).created is False
        assert s.write("fresh", data.schema, iter(data.to_batches())).created is True
        assert s.count_rows("Mixed Case") == 2 and s.count_rows("fresh") == 1
    finally:
        s.close()


@pytest.mark.parametrize("mode", ["request", "batch"])
def test_a_mismatch_into_an_existing_table_counts_once(store: DuckDBStore, mode: str) -> None:
    """The append path checks the schema in its transaction: one mismatch, one rollback
    at most, nothing written, and the store goes on writing."""
    good = pa.table({"a": [1], "b": ["x"]})
    store.write("t", good.schema, iter(good.to_batches()))
    bad = pa.table({"a": [1], "zzz": [2.5]})
    rollbacks = store.rollbacks
    with pytest.raises(SchemaMismatchError, match="zzz"):
        store.write("t", bad.schema, iter(bad.to_batches()), commit=mode)
    assert store.schema_mismatches == 1
    assert store.rollbacks - rollbacks == (1 if mode == "request" else 0)
    assert store.write("t", good.schema, iter(good.to_batches())).rows == 1
    assert store.count_rows("t") == 2


def _duckdb_memory(store: DuckDBStore) -> tuple[int, str]:
    with store._cursor() as cur:
        row = cur.execute(
            "SELECT (SELECT sum(memory_usage_bytes) FROM duckdb_memory()), "
            "current_setting('memory_limit')"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def test_release_memory_evicts_the_block_cache_only_when_unused(tmp_path: Path) -> None:
    """After a large transaction DuckDB keeps its blocks cached up to memory_limit;
    release_memory gives them back, but never while a cursor (a write, a read) is open,
    and only once per use."""
    store = DuckDBStore(tmp_path / "m.duckdb", memory_limit="256MB")
    store.open()
    try:
        rows = 122_880
        rng = np.random.default_rng(18)  # random: DuckDB cannot compress it away
        batch = pa.record_batch({f"c{i}": pa.array(rng.random(rows)) for i in range(8)})
        store.write("t", batch.schema, iter([batch] * 20))  # 157 MB, one transaction
        cached, limit = _duckdb_memory(store)
        assert cached > 64 * 2**20
        busy = store.new_cursor()  # e.g. a write in progress
        assert store.release_memory() is False
        assert _duckdb_memory(store)[0] >= cached // 2
        busy.close()
        assert store.release_memory() is True
        assert store.release_memory() is False  # unused since: nothing to do
        after, limit_after = _duckdb_memory(store)
        assert after < 32 * 2**20
        assert limit_after == limit  # the configured limit is back
        assert store.count_rows("t") == 20 * rows
    finally:
        store.close()
