"""Containment of a DuckDB database that a fatal engine error invalidated.

An INTERNAL or FATAL error inside DuckDB invalidates its database instance:
every later statement fails ("database has been invalidated") until the
database is opened again. A ``Gate`` stands between a store and its
connection so that the store can notice this, reopen (the WAL recovers what
was committed) and serve again without a restart.

Invariants:

* Every use of the connection (a write step, a read, a cursor's ``with``
  block) is counted while it runs (``enter``/``exit``, or ``use``).
* Once an invalidation is seen (``invalidated``), new uses are refused with
  ``StorageUnavailable`` (503 with Retry-After, gRPC UNAVAILABLE); a thread
  of the gate's own waits until the uses in progress have ended (on an
  invalidated database they fail at once), closes the readers still open on
  the old connection, and only then reopens: nothing runs on the old
  connection while it is closed, and nothing on the new one before it is
  ready. A reopen that fails is retried with backoff.
* A write begun on the old connection never continues on the new one: its
  uses carry the connection's ``generation`` and are refused once it changed.
* The full engine message is logged (with the request id of the request
  that met it); answers carry one line without it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from .errors import StorageError

if TYPE_CHECKING:
    from .duckdb import DuckDBStore

log = logging.getLogger("arrowport.storage")

RETRY_AFTER = 1  # seconds a client is told to wait
REOPEN_BACKOFF_MAX = 30.0
SLOW_DRAIN_WARNING = 30.0  # seconds: log if uses of the old connection have not ended by then


class StorageUnavailable(StorageError):
    """The backend is being reopened after a fatal engine error: 503 with Retry-After."""

    error = "storage_unavailable"
    retry_after = RETRY_AFTER


def invalidates(exc: BaseException) -> bool:
    """Whether ``exc`` says the DuckDB database instance is unusable until reopened
    (an INTERNAL error invalidates it as a FATAL one does)."""
    if isinstance(exc, duckdb.FatalException | duckdb.InternalException):
        return True
    return isinstance(exc, duckdb.Error) and "has been invalidated" in str(exc)


class Gate:
    """Who may use a store's connection, and its reopening after an invalidation."""

    def __init__(self, backend: str, reopen: Callable[[], None]) -> None:
        self.backend = backend
        self._reopen = reopen
        self._cond = threading.Condition()
        self.generation = 0  # bumped by each reopen
        self.failure: str | None = None  # why the connection cannot be used now
        self.invalidations = 0
        self.reopens = 0
        self.reopen_failures = 0
        self.hold_until = 0.0  # (test hook) monotonic time before which no reopen starts
        self._active = 0
        self._readers: dict[int, pa.RecordBatchReader] = {}
        self._recovering: threading.Thread | None = None

    # -- uses -------------------------------------------------------------------

    def unavailable(self) -> StorageUnavailable:
        return StorageUnavailable(
            f"the {self.backend} backend is reopening its database after a fatal engine "
            f"error; retry in {RETRY_AFTER} s"
        )

    def check(self, generation: int | None = None) -> None:
        """Raise ``StorageUnavailable`` unless the connection (of ``generation``) is usable."""
        if self._recovering is threading.current_thread():
            return  # the reopen itself (``open`` prepares the new connection)
        if self.failure is not None or (generation is not None and generation != self.generation):
            raise self.unavailable()

    def enter(self, generation: int | None = None) -> None:
        with self._cond:
            self.check(generation)
            self._active += 1

    def exit(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    @contextlib.contextmanager
    def use(self, generation: int | None = None) -> Iterator[None]:
        self.enter(generation)
        try:
            yield
        finally:
            self.exit()

    @property
    def ready(self) -> bool:
        return self.failure is None

    # -- readers that outlive their cursor ----------------------------------------

    def track(self, reader: pa.RecordBatchReader) -> GuardedReader:
        """``reader`` (DuckDB's, which holds the database open) as one whose reads count
        as uses and which a reopen closes first; read afterwards, it raises
        ``StorageUnavailable``."""
        with self._cond:
            self._readers[id(reader)] = reader
        return GuardedReader(self, reader, self.generation)

    def release(self, reader: pa.RecordBatchReader) -> None:
        with self._cond:
            if self._readers.pop(id(reader), None) is None:
                return  # closed already (by a reopen)
            with contextlib.suppress(Exception):
                reader.close()

    # -- invalidation and reopening -------------------------------------------------

    def invalidated(self, exc: BaseException) -> StorageUnavailable:
        """Note that ``exc`` invalidated the database; reopen it in the background."""
        with self._cond:
            if self.failure is None:
                self.failure = str(exc).strip().splitlines()[0] if str(exc).strip() else "fatal"
                self.invalidations += 1
                log.error(
                    "the %s database was invalidated by a fatal engine error; refusing requests "
                    "(503) until it is reopened. Engine message: %s",
                    self.backend,
                    exc,
                )
                if self._recovering is None:
                    self._recovering = threading.Thread(
                        target=self._recover, name=f"arrowport-reopen-{self.backend}", daemon=True
                    )
                    self._recovering.start()
        return self.unavailable()

    def _recover(self) -> None:
        attempt = 0
        while True:
            delay = self.hold_until - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._cond:
                started = time.monotonic()
                while self._active:
                    if not self._cond.wait(timeout=SLOW_DRAIN_WARNING):
                        log.warning(
                            "%s: %d uses of the invalidated database still running after %.0f s",
                            self.backend,
                            self._active,
                            time.monotonic() - started,
                        )
                readers, self._readers = list(self._readers.values()), {}
            if readers:
                log.info("%s: closing %d reads of the old database", self.backend, len(readers))
            for reader in readers:  # each holds the old database instance open
                with contextlib.suppress(Exception):
                    reader.close()
            try:
                self._reopen()
            except Exception as exc:
                attempt += 1
                self.reopen_failures += 1
                wait = min(0.5 * 2**attempt, REOPEN_BACKOFF_MAX)
                log.error(
                    "reopening the %s database failed (retry in %.1f s): %s",
                    self.backend,
                    wait,
                    exc,
                )
                time.sleep(wait)
                continue
            with self._cond:
                self.generation += 1
                self.reopens += 1
                self.failure = None
                self._recovering = None
            log.warning("the %s database was reopened; serving again", self.backend)
            return


class Lease:
    """``with store._cursor() as cur``: a cursor, counted as a use of the connection
    while the block runs, and closed after it."""

    def __init__(self, gate: Gate, factory: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        self._gate = gate
        self._factory = factory
        self._cur: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self._gate.enter()
        try:
            self._cur = self._factory()
        except BaseException:
            self._gate.exit()
            raise
        return self._cur

    def __exit__(self, *exc: object) -> None:
        try:
            if self._cur is not None:
                with contextlib.suppress(duckdb.Error):
                    self._cur.close()
        finally:
            self._gate.exit()


class GuardedReader:
    """A DuckDB scan's reader, as ``Gate.track`` hands it out: the parts of
    ``pyarrow.RecordBatchReader`` that readers use. Closing or exhausting it releases
    the database (as DuckDB's own reader does)."""

    def __init__(self, gate: Gate, reader: pa.RecordBatchReader, generation: int) -> None:
        self._gate = gate
        self._reader = reader
        self._generation = generation
        self.schema: pa.Schema = reader.schema

    def read_next_batch(self) -> pa.RecordBatch:
        try:
            with self._gate.use(self._generation):
                batch: pa.RecordBatch = self._reader.read_next_batch()
                return batch
        except StopIteration:
            self.close()
            raise
        except duckdb.Error as exc:
            if invalidates(exc):
                raise self._gate.invalidated(exc) from None
            raise

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                yield self.read_next_batch()
            except StopIteration:
                return

    def read_all(self) -> pa.Table:
        return pa.Table.from_batches(list(self), schema=self.schema)

    def close(self) -> None:
        self._gate.release(self._reader)

    def __del__(self) -> None:  # dropped unread: release the database all the same
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> GuardedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def invalidate_for_test(store: DuckDBStore, hold_seconds: float = 0.0) -> str:
    """(Test hook, reachable only with ARROWPORT_TEST_HOOKS=1) invalidate ``store``'s
    database as a fatal engine error does, and hold its reopen for ``hold_seconds``.

    First DuckDB's own debug switch: an aborted CHECKPOINT raises a FatalException.
    DuckDB refuses to checkpoint while a write transaction is open, so then a scan of
    an Arrow column DuckDB 1.5 cannot import (``dictionary<struct<dictionary<string>>>``:
    an INTERNAL error) does it, on a cursor of its own, outside any ingest. The error
    reaches the store's ``translate`` like any other. Returns the engine's first line.
    """
    store.gate.hold_until = time.monotonic() + hold_seconds
    with store._cursor_lock:
        if store._con is None:
            raise StorageError(f"the {store.backend} store is not open")
        cur = store._con.cursor()
    try:
        try:
            if store.backend == "ducklake":
                cur.execute("USE lake")
            cur.execute("CREATE TABLE _arrowport_test_hook (x INTEGER)")  # something to write
            cur.execute("DROP TABLE _arrowport_test_hook")
            cur.execute("SET debug_checkpoint_abort = 'before_header'")
            cur.execute(f"CHECKPOINT {store._checkpoint_target}")
        except duckdb.Error as exc:
            if invalidates(exc):
                store.translate(exc)
                return str(exc).splitlines()[0]
        cur.execute("RESET debug_checkpoint_abort")  # else a later checkpoint aborts
        inner = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), pa.array(["a", "b"]))
        column = pa.StructArray.from_arrays([inner], ["s"])
        outer = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), column)
        cur.register("_arrowport_test_hook_data", pa.table({"c": outer}))
        cur.execute("SELECT * FROM _arrowport_test_hook_data").fetchall()
    except duckdb.Error as exc:
        store.translate(exc)
        return str(exc).splitlines()[0]
    finally:
        with contextlib.suppress(duckdb.Error):
            cur.close()
    return "the database was not invalidated"
