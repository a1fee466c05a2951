"""Test support: a real Arrowport server process on 127.0.0.1, and Arrow data."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa

ARROW = "application/vnd.apache.arrow.stream"


def ipc_bytes(table: pa.Table, *, max_chunksize: int | None = None, **options: object) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue().to_pybytes()


def sample_table(rows: int = 1000, offset: int = 0) -> pa.Table:
    ids = pa.array(range(offset, offset + rows), pa.int64())
    return pa.table(
        {
            "id": ids,
            "name": pa.array([f"n{i % 7}" for i in range(rows)]),
            "score": pa.array([i * 0.5 for i in range(rows)], pa.float64()),
            "day": pa.array([i % 365 for i in range(rows)], pa.date32()),
            "ts": pa.array([i * 1_000_000 for i in range(rows)], pa.timestamp("us")),
        }
    )


class Server:
    """A real ``arrowport serve`` process."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        db: Path | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.db = db if db is not None else workdir / "test.duckdb"
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [sys.executable, "-m", "arrowport", "serve", "--port", "0", "--db", str(self.db)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        cmd += list(self.args)
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                match = re.search(r"serving on (https?://\S+?);", line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        return self

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def post(
        self,
        stream: str,
        body: bytes,
        content_type: str | None = ARROW,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"Content-Type": content_type} if content_type else {}
        sent.update(headers or {})
        return httpx.post(f"{self.url}/ingest/{stream}", content=body, headers=sent, timeout=60)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def assert_serving(self) -> None:
        assert self.running, "server process died:\n" + "".join(self.log)
        response = self.get("/health")
        assert response.status_code == 200 and response.json()["status"] == "ok"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Stop the server (DuckDB locks the file) and run ``sql`` read-only."""
        self.stop()
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.execute(sql).fetchall()

    def tables(self) -> set[str]:
        """User tables (Arrowport's own _arrowport* tables, e.g. the ledger, left out)."""
        rows = self.query("SELECT table_name FROM information_schema.tables")
        return {r[0] for r in rows if not str(r[0]).lower().startswith("_arrowport")}

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.log):
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n" + "".join(self.log))


def start_upload(
    url: str, stream: str, total: int, body: bytes = b"", *, path: str | None = None
) -> socket.socket:
    """Open a raw HTTP/1.1 upload with ``Content-Length: total`` and send ``body`` of it
    (to ``/ingest/{stream}``, or ``path``)."""
    u = httpx.URL(url)
    sock = socket.create_connection((u.host, u.port))
    sock.sendall(
        f"POST {path or f'/ingest/{stream}'} HTTP/1.1\r\nHost: x\r\nContent-Type: {ARROW}\r\n"
        f"Content-Length: {total}\r\n\r\n".encode()
        + body
    )
    return sock


def read_response(sock: socket.socket, timeout: float = 120) -> bytes:
    """Read a JSON answer from a raw socket (until the body's closing brace or EOF)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
