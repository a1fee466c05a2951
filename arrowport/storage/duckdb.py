"""The DuckDB writer: plain synchronous code, run in worker threads.

Invariants:

* One ``duckdb.DuckDBPyConnection`` per store; each write uses its own cursor
  and transaction. The caller orders writes to one table (one at a time).
* Request mode: one transaction per request. It creates a missing table,
  then runs one ``INSERT ... BY NAME`` per group of about two row groups
  taken from the caller's iterator (bounded memory, and DuckDB still inserts
  in parallel). If the iterator raises, or ``before_commit`` does, the
  transaction rolls back: nothing is left behind.
* Batch mode: each batch is its own transaction; ``on_commit`` is called after
  each commit with the running totals.
* Nothing is installed at run time: extensions load from registry packages.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from ..names import quote_identifier
from .errors import (
    SchemaMismatchError,
    StorageError,
    UnsupportedTypeError,
    WriteRejectedError,
)
from .schema import Column, check_subset, duplicate_names

log = logging.getLogger("arrowport.storage")

_source_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class WriteResult:
    table: str
    rows: int
    batches: int
    created: bool


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load ``name`` from a registry package, never from the network."""
    try:
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error:
        pass
    try:
        import duckdb_extensions  # type: ignore[import-not-found]

        duckdb_extensions.import_extension(name)
        con.execute(f"LOAD {name}")
    except Exception as exc:
        raise StorageError(
            f"DuckDB extension {name!r} is not available offline: install the "
            f"'duckdb-extensions' and 'duckdb-extension-{name}' packages matching "
            f"duckdb {duckdb.__version__} ({exc})"
        ) from None


