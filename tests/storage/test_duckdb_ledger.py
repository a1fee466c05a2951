"""The DuckDB idempotency ledger: real DuckDB files, no server."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from arrowport.storage import DuckDBStore, ReplayWrite, SchemaMismatchError


def _batch(start: int, rows: int = 10) -> pa.RecordBatch:
    return pa.record_batch({"id": pa.array(range(start, start + rows), pa.int64())})


def _store(path: Path, **kw: float) -> DuckDBStore:
    store = DuckDBStore(path / "t.duckdb", **kw)  # type: ignore[arg-type]
    store.open()
    return store


def _ingest(store: DuckDBStore, table: str, key: str | None, *batches: pa.RecordBatch) -> object:
    write = store.open_write(table, batches[0].schema, idempotency_key=key)
    for batch in batches:
        write.insert([batch])
    return write.finish()


def _count(store: DuckDBStore, table: str) -> int:
    with store._cursor() as cur:
        row = cur.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    assert row is not None
    return int(row[0])


def test_a_committed_key_replays_the_original_result_and_writes_nothing(tmp_path: Path) -> None:
    """The second request with a key writes no row and answers the first one's rows/batches."""
    store = _store(tmp_path)
    first = _ingest(store, "t", "k1", _batch(0), _batch(10))
    again = _ingest(store, "t", "k1", _batch(0, 3))
    assert (first.rows, first.batches, first.replayed) == (20, 2, False)  # type: ignore[attr-defined]
    assert (again.rows, again.batches, again.replayed) == (20, 2, True)  # type: ignore[attr-defined]
    assert _count(store, "t") == 20
    other = _ingest(store, "t", "k2", _batch(100))
    assert other.replayed is False  # type: ignore[attr-defined]
    assert _count(store, "t") == 30
    assert store.replays == 1


def test_keys_are_server_wide_and_the_replay_is_decided_before_the_table_is_touched(
    tmp_path: Path,
) -> None:
    """A key used for table a replays for table b too (it names a request, not a table); the
    replay needs no schema check and creates nothing."""
    store = _store(tmp_path)
    _ingest(store, "a", "k", _batch(0))
    write = store.open_write("b", pa.schema([("x", pa.string())]), idempotency_key="k")
    assert isinstance(write, ReplayWrite)
    assert write.finish().rows == 10
    assert [t.name for t in store.list_tables()] == ["a"]  # no table b, no ledger listed


def test_the_key_is_recorded_in_the_requests_transaction(tmp_path: Path) -> None:
    """A request that fails commits neither its rows nor its key: the retry writes."""
    store = _store(tmp_path)
    _ingest(store, "t", None, _batch(0))
    write = store.open_write("t", _batch(0).schema, idempotency_key="k")
    write.insert([_batch(50)])
    write.rollback()
    with pytest.raises(SchemaMismatchError):
        store.open_write("t", pa.schema([("id", pa.string())]), idempotency_key="k")
    retry = _ingest(store, "t", "k", _batch(50))
    assert retry.replayed is False  # type: ignore[attr-defined]
    assert _count(store, "t") == 20


def test_two_requests_racing_with_one_key_commit_once(tmp_path: Path) -> None:
    """Both open before either commits: the second to finish finds the key in the ledger,
    rolls back its rows and replays."""
    store = _store(tmp_path)
    one = store.open_write("t", _batch(0).schema, idempotency_key="k")
    one.insert([_batch(0)])
    one_result = one.finish()
    two = store.open_write("u", _batch(0).schema, idempotency_key="k2")
    two.insert([_batch(0)])
    two.finish()
    late = store.open_write("t", _batch(0).schema, idempotency_key="k3")
    rival = store.open_write("t", _batch(0).schema, idempotency_key="k3")
    late.insert([_batch(100, 5)])
    rival.insert([_batch(100, 5)])
    assert late.finish().replayed is False
    result = rival.finish()
    assert (result.replayed, result.rows) == (True, 5)
    assert _count(store, "t") == 15
    assert one_result.rows == 10


def test_keys_expire_after_the_ttl(tmp_path: Path) -> None:
    """After key_ttl_hours the key is forgotten: a retry writes again, and pruning drops it."""
    store = _store(tmp_path, key_ttl_hours=0.5 / 3600)  # half a second
    _ingest(store, "t", "k", _batch(0))
    assert _ingest(store, "t", "k", _batch(0)).replayed is True  # type: ignore[attr-defined]
    time.sleep(0.7)
    assert _ingest(store, "t", "k", _batch(0)).replayed is False  # type: ignore[attr-defined]
    assert _count(store, "t") == 20
    time.sleep(0.7)
    store.prune_ledger()
    with store._cursor() as cur:
        assert cur.execute('SELECT count(*) FROM "_arrowport_ledger"').fetchone() == (0,)


def test_the_ledger_survives_a_restart(tmp_path: Path) -> None:
    """Keys are in the database file: a reopened store still replays them."""
    store = _store(tmp_path)
    _ingest(store, "t", "k", _batch(0))
    store.close()
    reopened = _store(tmp_path)
    assert _ingest(reopened, "t", "k", _batch(0)).replayed is True  # type: ignore[attr-defined]
    reopened.close()
    con = duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True)
    assert con.execute('SELECT key, table_name, rows FROM "_arrowport_ledger"').fetchall() == [
        ("k", "t", 10)
    ]
    con.close()
