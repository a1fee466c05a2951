"""A query's own process: it checks and runs one query in its sandbox, asking the
server for the tables' rows (``sql_wire`` says how they talk).

Invariants:

* Before anything else it gives itself a data limit (its size now, plus the
  query's memory limit, plus ``HEADROOM``), no files (``RLIMIT_FSIZE`` 0, no
  core dumps), the first place in the OOM killer's queue, an empty
  environment, and death with its parent. Past the data limit an allocation
  fails (DuckDB answers "Out of Memory"), here and not in the server.
* It holds no store: every table is a ``TableSource`` whose scans are
  streamed by the server, a batch per request, after the server has
  authorized and looked the table up. The server's answers are the only
  input besides the request; whatever goes wrong ends this process alone.
* It answers one request and exits (``os._exit`` by the zygote).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ..errors import ArrowportError
from . import sql_wire as wire
from .sql_query import Statement, TableRef, check_statement, parameter_values
from .sql_sandbox import QueryError, Sandbox, SandboxLimits, TableSource
from .sql_zygote import die_with_parent

HEADROOM = 256 * 1024**2  # for Python, Arrow batches in flight and DuckDB outside its pool


def _data_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def confine(memory_limit: int) -> None:
    """The limits of a query process (see the invariants)."""
    os.environ.clear()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    data = _data_size() + memory_limit + HEADROOM
    resource.setrlimit(resource.RLIMIT_DATA, (data, data))
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
    die_with_parent()


def child(fd: int, limits: dict[str, Any]) -> None:
    """The query process's main (forked by the zygote)."""
    confine(int(limits["memory_limit"]))
    sock = socket.socket(fileno=fd)
    try:
        serve(sock)
    except wire.Gone:
        pass
    finally:
        sock.close()


class Server:
    """The server's end, for requests from any thread (DuckDB's threads read scans)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def ask(self, kind: bytes, value: Any) -> tuple[bytes, bytearray]:
        with self.lock:
            wire.send_json(self.sock, kind, value)
            answer, payload = wire.recv(self.sock)
        if answer == b"E":
            raise _error(payload)
        return answer, payload

    def tables(self, refs: list[TableRef]) -> list[pa.Schema]:
        with self.lock:
            wire.send_json(self.sock, b"R", [_ref_json(r) for r in refs])
            schemas = []
            for _ in refs:
                answer, payload = wire.recv(self.sock)
                if answer == b"E":
                    raise _error(payload)
                schemas.append(wire.read_ipc(payload)[0])
        return schemas

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        with self.lock:
            wire.send(self.sock, kind, payload)


class RemoteScan:
    """One scan of a table, streamed by the server a batch per request."""

    def __init__(self, server: Server, number: int) -> None:
        self.server = server
        _, payload = server.ask(b"O", {"table": number})
        self.id = json.loads(payload)["scan"]
        self.done = False

    def read_next_batch(self) -> pa.RecordBatch:
        if self.done:
            raise StopIteration
        answer, payload = self.server.ask(b"N", {"scan": self.id})
        if answer == b"Z":
            self.done = True
            raise StopIteration
        batch = wire.read_ipc(payload)[1]
        if batch is None:
            raise QueryError("the server sent a scan message without rows")
        return batch

    def close(self) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(wire.Gone, OSError):
                self.server.send(b"C", json.dumps({"scan": self.id}).encode())


def _ref_json(ref: TableRef) -> dict[str, str]:
    return {"written": ref.written, "backend": ref.backend, "table": ref.table}


def _error(payload: bytes | bytearray) -> ArrowportError:
    value = json.loads(payload)
    return QueryError(str(value["detail"]), error=str(value["error"]))


def _distinct(refs: tuple[TableRef, ...]) -> list[TableRef]:
    seen: dict[tuple[str, str], TableRef] = {}
    for ref in refs:
        seen.setdefault((ref.catalog, ref.table.lower()), ref)
    return list(seen.values())


def _opener(server: Server, number: int) -> Callable[[], RemoteScan]:
    return lambda: RemoteScan(server, number)


def serve(sock: socket.socket) -> None:
    """Answer the one request on ``sock``."""
    server = Server(sock)
    _, payload = wire.recv(sock)
    request = json.loads(payload)
    params = None
    if request.get("params"):
        _, values = wire.recv(sock)
        params = wire.read_ipc(values)[1]
    sandbox = Sandbox(SandboxLimits(**request["limits"]))
    try:
        sandbox.open()
        _answer(server, sandbox, request, params)
    except wire.Gone:
        raise
    except ArrowportError as exc:
        server.send(b"E", json.dumps({"error": exc.error, "detail": exc.detail}).encode())
    except MemoryError:
        error = sandbox.error(MemoryError("Out of Memory Error: the query's process is full"))
        server.send(b"E", json.dumps({"error": error.error, "detail": error.detail}).encode())
    except Exception as exc:
        error = sandbox.error(exc)
        server.send(b"E", json.dumps({"error": error.error, "detail": error.detail}).encode())
    finally:
        sandbox.close()


def _answer(
    server: Server, sandbox: Sandbox, request: dict[str, Any], params: pa.RecordBatch | None
) -> None:
    sql = request["sql"]
    statement: Statement = check_statement(sandbox, sql, request["default_backend"])
    running = request["mode"] == "run"
    values = parameter_values(statement, params) if running else None
    refs = _distinct(statement.refs)
    for number, (ref, schema) in enumerate(zip(refs, server.tables(refs), strict=True)):
        source = TableSource(ref.written, schema, _opener(server, number))
        sandbox.add_table(ref.catalog, ref.table, source)
    sandbox.lock()
    if not running:
        described = {"kind": statement.kind, "parameters": list(statement.parameters)}
        server.send(b"D", json.dumps(described).encode())
        if statement.parameters and params is None:
            server.send(b"s")
            return
        schema = sandbox.result_schema(sql, parameter_values(statement, params))
        server.send(b"S", wire.ipc(schema))
        return
    reader = sandbox.execute(sql, values)
    try:
        server.send(b"H", wire.ipc(reader.schema))
        for batch in reader:
            server.send(b"B", wire.ipc(reader.schema, batch))
        server.send(b"Z")
    finally:
        reader.close()
