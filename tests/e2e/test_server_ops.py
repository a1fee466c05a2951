"""Concurrency, commit modes, config routing, hot reload, env overrides and shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import trio
from support import ARROW, Server, ipc_bytes, sample_table


async def test_sixteen_concurrent_uploads_land_exact_counts(server: Server) -> None:
    """24 concurrent uploads (16 to one table, 8 spread over 4) land exact row counts."""
    jobs = [("shared", i) for i in range(16)] + [(f"spread{i % 4}", 100 + i) for i in range(8)]
    results: list[int] = []

    async def upload(client: httpx.AsyncClient, stream: str, seed: int) -> None:
        body = ipc_bytes(sample_table(2000 + seed, offset=seed * 1_000_000), max_chunksize=700)
        response = await client.post(
            f"{server.url}/ingest/{stream}", content=body, headers={"Content-Type": ARROW}
        )
        assert response.status_code == 200, response.text
        results.append(response.json()["rows"])

    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client, trio.open_nursery() as n:
        for stream, seed in jobs:
            n.start_soon(upload, client, stream, seed)
    assert len(results) == len(jobs)
    counts = dict(
        server.query(
            "SELECT 'shared', count(*) FROM shared UNION ALL "
            + " UNION ALL ".join(f"SELECT 'spread{i}', count(*) FROM spread{i}" for i in range(4))
        )
    )
    assert counts["shared"] == sum(2000 + i for i in range(16))
    for k in range(4):
        assert counts[f"spread{k}"] == sum(2000 + 100 + i for i in range(8) if i % 4 == k)


def _corrupt_third_batch(data: bytes) -> bytes:
    """Cut the stream in the middle of its third record batch."""
    reader = pa.ipc.open_stream(data)
    del reader
    pos, seen = 0, 0
    while True:
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        message = pa.ipc.read_message(pa.py_buffer(data[pos:]))
        end = pos + 8 + length + message.body.size
        if message.type == "record batch":
            seen += 1
            if seen == 3:
                return data[: pos + 8 + length + 10]
        pos = end


def test_batch_commit_mode_acks_what_is_committed(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """With commit: batch, a stream failing in batch 3 keeps batches 1-2 and says so."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("streams:\n  events:\n    target_table: event_log\n    commit: batch\n")
    server = server_factory(tmp_path, config=config).start()
    data = ipc_bytes(sample_table(300), max_chunksize=100)
    ok = server.post("events", data)
    assert ok.status_code == 200 and ok.json()["commit"] == "batch" and ok.json()["rows"] == 300
    response = server.post("events", _corrupt_third_batch(data))
    assert response.status_code == 400
    payload = response.json()
    assert payload["committed_rows"] == 200 and payload["committed_batches"] == 2
    server.assert_serving()
    assert server.query("SELECT count(*) FROM event_log") == [(500,)]


def test_request_commit_mode_is_all_or_nothing(server: Server) -> None:
    """By default a stream failing in batch 3 commits nothing at all."""
    data = ipc_bytes(sample_table(300), max_chunksize=100)
    assert server.post("events", _corrupt_third_batch(data)).status_code == 400
    server.assert_serving()
    assert "events" not in server.tables()


def test_config_routes_stream_to_table(server_factory: type[Server], tmp_path: Path) -> None:
    """A configured stream writes to its target_table; others to a table named like them."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("streams:\n  sensors:\n    target_table: sensor_data\n")
    server = server_factory(tmp_path, config=config).start()
    assert server.post("sensors", ipc_bytes(sample_table(5))).json()["table"] == "sensor_data"
    assert server.post("other", ipc_bytes(sample_table(6))).json()["table"] == "other"
    listing = {s["name"]: s for s in server.get("/streams").json()["streams"]}
    assert listing["sensors"]["configured"] and listing["sensors"]["rows"] == 5
    assert not listing["other"]["configured"] and listing["other"]["rows"] == 6
    assert server.tables() == {"sensor_data", "other"}


def test_hot_reload_and_broken_edit_keeps_old_config(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """An edit to the YAML takes effect while running; a broken edit keeps the old config."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("reload_interval: 0.1\nstreams:\n  s:\n    target_table: first\n")
    server = server_factory(tmp_path, config=config).start()
    assert server.post("s", ipc_bytes(sample_table(1))).json()["table"] == "first"
    config.write_text("reload_interval: 0.1\nstreams:\n  s:\n    target_table: second\n")
    server.wait_for("config reloaded")
    assert server.post("s", ipc_bytes(sample_table(2))).json()["table"] == "second"
    config.write_text("reload_interval: 0.1\nstreams:\n  s:\n    target_tabel: third\n")
    server.wait_for("keeping the previous config")
    assert any("target_tabel" in line for line in server.log)
    assert server.post("s", ipc_bytes(sample_table(3))).json()["table"] == "second"
    config.write_bytes(b"reload_interval: 0.1\nstreams:\n  s:\n    target_table: caf\xe9\n")
    server.wait_for("not UTF-8")
    server.assert_serving()
    assert server.post("s", ipc_bytes(sample_table(3))).json()["table"] == "second"
    assert server.query("SELECT count(*) FROM second") == [(8,)]


