"""The table modes of a write (create, append, replace; Flight SQL's bulk ingest) on the
three real stores: a DuckDB file, a DuckLake (file catalog) and Delta tables on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from arrowport.storage import (
    DeltaStore,
    DuckDBStore,
    DuckLakeStore,
    SchemaMismatchError,
    TableNotFoundError,
    WriteRejectedError,
)
from arrowport.storage.errors import TableExistsError
from arrowport.storage.modes import APPEND, CREATE, CREATE_APPEND, REPLACE

BACKENDS = ("duckdb", "ducklake", "delta")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    backend = request.param
    made: Any
    if backend == "duckdb":
        made = DuckDBStore(tmp_path / "t.duckdb")
    elif backend == "ducklake":
        made = DuckLakeStore(str(tmp_path / "meta.ducklake"), str(tmp_path / "data"))
    else:
        made = DeltaStore(tmp_path / "delta")
    made.open()
    yield made
    made.close()


def ids(start: int, rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + rows), pa.int64())})


def words(*values: str) -> pa.Table:
    return pa.table(
        {"word": pa.array(values, pa.string()), "n": pa.array(range(len(values)), pa.int32())}
    )


def write(store: Any, data: pa.Table, mode: str, key: str | None = None, table: str = "t") -> Any:
    """One request-mode write of ``data`` in ``mode``; its ``WriteResult``."""
    w = store.open_write(table, data.schema, idempotency_key=key, mode=mode)
    try:
        for batch in data.to_batches(max_chunksize=7):
            w.insert([batch])
        return w.finish()
    except BaseException:
        w.rollback()
        raise


def read(store: Any, table: str = "t") -> pa.Table:
    data = store.scan(table).read_all()
    return data.sort_by(data.schema.names[0])


def exists(store: Any, table: str = "t") -> bool:
    return any(info.name.lower() == table for info in store.list_tables())


def test_create_makes_the_table_and_refuses_an_existing_one(store: Any) -> None:
    """create writes a new table; on an existing one it is TableExistsError, table unchanged."""
    result = write(store, ids(0, 20), CREATE)
    assert (result.rows, result.replayed) == (20, False)
    with pytest.raises(TableExistsError) as refused:
        write(store, ids(100, 5), CREATE)
    assert refused.value.error == "table_exists" and "'t' already exists" in refused.value.detail
    assert read(store).column("id").to_pylist() == list(range(20))


def test_append_needs_the_table_and_creates_nothing(store: Any) -> None:
    """append to a missing table is TableNotFoundError and creates nothing; then it appends."""
    with pytest.raises(TableNotFoundError):
        write(store, ids(0, 5), APPEND)
    assert not exists(store)
    write(store, ids(0, 5), CREATE_APPEND)
    assert write(store, ids(5, 5), APPEND).rows == 5
    assert read(store).column("id").to_pylist() == list(range(10))
    with pytest.raises(SchemaMismatchError):  # the schema policy still holds
        write(store, pa.table({"id": ["not a number"]}), APPEND)
    assert read(store).num_rows == 10


def test_replace_changes_schema_and_rows_in_one_step(store: Any) -> None:
    """replace drops the table and creates it with the stream's schema and rows only."""
    write(store, ids(0, 30), CREATE_APPEND)
    result = write(store, words("a", "b", "c"), REPLACE)
    assert (result.rows, result.created) == (3, True)
    got = read(store)
    assert got.schema.names == ["word", "n"]
    assert got.column("word").to_pylist() == ["a", "b", "c"]
    assert write(store, words("z"), REPLACE, table="fresh").rows == 1  # missing: created
    assert read(store, "fresh").column("word").to_pylist() == ["z"]


def test_replace_with_no_rows_leaves_an_empty_table_of_the_new_schema(store: Any) -> None:
    """A replace whose stream has no batches still replaces: the table is empty, new schema."""
    write(store, ids(0, 30), CREATE_APPEND)
    w = store.open_write("t", words().schema, mode=REPLACE)
    assert w.finish().rows == 0
    got = read(store)
    assert (got.schema.names, got.num_rows) == (["word", "n"], 0)


def test_a_replace_rolled_back_midway_leaves_the_old_table(store: Any) -> None:
    """A replace that ends in a rollback after writing rows changes nothing."""
    write(store, ids(0, 30), CREATE_APPEND)
    w = store.open_write("t", words("a").schema, mode=REPLACE)
    w.insert(words("a", "b").to_batches())
    w.rollback()
    assert read(store).column("id").to_pylist() == list(range(30))
    write(store, ids(30, 1), APPEND)  # still writable as it was
    assert read(store).num_rows == 31


@pytest.mark.parametrize("mode", [CREATE, APPEND, REPLACE])
def test_a_key_replays_whatever_the_table_became(store: Any, mode: str) -> None:
    """A retried keyed write replays its first result: a retried create does not find its
    own table (ALREADY_EXISTS), a retried replace does not replace again."""
    if mode == APPEND:
        write(store, words("c"), CREATE_APPEND)
    first = write(store, words("a", "b"), mode, key="key-1")
    again = write(store, words("a", "b"), mode, key="key-1")
    assert (first.rows, first.replayed) == (2, False)
    assert (again.rows, again.replayed) == (2, True)
    expected = ["a", "b", "c"] if mode == APPEND else ["a", "b"]
    assert sorted(read(store).column("word").to_pylist()) == expected


def test_modes_other_than_create_append_need_request_mode(store: Any) -> None:
    """create, append and replace are one transaction: batch mode refuses them."""
    for mode in (CREATE, APPEND, REPLACE):
        with pytest.raises(WriteRejectedError, match="needs commit: request"):
            store.open_write("t", ids(0, 1).schema, commit="batch", mode=mode)
    assert not exists(store)


@pytest.mark.parametrize("store", ["ducklake", "delta"], indirect=True)
def test_replace_is_one_version(store: Any) -> None:
    """DuckLake: a replace is one snapshot; Delta: one commit (both the next version)."""
    write(store, ids(0, 10), CREATE_APPEND)
    if isinstance(store, DuckLakeStore):
        before = store.current_snapshot()
        result = write(store, words("a"), REPLACE)
        assert result.version == before + 1 == store.current_snapshot()
    else:
        result = write(store, words("a"), REPLACE)
        assert result.version == 1
        assert store.open_table("t").version() == 1


def test_delta_replace_keeps_the_partition_columns(tmp_path: Path) -> None:
    """Delta: a replace keeps the table's partitioning; a stream without it is refused."""
    from arrowport.config import DeltaOptions

    store = DeltaStore(tmp_path / "delta")
    store.open()
    parted = DeltaOptions(partition_by=("p",))
    data = pa.table({"id": [1, 2], "p": ["x", "y"]})
    w = store.open_write("t", data.schema, options=parted, mode=CREATE)
    w.insert(data.to_batches())
    w.finish()
    with pytest.raises(SchemaMismatchError, match="keeps a Delta table's partition columns: p"):
        store.open_write("t", ids(0, 1).schema, mode=REPLACE)
    new = pa.table({"p": ["z"], "v": [1.5]})
    w = store.open_write("t", new.schema, mode=REPLACE)
    w.insert(new.to_batches())
    w.finish()
    dt = store.open_table("t")
    assert dt.metadata().partition_columns == ["p"]
    assert dt.to_pyarrow_table().to_pylist() == [{"v": 1.5, "p": "z"}]
