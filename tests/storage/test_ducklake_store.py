"""DuckLakeStore on a real lake (a .ducklake file and Parquet files on disk)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from arrowport.config import parse_config
from arrowport.io.server import open_ducklake
from arrowport.storage import DuckLakeStore, InvalidReadError, StorageError, ducklake
from arrowport.storage import ducklake_ledger as ledger
from arrowport.storage.ducklake_ledger import PREFIX as LEDGER_PREFIX


def table(rows: int, offset: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(offset, offset + rows), pa.int64())})


@pytest.fixture
def store(tmp_path: Path) -> DuckLakeStore:
    lake = DuckLakeStore(
        str(tmp_path / "meta.ducklake"), str(tmp_path / "data"), snapshot_retention_hours=0
    )
    lake.open()
    yield lake
    lake.close()


def keyed(store: DuckLakeStore, key: str, data: pa.Table) -> object:
    write = store.open_write("t", data.schema, idempotency_key=key)
    for group in write.groups(data.to_batches()):
        write.insert(group)
    return write


def parquet_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data").rglob("*.parquet"))


def test_a_keyed_commit_racing_maintenance_still_commits(
    store: DuckLakeStore, tmp_path: Path
) -> None:
    """Ledger pruning and snapshot expiry during a keyed write do not fail its commit."""
    store.write("t", table(1).schema, [])  # the table exists: see the next test
    with store._cursor() as cur:  # an expired day of keys, which the cleanup drops
        cur.execute(
            f'CREATE TABLE "{LEDGER_PREFIX}20200101" AS SELECT * FROM '
            f'"{store._ensure_ledger_day()}" LIMIT 0'
        )
        cur.execute(f"INSERT INTO \"{LEDGER_PREFIX}20200101\" VALUES ('old', 't', 1, 1, 0)")
    write = keyed(store, "k1", table(1000))
    store.merge_files()
    store.expire_and_clean()
    result = write.finish()  # type: ignore[attr-defined]
    assert (result.rows, result.replayed) == (1000, False)
    with store._cursor() as cur:
        assert f"{LEDGER_PREFIX}20200101" not in ledger.tables(cur)
    assert store.count_rows("t") == 1000
    assert store.maintenance == {("merge", "ok"): 1, ("cleanup", "ok"): 1}
    again = keyed(store, "k1", table(1000)).finish()  # type: ignore[attr-defined]
    assert again.replayed and again.rows == 1000
    assert store.count_rows("t") == 1000


def test_expiry_waits_for_a_write_that_creates_its_table(
    store: DuckLakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshot expiry (which breaks DuckLake's commit of a table creation) waits for the
    creating write to end, then runs; one that waits too long is skipped, not forced."""
    store.write("first", table(1).schema, table(1).to_batches())
    store.write("first", table(1).schema, table(1).to_batches())  # an old snapshot to expire
    write = keyed(store, "k3", table(100))  # creates table t, not yet committed
    done = threading.Event()
    expiry = threading.Thread(target=lambda: (store.expire_and_clean(), done.set()))
    expiry.start()
    assert not done.wait(0.5), "expiry ran while the creating write was open"
    assert write.finish().rows == 100  # type: ignore[attr-defined]
    assert done.wait(30)
    expiry.join()
    assert store.count_rows("t") == 100 and store.expired_snapshots > 0
    monkeypatch.setattr(ducklake, "EXPIRY_WAIT_SECONDS", 0.2)
    write = store.open_write("u", table(1).schema)  # creates u
    with pytest.raises(StorageError, match="snapshot expiry skipped"):
        store.expire_and_clean()
    write.rollback()
    assert store.maintenance[("cleanup", "failed")] == 1


