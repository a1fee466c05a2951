"""Table modes across instances: two DuckLakeStores on one PostgreSQL catalog (a real server
on 127.0.0.1) racing to create, or to replace, one table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pg_fixtures import postgres  # noqa: F401
from pg_support import PgServer

from arrowport.storage import DuckLakeStore, StorageError
from arrowport.storage.errors import TableExistsError
from arrowport.storage.modes import CREATE, REPLACE


def ids(start: int, rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + rows), pa.int64())})


@pytest.fixture
def pair(postgres: PgServer, tmp_path: Path) -> Iterator[tuple[DuckLakeStore, DuckLakeStore]]:  # noqa: F811
    conninfo = postgres.create_database(f"modes_{tmp_path.name[-12:].replace('-', '_')}")
    stores = [DuckLakeStore(f"postgres:{conninfo}", str(tmp_path / "data")) for _ in range(2)]
    for store in stores:
        store.open()
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def open_with(store: DuckLakeStore, data: pa.Table, mode: str, key: str | None = None) -> object:
    write = store.open_write("t", data.schema, mode=mode, idempotency_key=key)
    write.insert(data.to_batches())  # type: ignore[attr-defined]
    return write


def ids_in(store: DuckLakeStore) -> list[int]:
    return sorted(store.scan("t").read_all().column("id").to_pylist())


def test_the_loser_of_a_create_race_is_told_the_table_exists(
    pair: tuple[DuckLakeStore, DuckLakeStore],
) -> None:
    """Two instances create one table at once: one commits; the other's commit is
    TableExistsError (not a 503), and only the winner's rows are there."""
    first, second = pair
    losing = open_with(first, ids(0, 5), CREATE)
    winning = open_with(second, ids(100, 3), CREATE)
    assert winning.finish().rows == 3  # type: ignore[attr-defined]
    with pytest.raises(TableExistsError):
        losing.finish()  # type: ignore[attr-defined]
    assert ids_in(first) == [100, 101, 102]


def test_a_keyed_create_lost_to_its_own_retry_replays(
    pair: tuple[DuckLakeStore, DuckLakeStore],
) -> None:
    """A create and its retry (same key) on two instances: one writes, the other replays."""
    first, second = pair
    slow = open_with(first, ids(0, 4), CREATE, key="k-1")
    fast = open_with(second, ids(0, 4), CREATE, key="k-1")
    assert fast.finish().replayed is False  # type: ignore[attr-defined]
    again = slow.finish()  # type: ignore[attr-defined]
    assert (again.rows, again.replayed) == (4, True)
    assert ids_in(first) == [0, 1, 2, 3]


def test_concurrent_replaces_leave_one_of_them_whole(
    pair: tuple[DuckLakeStore, DuckLakeStore],
) -> None:
    """Two replaces at once: the first to commit wins whole; the other fails (503, to
    retry) and writes nothing: never a mix."""
    first, second = pair
    first.write("t", ids(0, 1).schema, ids(1000, 2).to_batches())
    one = open_with(first, ids(0, 5), REPLACE)
    two = open_with(second, ids(100, 3), REPLACE)
    two.finish()  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="Failed to commit"):  # 503: a retry may win
        one.finish()  # type: ignore[attr-defined]
    assert ids_in(first) == [100, 101, 102]
