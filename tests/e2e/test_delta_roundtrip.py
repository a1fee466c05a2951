"""The Delta life cycle across tools: HTTP ingest -> time travel -> CLI restore -> history,
with a running server and the `arrowport delta` command on the same tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow as pa
from support import Server, ipc_bytes


def _ids(start: int, rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + rows), pa.int64())})


def _read(server: Server, path: str) -> pa.Table:
    response = server.get(path)
    assert response.status_code == 200, response.text
    return pa.ipc.open_stream(response.content).read_all()


def test_ingest_time_travel_restore_history(server_factory: type[Server], tmp_path: Path) -> None:
    """Three commits; version 0 reads back alone; a CLI restore to 0 while the server runs is
    seen by the server at once: latest rows = version 0's, history names the RESTORE."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("delta_config: {table_path: lake}\n")
    server = server_factory(tmp_path, config=config).start()
    for i in range(3):
        response = httpx_post(server, "/delta/orders", ipc_bytes(_ids(100 * i, 100)))
        assert response["version"] == i and response["rows"] == 100

    v0 = _read(server, "/delta/orders/version/0")
    assert sorted(v0.column("id").to_pylist()) == list(range(100))
    v2 = _read(server, "/delta/orders/version/2")
    assert sorted(v2.column("id").to_pylist()) == list(range(300))

    out = subprocess.run(
        [sys.executable, "-m", "arrowport", "delta", "restore", "orders", "0", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**server.env, "ARROWPORT_STREAMS_PATH": str(config)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)
    assert (restored["restored_version"], restored["version"]) == (0, 3)

    info = server.get("/delta/orders").json()
    assert (info["version"], info["rows"]) == (3, 100)
    latest = _read(server, "/delta/orders/version/3")
    assert sorted(latest.column("id").to_pylist()) == list(range(100))
    history = server.get("/delta/orders/history?limit=2").json()["history"]
    assert [h["operation"] for h in history] == ["RESTORE", "WRITE"]
    assert [h["version"] for h in history] == [3, 2]

    # and ingest goes on after the restore, on top of it
    assert httpx_post(server, "/delta/orders", ipc_bytes(_ids(1000, 5)))["version"] == 4
    assert server.get("/delta/orders").json()["rows"] == 105


def httpx_post(server: Server, path: str, body: bytes) -> dict[str, object]:
    response = httpx.post(
        f"{server.url}{path}",
        content=body,
        headers={"Content-Type": "application/vnd.apache.arrow.stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result
