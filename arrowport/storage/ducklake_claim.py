"""DuckLake: a keyed commit's claim on its (table, idempotency key), for exactly once.

The ledger lookup is not a lock: DuckLake appends never conflict, so two
requests with one key, each of which looked the key up and found nothing, would
both commit. A keyed write therefore claims its key just before recording it,
and holds the claim until its own transaction has committed or rolled back:

* In this process, a lock per (table, key): requests on one instance wait for
  each other (this is all a file catalog, owned by one process, needs).
* With a PostgreSQL catalog, also a PostgreSQL advisory lock on a hash of
  (table, key), taken in the catalog database with ``postgres_execute`` on the
  lake's metadata catalog (``__ducklake_metadata_lake``), so instances wait for
  each other. It is a transaction-level lock (``pg_advisory_xact_lock``) in a
  DuckDB transaction of its own, on a cursor of its own, ended (rolled back)
  by ``release``. Not in the write's own transaction: DuckDB 1.5.5 commits that
  transaction's PostgreSQL part *before* DuckLake's commit, which would release
  the lock before the rows are visible. An instance that dies holding a claim
  closes its PostgreSQL connection, and PostgreSQL releases the lock with it:
  a claim never outlives its process, nor blocks a retry.
* Once the claim is held, the ledger is read again in a fresh snapshot (the
  write's own snapshot predates a rival's commit): a key committed meanwhile
  makes the write a replay of that commit.

A claimant waits at most ``WAIT_SECONDS`` for a rival still committing the same
key (then 503: retry). Several keys are claimed in sorted order (a group).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb

from .errors import StorageError

if TYPE_CHECKING:
    from .ducklake import DuckLakeStore

WAIT_SECONDS = 60.0  # how long a request waits for a rival committing its key


def lock_id(table: str, key: str) -> int:
    """The advisory lock of (``table``, ``key``): a signed 64-bit hash. Tables are
    matched ignoring case, as the ledger matches them."""
    text = f"arrowport-ledger\0{table.lower()}\0{key}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


class LocalClaims:
    """This process's claims: one lock per (table, key) while anyone holds or wants it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    def acquire(self, table: str, key: str, timeout: float) -> Callable[[], None]:
        """Wait for the claim; return its release. StorageError after ``timeout`` s."""
        name = (table.lower(), key)
        with self._mutex:
            lock, users = self._locks.get(name, (threading.Lock(), 0))
            self._locks[name] = (lock, users + 1)
        if lock.acquire(timeout=timeout):
            return lambda: self._release(name, locked=True)
        self._release(name, locked=False)
        raise busy(key)

    def _release(self, name: tuple[str, str], *, locked: bool) -> None:
        with self._mutex:
            lock, users = self._locks[name]
            if locked:
                lock.release()
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


def busy(key: str) -> StorageError:
    return StorageError(
        f"another request with idempotency key {key!r} is still committing after "
        f"{WAIT_SECONDS:g} s; retry the request"
    )


class KeyClaim:
    """A held claim. ``replay`` is the key's commit found once the claim was held (the
    write is then a replay of it); ``release`` ends the claim (idempotent, never raises)."""

    def __init__(self, store: DuckLakeStore, table: str, key: str) -> None:
        self.replay: tuple[int, int] | None = None
        self._store = store
        self._cur: duckdb.DuckDBPyConnection | None = None
        self._generation = store.gate.generation
        self._local: Callable[[], None] | None = store.claims.acquire(table, key, WAIT_SECONDS)
        try:
            if store.remote_catalog:
                self._lock_catalog(table, key)
            with store._cursor() as cur:  # a fresh snapshot: sees a rival's commit
                self.replay = store.ledger_entry(cur, table, key)
        except BaseException:
            self.release()
            raise

    def _lock_catalog(self, table: str, key: str) -> None:
        store = self._store
        self._cur = store.catalog_cursor()
        self._cur.begin()
        sql = (
            f"SET LOCAL lock_timeout = {int(WAIT_SECONDS * 1000)}; "
            f"SELECT pg_advisory_xact_lock({lock_id(table, key)})"
        )
        try:
            self._cur.execute(
                "CALL postgres_execute(?, ?)", [store.metadata_catalog, sql]
            ).fetchall()
        except duckdb.Error as exc:
            if "lock timeout" in str(exc):
                raise busy(key) from None
            raise

    def release(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None:
            # (a replaced connection is closed, which ended the transaction already)
            with (
                contextlib.suppress(StorageError, duckdb.Error),
                self._store.gate.use(self._generation),
            ):
                try:
                    cur.rollback()  # the transaction only took the lock
                finally:
                    cur.close()
        local, self._local = self._local, None
        if local is not None:
            local()