class DuckDBStore:
    """A DuckDB database file that Arrowport writes into."""

    backend = "duckdb"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        extensions: Iterable[str] = (),
        memory_limit: str | None = None,
        threads: int | None = None,
        checkpoint_threshold: str | None = None,
        insert_group_rows: int = 2 * 122_880,
        insert_group_bytes: int = 64 * 1024 * 1024,
        insert_group_batches: int = 1024,
    ) -> None:
        self.path = os.fspath(path)
        self.extensions = tuple(extensions)
        self._settings: dict[str, Any] = {"autoinstall_known_extensions": False}
        if memory_limit:
            self._settings["memory_limit"] = memory_limit
        if threads:
            self._settings["threads"] = threads
        if checkpoint_threshold:
            self._settings["checkpoint_threshold"] = checkpoint_threshold
        self.insert_group_rows = insert_group_rows
        self.insert_group_bytes = insert_group_bytes
        self.insert_group_batches = insert_group_batches
        self._con: duckdb.DuckDBPyConnection | None = None
        self._cursor_lock = threading.Lock()
        self.commits = 0
        self.rollbacks = 0
        self.schema_mismatches = 0

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> None:
        try:
            self._con = duckdb.connect(self.path, config=self._settings)
        except duckdb.IOException as exc:
            raise StorageError(f"cannot open DuckDB database {self.path!r}: {exc}") from None
        except duckdb.Error as exc:
            raise StorageError(f"DuckDB refused the settings {self._settings}: {exc}") from None
        for name in self.extensions:
            load_extension(self._con, name)

    def close(self, *, checkpoint: bool = True) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        try:
            if checkpoint:
                con.execute("CHECKPOINT")
        finally:
            con.close()

    def checkpoint(self) -> None:
        with self._cursor() as cur:
            cur.execute("CHECKPOINT")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._cursor_lock:
            if self._con is None:
                raise StorageError("the DuckDB store is not open")
            return self._con.cursor()

    def statistics(self) -> dict[str, Any]:
        wal = self.path + ".wal"
        return {
            "path": self.path,
            "commits": self.commits,
            "rollbacks": self.rollbacks,
            "schema_mismatches": self.schema_mismatches,
            "file_bytes": os.path.getsize(self.path) if os.path.exists(self.path) else 0,
            "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
        }

    # -- reading (for tests and tools) ----------------------------------------

    def table_columns(self, cur: duckdb.DuckDBPyConnection, table: str) -> list[Column] | None:
        rows = cur.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'main' AND lower(table_name) = lower(?) "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        if not rows:
            return None
        return [Column(name, dtype, nullable == "YES") for name, dtype, nullable in rows]

    def count_rows(self, table: str) -> int:
        with self._cursor() as cur:
            row = cur.execute(f"SELECT count(*) FROM {quote_identifier(table)}").fetchone()
            return int(row[0]) if row else 0

    # -- writing ------------------------------------------------------------

    def open_write(self, table: str, schema: pa.Schema, *, commit: str = "request") -> TableWrite:
        """Start one request's write into ``table`` (request or batch commit mode).

        Checks the schema against the table (422 on a mismatch) before any
        data is read. The returned ``TableWrite`` is used from one thread at
        a time and must end with ``finish()`` or ``rollback()``.
        """
        dupes = duplicate_names(schema.names)
        if dupes:
            self.schema_mismatches += 1
            raise SchemaMismatchError(
                f"stream has duplicate column names (case-insensitive): {', '.join(dupes)}"
            )
        if any(name == "" for name in schema.names):
            self.schema_mismatches += 1
            raise SchemaMismatchError("stream has a column with an empty name")
        write = TableWrite(self, self._cursor(), table, schema, commit)
        try:
            write.start()
        except BaseException:
            write.rollback()
            raise
        return write

    def write(
        self,
        table: str,
        schema: pa.Schema,
        batches: Iterable[pa.RecordBatch],
        *,
        commit: str = "request",
    ) -> WriteResult:
        """Write all of ``batches`` in one go (for tools and tests); see ``open_write``."""
        write = self.open_write(table, schema, commit=commit)
        try:
            for group in write.groups(batches):
                write.insert(group)
            return write.finish()
        except BaseException:
            write.rollback()
            raise

    def _prepare_table(self, cur: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema) -> bool:
        """Create ``table`` from ``schema`` if missing, else check the schema fits."""
        incoming = self._duckdb_columns(cur, schema)
        existing = self.table_columns(cur, table)
        if existing is None:
            name = f"__arrowport_schema_{next(_source_ids)}"
            cur.register(name, schema.empty_table())
            try:
                cur.execute(
                    f"CREATE TABLE {quote_identifier(table)} AS SELECT * FROM {name} LIMIT 0"
                )
            finally:
                cur.unregister(name)
            return True
        self._check_fits(cur, table, schema, existing, incoming)
        return False

    def _check_fits(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        existing: list[Column],
        incoming: list[Column] | None = None,
    ) -> None:
        if incoming is None:
            incoming = self._duckdb_columns(cur, schema)
        try:
            check_subset(table, incoming, existing)
        except SchemaMismatchError:
            self.schema_mismatches += 1
            raise

    def _duckdb_columns(self, cur: duckdb.DuckDBPyConnection, schema: pa.Schema) -> list[Column]:
        """The DuckDB type of each incoming column; 422 naming any DuckDB cannot store."""
        try:
            return self._describe(cur, schema)
        except (pa.ArrowException, duckdb.Error) as exc:
            failure = exc
        # The failed probe aborted ``cur``'s transaction; the rollback follows
        # when we raise. Name the culprits with a cursor of their own.
        bad = []
        for field in schema:
            try:
                with self._cursor() as probe:
                    self._describe(probe, pa.schema([field]))
            except (pa.ArrowException, duckdb.Error) as exc:
                bad.append(f"{field.name} ({field.type}: {str(exc).splitlines()[0]})")
        if not bad:  # not a type problem after all
            raise StorageError(f"DuckDB could not read the stream's schema: {failure}") from None
        self.schema_mismatches += 1
        raise UnsupportedTypeError(
            "DuckDB cannot store these columns' Arrow types: " + "; ".join(bad)
        )

    @staticmethod
    def _describe(cur: duckdb.DuckDBPyConnection, schema: pa.Schema) -> list[Column]:
        name = f"__arrowport_schema_{next(_source_ids)}"
        cur.register(name, schema.empty_table())
        try:
            relation = cur.sql(f"SELECT * FROM {name}")
            return [
                Column(n, str(t)) for n, t in zip(relation.columns, relation.types, strict=True)
            ]
        finally:
            cur.unregister(name)

    def _insert(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
    ) -> None:
        data = pa.RecordBatchReader.from_batches(schema, iter(batches))
        name = f"__arrowport_source_{next(_source_ids)}"
        cur.register(name, data)
        try:
            cur.execute(f"INSERT INTO {quote_identifier(table)} BY NAME SELECT * FROM {name}")
        finally:
            cur.unregister(name)

    @staticmethod
    def translate(exc: BaseException) -> BaseException:
        """Map a DuckDB exception to the error a client is shown."""
        if isinstance(exc, duckdb.ConstraintException | duckdb.ConversionException):
            return WriteRejectedError(f"DuckDB refused the rows: {exc}")
        if isinstance(exc, duckdb.IOException | duckdb.OutOfMemoryException):
            return StorageError(f"DuckDB could not write: {exc}")
        if isinstance(exc, duckdb.Error):
            return StorageError(f"DuckDB error: {exc}")
        return exc


