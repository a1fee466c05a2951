"""``arrowport ingest``: real files sent by the CLI to a real server over HTTP and Flight."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest
from support import Server, ipc_bytes, start_upload
from typer.testing import CliRunner, Result

from arrowport import cli

runner = CliRunner()
ROWS = 2500  # per file
TOKEN = "s3cret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARROWPORT_TOKEN", raising=False)
    monkeypatch.delenv("ARROWPORT_URL", raising=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only read their own streams while it runs; stream
    ``batchy`` commits each batch."""
    workdir = tmp_path_factory.mktemp("ingest")
    config = workdir / "arrowport.yaml"
    config.write_text("streams: {batchy: {commit: batch}}\n")
    server = Server(workdir, config=config).start()
    yield server
    server.stop()


def table(rows: int = ROWS, offset: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(offset, offset + rows), pa.int64()),
            "name": pa.array([f"n{i % 7}" for i in range(rows)]),
            "score": pa.array([i * 0.5 for i in range(rows)], pa.float64()),
        }
    )


def write_ipc_file(path: Path, data: pa.Table, chunk: int) -> Path:
    with pa.ipc.new_file(path, data.schema) as writer:
        writer.write_table(data, max_chunksize=chunk)
    return path


def write_inputs(directory: Path) -> list[Path]:
    """One file of each kind, ids 0..5*ROWS-1; two IPC files named for the other format."""
    files = [
        write_ipc_file(directory / "file_named.arrows", table(offset=0), 700),
        directory / "stream_named.arrow",
        directory / "data.feather",
        directory / "data.parquet",
        directory / "data.csv",
    ]
    files[1].write_bytes(ipc_bytes(table(offset=ROWS), max_chunksize=3000))
    feather.write_feather(table(offset=2 * ROWS), files[2], chunksize=400)  # lz4 compressed
    pq.write_table(table(offset=3 * ROWS), files[3], row_group_size=900)
    pacsv.write_csv(table(offset=4 * ROWS), files[4])
    return files


def ingest(*args: object, stdin: bytes | None = None) -> Result:
    return runner.invoke(cli.app, ["ingest", *map(str, args)], input=stdin)


def summary(result: Result) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def file_hash(path: Path) -> str:
    """The documented per-file part of an explicit key given with several files."""
    st = path.stat()
    identity = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def flight_port(server: Server) -> int:
    port = httpx.URL(server.url).port
    assert port is not None
    return port


def ids(server: Server, name: str) -> list[int]:
    """The ``id`` column of table ``name``, sorted, read from the running server."""
    client = fl.FlightClient(f"grpc://127.0.0.1:{flight_port(server)}")
    ticket = fl.Ticket(json.dumps({"table": name, "columns": ["id"]}).encode())
    try:
        return sorted(client.do_get(ticket).read_all().column("id").to_pylist())
    finally:
        client.close()


def tables(server: Server) -> set[str]:
    client = fl.FlightClient(f"grpc://127.0.0.1:{flight_port(server)}")
    try:
        return {info.descriptor.path[0].decode() for info in client.list_flights()}
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """grpc_proxy, https_proxy and http_proxy all naming a port where nothing listens."""
    dead = f"http://127.0.0.1:{free_port()}"
    with monkeypatch.context() as env:
        for name in ("grpc_proxy", "https_proxy", "http_proxy"):
            env.setenv(name, dead)
        yield


def stream_cut_after(data: pa.Table, batches: int, rows: int) -> bytes:
    """``data`` as an IPC stream of ``rows``-row batches, cut after ``batches`` of them: no
    end-of-stream marker, as a producer that died there leaves it."""
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, data.schema)
    for batch in data.to_batches(max_chunksize=rows)[:batches]:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()  # the writer is never closed


def id_last(rows: int) -> pa.Table:
    """Ids in the last column: an int64 below 2**32 ends each batch with 4 zero bytes, which a
    naive check would take for the pre-0.15 end-of-stream marker."""
    return pa.table({"name": pa.array([f"n{i % 7}" for i in range(rows)]), "id": range(rows)})


def spawn(*args: object, pipe_stdin: bool = False) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "arrowport", "ingest", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k not in ("ARROWPORT_TOKEN", "ARROWPORT_URL")}
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def stderr_lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    """The process's stderr, line by line, read by a thread."""
    lines: queue.Queue[str] = queue.Queue()
    stream = proc.stderr
    assert stream is not None

    def read() -> None:
        for line in stream:
            lines.put(line.decode())

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue[str], text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if text in line:
            return line
    raise AssertionError(f"{text!r} not printed")


