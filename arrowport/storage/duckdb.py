"""The DuckDB writer: plain synchronous code, run in worker threads.

Invariants:

* One ``duckdb.DuckDBPyConnection`` per store; each write uses its own cursor
  and transaction. The caller orders writes to one table (one at a time).
* A write is a ``TableWrite`` (``open_write``): in request mode one
  transaction that creates a missing table, runs one ``INSERT ... BY NAME``
  per group of about two row groups (bounded memory, DuckDB still inserts in
  parallel) and commits in ``finish()``; any failure or ``rollback()``
  leaves nothing behind. In batch mode each batch is its own transaction.
* Nothing is installed at run time: extensions load from registry packages.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterable
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
from .table_write import TableWrite, WriteResult

log = logging.getLogger("arrowport.storage")

_source_ids = itertools.count(1)


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
