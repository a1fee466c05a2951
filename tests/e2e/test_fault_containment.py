"""Fault containment on a real server: a DuckDB or DuckLake database that a fatal engine
error invalidates is reopened without a restart (503 + Retry-After meanwhile), readiness
says so while liveness stays 200, and error answers carry no internals.

The invalidation is DuckDB's own: its debug switch aborts a CHECKPOINT, which raises the
FatalException that invalidates the database instance, through the test-only route that
``ARROWPORT_TEST_HOOKS=1`` enables.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table
from support import Server, ipc_bytes, read_response, sample_table, start_upload

HOOKS = {"ARROWPORT_TEST_HOOKS": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("fault")
    config = workdir / "arrowport.yaml"
    config.write_text(
        "ducklake:\n"
        f"  catalog: {workdir / 'meta.ducklake'}\n"
        f"  data_path: {workdir / 'lakedata'}\n"
        "streams:\n"
        "  lakey: {storage_backend: ducklake, target_table: lakey}\n"
        "  pathy: {storage_backend: ducklake, target_table: pathy}\n"
    )
    running = Server(workdir, config=config, env=HOOKS).start()
    yield running
    running.stop()


def invalidate(server: Server, backend: str, hold: float) -> None:
    response = httpx.post(f"{server.url}/_test/invalidate/{backend}?hold={hold}", timeout=30)
    assert response.status_code == 200, response.text
    assert "not invalidated" not in response.json()["engine_message"]


def wait_ready(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.get("/health/ready").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("not ready again:\n" + "".join(server.log[-30:]))


def rows_of(server: Server, table: str, backend: str) -> int:
    ticket = fl.Ticket(json.dumps({"table": table, "backend": backend}).encode())
    return int(flight_client(server).do_get(ticket).read_all().num_rows)


def metric(server: Server, name: str, backend: str) -> float:
    text = server.get("/metrics").text
    match = re.search(rf'^{name}{{backend="{backend}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {backend} not in /metrics"
    return float(match.group(1))


@pytest.mark.parametrize(("stream", "backend"), [("plain", "duckdb"), ("lakey", "ducklake")])
def test_an_invalidated_database_is_reopened_without_a_restart(
    server: Server, stream: str, backend: str
) -> None:
    """Invalidated: 503 + Retry-After and not ready (live); reopened: committed rows all there."""
    pid = server.proc.pid if server.proc else None
    assert server.post(stream, ipc_bytes(sample_table(300))).status_code == 200
    reopens = metric(server, "arrowport_storage_reopens_total", backend)
    invalidate(server, backend, hold=3)

    refused = server.post(stream, ipc_bytes(sample_table(10, offset=300)))
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "storage_unavailable"
    assert "\n" not in refused.json()["detail"]
    with pytest.raises(fl.FlightUnavailableError):
        put_table(flight_client(server), stream, sample_table(10))
    assert server.get("/health").status_code == 200  # liveness: the process serves
    ready = server.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["backends"][backend]["ready"] is False
    assert backend in ready.json()["detail"]
    action = next(iter(flight_client(server).do_action(fl.Action("health", b""))))
    assert json.loads(action.body.to_pybytes())["ready"] is False

    wait_ready(server)
    assert server.post(stream, ipc_bytes(sample_table(50, offset=1000))).status_code == 200
    assert rows_of(server, stream, backend) == 350  # the WAL/catalog kept every commit
    assert metric(server, "arrowport_storage_reopens_total", backend) == reopens + 1
    assert metric(server, "arrowport_storage_invalidations_total", backend) >= 1
    assert metric(server, "arrowport_storage_ready", backend) == 1
    assert server.running and server.proc is not None and server.proc.pid == pid
    assert any("was invalidated by a fatal engine error" in line for line in server.log)


def test_a_write_open_across_a_reopen_fails_and_leaves_nothing(server: Server) -> None:
    """An upload begun before the invalidation is answered 503 and none of it is stored."""
    assert server.post("midway", ipc_bytes(sample_table(5))).status_code == 200
    # about 3.5 MB: its first half is past group_commit.max_request_bytes, so it streams
    body = ipc_bytes(sample_table(100_000, offset=5), max_chunksize=2500)
    sock = start_upload(server.url, "midway", len(body), body[: len(body) // 2])
    try:
        time.sleep(0.5)  # the first half is being written on the old connection
        invalidate(server, "duckdb", hold=0)
        wait_ready(server)
        sock.sendall(body[len(body) // 2 :])
        answer = read_response(sock, timeout=30)
    finally:
        sock.close()
    assert b" 503 " in answer.split(b"\r\n", 1)[0], answer[:300]
    assert b"Retry-After: 1" in answer or b"retry-after: 1" in answer
    assert rows_of(server, "midway", "duckdb") == 5


def test_an_open_scan_does_not_stop_the_reopen(server: Server) -> None:
    """A DoGet half read when the database is invalidated does not hold the reopen up, and
    its client gets every row or an error, never a silently short stream."""
    put_table(flight_client(server), "scanned", sample_table(200_000), max_chunksize=20_000)
    reader = flight_client(server).do_get(fl.Ticket(b"scanned"))
    got = reader.read_chunk().data.num_rows
    invalidate(server, "duckdb", hold=0)
    wait_ready(server, timeout=15)  # DuckDB would not open while a reader held the old one
    try:
        while True:
            got += reader.read_chunk().data.num_rows
    except StopIteration:
        assert got == 200_000
    except fl.FlightUnavailableError:
        pass
    assert rows_of(server, "scanned", "duckdb") == 200_000


def test_the_hook_route_exists_only_with_the_variable(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Without ARROWPORT_TEST_HOOKS=1 the invalidation route is not there (404)."""
    plain = server_factory(tmp_path, env={"ARROWPORT_TEST_HOOKS": ""}).start()
    response = httpx.post(f"{plain.url}/_test/invalidate/duckdb", timeout=30)
    assert response.status_code == 404
    assert plain.get("/health/ready").json()["status"] == "ready"


def test_a_storage_error_is_answered_in_one_line_without_paths(server: Server) -> None:
    """An engine error quoting a data path: one line, no path in the answer; the log has both."""
    assert server.post("pathy", ipc_bytes(sample_table(3))).status_code == 200
    table_dir = server.workdir / "lakedata" / "main" / "pathy"
    shutil.rmtree(table_dir)
    table_dir.write_text("not a directory")  # DuckDB's IO error names the path
    try:
        headers = {"X-Request-Id": "no-internals-1"}
        response = server.post("pathy", ipc_bytes(sample_table(3)), headers=headers)
        with pytest.raises(fl.FlightError) as flight_error:
            put_table(flight_client(server), "pathy", sample_table(3))
    finally:
        table_dir.unlink()
        table_dir.mkdir()
    assert 500 <= response.status_code < 600, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and "<path>" in detail
    for answer in (response.text, str(flight_error.value)):
        assert str(server.workdir) not in answer and "lakedata" not in answer
        assert "site-packages" not in answer and "Stack Trace" not in answer
    full = [line for line in server.log if "no-internals-1" in line and str(table_dir) in line]
    assert full, "the full engine message is not logged with the request id"