def test_help_states_exit_codes_and_that_stdin_is_not_retried() -> None:
    """--help documents the exit codes, the retries and that stdin is never retried."""
    result = runner.invoke(cli.app, ["ingest", "--help"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "ingest [OPTIONS] {PATH}..." in text
    assert "1 the server refused the data" in text and "3 no connection" in text
    assert "stdin ('-') is never retried: it cannot be re-read" in text
    assert "'none': no key, as commit: batch streams need" in text
    assert "may write rows twice" in text and "--allow-missing-eos" in text


# -- inputs and transports -------------------------------------------------------------------


def test_every_input_format_over_http(shared: Server, tmp_path: Path) -> None:
    """IPC file and stream (told apart by magic, not name), Feather, Parquet and CSV each commit
    once as their own request, re-chunked to --chunk-size; --json reports each file."""
    files = write_inputs(tmp_path)
    result = ingest(
        *files, "--stream", "formats", "--url", shared.url, "--chunk-size", 1000, "--json"
    )
    assert result.exit_code == 0, result.stderr
    report = summary(result)
    assert report["transport"] == "http" and report["exit_code"] == 0
    assert [f["path"] for f in report["files"]] == [str(f) for f in files]
    for entry in report["files"]:
        assert entry["status"] == "ok" and entry["replayed"] is False and entry["attempts"] == 1
        assert entry["rows"] == ROWS and entry["batches"] == 3  # 1000 + 1000 + 500
        assert entry["answer"]["rows"] == ROWS and entry["answer"]["batches"] == 3
        assert entry["sent_bytes"] == entry["answer"]["bytes"]
    assert len({f["idempotency_key"] for f in report["files"]}) == 5  # auto: one key per file
    totals = report["totals"]
    assert (totals["files"], totals["ok"], totals["rows"], totals["batches"]) == (
        5,
        5,
        5 * ROWS,
        15,
    )
    assert ids(shared, "formats") == list(range(5 * ROWS))


def test_flight_with_an_explicit_key_replays_on_a_rerun(shared: Server, tmp_path: Path) -> None:
    """--flight sends each file as a DoPut keyed KEY-HASH, HASH from the file's resolved path,
    size and mtime; running it again replays both."""
    files = write_inputs(tmp_path)[2:4]  # Feather (ids 5000..) and Parquet (7500..)
    args = (*files, "--stream", "by_flight", "--url", shared.url, "--flight", "--json")
    first = ingest(*args, "--idempotency-key", "load-42", "--chunk-size", 1000)
    assert first.exit_code == 0, first.stderr
    report = summary(first)
    assert report["transport"] == "flight"
    assert [f["idempotency_key"] for f in report["files"]] == [
        f"load-42-{file_hash(f)}" for f in files
    ]
    assert [f["answer"]["committed_rows"] for f in report["files"]] == [ROWS, ROWS]
    assert [f["batches"] for f in report["files"]] == [3, 3]
    again = ingest(*args, "--idempotency-key", "load-42", "--compression", "none")
    assert again.exit_code == 0, again.stderr
    assert [f["replayed"] for f in summary(again)["files"]] == [True, True]
    assert summary(again)["totals"]["replayed"] == 2
    assert ids(shared, "by_flight") == list(range(2 * ROWS, 4 * ROWS))


def test_http_replay_of_an_explicit_key_writes_nothing(shared: Server, tmp_path: Path) -> None:
    """The same --idempotency-key sent twice over HTTP: the second answer is a replay."""
    path = write_ipc_file(tmp_path / "once.arrow", table(), 1000)
    args = (path, "--stream", "keyed", "--url", shared.url, "--idempotency-key", "once-1")
    first = ingest(*args, "--compression", "lz4", "--level", 1)
    assert first.exit_code == 0, first.stderr
    assert "2,500 rows in 1 batch " in first.stdout and "replayed" not in first.stdout
    second = ingest(*args)
    assert second.exit_code == 0, second.stderr
    assert "replayed: committed earlier with this key, nothing written" in second.stdout
    other = write_ipc_file(tmp_path / "other.arrow", table(10, offset=ROWS), 10)
    reused = ingest(other, *args[1:])
    assert reused.exit_code == 1, reused.stderr
    assert "committed earlier with 2,500 rows, but this input has 10" in reused.stderr
    assert ids(shared, "keyed") == list(range(ROWS))


def test_stdin_stream(shared: Server) -> None:
    """'-' reads an IPC stream on stdin (a real pipe into a real process) and commits it."""
    args = ("--stream", "piped", "--url", shared.url, "--chunk-size", 600, "--json")
    proc = spawn("-", *args, pipe_stdin=True)
    out, err = proc.communicate(ipc_bytes(table(), max_chunksize=100), timeout=60)
    assert proc.returncode == 0, err.decode()
    entry = json.loads(out)["files"][0]
    assert (entry["path"], entry["rows"], entry["batches"]) == ("-", ROWS, 5)
    assert ids(shared, "piped") == list(range(ROWS))


def test_progress_bar_on_a_terminal_only(shared: Server, tmp_path: Path) -> None:
    """With stderr on a terminal (a pty) a progress bar with the row count is drawn there, and
    the summary line still goes to stdout; off a terminal there is no bar (the other tests)."""
    path = write_ipc_file(tmp_path / "t.arrow", table(), 1000)
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160"}
    env.pop("ARROWPORT_TOKEN", None)
    cmd = [sys.executable, "-m", "arrowport", "ingest", str(path), "--stream", "tty"]
    proc = subprocess.Popen(
        [*cmd, "--url", shared.url, "--chunk-size", "1000"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the process has closed the pty
        while chunk := os.read(master, 65536):
            screen += chunk
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "━" in screen.decode() and "2,500 rows" in screen.decode()
    assert out.decode().startswith(f"{path}: 2,500 rows in 3 batches")
    assert ids(shared, "tty") == list(range(ROWS))


# -- failures and exit codes -----------------------------------------------------------------


def test_refused_schema_exits_1_with_the_servers_error(shared: Server, tmp_path: Path) -> None:
    """A file whose id is text, for a table whose id is BIGINT: exit 1 and the server's JSON
    error on stderr, over HTTP and Flight; nothing of it is stored."""
    good = write_ipc_file(tmp_path / "good.arrow", table(), 1000)
    bad = tmp_path / "bad.arrows"
    bad.write_bytes(ipc_bytes(pa.table({"id": pa.array(["x"] * 10)})))
    assert ingest(good, "--stream", "typed", "--url", shared.url).exit_code == 0
    http = ingest(bad, "--stream", "typed", "--url", shared.url, "--json")
    assert http.exit_code == 1
    assert "refused by the server (HTTP 422)" in http.stderr and "schema_mismatch" in http.stderr
    entry = summary(http)["files"][0]
    assert entry["status"] == "failed" and entry["answer"]["error"] == "schema_mismatch"
    flight = ingest(bad, "--stream", "typed", "--url", shared.url, "--flight")
    assert flight.exit_code == 1
    assert "refused by the server" in flight.stderr and "id (table BIGINT" in flight.stderr
    assert ids(shared, "typed") == list(range(ROWS))


def test_unreadable_inputs_exit_2_and_later_files_are_skipped(
    shared: Server, tmp_path: Path
) -> None:
    """A missing file or one of no known format exits 2; the files before it are committed,
    the ones after it are not sent."""
    good = write_ipc_file(tmp_path / "good.arrow", table(), 1000)
    (tmp_path / "notes.txt").write_text("hello\n")
    args = ("--stream", "skip", "--url", shared.url)
    missing = ingest(good, tmp_path / "missing.arrow", good, *args, "--json")
    assert missing.exit_code == 2
    assert "missing.arrow: cannot read: No such file or directory" in missing.stderr
    assert [f["status"] for f in summary(missing)["files"]] == ["ok", "failed", "skipped"]
    unknown = ingest(tmp_path / "notes.txt", *args)
    assert unknown.exit_code == 2 and "cannot tell its format" in unknown.stderr
    usage = ingest(good, "--stream", "skip", "--url", "ftp://x", "--idempotency-key", "a b")
    assert usage.exit_code == 2 and "--url" in usage.stderr
    assert ids(shared, "skip") == list(range(ROWS))


@pytest.mark.parametrize("transport", [[], ["--flight"]], ids=["http", "flight"])
def test_input_failing_midway_commits_nothing(
    shared: Server, tmp_path: Path, transport: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV whose bad row comes after many batches were sent exits 2, and the server rolls the
    request back: the table is never created. With the proxy variables naming a dead port:
    Flight goes straight to the server, where the CLI can cut the call."""
    lines = ["id,name,score", *(f"{i},n{i},{i * 0.5}" for i in range(300_000))]
    lines[250_000] = "oops,n,1.0"  # well past the reader's first 1 MB block
    path = tmp_path / "late_error.csv"
    path.write_text("\n".join(lines) + "\n")
    stream = f"late_{transport[0][2:] if transport else 'http'}"
    args = ("--stream", stream, "--url", shared.url, "--chunk-size", 10_000, *transport)
    with dead_proxy(monkeypatch):
        result = ingest(path, *args, "--json", "--retries", 0)
    assert result.exit_code == 2, result.stderr
    assert "invalid value 'oops'" in result.stderr and "committed" not in result.stderr
    assert summary(result)["files"][0]["batches"] >= 10  # sent before the error
    shared.wait_for(
        f"DoPut {stream}: client went away"
        if transport
        else f"ingest {stream}: client disconnected"
    )
    assert stream not in tables(shared)


def test_nothing_listening_exits_3_after_the_retries(tmp_path: Path) -> None:
    """No server: each retry is announced, then exit 3; stdin is not retried at all."""
    path = write_ipc_file(tmp_path / "t.arrow", table(10), 10)
    url = f"http://127.0.0.1:{free_port()}"
    result = ingest(path, "--stream", "s", "--url", url, "--retries", 1)
    assert result.exit_code == 3
    assert "Connection refused; retrying in 0.5 s (attempt 2 of 2" in result.stderr
    assert "(gave up after 2 attempts)" in result.stderr
    piped = ingest("-", "--stream", "s", "--url", url, stdin=ipc_bytes(table(10)))
    assert piped.exit_code == 3 and "retrying" not in piped.stderr
    assert "stdin cannot be re-read, so it is not retried" in piped.stderr


# -- retries that must not duplicate ---------------------------------------------------------


class LoseFirstAnswer:
    """A TCP proxy to the server that drops the first connection as soon as the server
    answers: the request is committed, but the client never hears so."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            drop = self.connections == 1
            threading.Thread(target=self._pump, args=(upstream, client, drop), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, drop: bool = False) -> None:
        try:
            while data := src.recv(65536):
                if drop:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump's recv
            sock.close()


def test_lost_answer_is_retried_with_the_same_key(shared: Server, tmp_path: Path) -> None:
    """The connection drops after the commit, before the answer: the retry resends the file with
    the same key, the server replays, and the rows are stored once."""
    path = write_ipc_file(tmp_path / "t.arrow", table(), 1000)
    proxy = LoseFirstAnswer(flight_port(shared))
    result = ingest(path, "--stream", "lost_answer", "--url", proxy.url, "--timeout", 30, "--json")
    proxy.listener.close()
    assert result.exit_code == 0, result.stderr
    assert "connection lost before the answer" in result.stderr
    entry = summary(result)["files"][0]
    assert entry["attempts"] == 2 and entry["replayed"] is True and proxy.connections == 2
    assert ids(shared, "lost_answer") == list(range(ROWS))


def test_flight_retries_until_the_server_starts(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """--flight to a port where nothing listens yet: the client retries, the server starts on
    that port, and the file is committed once."""
    port = free_port()
    path = write_ipc_file(tmp_path / "t.arrow", table(), 1000)
    url = f"http://127.0.0.1:{port}"
    proc = spawn(path, "--stream", "late", "--url", url, "--flight", "--retries", 8, "--json")
    lines = stderr_lines(proc)
    wait_line(lines, "retrying in")
    server = server_factory(tmp_path, args=("--port", str(port))).start()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    entry = json.loads(out)["files"][0]
    assert entry["attempts"] >= 2 and entry["replayed"] is False
    assert ids(server, "late") == list(range(ROWS))


def test_busy_server_is_retried_after_retry_after(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """max_concurrent_requests: 1 and a slow upload holding it: HTTP (429, Retry-After) and
    Flight (RESOURCE_EXHAUSTED) clients wait and retry, and commit once it is free."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {max_concurrent_requests: 1}\n")
    server = server_factory(tmp_path, config=config).start()
    data = ipc_bytes(table(10))
    slow = start_upload(server.url, "slow", len(data), data[:-8])  # the end-of-stream held back
    path = write_ipc_file(tmp_path / "t.arrow", table(), 1000)
    procs = [
        spawn(path, "--stream", stream, "--url", server.url, *flags, "--json")
        for stream, flags in (("busy_http", []), ("busy_flight", ["--flight"]))
    ]
    retried = [wait_line(stderr_lines(p), "retrying in") for p in procs]
    assert "HTTP 429" in retried[0] and "retrying in 1.0 s" in retried[0]
    assert "the server is busy" in retried[1]
    slow.sendall(data[-8:])
    slow.close()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert json.loads(out)["files"][0]["attempts"] >= 2
    assert ids(server, "busy_http") == ids(server, "busy_flight") == list(range(ROWS))


def test_flight_call_that_cannot_be_cut_says_it_may_be_committed(
    shared: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the CLI finds no connection to cut (as behind a proxy), an abandoned DoPut ends
    normally and the server commits what was sent: the error says so, with the rows committed,
    instead of implying nothing was; the exit code stays that of the input's failure."""
    from arrowport.ingest_client import flight

    path = tmp_path / "cut.arrows"
    path.write_bytes(stream_cut_after(id_last(3000), 2, 1000))
    monkeypatch.setattr(flight, "_tcp_sockets", lambda port: set())
    args = ("--stream", "uncut", "--url", shared.url, "--flight", "--chunk-size", 1000)
    result = ingest(path, *args)
    assert result.exit_code == 2, result.stderr
    assert "no end-of-stream marker" in result.stderr
    assert "could not be cut off" in result.stderr
    assert "ended normally: the server committed 2,000 rows of this input" in result.stderr
    assert ids(shared, "uncut") == list(range(2000))


# -- end-of-stream marker ----------------------------------------------------------------

PRODUCER = """
import sys, os, pyarrow as pa
data = pa.table({"name": [f"n{i % 7}" for i in range(3000)], "id": range(3000)})
writer = pa.ipc.new_stream(sys.stdout.buffer, data.schema)
for batch in data.to_batches(max_chunksize=1000)[:2]:
    writer.write_batch(batch)
sys.stdout.buffer.flush()
os._exit(1)  # dies before its third batch and the end-of-stream marker
"""


def pipe_from_dying_producer(*args: object) -> tuple[int, str]:
    """``producer | arrowport ingest - ARGS``: the producer writes 2 of its 3 batches (ids
    0..1999), then dies."""
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER], stdout=subprocess.PIPE)
    assert producer.stdout is not None
    cmd = [sys.executable, "-m", "arrowport", "ingest", "-", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k not in ("ARROWPORT_TOKEN", "ARROWPORT_URL")}
    proc = subprocess.run(cmd, stdin=producer.stdout, capture_output=True, env=env, timeout=60)
    producer.stdout.close()
    assert producer.wait(30) == 1
    return proc.returncode, proc.stderr.decode()


def test_stdin_from_a_dead_producer_is_abandoned(shared: Server) -> None:
    """A producer piped into the CLI dies after 2 of 3 batches: the stream ends cleanly but
    without its end-of-stream marker. The CLI sends the 2 batches, then abandons the request
    (exit 2, nothing committed); with --allow-missing-eos it commits them, with a warning."""
    args = ("--url", shared.url, "--chunk-size", 1000)
    code, err = pipe_from_dying_producer("--stream", "dead_producer", *args)
    assert code == 2, err
    assert "-: the Arrow IPC stream has no end-of-stream marker" in err
    assert "--allow-missing-eos" in err
    shared.wait_for("ingest dead_producer: client disconnected")
    code, err = pipe_from_dying_producer("--stream", "dead_allowed", *args, "--allow-missing-eos")
    assert code == 0, err
    assert "warning: the Arrow IPC stream has no end-of-stream marker" in err
    assert "dead_producer" not in tables(shared)
    assert ids(shared, "dead_allowed") == list(range(2000))


def test_stream_file_without_the_marker_exits_2(
    shared: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream file cut after 2 of 3 batches (its last 4 bytes zeros, like the pre-0.15
    marker): exit 2 over HTTP and Flight (past a dead proxy), nothing committed. The same file
    with the pre-0.15 4-byte marker, or the current 8-byte one, is committed."""
    data = id_last(3000)
    cut = stream_cut_after(data, 2, 1000)
    assert cut[-4:] == bytes(4)
    path = tmp_path / "cut.arrows"
    path.write_bytes(cut)
    for stream, transport in (("cut_http", []), ("cut_flight", ["--flight"])):
        args = ("--stream", stream, "--url", shared.url, "--chunk-size", 1000, *transport)
        with dead_proxy(monkeypatch):
            result = ingest(path, *args, "--retries", 0)
        assert result.exit_code == 2, result.stderr
        assert f"{path}: the Arrow IPC stream has no end-of-stream marker" in result.stderr
        assert "committed" not in result.stderr
    shared.wait_for("ingest cut_http: client disconnected")
    shared.wait_for("DoPut cut_flight: client went away")
    legacy, full = tmp_path / "legacy.arrows", tmp_path / "full.arrows"
    legacy.write_bytes(stream_cut_after(data, 3, 1000) + bytes(4))
    full.write_bytes(ipc_bytes(data.slice(0, 2000), max_chunksize=1000))
    ok = ingest(legacy, full, "--stream", "marked", "--url", shared.url, "--chunk-size", 1000)
    assert ok.exit_code == 0, ok.stderr
    assert not {"cut_http", "cut_flight"} & tables(shared)
    assert ids(shared, "marked") == sorted([*range(3000), *range(2000)])


# -- batch-mode streams and keys ---------------------------------------------------------


def test_batch_stream_needs_idempotency_key_none(shared: Server, tmp_path: Path) -> None:
    """Stream ``batchy`` is commit: batch, which refuses idempotency keys: with a key the CLI
    exits 1 and says to use --idempotency-key none; with none, 40 batches commit over HTTP and
    over Flight (whose acks, one per batch, are read as they come)."""
    first = write_ipc_file(tmp_path / "a.arrow", table(2000), 2000)
    second = write_ipc_file(tmp_path / "b.arrow", table(2000, offset=2000), 2000)
    args = ("--stream", "batchy", "--url", shared.url, "--chunk-size", 50)
    for transport in ([], ["--flight"]):
        keyed = ingest(first, *args, *transport)
        assert keyed.exit_code == 1, keyed.stderr
        assert "--idempotency-key none" in keyed.stderr and "commit: batch" in keyed.stderr
    http = ingest(first, *args, "--idempotency-key", "none", "--json")
    assert http.exit_code == 0, http.stderr
    entry = summary(http)["files"][0]
    assert entry["idempotency_key"] is None and entry["batches"] == 40
    flight = ingest(second, *args, "--idempotency-key", "none", "--flight", "--json")
    assert flight.exit_code == 0, flight.stderr
    answer = summary(flight)["files"][0]["answer"]
    assert (answer["committed_rows"], answer["committed_batches"]) == (2000, 40)
    assert ids(shared, "batchy") == list(range(4000))


def test_resuming_with_the_files_left_sends_each_once(shared: Server, tmp_path: Path) -> None:
    """a.csv b.csv c.csv with --idempotency-key load1 stops at a bad b.csv; b.csv is fixed and
    the run resumed with b.csv c.csv and the same key: each file's key comes from the file, not
    its position, so b and c are sent and a is not replayed in b's place. A rerun of all three
    replays them; one file alone gets the key itself."""
    a, b, c = (tmp_path / f"{n}.csv" for n in "abc")
    for i, path in enumerate((a, b, c)):
        pacsv.write_csv(table(offset=i * ROWS), path)
    b.write_text("id,name,score\noops,n,1.0\n")
    args = ("--stream", "resumed", "--url", shared.url, "--idempotency-key", "load1", "--json")
    failed = ingest(a, b, c, *args)
    assert failed.exit_code == 1 and "schema_mismatch" in failed.stderr  # its id is text
    assert [f["status"] for f in summary(failed)["files"]] == ["ok", "failed", "skipped"]
    pacsv.write_csv(table(offset=ROWS), b)
    resumed = ingest(b, c, *args)
    assert resumed.exit_code == 0, resumed.stderr
    assert [f["replayed"] for f in summary(resumed)["files"]] == [False, False]
    again = ingest(a, b, c, *args)
    assert again.exit_code == 0, again.stderr
    assert [f["replayed"] for f in summary(again)["files"]] == [True, True, True]
    alone = ingest(a, *args)
    assert summary(alone)["files"][0]["idempotency_key"] == "load1"
    assert ids(shared, "resumed") == sorted([*range(3 * ROWS), *range(ROWS)])


# -- TLS ---------------------------------------------------------------------------------


def test_https_grpc_tls_and_token(server_factory: type[Server], tmp_path: Path) -> None:
    """Against a TLS server with a token: https:// and --flight (grpc+tls) with --cafile and the
    token (from $ARROWPORT_TOKEN or --token) commit; without the token the answer is 401, exit
    1; without --cafile the certificate is refused at once, exit 3 with no retries."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)),
            *("-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    tls = ("--certfile", str(cert), "--keyfile", str(key))
    server = server_factory(tmp_path, args=tls, env={"ARROWPORT_TOKEN": TOKEN}).start()
    assert server.url.startswith("https://")
    first = write_ipc_file(tmp_path / "a.arrow", table(), 1000)
    second = write_ipc_file(tmp_path / "b.arrow", table(offset=ROWS), 1000)
    args = ("--stream", "secure", "--url", server.url)
    command = ["ingest", str(first), *args, "--cafile", str(cert)]
    by_env = runner.invoke(cli.app, command, env={"ARROWPORT_TOKEN": TOKEN})
    assert by_env.exit_code == 0, by_env.stderr
    by_flag = ingest(second, *args, "--cafile", cert, "--flight", "--token", TOKEN)
    assert by_flag.exit_code == 0, by_flag.stderr
    for transport in ([], ["--flight"]):
        anonymous = ingest(first, *args, "--cafile", cert, *transport)
        assert anonymous.exit_code == 1, anonymous.stderr
        assert ("HTTP 401" if not transport else "unauthenticated") in anonymous.stderr
        untrusted = ingest(first, *args, "--token", TOKEN, *transport)
        assert untrusted.exit_code == 3 and "retrying" not in untrusted.stderr
        assert "certificate verify failed" in untrusted.stderr
    rows = server.query("SELECT count(*), count(DISTINCT id) FROM secure")
    assert rows == [(2 * ROWS, 2 * ROWS)]


# -- memory ------------------------------------------------------------------------------


def _peak_rss(proc: subprocess.Popen[bytes]) -> int:
    """The process's peak RSS (VmHWM) in bytes, polled until it exits."""
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
        time.sleep(0.02)
    return peak


def _send_measured(path: Path, stream: str, server: Server) -> int:
    proc = spawn(path, "--stream", stream, "--url", server.url, "--chunk-size", 16384, "--json")
    peak = _peak_rss(proc)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_file_much_larger_than_a_chunk_keeps_client_memory_flat(
    server: Server, tmp_path: Path
) -> None:
    """A 256 MiB IPC file sent in 16,384-row chunks: the client's peak RSS exceeds that of
    sending a 1 MiB file by less than 48 MiB, and every row is stored once."""
    schema = pa.schema([("id", pa.int64()), ("a", pa.float64()), ("b", pa.float64())])
    rows_per_batch, batches = 1 << 20, 11  # 11 batches of 24 MiB: 264 MiB
    big = tmp_path / "big.arrow"
    with pa.ipc.new_file(big, schema) as writer:
        for i in range(batches):
            column = np.arange(i * rows_per_batch, (i + 1) * rows_per_batch, dtype=np.int64)
            writer.write_batch(pa.record_batch([column, column * 0.5, column * 0.25], schema))
    small = write_ipc_file(tmp_path / "small.arrow", table(40_000), 16384)
    size = big.stat().st_size
    assert size > 256 * 2**20
    baseline = _send_measured(small, "small", server)
    peak = _send_measured(big, "big", server)
    print(
        f"peak RSS: {peak / 2**20:.0f} MiB for {size / 2**20:.0f} MiB, "
        f"{baseline / 2**20:.0f} MiB for {small.stat().st_size / 2**20:.1f} MiB"
    )
    assert peak - baseline < 48 * 2**20, (peak, baseline)
    rows = server.query("SELECT count(*), count(DISTINCT id), max(id) FROM big")
    total = rows_per_batch * batches
    assert rows == [(total, total, total - 1)]