def test_a_batch_mode_stream_holds_expiry_off_only_until_its_table_exists(
    store: DuckLakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long batch-mode stream creates its table with its first commit; after that it
    only appends, so snapshot expiry does not wait for the rest of the stream."""
    monkeypatch.setattr(ducklake, "EXPIRY_WAIT_SECONDS", 0.5)
    write = store.open_write("b", table(1).schema, commit="batch")
    with pytest.raises(StorageError, match="snapshot expiry skipped"):
        store.expire_and_clean()  # the table does not exist yet: expiry must wait
    write.insert(table(10).to_batches())  # type: ignore[union-attr]
    store.expire_and_clean()  # the stream goes on, but expiry runs
    write.insert(table(10, 10).to_batches())  # type: ignore[union-attr]
    result = write.finish()  # type: ignore[union-attr]
    assert (result.rows, result.created) == (20, True)
    assert store.count_rows("b") == 20


def test_expired_keys_are_written_again(store: DuckLakeStore) -> None:
    """A key older than the TTL no longer replays: its request is written again."""
    keyed(store, "k2", table(10)).finish()  # type: ignore[attr-defined]
    store.key_ttl_hours = 1 / 3600 / 10  # 0.1 s
    time.sleep(0.2)
    result = keyed(store, "k2", table(10)).finish()  # type: ignore[attr-defined]
    assert not result.replayed
    assert store.count_rows("t") == 20


def test_a_failed_request_leaves_no_file_and_no_snapshot(
    store: DuckLakeStore, tmp_path: Path
) -> None:
    """A rolled-back write and a NOT NULL refusal leave no data file and no snapshot."""
    store.write("t", table(5).schema, table(5).to_batches())
    files, snapshot = parquet_files(tmp_path), store.current_snapshot()
    write = store.open_write("t", table(1).schema)
    write.insert(table(50_000).to_batches())
    write.rollback()
    with store._cursor() as cur:
        cur.execute("CREATE TABLE nn (id BIGINT NOT NULL)")
    snapshot = store.current_snapshot()
    nulls = pa.table({"id": pa.array([1, None], pa.int64())})
    with pytest.raises(Exception, match="NOT NULL"):
        store.write("nn", nulls.schema, nulls.to_batches())
    assert parquet_files(tmp_path) == files
    assert store.current_snapshot() == snapshot
    assert store.count_rows("t") == 5


def test_time_travel_reads_each_snapshot(store: DuckLakeStore) -> None:
    """scan(version=v) reads the table as of snapshot v; later or earlier ones are refused."""
    v1 = store.write("t", table(3).schema, table(3).to_batches()).version
    v2 = store.write("t", table(4).schema, table(4, 3).to_batches()).version
    assert v1 is not None and v2 == v1 + 1
    assert store.scan("t", version=v1).read_all().num_rows == 3
    assert store.scan("t", version=v2).read_all().num_rows == 7
    with pytest.raises(InvalidReadError, match="does not exist"):
        store.scan("t", version=v2 + 10)
    with pytest.raises(InvalidReadError, match="does not exist at version"):
        store.scan("t", version=v1 - 1)
    assert [s["version"] for s in store.snapshots("t")] == [v2, v1]


def test_a_key_recorded_just_after_midnight_is_found_for_its_whole_ttl() -> None:
    """Just after midnight UTC a key goes into the previous day's table (today's is not
    made yet); a lookup near the end of its TTL still finds it there."""
    import duckdb

    midnight = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC
    cur = duckdb.connect()
    yesterday = ledger.day_table(midnight - 60)
    cur.execute(ledger.DDL.format(name=f'"{yesterday}"'))
    assert ledger.record(cur, "k", "t", 5, 1, now=midnight + 60)  # into yesterday's table
    for now in (midnight + 120, midnight + 24 * 3600 + 30):  # since = 00:00:30, same day
        assert ledger.lookup(cur, "t", "k", ttl_hours=24, now=now) == (5, 1)
    assert ledger.lookup(cur, "t", "k", ttl_hours=24, now=midnight + 24 * 3600 + 90) is None
    assert ledger.expired([yesterday], 24, now=midnight + 24 * 3600 + 90) == []
    assert ledger.expired([yesterday], 24, now=midnight + 3 * 24 * 3600) == [yesterday]


def test_the_commit_retry_settings_reach_duckdb(tmp_path: Path) -> None:
    """ducklake.max_retry_count, retry_wait_ms and retry_backoff are DuckLake's settings on
    every cursor the store writes with (wired from the config, as the server opens it)."""
    config = parse_config(
        {
            "ducklake": {
                "catalog": str(tmp_path / "meta.ducklake"),
                "data_path": str(tmp_path / "data"),
                "max_retry_count": 7,
                "retry_wait_ms": 15,
                "retry_backoff": 2.5,
            }
        }
    )
    lake = open_ducklake(config)
    try:
        with lake._cursor() as cur:
            row = cur.execute(
                "SELECT current_setting('ducklake_max_retry_count'), "
                "current_setting('ducklake_retry_wait_ms'), "
                "current_setting('ducklake_retry_backoff')"
            ).fetchone()
    finally:
        lake.close()
    assert row == (7, 15, 2.5)


def test_a_replay_is_found_in_the_requests_own_transaction(store: DuckLakeStore) -> None:
    """On DuckLake the key is looked up once, at the start of the request's transaction:
    a committed key gives a replay before any row is read, with no rollback counted, no
    new snapshot and nothing written; a new key on the same table is written once."""
    first = keyed(store, "k1", table(10)).finish()  # type: ignore[attr-defined]
    assert not first.replayed
    snapshots, rollbacks, replays = store.current_snapshot(), store.rollbacks, store.replays
    again = store.open_write("t", table(10).schema, idempotency_key="k1")
    assert again.replayed  # decided at open, before the body
    for group in again.groups(table(10, offset=10).to_batches()):
        again.insert(group)
    result = again.finish()
    assert (result.replayed, result.rows, result.batches) == (True, 10, 1)
    assert (store.rollbacks, store.replays) == (rollbacks, replays + 1)
    assert store.current_snapshot() == snapshots
    fresh = keyed(store, "k2", table(5, offset=100)).finish()  # type: ignore[attr-defined]
    assert (fresh.replayed, fresh.rows) == (False, 5)
    assert keyed(store, "k2", table(5)).finish().replayed  # type: ignore[attr-defined]
    assert store.count_rows("t") == 15


def test_a_replay_into_a_dropped_table_does_not_create_it(store: DuckLakeStore) -> None:
    """A retry whose table was dropped since is still answered at open, from the ledger:
    the table is not created again, nothing is written, and no rollback is counted."""
    data = table(10)
    write = store.open_write("u", data.schema, idempotency_key="gone")
    for group in write.groups(data.to_batches()):
        write.insert(group)
    assert not write.finish().replayed
    store.drop_table("u")
    snapshots, rollbacks = store.current_snapshot(), store.rollbacks
    again = store.open_write("u", data.schema, idempotency_key="gone")
    assert again.replayed
    assert again.finish().rows == 10
    assert store.current_snapshot() == snapshots and store.rollbacks == rollbacks
    assert "u" not in [info.name for info in store.list_tables()]


def _keyed_into(store: DuckLakeStore, name: str, key: str, data: pa.Table) -> object:
    write = store.open_write(name, data.schema, idempotency_key=key)
    for group in write.groups(data.to_batches()):
        write.insert(group)
    return write.finish()


def test_keys_are_per_table(store: DuckLakeStore) -> None:
    """A key first used for table a is a new request for table b (b is written), and
    replays for a under any spelling."""
    assert not _keyed_into(store, "a", "k", table(3)).replayed  # type: ignore[attr-defined]
    assert not _keyed_into(store, "b", "k", table(4)).replayed  # type: ignore[attr-defined]
    assert _keyed_into(store, "A", "k", table(9)).rows == 3  # type: ignore[attr-defined]
    assert (store.count_rows("a"), store.count_rows("b")) == (3, 4)


def test_a_malformed_day_table_and_rows_do_not_break_keyed_writes(tmp_path: Path) -> None:
    """Today's ledger table replaced by hand with a junk column, and forged rows with NULL or
    negative counts: keyed writes to every table still commit and replay (keys go to a
    _1 table), with nothing trusted from the junk."""
    lake = DuckLakeStore(str(tmp_path / "meta.ducklake"), str(tmp_path / "data"))
    lake.open()
    today = ledger.day_table(time.time())
    with lake._cursor() as cur:
        cur.execute(f'DROP TABLE "{today}"')
        cur.execute(f'CREATE TABLE "{today}" (key VARCHAR, junk INT)')
        cur.execute(f"INSERT INTO \"{today}\" VALUES ('k', 1)")
        yesterday = ledger.day_table(time.time() - 86400)
        cur.execute(ledger.DDL.format(name=f'"{yesterday}"'))
        cur.execute(
            f"INSERT INTO \"{yesterday}\" VALUES ('n', 't', NULL, 1, {time.time()}), "
            f"('m', 't', -4, 1, {time.time()})"
        )
    lake.close()
    lake = DuckLakeStore(str(tmp_path / "meta.ducklake"), str(tmp_path / "data"))
    lake.open()
    try:
        for key in ("k", "n", "m"):
            assert not _keyed_into(lake, "t", key, table(2)).replayed  # type: ignore[attr-defined]
            assert _keyed_into(lake, "t", key, table(2)).replayed  # type: ignore[attr-defined]
        assert lake.count_rows("t") == 6
        with lake._cursor() as cur:
            assert today + "_1" in ledger.tables(cur) and today not in ledger.tables(cur)
    finally:
        lake.close()
