"""The DuckDB idempotency ledger: real DuckDB files, no server."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from arrowport.storage import DuckDBStore, ReplayWrite, SchemaMismatchError, StorageError


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


def test_keys_are_per_table_and_the_replay_is_decided_before_the_table_is_touched(
    tmp_path: Path,
) -> None:
    """A key used for table a does not replay for table b (or its other spelling B): b is
    written. For table a (any case) it replays without a schema check and writes nothing."""
    store = _store(tmp_path)
    _ingest(store, "a", "k", _batch(0))
    other = _ingest(store, "B", "k", _batch(0, 4))
    assert other.replayed is False  # type: ignore[attr-defined]
    assert _ingest(store, "b", "k", _batch(0)).replayed is True  # type: ignore[attr-defined]
    assert (_count(store, "a"), _count(store, "b")) == (10, 4)
    write = store.open_write("A", pa.schema([("x", pa.string())]), idempotency_key="k")
    assert isinstance(write, ReplayWrite)
    assert write.finish().rows == 10
    assert [t.name for t in store.list_tables()] == ["a", "B"]  # no ledger listed


def _old_ledger(path: Path, rows: list[tuple[object, ...]]) -> None:
    con = duckdb.connect(str(path))
    con.execute(
        'CREATE TABLE "_arrowport_ledger" (key VARCHAR PRIMARY KEY, table_name VARCHAR, '
        "rows BIGINT, batches BIGINT, committed_at DOUBLE)"
    )
    con.executemany('INSERT INTO "_arrowport_ledger" VALUES (?, ?, ?, ?, ?)', rows)
    con.close()


def test_the_old_global_ledger_is_moved_once_and_its_keys_keep_their_table(
    tmp_path: Path,
) -> None:
    """A file with the old _arrowport_ledger (key PRIMARY KEY): its live, sane rows move to the
    per-table ledger at open and still replay for their table only; expired and malformed rows
    (NULL or negative counts) are dropped with the old table."""
    now = time.time()
    _old_ledger(
        tmp_path / "t.duckdb",
        [
            ("k", "T", 7, 1, now - 60),
            ("old", "t", 1, 1, now - 10 * 86400),  # past the 168 h TTL
            ("null", "t", None, 1, now - 60),
            ("neg", "t", -5, 1, now - 60),
        ],
    )
    store = _store(tmp_path)
    write = store.open_write("t", _batch(0).schema, idempotency_key="k")
    assert isinstance(write, ReplayWrite) and write.finish().rows == 7
    assert _ingest(store, "u", "k", _batch(0)).replayed is False  # type: ignore[attr-defined]
    for key in ("old", "null", "neg"):
        assert _ingest(store, "t", key, _batch(0)).replayed is False  # type: ignore[attr-defined]
    with store._cursor() as cur:
        tables = {r[0] for r in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "_arrowport_ledger" not in tables and "_arrowport_keys" in tables
    store.close()
    _store(tmp_path).close()  # a second open has nothing to move


def test_malformed_ledger_rows_are_not_trusted(tmp_path: Path) -> None:
    """A ledger made by hand without our constraints, with NULL and negative counts or a
    commit time far ahead: the key writes (with a warning), never fails, and is then recorded."""
    path = tmp_path / "t.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        'CREATE TABLE "_arrowport_keys" (table_name VARCHAR, key VARCHAR, rows BIGINT, '
        "batches BIGINT, committed_at DOUBLE)"
    )
    now = time.time()
    con.executemany(
        'INSERT INTO "_arrowport_keys" VALUES (?, ?, ?, ?, ?)',
        [
            ("t", "null", None, None, now),
            ("t", "neg", -1, 1, now),
            ("t", "future", 5, 1, now + 1e9),
        ],
    )
    con.close()
    store = _store(tmp_path)
    for key in ("null", "neg", "future"):
        assert _ingest(store, "t", key, _batch(0)).replayed is False  # type: ignore[attr-defined]
        assert _ingest(store, "t", key, _batch(0)).replayed is True  # type: ignore[attr-defined]
    assert _count(store, "t") == 30


def test_a_ledger_table_with_other_columns_stops_the_open_with_a_clear_message(
    tmp_path: Path,
) -> None:
    """A hand-made _arrowport_keys with other columns: open fails naming the table and what to
    do (not every keyed write later), and releases the file."""
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    con.execute('CREATE TABLE "_arrowport_keys" (key VARCHAR, junk INT)')
    con.close()
    store = DuckDBStore(tmp_path / "t.duckdb")
    with pytest.raises(StorageError, match=r"_arrowport_keys has unexpected columns.*rename or"):
        store.open()
    duckdb.connect(str(tmp_path / "t.duckdb")).close()  # not left locked


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
        assert cur.execute('SELECT count(*) FROM "_arrowport_keys"').fetchone() == (0,)


def test_the_ledger_survives_a_restart(tmp_path: Path) -> None:
    """Keys are in the database file: a reopened store still replays them."""
    store = _store(tmp_path)
    _ingest(store, "t", "k", _batch(0))
    store.close()
    reopened = _store(tmp_path)
    assert _ingest(reopened, "t", "k", _batch(0)).replayed is True  # type: ignore[attr-defined]
    reopened.close()
    con = duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True)
    assert con.execute('SELECT key, table_name, rows FROM "_arrowport_keys"').fetchall() == [
        ("k", "t", 10)
    ]
    con.close()
