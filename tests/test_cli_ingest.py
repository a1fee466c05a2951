"""``arrowport ingest``: real files sent by the CLI to a real server over HTTP and Flight."""

from __future__ import annotations

import contextlib
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
    """One server for the tests that only read their own streams while it runs."""
    server = Server(tmp_path_factory.mktemp("ingest")).start()
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
    """--flight sends each file as a DoPut keyed KEY-1, KEY-2; running it again replays both."""
    files = write_inputs(tmp_path)[2:4]  # Feather (ids 5000..) and Parquet (7500..)
    args = (*files, "--stream", "by_flight", "--url", shared.url, "--flight", "--json")
    first = ingest(*args, "--idempotency-key", "load-42", "--chunk-size", 1000)
    assert first.exit_code == 0, first.stderr
    report = summary(first)
    assert report["transport"] == "flight"
    assert [f["idempotency_key"] for f in report["files"]] == ["load-42-1", "load-42-2"]
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
    shared: Server, tmp_path: Path, transport: list[str]
) -> None:
    """A CSV whose bad row comes after many batches were sent exits 2, and the server rolls the
    request back: the table is never created."""
    lines = ["id,name,score", *(f"{i},n{i},{i * 0.5}" for i in range(300_000))]
    lines[250_000] = "oops,n,1.0"  # well past the reader's first 1 MB block
    path = tmp_path / "late_error.csv"
    path.write_text("\n".join(lines) + "\n")
    stream = f"late_{transport[0][2:] if transport else 'http'}"
    args = ("--stream", stream, "--url", shared.url, "--chunk-size", 10_000, *transport)
    result = ingest(path, *args, "--json")
    assert result.exit_code == 2, result.stderr
    assert "invalid value 'oops'" in result.stderr
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