def test_env_overrides(server_factory: type[Server], tmp_path: Path) -> None:
    """ARROWPORT_STREAMS_PATH and ARROWPORT_DB are honoured (the --db flag wins over env)."""
    config = tmp_path / "routes.yaml"
    config.write_text("streams:\n  a:\n    target_table: from_env_config\n")
    env = {"ARROWPORT_STREAMS_PATH": str(config)}
    server = server_factory(tmp_path, env=env).start()
    assert server.post("a", ipc_bytes(sample_table(2))).json()["table"] == "from_env_config"
    server.stop()
    # Without flags, ARROWPORT_DB, ARROWPORT_HOST and ARROWPORT_PORT pick file and address.
    env_db = tmp_path / "env.duckdb"
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env2 = {"ARROWPORT_DB": str(env_db), "ARROWPORT_HOST": "127.0.0.1", "ARROWPORT_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "arrowport", "serve"],
        env={**os.environ, **env2},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "serving on" in line:
                banner = line
                break
        response = httpx.post(
            f"http://127.0.0.1:{port}/ingest/e",
            content=ipc_bytes(sample_table(4)),
            headers={"Content-Type": ARROW},
        )
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert f"http://127.0.0.1:{port}" in banner and str(env_db) in banner, banner
    assert env_db.exists()


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    """A config error stops `serve` at once with a message naming the key."""
    config = tmp_path / "bad.yaml"
    config.write_text("streams:\n  s:\n    commit: sometimes\n")
    out = subprocess.run(
        [sys.executable, "-m", "arrowport", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "streams.s.commit" in out.stderr


def test_sigterm_shuts_down_cleanly_and_data_is_durable(server: Server) -> None:
    """SIGTERM stops the server with exit code 0 and committed data is on disk."""
    assert server.post("durable", ipc_bytes(sample_table(77))).status_code == 200
    assert server.stop(signal.SIGTERM) == 0
    assert server.query("SELECT count(*) FROM durable") == [(77,)]


def test_keep_alive_connections_close_at_shutdown(server: Server) -> None:
    """After SIGTERM a kept-alive HTTP/1.1 connection is served or closed, never left hanging,
    and the server exits as soon as the last upload is done, not at the graceful timeout."""
    body = ipc_bytes(sample_table(10))
    headers = {"Content-Type": ARROW}

    def slow() -> Iterator[bytes]:
        yield body[:10]
        time.sleep(3)
        yield body[10:]

    with httpx.Client(timeout=60) as kept:
        assert kept.post(f"{server.url}/ingest/k", content=body, headers=headers).status_code == 200
        answers: list[int] = []
        uploader = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{server.url}/ingest/slow", content=slow(), headers=headers, timeout=60
                ).status_code
            )
        )
        uploader.start()
        deadline = time.monotonic() + 10
        while server.get("/streams").json()["in_flight"] < 1:  # the upload is being served
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for("shutting down")
        stopped = time.monotonic()
        outcomes = []
        for _ in range(3):
            started = time.monotonic()
            try:
                status = kept.post(f"{server.url}/ingest/k", content=body, headers=headers)
                outcomes.append(status.status_code)
                assert status.headers.get("connection") == "close"  # don't reuse it
            except httpx.TransportError as exc:
                outcomes.append(type(exc).__name__)
            assert time.monotonic() - started < 10, outcomes
        uploader.join(30)
    assert answers == [200]
    assert server.proc.wait(30) == 0
    assert time.monotonic() - stopped < 20, "the server waited for the graceful timeout"
    assert outcomes[-1] == "ConnectError", outcomes