class TableWrite:
    """One request's write into one table: a transaction, or one per batch.

    Each method is short, synchronous work for a worker thread; the caller
    collects batches (from the network) without holding a thread, and calls
    ``insert`` with whole groups. Methods are never called concurrently.
    ``rows`` and ``batches`` count what ``insert`` has written (committed, in
    batch mode).
    """

    def __init__(
        self,
        store: DuckDBStore,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        mode: str,
    ) -> None:
        self.store, self.cur, self.table, self.schema, self.mode = store, cur, table, schema, mode
        self.rows = 0
        self.batches = 0
        self.created = False
        self._prepared = False
        self._in_transaction = False
        self._closed = False

    # grouping: DuckDB keeps every Arrow batch a statement scanned alive until
    # the statement ends, so an INSERT takes a bounded group, not a request;
    # a few row groups per INSERT still let DuckDB insert on all its threads.
    def group_full(self, rows: int, size: int, count: int) -> bool:
        if self.mode == "batch":
            return count >= 1
        store = self.store
        return (
            rows >= store.insert_group_rows
            or size >= store.insert_group_bytes
            or count >= store.insert_group_batches
        )

    def groups(self, batches: Iterable[pa.RecordBatch]) -> Iterator[list[pa.RecordBatch]]:
        group: list[pa.RecordBatch] = []
        rows = size = 0
        for batch in batches:
            group.append(batch)
            rows += batch.num_rows
            size += batch.get_total_buffer_size()
            if self.group_full(rows, size, len(group)):
                yield group
                group, rows, size = [], 0, 0
        if group:
            yield group

    def start(self) -> None:
        """Request mode: BEGIN and create or check the table. Batch mode: check only."""
        self._run(self._start)

    def _start(self) -> None:
        if self.mode == "batch":
            existing = self.store.table_columns(self.cur, self.table)
            if existing is not None:  # refuse a mismatch before any batch is read
                self.store._check_fits(self.cur, self.table, self.schema, existing)
            return
        self._begin()
        self.created = self.store._prepare_table(self.cur, self.table, self.schema)
        self._prepared = True

    def insert(self, group: list[pa.RecordBatch]) -> None:
        """Insert ``group`` (batch mode: commit each batch on its own)."""
        self._run(self._insert_group, group)

    def _insert_group(self, group: list[pa.RecordBatch]) -> None:
        if self.mode != "batch":
            self.store._insert(self.cur, self.table, self.schema, group)
            self.rows += sum(b.num_rows for b in group)
            self.batches += len(group)
            return
        for batch in group:
            self._begin()
            self._prepare_once()
            self.store._insert(self.cur, self.table, self.schema, [batch])
            self._commit()
            self.rows += batch.num_rows
            self.batches += 1

    def finish(self) -> WriteResult:
        """Commit (request mode), or create the table of a schema-only batch stream."""
        self._run(self._finish)
        return WriteResult(self.table, self.rows, self.batches, self.created)

    def _finish(self) -> None:
        if self.mode == "batch":
            if not self._prepared:
                self._begin()
                self._prepare_once()
                self._commit()
        else:
            self._commit()
        self.close()

    def rollback(self) -> None:
        """Roll back an open transaction (safe to call at any time, and twice)."""
        if self._in_transaction:
            self._in_transaction = False
            try:
                self.cur.rollback()
                self.store.rollbacks += 1
            except duckdb.Error:
                pass
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.cur.close()

    def _begin(self) -> None:
        self.cur.begin()
        self._in_transaction = True

    def _commit(self) -> None:
        self.cur.commit()
        self._in_transaction = False
        self.store.commits += 1

    def _prepare_once(self) -> None:
        if not self._prepared:  # batch mode: the table appears with its first commit
            self.created = self.store._prepare_table(self.cur, self.table, self.schema)
            self._prepared = True

    def _run(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            self.rollback()
            raise self.store.translate(exc) from None
