"""A sandbox for one read-only SQL query: a DuckDB instance of its own that reaches nothing.

It runs inside the query's own process (``sql_worker``), which bounds what
DuckDB's ``memory_limit`` does not; this module bounds what DuckDB can reach.

Invariants:

* Every query, and the parse of its text (DuckDB's parser reads files for an
  ``IMPORT DATABASE``), runs in a fresh in-memory DuckDB instance with external
  access off (no file or URL: ``read_csv``, ``glob``, ``COPY``, ``ATTACH`` of a
  file, ``FROM '/path'``), no extension loading or installing, no Python
  replacement scans (no Python variable is a table), no spilling to disk, its
  own ``memory_limit`` and ``threads``, and no path of the server in its
  settings. Its configuration is locked before the client's SQL runs.
* It holds nothing but views of the tables the query names, each an Arrow
  stream (``TableSource``) that opens its store's scan when DuckDB scans it:
  once per scan (a self-join scans twice), closed with the sandbox.
* Errors become ``QueryError`` (an ``ArrowportError``): a store's own error,
  raised while DuckDB read the table, as it was; DuckDB's permission errors
  ``forbidden``; running out of memory ``limit_exceeded``; an interrupt
  ``deadline_exceeded``; anything else ``invalid_request``. Never INTERNAL for
  the client's SQL: the instance is thrown away whatever happened in it.
* ``interrupt`` may be called from any thread, at any time (before, during or
  after ``open``); it stops what runs and makes the next step raise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import ArrowportError
from ..names import quote_identifier

log = logging.getLogger("arrowport.query")

NOWHERE = "/nonexistent"  # the home, extension and secret directories: no server path shows
RESULT_BATCH_ROWS = 2048  # DuckDB's vector size: the result is read a vector at a time

# Applied when the instance is made (external access goes off right after: some of
# these may not change once it is off)
SAFE_CONFIG: dict[str, Any] = {
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,
    "python_enable_replacements": False,
    "temp_directory": "",  # no spilling: a query fits in its memory_limit or fails
    "home_directory": NOWHERE,
    "extension_directory": NOWHERE,
    "secret_directory": NOWHERE,
}


class QueryError(ArrowportError):
    """A query refused or failed (its ``error`` code says how; see ``io/status.py``)."""

    error = "invalid_request"


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    memory_limit: int  # bytes
    threads: int
    timeout: float  # seconds (for the message when it passes)


class TableSource:
    """One table as DuckDB scans it (the Arrow PyCapsule interface).

    DuckDB reads the schema once, when the view is made, and calls
    ``__arrow_c_stream__`` for each scan: each opens a new scan of the store
    (``open_scan``). An error the store raises is kept, so that the query
    fails with it rather than with DuckDB's rewording.
    """

    def __init__(self, name: str, schema: pa.Schema, open_scan: Callable[[], Any]) -> None:
        self.name = name
        self.schema = schema
        self._open_scan = open_scan
        self._readers: list[Any] = []
        self._lock = threading.Lock()
        self.closed = False
        self.error: ArrowportError | None = None

    def __arrow_c_schema__(self) -> object:
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        try:
            with self._lock:
                if self.closed:
                    raise QueryError(f"the query's scan of {self.name} has ended")
                reader = self._open_scan()
                self._readers.append(reader)
        except ArrowportError as exc:
            self.error = exc
            raise
        stream = pa.RecordBatchReader.from_batches(self.schema, self._batches(reader))
        return stream.__arrow_c_stream__(requested_schema)

    def _batches(self, reader: Any) -> Iterator[pa.RecordBatch]:
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                yield batch
        except ArrowportError as exc:
            self.error = exc
            raise

    def close(self) -> None:
        with self._lock:
            self.closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            with contextlib.suppress(Exception):
                reader.close()


class Sandbox:
    """The DuckDB instance of one query, from ``open`` to ``close`` (both in a worker thread)."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self.con: duckdb.DuckDBPyConnection | None = None
        self.sources: list[TableSource] = []
        self.timed_out = False
        self.interrupted = False
        self._catalogs: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    # -- the instance -----------------------------------------------------------------

    def open(self) -> None:
        config = {
            **SAFE_CONFIG,
            "memory_limit": f"{max(1, self.limits.memory_limit // 1024)}KiB",
            "threads": self.limits.threads,
        }
        con = duckdb.connect(":memory:", config=config)
        try:
            con.execute("SET enable_external_access = false")
            con.execute("SET enable_progress_bar = false")
            with contextlib.suppress(duckdb.Error):  # ICU is linked in; UTC as the stores' scans
                con.execute("SET TimeZone = 'UTC'")
        except BaseException:
            con.close()
            raise
        with self._lock:
            if self._closed:
                con.close()
            else:
                self.con = con
        self.check()

    def check(self) -> None:
        """Raise if the sandbox was interrupted (its time is up, or its call ended)."""
        if self.timed_out:
            raise self._timeout()
        if self.interrupted or self._closed:
            raise QueryError("the query was stopped: its call ended", error="deadline_exceeded")

    def connection(self) -> duckdb.DuckDBPyConnection:
        self.check()
        assert self.con is not None, "open() first"
        return self.con

    def attach(self, catalog: str) -> None:
        """An empty in-memory catalog ``catalog`` (for names such as ``delta.t``)."""
        if catalog not in self._catalogs:
            self.connection().execute(f"ATTACH ':memory:' AS {quote_identifier(catalog)}")
            self._catalogs.add(catalog)

    def add_table(self, catalog: str, table: str, source: TableSource) -> None:
        """Make ``catalog.main.table`` a view of ``source`` (``memory`` is the default catalog)."""
        con = self.connection()
        if catalog != "memory":
            self.attach(catalog)
        hidden = f"arrowport scan {len(self.sources)}"  # no table name has a space
        con.register(hidden, source)
        self.sources.append(source)
        con.execute(
            f"CREATE VIEW {quote_identifier(catalog)}.main.{quote_identifier(table)} AS "
            f"FROM temp.main.{quote_identifier(hidden)}"
        )

    def lock(self) -> None:
        """No setting may change from here on (the client's SQL comes next)."""
        self.connection().execute("SET lock_configuration = true")

    # -- running ------------------------------------------------------------------------

    def result_schema(self, sql: str, params: Any = None) -> pa.Schema:
        """The schema of ``sql``'s result, bound and planned but not run."""
        try:
            relation = self.connection().sql(sql, params=params)
            schema: pa.Schema = relation.limit(0).to_arrow_table().schema
        except duckdb.Error as exc:
            raise self.error(exc) from None
        return schema

    def execute(self, sql: str, params: Any = None) -> QueryReader:
        """Run ``sql``; its rows stream from the reader as they are read."""
        try:
            con = self.connection()
            result = con.execute(sql, params) if params is not None else con.execute(sql)
            reader = result.to_arrow_reader(RESULT_BATCH_ROWS)
        except duckdb.Error as exc:
            raise self.error(exc) from None
        return QueryReader(self, reader)

    def interrupt(self, *, timed_out: bool = False) -> None:
        """Stop what runs (any thread); ``timed_out``: because the query's time is up."""
        if timed_out:
            self.timed_out = True
        self.interrupted = True
        con = self.con
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.interrupt()

    def close(self) -> None:
        """Close the instance and every scan it opened (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            con, self.con = self.con, None
        for source in self.sources:
            source.close()
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()

    # -- errors -------------------------------------------------------------------------

    def _timeout(self) -> QueryError:
        return QueryError(
            f"the query ran longer than flight_sql.query_timeout ({self.limits.timeout:g} s) "
            "and was stopped",
            error="deadline_exceeded",
        )

    def error(self, exc: BaseException) -> ArrowportError:
        """What a failure of the client's query is answered with."""
        if isinstance(exc, ArrowportError):
            return exc
        for source in self.sources:
            if source.error is not None:
                return source.error
        text = str(exc)
        first = next((line.strip() for line in text.splitlines() if line.strip()), text)
        if self.timed_out:
            return self._timeout()
        if isinstance(exc, duckdb.InterruptException) or first.startswith("INTERRUPT Error"):
            return QueryError("the query was stopped: its call ended", error="deadline_exceeded")
        if isinstance(exc, duckdb.OutOfMemoryException) or first.startswith("Out of Memory"):
            limit = self.limits.memory_limit / 1024**2
            return QueryError(
                f"the query needs more memory than flight_sql.query_memory_limit "
                f"({limit:g} MiB) allows: {first}",
                error="limit_exceeded",
            )
        if isinstance(exc, duckdb.PermissionException) or first.startswith("Permission Error"):
            return QueryError(
                f"queries may not read or write files, reach the network or change "
                f"settings: {first}",
                error="forbidden",
            )
        if isinstance(exc, duckdb.InternalException | duckdb.FatalException):
            log.warning("a query's DuckDB instance failed (thrown away): %s", first)
            return QueryError(f"the query engine failed on this query: {first}")
        return QueryError(first)


class QueryReader:
    """A running query's rows (the parts of ``pa.RecordBatchReader`` DoGet uses).

    Errors while reading are the sandbox's (``Sandbox.error``); closing it
    closes the sandbox.
    """

    def __init__(self, sandbox: Sandbox, reader: pa.RecordBatchReader) -> None:
        self._sandbox = sandbox
        self._reader = reader
        self.schema: pa.Schema = reader.schema

    def read_next_batch(self) -> pa.RecordBatch:
        try:
            self._sandbox.check()
            batch: pa.RecordBatch = self._reader.read_next_batch()
        except StopIteration:
            raise
        except Exception as exc:
            raise self._sandbox.error(exc) from None
        return batch

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                yield self.read_next_batch()
            except StopIteration:
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.close()
        self._sandbox.close()