def _open_keep_alive(server: Server) -> socket.socket:
    """A raw HTTP/1.1 connection that has had one answer and stays open (keep-alive)."""
    url = httpx.URL(server.url)
    sock = socket.create_connection((url.host, url.port), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    assert not re.search(rb"(?i)connection: *close", head), "the answer did not keep alive"
    assert not _closed_within(sock, 0.3), "the connection closed right after the answer"
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_an_idle_kept_alive_connection_times_out_after_an_answer(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """limits.connection_idle_timeout closes a connection idle after an answer, too."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits:\n  connection_idle_timeout: 1\n")
    server = server_factory(tmp_path, config=config).start()
    sock = _open_keep_alive(server)
    try:
        assert _closed_within(sock, 10), "the idle connection was never closed"
    finally:
        sock.close()


def test_an_idle_kept_alive_connection_does_not_hold_shutdown(server: Server) -> None:
    """SIGTERM with an idle kept-alive connection open: the server exits at once."""
    sock = _open_keep_alive(server)
    try:
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < 10, "the idle connection held the shutdown"
        assert _closed_within(sock, 5)
    finally:
        sock.close()


def test_second_server_on_same_file_fails_fast(
    server: Server, server_factory: type[Server], tmp_path: Path
) -> None:
    """A second server on the same DuckDB file exits at once with a clear message."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "arrowport", "serve", "--port", "0", "--db", str(server.db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "cannot open DuckDB database" in out.stderr and "lock" in out.stderr
    assert "one writer process" in out.stderr and "Delta backend" in out.stderr
    assert "DuckLake with a PostgreSQL catalog" in out.stderr
    assert time.monotonic() - started < 30
    server.assert_serving()


@pytest.mark.parametrize("args", [["--version"], ["serve", "--help"]])
def test_cli_version_and_help(args: list[str]) -> None:
    """`arrowport --version` and `serve --help` work and tell the defaults."""
    out = subprocess.run(
        [sys.executable, "-m", "arrowport", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    if args == ["--version"]:
        assert out.stdout.startswith("arrowport ")
    else:
        assert "127.0.0.1" in out.stdout and "8888" in out.stdout and "--db" in out.stdout


def test_refusals_are_counted_by_reason(server: Server) -> None:
    """Schema mismatches and bad input are counted by reason and shown by /streams."""
    assert server.post("t", ipc_bytes(sample_table(3))).status_code == 200
    extra = sample_table(3).append_column("nope", pa.array([1, 2, 3]))
    assert server.post("t", ipc_bytes(extra)).status_code == 422
    assert server.post("t", b"garbage!").status_code == 400
    listing = server.get("/streams").json()
    assert listing["refusals"] == {"schema_mismatch": 1, "bad_input": 1}
    (entry,) = listing["streams"]
    assert entry["requests"] == 3 and entry["failed_requests"] == 2 and entry["rows"] == 3


def test_periodic_checkpoint_empties_the_wal(server_factory: type[Server], tmp_path: Path) -> None:
    """With duckdb.checkpoint_interval set, committed data moves out of the WAL while running."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("duckdb:\n  checkpoint_interval: 0.2\n  checkpoint_threshold: 1GB\n")
    server = server_factory(tmp_path, config=config).start()
    assert server.post("t", ipc_bytes(sample_table(20_000))).status_code == 200
    wal = Path(str(server.db) + ".wal")
    deadline = time.monotonic() + 10
    while wal.exists() and wal.stat().st_size > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not wal.exists() or wal.stat().st_size == 0
    server.assert_serving()


def test_port_in_use_fails_with_a_clear_message(server: Server, tmp_path: Path) -> None:
    """A second server on a busy port exits 1 and says the address is in use."""
    port = httpx.URL(server.url).port
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowport",
            "serve",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "other.duckdb"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "in use" in out.stderr
    assert "Traceback" not in out.stderr
    server.assert_serving()


def test_stream_names_are_case_insensitive_in_routing_and_counts(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Orders, orders and ORDERS are one configured stream: one table, one set of counters."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("streams:\n  orders:\n    target_table: order_log\n")
    server = server_factory(tmp_path, config=config).start()
    for i, name in enumerate(["Orders", "orders", "ORDERS"]):
        response = server.post(name, ipc_bytes(sample_table(2, offset=10 * i)))
        assert response.status_code == 200 and response.json()["table"] == "order_log"
        assert response.json()["stream"] == "orders"
    (entry,) = server.get("/streams").json()["streams"]
    assert (entry["name"], entry["rows"], entry["requests"]) == ("orders", 6, 3)
    assert server.query("SELECT count(*) FROM order_log") == [(6,)]


def test_reload_sees_edits_that_keep_size_and_mtime(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """An edit that keeps the file's size and modification time (cp -p) is still applied."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("reload_interval: 0.1\nstreams:\n  s:\n    target_table: aaaa\n")
    stat = config.stat()
    server = server_factory(tmp_path, config=config).start()
    assert server.post("s", ipc_bytes(sample_table(1))).json()["table"] == "aaaa"
    replacement = tmp_path / "new.yaml"
    replacement.write_text("reload_interval: 0.1\nstreams:\n  s:\n    target_table: bbbb\n")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, config)
    server.wait_for("config reloaded")
    assert server.post("s", ipc_bytes(sample_table(1))).json()["table"] == "bbbb"
