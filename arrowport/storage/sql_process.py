"""Read-only queries from the server's side: each runs in a process of its own
(``sql_zygote``, ``sql_worker``); the server authorizes and streams the tables.

Invariants:

* The server never parses, binds nor runs the client's SQL: the query
  process does, in its sandbox. The server answers its requests: which
  tables (each ``authorize``-d before its store is asked about it, then
  looked up: NOT_FOUND naming it as the query wrote it), and the rows of
  each scan, a batch per request, from the store's own ``scan``.
* ``interrupt`` (any thread, any time) kills the process: the thread waiting
  on it returns at once, with DEADLINE_EXCEEDED (the query's time is up, or
  its call ended). A process that dies otherwise (out of memory, an engine
  abort) is RESOURCE_EXHAUSTED, never INTERNAL; the server is unaffected.
* ``close`` kills the process and closes every scan it opened; ``describe``
  closes before it returns, ``run``'s reader when it is closed.
* Everything here blocks: it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ..errors import ArrowportError
from . import sql_wire as wire
from .errors import TableNotFoundError
from .sql_query import Statement
from .sql_sandbox import QueryError, SandboxLimits
from .sql_zygote import ZYGOTE, Spawned

SCAN_ROWS = 4096  # a store scan's batches, as DoGet reads them

# (backend) -> the store; raises when the server does not run it
Stores = Callable[[str], Any]
# (backend, table as written) -> None; raises when the caller may not read it
Authorize = Callable[[str, str], None]


class QueryProcess:
    """One query call's process: ``start`` in a worker thread; ``interrupt`` from anywhere."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self.timed_out = False
        self.interrupted = False
        self._spawned: Spawned | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> socket.socket:
        spawned = ZYGOTE.spawn({"memory_limit": self.limits.memory_limit})
        with self._lock:
            if self.interrupted or self._closed:
                spawned.close()
                raise self.stopped()
            self._spawned = spawned
        return spawned.sock

    def interrupt(self, *, timed_out: bool = False) -> None:
        with self._lock:
            if timed_out:
                self.timed_out = True
            self.interrupted = True
            if self._spawned is not None:
                self._spawned.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spawned, self._spawned = self._spawned, None
        if spawned is not None:
            spawned.close()

    def stopped(self) -> QueryError:
        """Why the process is gone."""
        if self.timed_out:
            return QueryError(
                f"the query ran longer than flight_sql.query_timeout ({self.limits.timeout:g} s) "
                "and was stopped",
                error="deadline_exceeded",
            )
        if self.interrupted or self._closed:
            return QueryError("the query was stopped: its call ended", error="deadline_exceeded")
        limit = self.limits.memory_limit / 1024**2
        return QueryError(
            "the query's engine stopped: most likely it needed more memory than "
            f"flight_sql.query_memory_limit ({limit:g} MiB) allows",
            error="limit_exceeded",
        )


class Session:
    """The server's end of one query process: the request, then its requests answered."""

    def __init__(self, process: QueryProcess, stores: Stores, authorize: Authorize) -> None:
        self.process = process
        self.stores = stores
        self.authorize = authorize
        self.sock: Any = None
        self.tables: list[tuple[Any, str]] = []  # (store, table) by number
        self.scans: dict[int, Any] = {}
        self._numbers = itertools.count()
        self.store_error: ArrowportError | None = None

    def begin(self, request: dict[str, Any], params: pa.RecordBatch | None) -> None:
        self.sock = self.process.start()
        request = {**request, "params": params is not None}
        try:
            wire.send_json(self.sock, b"Q", request)
            if params is not None:
                wire.send(self.sock, b"P", wire.ipc(params.schema, params))
        except (OSError, wire.Gone):
            raise self.process.stopped() from None

    def next(self) -> tuple[bytes, bytearray]:
        """The process's next answer; its requests for tables and rows are served meanwhile."""
        while True:
            try:
                kind, payload = wire.recv(self.sock)
                if kind == b"E":
                    value = json.loads(payload)
                    raise self.store_error or QueryError(value["detail"], error=value["error"])
                if kind not in b"RONC":
                    return kind, payload
                self._serve(kind, json.loads(payload))
            except (wire.Gone, OSError):
                raise self.store_error or self.process.stopped() from None

    def _serve(self, kind: bytes, value: Any) -> None:
        if kind == b"R":
            self._describe_tables(value)
        elif kind == b"O":
            self._reply(lambda: self._open(int(value["table"])))
        elif kind == b"N":
            self._reply(lambda: self._next(int(value["scan"])))
        else:  # C
            reader = self.scans.pop(int(value["scan"]), None)
            if reader is not None:
                reader.close()

    def _reply(self, answer: Callable[[], tuple[bytes, bytes]]) -> None:
        try:
            kind, payload = answer()
        except ArrowportError as exc:
            self.store_error = exc
            kind, payload = b"E", json.dumps({"error": exc.error, "detail": exc.detail}).encode()
        wire.send(self.sock, kind, payload)

    def _describe_tables(self, refs: list[dict[str, str]]) -> None:
        schemas = []
        for ref in refs:
            backend, table, written = ref["backend"], ref["table"], ref["written"]
            self.authorize(backend, table)  # before the store is asked about it
            store = self.stores(backend)
            schemas.append(_probe(store, backend, table, written))
            self.tables.append((store, table))
        for schema in schemas:
            wire.send(self.sock, b"S", wire.ipc(schema))

    def _open(self, number: int) -> tuple[bytes, bytes]:
        store, table = self.tables[number]
        scan = next(self._numbers)
        self.scans[scan] = store.scan(table, batch_rows=SCAN_ROWS)
        return b"o", json.dumps({"scan": scan}).encode()

    def _next(self, scan: int) -> tuple[bytes, bytes]:
        reader = self.scans[scan]
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            self.scans.pop(scan).close()
            return b"Z", b""
        except ArrowportError:
            raise
        except Exception as exc:
            raise QueryError(f"reading a table failed: {exc}", error="storage_error") from None
        return b"B", wire.ipc(reader.schema, batch)

    def close(self) -> None:
        self.process.close()
        scans, self.scans = self.scans, {}
        for reader in scans.values():
            with contextlib.suppress(Exception):
                reader.close()


