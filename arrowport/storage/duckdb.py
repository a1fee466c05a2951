"""The DuckDB writer: plain synchronous code, run in worker threads.

Invariants:

* One ``duckdb.DuckDBPyConnection`` per store; each write uses its own cursor
  and transaction. The caller orders writes to one table (one at a time).
* A write is a ``TableWrite`` (``open_write``): in request mode one
  transaction that creates a missing table, runs one ``INSERT ... BY NAME``
  per group of about two row groups (bounded memory, DuckDB still inserts in
  parallel) and commits in ``finish()``; any failure or ``rollback()``
  leaves nothing behind. In batch mode each batch is its own transaction.
* Reads (``list_tables``, ``table_info``, ``scan``) and ``drop_table`` use a
  cursor and a snapshot of their own; a scan never blocks writes.
* Nothing is installed at run time: extensions load from registry packages.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from ..names import quote_identifier
from ..protocol.errors import ArrowportError
from . import duckdb_ledger, typemap
from .errors import (
    InvalidReadError,
    SchemaMismatchError,
    StorageError,
    UnsupportedTypeError,
    WriteRejectedError,
    first_line,
)
from .modes import CREATE_APPEND, check_mode
from .recovery import Gate, GuardedReader, Lease, invalidate_for_test, invalidates
from .schema import Column, check_key, check_subset, duplicate_names
from .table_write import ReplayWrite, TableWrite, WriteResult
from .tables import (
    TableInfo,
    describe_table,
    prepare_read_cursor,
    resolve_table,
    select_list,
    snapshot,
    table_names,
    valid_table_name,
)

if TYPE_CHECKING:
    from ..config import Config
    from .ducklake_claim import KeyClaim

log = logging.getLogger("arrowport.storage")

_source_ids = itertools.count(1)
DESCRIBED_SCHEMAS = 1024  # schemas whose DuckDB columns are remembered (then forgotten)

# release_memory(): when no cursor is open, memory_limit is lowered to this for a moment
RELEASE_TO = "1MB"


# Extensions whose work the duckdb Python package does itself: accepted, not loaded
BUILT_IN_EXTENSIONS = {
    "arrow": "Arrow scans and results are built into the duckdb Python package",
    "parquet": "Parquet is statically linked into the duckdb Python package",
}


# Extensions whose registry package is named after DuckDB's own name for them, not the alias
EXTENSION_PACKAGES = {"postgres": "postgres_scanner"}


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load ``name`` from a registry package, never from the network."""
    built_in = BUILT_IN_EXTENSIONS.get(name.lower())
    if built_in is not None:
        log.info("DuckDB extension %r: nothing to load (%s %s)", name, built_in, duckdb.__version__)
        return
    try:
        con.execute(f"LOAD {name}")
        return
    except duckdb.Error:
        pass
    package = EXTENSION_PACKAGES.get(name.lower(), name)
    try:
        import duckdb_extensions  # type: ignore[import-untyped,unused-ignore]

        duckdb_extensions.import_extension(package)
        con.execute(f"LOAD {name}")
    except Exception as exc:
        raise StorageError(
            f"DuckDB extension {name!r} is not available offline: install the "
            f"'duckdb-extensions' and 'duckdb-extension-{package.replace('_', '-')}' packages "
            f"matching duckdb {duckdb.__version__} ({first_line(exc)})"
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
        temp_directory: str | None = None,
        insert_group_rows: int = 2 * 122_880,
        insert_group_bytes: int = 64 * 1024 * 1024,
        insert_group_batches: int = 1024,
        key_ttl_hours: float = 168.0,
    ) -> None:
        self.path = os.fspath(path)
        self.key_ttl_hours = key_ttl_hours
        self.extensions = tuple(extensions)
        self._settings: dict[str, Any] = {"autoinstall_known_extensions": False}
        if memory_limit:
            self._settings["memory_limit"] = memory_limit
        if threads:
            self._settings["threads"] = threads
        if checkpoint_threshold:
            self._settings["checkpoint_threshold"] = checkpoint_threshold
        if temp_directory:
            self._settings["temp_directory"] = temp_directory
        self.memory_releases = 0  # times release_memory() evicted DuckDB's block cache
        self._used_since_release = False  # a cursor was opened since the last release
        self.insert_group_rows = insert_group_rows
        self.insert_group_bytes = insert_group_bytes
        self.insert_group_batches = insert_group_batches
        self._con: duckdb.DuckDBPyConnection | None = None
        self._database = ""  # the catalog the tables are in (its name comes from the file)
        self._cursor_lock = threading.Lock()
        self._described: dict[bytes, list[Column]] = {}  # schema -> its DuckDB columns
        # who may use the connection; reopens it after a fatal engine error (recovery.py)
        self.gate = Gate(self.backend, self._reopen)
        self.commits = 0
        self.rollbacks = 0
        self.schema_mismatches = 0
        self.replays = 0
        self.keyed_commits = 0

    @classmethod
    def from_config(cls, config: Config) -> DuckDBStore:
        """The store ``config`` describes (not opened)."""
        duck = config.duckdb
        return cls(
            config.db_path,
            extensions=config.duckdb_extensions,
            memory_limit=duck.memory_limit,
            threads=duck.threads,
            checkpoint_threshold=duck.checkpoint_threshold,
            temp_directory=duck.temp_directory or f"{config.db_path}.tmp",
            key_ttl_hours=config.idempotency.key_ttl_hours,
        )

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> None:
        try:
            self._con = duckdb.connect(self.path, config=self._settings)
        except duckdb.IOException as exc:
            hint = ""
            if "lock" in str(exc).lower():
                hint = (
                    ". A DuckDB file has one writer process: stop the other one or give this "
                    "server another --db (several instances writing one table need DuckLake "
                    "with a PostgreSQL catalog, or the Delta backend on S3)"
                )
            raise StorageError(f"cannot open DuckDB database {self.path!r}: {exc}{hint}") from None
        except duckdb.Error as exc:
            raise StorageError(f"DuckDB refused the settings {self._settings}: {exc}") from None
        for name in self.extensions:
            load_extension(self._con, name)
        try:
            self._database = str(self._con.execute("SELECT current_database()").fetchall()[0][0])
            with self._cursor() as cur:  # the ledger, checked and migrated in one transaction
                cur.begin()
                duckdb_ledger.prepare(cur, self.key_ttl_hours, time.time())
                cur.commit()
            self.prune_ledger()
        except (duckdb.Error, StorageError) as exc:
            self.close(checkpoint=False)
            detail = exc.detail if isinstance(exc, StorageError) else str(exc)
            raise StorageError(f"cannot prepare the idempotency ledger: {detail}") from None

    # -- the idempotency ledger (duckdb_ledger): keys per (table, key) -----------

    def ledger_entry(
        self, cur: duckdb.DuckDBPyConnection, table: str, key: str
    ) -> tuple[int, int] | None:
        """(rows, batches) of ``key``'s commit into ``table`` within the key TTL, else None."""
        return duckdb_ledger.lookup(cur, table, key, self.key_ttl_hours, time.time())

    def record_key(
        self, cur: duckdb.DuckDBPyConnection, key: str, table: str, rows: int, batches: int
    ) -> None:
        """Record ``key`` for ``table`` in the caller's open transaction."""
        duckdb_ledger.record(cur, table, key, rows, batches, time.time())

    def claim_key(self, table: str, key: str) -> KeyClaim | None:
        """Nothing to claim: the ledger's primary key makes a rival's commit conflict
        (DuckLakeStore claims keys: its ledger has no primary key)."""
        return None

    def prune_ledger(self) -> None:
        """Forget keys older than the TTL."""
        with self._cursor() as cur:
            duckdb_ledger.prune(cur, self.key_ttl_hours, time.time())

    def close(self, *, checkpoint: bool = True) -> None:
        with self._cursor_lock:
            con, self._con = self._con, None
        if con is None:
            return
        try:
            if checkpoint and self.gate.ready:
                con.execute("CHECKPOINT")
        finally:
            con.close()

    def _reopen(self) -> None:
        """Open the database again after an invalidation (the gate's thread; nothing else
        uses the connection meanwhile). The WAL brings back every committed write."""
        self.close(checkpoint=False)
        self.open()

    def release_memory(self) -> bool:
        """Give DuckDB's memory back to the system once the database is unused again.

        After a transaction DuckDB keeps what it wrote cached up to ``memory_limit``, and
        after a rollback it keeps the freed memory in its allocator (``duckdb_memory()``
        then reports nothing, RSS stays). Once no cursor is open (no write, read or scan;
        new ones wait for ``_cursor_lock``) and one was opened since the last release,
        ``memory_limit`` is lowered to ``RELEASE_TO`` and restored: DuckDB evicts the
        unpinned blocks (they are in the file already) and frees what it holds. True if
        it did.
        """
        with self._cursor_lock:
            con = self._con
            if con is None or not self.gate.ready or not self._used_since_release:
                return False
            try:
                if _one(con, "SELECT count FROM duckdb_connection_count()") > 1:
                    return False  # a cursor is open: its transaction may need the memory
                try:
                    con.execute(f"SET memory_limit = '{RELEASE_TO}'")
                except duckdb.OutOfMemoryException:
                    pass  # pinned memory above RELEASE_TO: what could be evicted was
                finally:
                    limit = self._settings.get("memory_limit")
                    con.execute(f"SET memory_limit = '{limit}'" if limit else "RESET memory_limit")
            except duckdb.Error as exc:
                log.warning("could not release DuckDB's cached memory: %s", first_line(exc))
                return False
            self._used_since_release = False
            self.memory_releases += 1
            return True

    def checkpoint(self) -> None:
        with self._cursor() as cur:
            try:
                cur.execute("CHECKPOINT")
            except duckdb.Error as exc:
                raise self.translate(exc) from None

    # the catalog whose CHECKPOINT the test hook aborts (DuckLake: its metadata database)
    _checkpoint_target = ""
    _probe_sql = "SELECT 1"  # readiness: a trivial query (DuckLake: one that reads the catalog)

    def probe(self) -> str | None:
        """None if the store can write now, else why not (one line, for readiness)."""
        if not self.gate.ready:
            return f"{self.backend}: reopening after a fatal engine error"
        try:
            with self._cursor() as cur:
                cur.execute(self._probe_sql).fetchall()
        except duckdb.Error as exc:
            return f"{self.backend}: {getattr(self.translate(exc), 'detail', 'unavailable')}"
        except StorageError as exc:
            return f"{self.backend}: {exc.detail}"
        return None

    def invalidate_for_test(self, hold_seconds: float = 0.0) -> str:
        """(Test hook, ARROWPORT_TEST_HOOKS=1 only; see ``recovery.invalidate_for_test``.)"""
        return invalidate_for_test(self, hold_seconds)

    def before_keyed_write(self) -> None:
        """Before a transaction that records idempotency keys (DuckLake makes sure
        today's ledger table exists, in a snapshot of its own)."""

    def create_shared_table(
        self, cur: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema
    ) -> bool:
        """Create a missing table ahead of the write where other processes may race
        to create it; a DuckDB file has one writer, so it is created with the data."""
        return False

    def enter_create(
        self, cur: duckdb.DuckDBPyConnection, table: str, *, replacing: bool = False
    ) -> bool:
        """Before a write that may create ``table`` (``replacing``: that drops it and
        creates it again); True obliges ``exit_create()``. (DuckLake holds its snapshot
        expiry off meanwhile; DuckDB has nothing to do.)"""
        return False

    def drop_in(self, cur: duckdb.DuckDBPyConnection, table: str) -> None:
        """DROP ``table`` (schema ``main``) in the caller's open transaction: a replace
        creates it again in the same transaction, so a rollback restores it."""
        name = ".".join(quote_identifier(part) for part in (self._database, "main", table))
        cur.execute(f"DROP TABLE {name}")

    def exit_create(self) -> None:
        """The end of a write for which ``enter_create`` returned True."""

    def committed_version(self, cur: duckdb.DuckDBPyConnection) -> int | None:
        """The version ``cur``'s last commit made: a DuckDB file has none."""
        return None

    def new_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own on the connection (the caller closes it)."""
        with self._cursor_lock:
            self.gate.check()
            if self._con is None:
                raise StorageError("the DuckDB store is not open")
            self._used_since_release = True
            return self._con.cursor()

    def _cursor(self) -> Lease:
        """``with self._cursor() as cur``: a cursor, counted as a use of the connection."""
        return Lease(self.gate, self.new_cursor)

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
        """The columns of ``table`` (schema ``main``), or None if there is no such table.

        One table's entry (``pragma_table_info``), where ``information_schema``
        would list every column of every attached catalog: on DuckLake that is
        about 1.6 ms more per call, and a write makes several. The name is
        qualified with the catalog: a TEMP table of the same name comes first
        otherwise.
        """
        if '"' in self._database:  # pragma_table_info's name parser cannot take it
            rows = cur.execute(
                "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
                "WHERE database_name = ? AND schema_name = 'main' "
                "AND lower(table_name) = lower(?) ORDER BY column_index",
                [self._database, table],
            ).fetchall()
            return [Column(*row) for row in rows] or None
        name = ".".join(quote_identifier(part) for part in (self._database, "main", table))
        try:
            # the name as a literal, not a parameter: DuckDB's client tries to import pandas
            # for every statement with parameters (about 0.1 ms where it is not installed)
            literal = "'" + name.replace("'", "''") + "'"
            rows = cur.execute(
                f'SELECT name, type, "notnull" FROM pragma_table_info({literal})'
            ).fetchall()
        except duckdb.CatalogException as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return [Column(column, dtype, not notnull) for column, dtype, notnull in rows]

    def count_rows(self, table: str) -> int:
        with self._cursor() as cur:
            row = cur.execute(f"SELECT count(*) FROM {quote_identifier(table)}").fetchone()
            return int(row[0]) if row else 0

    # -- the read side (Flight): each call has a cursor and a snapshot of its own

    def _read_cursor(self) -> Lease:
        def prepared() -> duckdb.DuckDBPyConnection:
            cur = self.new_cursor()
            prepare_read_cursor(cur)
            return cur

        return Lease(self.gate, prepared)

    def list_tables(self) -> list[TableInfo]:
        """The user tables of schema ``main``, sorted by name; each from one snapshot.

        Arrowport's own ``_arrowport*`` tables are left out, and so (with a
        warning) is a table with a column DuckDB cannot export as Arrow.
        """
        infos = []
        with self._read_cursor() as cur:
            try:
                for name in table_names(cur):
                    try:
                        with snapshot(cur):
                            infos.append(describe_table(cur, name))
                    except UnsupportedTypeError as exc:
                        log.warning("not listing table %s: %s", name, exc.detail)
                    except duckdb.CatalogException:
                        pass  # dropped since it was listed
            except duckdb.Error as exc:
                raise self.translate(exc) from None
        return infos

    def table_info(self, name: str) -> TableInfo:
        """``TableInfo`` for table ``name`` (matched ignoring case, as DuckDB does).

        Raises ``InvalidNameError`` (400) for a name that is not an identifier
        and ``TableNotFoundError`` (404) for a table that does not exist.
        """
        table = valid_table_name(name)
        with self._read_cursor() as cur:
            try:
                with snapshot(cur):
                    return describe_table(cur, resolve_table(cur, table))
            except duckdb.Error as exc:
                raise self.translate(exc) from None

    def scan(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        batch_rows: int = 122_880,
    ) -> GuardedReader:
        """Stream ``table`` (or some ``columns`` of it, at most ``limit`` rows).

        The reader pulls batches of up to ``batch_rows`` rows from DuckDB as it
        is read, so memory stays bounded, and sees one snapshot: writes
        committed meanwhile are not in it and are not blocked by it. DuckDB's
        reader owns the query's connection: it keeps it alive and releases
        it (ending the snapshot) when exhausted or closed. Bad names or
        arguments raise here, before any row is read: ``InvalidNameError``,
        ``TableNotFoundError``, ``ColumnNotFoundError`` or ``InvalidReadError``.
        """
        name = valid_table_name(table)
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise InvalidReadError(f"limit must be a non-negative integer, not {limit!r}")
        if isinstance(batch_rows, bool) or batch_rows < 1:
            raise InvalidReadError(f"batch_rows must be a positive integer, not {batch_rows!r}")
        with self._read_cursor() as cur:
            try:
                cur.begin()  # lookups and rows from one snapshot
                resolved = resolve_table(cur, name)
                selected = select_list(cur, resolved, columns)
                sql = f"SELECT {selected} FROM {quote_identifier(resolved)}"
                if limit is not None:
                    sql += f" LIMIT {int(limit)}"
                # Closing the cursor (on leaving ``with``) leaves the query's
                # connection to the reader, which outlives it.
                reader: pa.RecordBatchReader = cur.execute(sql).to_arrow_reader(batch_rows)
                return self.gate.track(reader)  # closed by a reopen: it holds the database
            except duckdb.Error as exc:
                raise self.translate(exc) from None

    def drop_table(self, name: str) -> None:
        """DROP table ``name`` in a transaction of its own.

        ``TableNotFoundError`` if it does not exist. A write into the table
        still open at that moment fails when it commits; scans already
        started finish on their snapshot.
        """
        table = valid_table_name(name)
        with self._cursor() as cur:
            try:
                cur.begin()
                cur.execute(f"DROP TABLE {quote_identifier(resolve_table(cur, table))}")
                cur.commit()
            except duckdb.Error as exc:
                raise self.translate(exc) from None

    # -- writing ------------------------------------------------------------

    def open_write(
        self,
        table: str,
        schema: pa.Schema,
        *,
        commit: str = "request",
        options: object = None,
        idempotency_key: str | None = None,
        mode: str = CREATE_APPEND,
    ) -> TableWrite | ReplayWrite:
        """Start one request's write into ``table`` (request or batch commit mode).

        Checks the schema against the table (422 on a mismatch) before any
        data is read. The returned ``TableWrite`` is used from one thread at
        a time and must end with ``finish()`` or ``rollback()``. ``options``
        (Delta's) do not apply. An ``idempotency_key`` committed within the
        key TTL gives a ``ReplayWrite``: it reads nothing into the table and
        answers the original result. ``mode`` (``modes.py``) says what to do with
        the table: create it if missing and append (the default), or create it
        (``TableExistsError``), append to it (``TableNotFoundError``) or replace it.
        """
        check_mode(mode, commit)
        types = self.check_stream(schema, commit, idempotency_key)
        generation = self.gate.generation
        cur = self.new_cursor()
        write = TableWrite(
            self,
            cur,
            table,
            types.target,
            commit,
            key=idempotency_key,
            plan=types,
            table_mode=mode,
        )
        write.generation = generation
        try:
            write.start()
        except BaseException:
            write.rollback()
            raise
        if write.replay is not None:  # the key, found at the start of the transaction
            write.abandon()
            self.replays += 1
            return ReplayWrite(table, *write.replay)
        return write

    def check_stream(
        self, schema: pa.Schema, commit: str = "request", idempotency_key: str | None = None
    ) -> typemap.TypePlan:
        """What needs no transaction: the key, the column names, and the stored types
        (the plan that converts the stream's columns to them)."""
        check_key(idempotency_key, commit)
        dupes = duplicate_names(schema.names)
        if dupes:
            self.schema_mismatches += 1
            raise SchemaMismatchError(
                f"stream has duplicate column names (case-insensitive): {', '.join(dupes)}"
            )
        if any(name == "" for name in schema.names):
            self.schema_mismatches += 1
            raise SchemaMismatchError("stream has a column with an empty name")
        try:
            types = typemap.plan(schema, self.backend)
        except ArrowportError:
            self.schema_mismatches += 1
            raise
        return types

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

    def prepare_table(self, cur: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema) -> bool:
        """Create ``table`` from ``schema`` if missing, else check the schema fits."""
        incoming = self._duckdb_columns(cur, schema)
        existing = self.table_columns(cur, table)
        if existing is None:
            name = f"__arrowport_schema_{next(_source_ids)}"
            cur.register(name, _no_rows(schema))
            try:
                cur.execute(
                    f"CREATE TABLE {quote_identifier(table)} AS SELECT * FROM {name} LIMIT 0"
                )
            finally:
                cur.unregister(name)
            return True
        self.check_fits(cur, table, schema, existing, incoming)
        return False

    def check_fits(
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
        """The DuckDB type of each incoming column; 422 naming any DuckDB cannot store.

        Producers send the same few schemas again and again: the answer is kept per
        schema (its serialized form, metadata included, which DuckDB may read types from).
        """
        key = schema.serialize().to_pybytes()
        known = self._described.get(key)
        if known is not None:
            return known
        try:
            columns = self._describe(cur, schema)
        except (pa.ArrowException, duckdb.Error) as exc:
            failure = exc
        else:
            if len(self._described) >= DESCRIBED_SCHEMAS:
                self._described.clear()
            self._described[key] = columns
            return columns
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
        cur.register(name, _no_rows(schema))
        try:
            relation = cur.sql(f"SELECT * FROM {name}")
            return [
                Column(n, str(t)) for n, t in zip(relation.columns, relation.types, strict=True)
            ]
        finally:
            cur.unregister(name)

    def insert_rows(
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

    def check_rows(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: str,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        existing: list[Column] | None = None,
    ) -> None:
        """Refuse rows the INSERT would fail on, where a failed INSERT costs more than the
        check (DuckLake); DuckDB's own INSERT refuses them cleanly."""

    def translate(self, exc: BaseException) -> BaseException:
        """Map a DuckDB exception to the error a client is shown (the answer shows one
        line of it without paths, and the log the rest: io/answers.py)."""
        if not isinstance(exc, duckdb.Error):
            return exc
        if invalidates(exc):
            return self.gate.invalidated(exc)
        line = str(exc).strip()
        if isinstance(
            exc,
            duckdb.ConstraintException
            | duckdb.ConversionException
            | duckdb.InvalidInputException
            | duckdb.NotImplementedException,
        ):  # what the rows or their types were: the client's input
            return WriteRejectedError(f"DuckDB refused the rows: {line}")
        if isinstance(exc, duckdb.IOException | duckdb.OutOfMemoryException):
            return StorageError(f"DuckDB could not write: {line}")
        return StorageError(f"DuckDB error: {line}")


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row is not None else 0


def _no_rows(schema: pa.Schema) -> pa.RecordBatchReader:
    """A stream of ``schema`` with no batches: DuckDB reads the types from it, and
    pyarrow need not build arrays it cannot (a year-month interval column)."""
    return pa.RecordBatchReader.from_batches(schema, iter(()))
