"""DuckLake key claims (ducklake_claim): one key's rival writes wait for each other, in
one process (a file catalog) and across processes (a PostgreSQL catalog), and a claim
never outlives the process that holds it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from pg_fixtures import postgres  # noqa: F401
from pg_support import PgServer

from arrowport.storage import DuckLakeStore, StorageError, ducklake_claim
from arrowport.storage.table_write import TableWrite, WriteResult

ROOT = Path(__file__).resolve().parents[2]


def table(rows: int, offset: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(offset, offset + rows), pa.int64())})


def keyed(store: DuckLakeStore, key: str, data: pa.Table) -> TableWrite:
    """A keyed write into t with its rows inserted, not yet finished."""
    write = store.open_write("t", data.schema, idempotency_key=key)
    assert isinstance(write, TableWrite)
    for group in write.groups(data.to_batches()):
        write.insert(group)
    return write


def count(store: DuckLakeStore) -> int:
    with store._cursor() as cur:
        row = cur.execute("SELECT count(*) FROM t").fetchone()
    assert row is not None
    return int(row[0])


def finish_together(writes: list[TableWrite]) -> list[WriteResult | BaseException]:
    start = threading.Barrier(len(writes))
    results: list[WriteResult | BaseException] = [RuntimeError("no result")] * len(writes)

    def run(i: int) -> None:
        try:
            start.wait(10)
            results[i] = writes[i].finish()
        except BaseException as exc:  # checked by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_lock_ids_ignore_the_tables_case_only() -> None:
    assert ducklake_claim.lock_id("Events", "k") == ducklake_claim.lock_id("events", "k")
    assert ducklake_claim.lock_id("events", "k") != ducklake_claim.lock_id("events", "K")
    assert ducklake_claim.lock_id("events", "k") != ducklake_claim.lock_id("other", "k")
    assert -(2**63) <= ducklake_claim.lock_id("t", "k") < 2**63


def test_one_key_finished_at_once_in_one_process_is_written_once(tmp_path: Path) -> None:
    """A file catalog: two writes with one key, finished at the same moment, commit once;
    the other is a replay of it (same rows and batches)."""
    store = DuckLakeStore(str(tmp_path / "meta.ducklake"), str(tmp_path / "data"))
    store.open()
    try:
        store.write("t", table(1).schema, table(1).to_batches())
        for round_ in range(4):
            key = f"k{round_}"
            results = finish_together([keyed(store, key, table(10)) for _ in range(3)])
            assert all(isinstance(r, WriteResult) for r in results), results
            done = [r for r in results if isinstance(r, WriteResult)]
            assert sorted(r.replayed for r in done) == [False, True, True]
            assert {(r.rows, r.batches) for r in done} == {(10, 1)}
            assert count(store) == 1 + 10 * (round_ + 1)
        assert not store.claims._locks  # every claim was released
    finally:
        store.close()


def test_a_claim_held_too_long_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rival that does not finish within WAIT_SECONDS: the waiting write fails (503,
    retry), with nothing written; once the claim is released the key commits."""
    monkeypatch.setattr(ducklake_claim, "WAIT_SECONDS", 0.3)
    store = DuckLakeStore(str(tmp_path / "meta.ducklake"), str(tmp_path / "data"))
    store.open()
    try:
        store.write("t", table(1).schema, table(1).to_batches())
        held = store.claim_key("T", "k")
        waiting = keyed(store, "k", table(10))
        with pytest.raises(StorageError, match="still committing"):
            waiting.finish()
        assert count(store) == 1
        held.release()
        held.release()  # twice: harmless
        assert keyed(store, "k", table(10)).finish().replayed is False
        assert count(store) == 11
    finally:
        store.close()


def lake(conninfo: str, tmp_path: Path) -> DuckLakeStore:
    store = DuckLakeStore(f"postgres:{conninfo}", str(tmp_path / "data"))
    store.open()
    return store


def test_instances_finishing_one_key_at_once_write_it_once(
    postgres: PgServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two stores (as two instances would) on one PostgreSQL catalog: one commit per key."""
    conninfo = postgres.create_database("claim_two_stores")
    one, two = lake(conninfo, tmp_path), lake(conninfo, tmp_path)
    try:
        one.write("t", table(1).schema, table(1).to_batches())
        for round_ in range(3):
            key = f"k{round_}"
            results = finish_together([keyed(one, key, table(10)), keyed(two, key, table(10))])
            done = [r for r in results if isinstance(r, WriteResult)]
            assert len(done) == 2, results
            assert sorted(r.replayed for r in done) == [False, True]
            assert {(r.rows, r.batches) for r in done} == {(10, 1)}
            assert count(one) == 1 + 10 * (round_ + 1)
    finally:
        one.close()
        two.close()


def test_another_instances_claim_makes_a_write_wait_and_time_out(
    postgres: PgServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PostgreSQL lock: a claim held by another store makes a write with the key
    wait, then fail (503) with nothing written; a write with another key does not wait."""
    conninfo = postgres.create_database("claim_timeout")
    one, two = lake(conninfo, tmp_path), lake(conninfo, tmp_path)
    try:
        one.write("t", table(1).schema, table(1).to_batches())
        held = one.claim_key("t", "k")
        monkeypatch.setattr(ducklake_claim, "WAIT_SECONDS", 0.5)
        with pytest.raises(StorageError, match="still committing"):
            keyed(two, "k", table(10)).finish()
        assert keyed(two, "other", table(10)).finish().replayed is False
        held.release()
        assert keyed(two, "k", table(10)).finish().replayed is False
        assert count(one) == 21
    finally:
        one.close()
        two.close()


HOLDER = """
import sys, time
from arrowport.storage import DuckLakeStore
store = DuckLakeStore(sys.argv[1], sys.argv[2])
store.open()
claim = store.claim_key("t", "k")
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_claim_dies_with_its_process(
    postgres: PgServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An instance killed while it holds a key's claim: PostgreSQL ends its connection
    and the lock with it, and the waiting write on another instance commits the key."""
    conninfo = postgres.create_database("claim_killed")
    store = lake(conninfo, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, f"postgres:{conninfo}", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        store.write("t", table(1).schema, table(1).to_batches())
        assert holder.stdout is not None and holder.stdout.readline() == "claimed\n"
        write = keyed(store, "k", table(10))
        results: list[WriteResult | BaseException] = []
        finisher = threading.Thread(target=lambda: results.extend(finish_together([write])))
        finisher.start()
        finisher.join(1.0)
        assert finisher.is_alive(), f"the claim did not hold the write back: {results}"
        holder.kill()
        holder.wait(30)
        finisher.join(60)
        assert len(results) == 1 and isinstance(results[0], WriteResult), results
        assert (results[0].replayed, results[0].rows) == (False, 10)
        assert count(store) == 11
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        store.close()