def _probe(store: Any, backend: str, table: str, written: str) -> pa.Schema:
    """The table's schema, from a scan of no rows; NOT_FOUND names it as the query wrote it."""
    try:
        reader = store.scan(table, limit=0, batch_rows=1)
    except TableNotFoundError as exc:
        raise TableNotFoundError(
            f"the query names {written!r}: no such table in the {backend} backend",
            table=table,
            suggestions=exc.suggestions,
        ) from None
    except ArrowportError as exc:
        if exc.error == "invalid_name":
            raise QueryError(f"the query names {written!r}: {exc.detail}") from None
        raise
    try:
        schema: pa.Schema = reader.schema
    finally:
        reader.close()
    return schema


def _request(sql: str, mode: str, default_backend: str, limits: SandboxLimits) -> dict[str, Any]:
    return {
        "sql": sql,
        "mode": mode,
        "default_backend": default_backend,
        "limits": {
            "memory_limit": limits.memory_limit,
            "threads": limits.threads,
            "timeout": limits.timeout,
        },
    }


def describe(
    process: QueryProcess,
    sql: str,
    *,
    stores: Stores,
    default_backend: str,
    authorize: Authorize,
    params: pa.RecordBatch | None = None,
) -> tuple[Statement, pa.Schema | None]:
    """Check and bind ``sql``: its statement, and its result's schema (None while it has
    parameters without values). Closes the process."""
    session = Session(process, stores, authorize)
    try:
        session.begin(_request(sql, "describe", default_backend, process.limits), params)
        kind, payload = session.next()
        if kind != b"D":
            raise QueryError(f"the query process answered {kind!r}, not a description")
        value = json.loads(payload)
        statement = Statement(kind=value["kind"], refs=(), parameters=tuple(value["parameters"]))
        kind, payload = session.next()
        schema = wire.read_ipc(payload)[0] if kind == b"S" else None
        return statement, schema
    finally:
        session.close()


def run(
    process: QueryProcess,
    sql: str,
    *,
    stores: Stores,
    default_backend: str,
    authorize: Authorize,
    params: pa.RecordBatch | None = None,
) -> ProcessReader:
    """Check and start ``sql``; its rows stream from the reader, which closes the process."""
    session = Session(process, stores, authorize)
    try:
        session.begin(_request(sql, "run", default_backend, process.limits), params)
        kind, payload = session.next()
        if kind != b"H":
            raise QueryError(f"the query process answered {kind!r}, not a result")
        return ProcessReader(session, wire.read_ipc(payload)[0])
    except BaseException:
        session.close()
        raise


class ProcessReader:
    """A running query's rows (the parts of ``pa.RecordBatchReader`` DoGet uses)."""

    def __init__(self, session: Session, schema: pa.Schema) -> None:
        self._session = session
        self.schema = schema
        self._done = False

    def read_next_batch(self) -> pa.RecordBatch:
        if self._done:
            raise StopIteration
        kind, payload = self._session.next()
        if kind == b"Z":
            self._done = True
            self.close()
            raise StopIteration
        batch = wire.read_ipc(payload)[1] if kind == b"B" else None
        if batch is None:
            raise QueryError(f"the query process answered {kind!r}, not rows")
        return batch

    def __iter__(self) -> Any:
        while True:
            try:
                yield self.read_next_batch()
            except StopIteration:
                return

    def close(self) -> None:
        self._session.close()
