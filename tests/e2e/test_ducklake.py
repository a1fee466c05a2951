"""The DuckLake backend on a real server: one snapshot per request, bad input, time travel,
maintenance, and one writer process per .ducklake file catalog."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import put_table
from lake_support import lake_query
from support import ARROW, Server, ipc_bytes, sample_table


def lake_config(workdir: Path, extra: str = "") -> Path:
    config = workdir / "arrowport.yaml"
    config.write_text(
        "storage_backend: ducklake\n"
        "ducklake:\n"
        f"  catalog: {workdir / 'meta.ducklake'}\n"
        f"  data_path: {workdir / 'lakedata'}\n" + extra
    )
    return config


@pytest.fixture
def lake(server_factory: type[Server], tmp_path: Path) -> Server:
    return server_factory(tmp_path, config=lake_config(tmp_path)).start()


def query(server: Server, sql: str) -> list[tuple[object, ...]]:
    """Stop the server (a file catalog has one process) and read the lake."""
    server.stop()
    return lake_query(server.workdir / "meta.ducklake", sql, server.workdir / "lakedata")


def flight(server: Server) -> fl.FlightClient:
    return fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")


def truncated(table: pa.Table) -> bytes:
    body = ipc_bytes(table, max_chunksize=100)
    return body[: len(body) // 2]


def test_http_and_flight_requests_are_one_snapshot_each(lake: Server) -> None:
    """Each HTTP and Flight request commits exactly one snapshot, named in its answer."""
    versions = []
    for i in range(3):
        response = lake.post(
            "events", ipc_bytes(sample_table(500, offset=i * 500), max_chunksize=70)
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["rows"], body["backend"], body["batches"]) == (500, "ducklake", 8)
        versions.append(body["version"])
    client = flight(lake)
    try:
        acks = put_table(client, "events", sample_table(300, offset=1500))
    finally:
        client.close()
    assert [a["committed_rows"] for a in acks] == [300]
    versions.append(acks[0]["version"])
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert versions[1:] == [versions[0] + 1, versions[0] + 2, versions[0] + 3]
    rows = query(lake, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM lake.events")
    assert rows == [(1800, 1800, 0, 1799)]
    snapshots = lake_query(
        lake.workdir / "meta.ducklake", "SELECT max(snapshot_id) FROM ducklake_snapshots('lake')"
    )
    assert snapshots == [(versions[-1],)]


def test_bad_input_writes_nothing_and_makes_no_snapshot(lake: Server) -> None:
    """A truncated body, a schema mismatch and a bad type write nothing and add no snapshot."""
    assert lake.post("t", ipc_bytes(sample_table(100))).status_code == 200
    before = lake.get("/ducklake/t").json()
    cut = lake.post("t", truncated(sample_table(5000)))
    assert cut.status_code == 400 and cut.json()["error"] == "truncated_stream"
    wrong = pa.table({"id": pa.array(["x"] * 10), "name": ["n"] * 10})
    mismatch = lake.post("t", ipc_bytes(wrong))
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "schema_mismatch"
    assert "id" in mismatch.json()["detail"]
    # a union (float16, refused before, is now stored as float: docs/types.md)
    union = pa.UnionArray.from_sparse(pa.array([0, 0], pa.int8()), [pa.array([1.0, 2.0])])
    halves = pa.table({"h": union})
    unsupported = lake.post("halves", ipc_bytes(halves))
    assert unsupported.status_code == 422 and unsupported.json()["error"] == "unsupported_type"
    assert lake.get("/ducklake/halves").status_code == 404
    after = lake.get("/ducklake/t").json()
    assert (after["rows"], after["version"]) == (100, before["version"])
    lake.assert_serving()
    assert query(lake, "SELECT count(*) FROM lake.t") == [(100,)]


def test_idempotency_key_replays_without_writing(lake: Server) -> None:
    """A request retried with its Idempotency-Key is answered as a replay; rows land once."""
    body = ipc_bytes(sample_table(250))
    first = lake.post("keyed", body, headers={"Idempotency-Key": "req-1"})
    second = lake.post("keyed", body, headers={"Idempotency-Key": "req-1"})
    assert first.status_code == second.status_code == 200
    assert first.json()["replayed"] is False and second.json()["replayed"] is True
    assert second.json()["rows"] == 250
    other = lake.post("keyed", body, headers={"Idempotency-Key": "req-2"})
    assert other.json()["replayed"] is False
    assert query(lake, "SELECT count(*) FROM lake.keyed") == [(500,)]


def test_batch_mode_commits_a_snapshot_per_batch(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """With commit: batch, every batch is a snapshot of its own and is acknowledged."""
    config = lake_config(tmp_path, "streams:\n  ticks:\n    commit: batch\n")
    server = server_factory(tmp_path, config=config).start()
    response = server.post("ticks", ipc_bytes(sample_table(400), max_chunksize=100))
    assert response.status_code == 200 and response.json()["batches"] == 4
    last = response.json()["version"]
    history = server.get("/ducklake/ticks/snapshots").json()["snapshots"]
    assert [s["version"] for s in history[:4]] == [last, last - 1, last - 2, last - 3]
    assert query(server, "SELECT count(*) FROM lake.ticks") == [(400,)]


def test_time_travel_over_http_and_flight(lake: Server) -> None:
    """GET /ducklake/{t}/version/{v} and a DoGet ticket with "version" read that snapshot."""
    v1 = lake.post("tt", ipc_bytes(sample_table(100))).json()["version"]
    v2 = lake.post("tt", ipc_bytes(sample_table(50, offset=100))).json()["version"]
    old = lake.get(f"/ducklake/tt/version/{v1}")
    assert old.status_code == 200 and old.headers["content-type"] == ARROW
    assert pa.ipc.open_stream(old.content).read_all().num_rows == 100
    new = lake.get(f"/ducklake/tt/version/{v2}?columns=id&limit=120")
    table = pa.ipc.open_stream(new.content).read_all()
    assert table.column_names == ["id"] and table.num_rows == 120
    client = flight(lake)
    try:
        ticket = fl.Ticket(json.dumps({"table": "tt", "version": v1}).encode())
        assert client.do_get(ticket).read_all().num_rows == 100
        ticket = fl.Ticket(json.dumps({"table": "tt", "backend": "ducklake"}).encode())
        assert client.do_get(ticket).read_all().num_rows == 150
        with pytest.raises(pa.ArrowInvalid, match="does not exist"):
            client.do_get(fl.Ticket(json.dumps({"table": "tt", "version": v2 + 50}).encode()))
    finally:
        client.close()
    assert lake.get(f"/ducklake/tt/version/{v2 + 50}").json()["error"] == "invalid_read"
    before = lake.get(f"/ducklake/tt/version/{v1 - 1}")
    assert before.status_code == 400 and "does not exist at version" in before.json()["detail"]
    assert lake.get("/ducklake/nope/version/1").status_code == 404
    assert lake.get("/ducklake/tt/version/x1").status_code == 400
    info = lake.get("/ducklake/tt").json()
    assert (info["rows"], info["version"]) == (150, v2)
    assert [c["name"] for c in info["columns"]] == sample_table(1).column_names


def test_maintenance_merges_files_and_expires_snapshots(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Background merge and expiry keep every row while files and snapshots shrink."""
    extra = "  merge_interval: 0.5\n  cleanup_interval: 1\n  snapshot_retention_hours: 0\n"
    server = server_factory(tmp_path, config=lake_config(tmp_path, extra)).start()
    for i in range(12):
        response = server.post("small", ipc_bytes(sample_table(20, offset=i * 20)))
        assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        history = server.get("/ducklake/small/snapshots").json()["snapshots"]
        if any("merge_adjacent" in s["changes"] for s in history) and len(history) < 12:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"no merge and expiry seen: {history}")
    assert server.get("/ducklake/small").json()["rows"] == 240
    metrics = server.get("/metrics").text
    merges = re.search(
        r'arrowport_ducklake_maintenance_runs\{job="merge",result="ok"\} (\S+)', metrics
    )
    assert merges is not None and float(merges.group(1)) >= 1, metrics
    snapshot = re.search(r"^arrowport_ducklake_snapshot (\S+)$", metrics, re.M)
    assert snapshot is not None and float(snapshot.group(1)) >= history[0]["version"]
    files = list((tmp_path / "lakedata").rglob("*.parquet"))
    rows = query(server, "SELECT count(*), count(DISTINCT id) FROM lake.small")
    assert rows == [(240, 240)]
    assert len(files) < 12, files


def test_second_server_on_the_same_catalog_file_fails_fast(lake: Server, tmp_path: Path) -> None:
    """A second server on the same .ducklake file exits at once, saying why and what to use."""
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowport",
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "b.duckdb"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            "ARROWPORT_STORAGE_BACKEND": "ducklake",
            "ARROWPORT_DUCKLAKE_CATALOG": str(tmp_path / "meta.ducklake"),
            "ARROWPORT_DUCKLAKE_DATA_PATH": str(tmp_path / "lakedata"),
            **{k: v for k, v in os.environ.items() if not k.startswith("ARROWPORT")},
        },
    )
    assert out.returncode == 1, out.stderr
    assert "cannot attach DuckLake catalog" in out.stderr and "lock" in out.stderr
    assert "PostgreSQL catalog" in out.stderr
    assert time.monotonic() - started < 30
    lake.assert_serving()


def test_another_data_path_for_an_existing_lake_is_refused(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A server given another data_path for an existing lake exits at once, naming both."""
    first = server_factory(tmp_path, config=lake_config(tmp_path)).start()
    assert first.post("t", ipc_bytes(sample_table(3))).status_code == 200
    first.stop()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowport",
            "serve",
            "--port",
            "0",
            "--config",
            str(lake_config(tmp_path)),
            "--ducklake-data-path",
            str(tmp_path / "elsewhere"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr
    assert "does not match existing data path" in out.stderr
    assert "ducklake.data_path must be where this lake was created" in out.stderr
    assert "Traceback" not in out.stderr


def test_listflights_names_ducklake_tables_beside_duckdb(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """With DuckDB the default and one stream on DuckLake, ListFlights names the lake table
    by a JSON descriptor, and DoPut to that descriptor writes the lake."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        "streams:\n  lakeside:\n    storage_backend: ducklake\n"
        f"ducklake:\n  catalog: {tmp_path / 'meta.ducklake'}\n"
        f"  data_path: {tmp_path / 'lakedata'}\n"
    )
    server = server_factory(tmp_path, config=config).start()
    assert server.post("lakeside", ipc_bytes(sample_table(10))).json()["backend"] == "ducklake"
    assert server.post("plain", ipc_bytes(sample_table(5))).json()["backend"] == "duckdb"
    client = flight(server)
    try:
        listed = {}
        for info in client.list_flights():
            d = info.descriptor
            key = d.path[0].decode() if d.path else json.loads(d.command)["table"]
            listed[key] = (info.total_records, None if d.path else json.loads(d.command)["backend"])
        assert listed == {"plain": (5, None), "lakeside": (10, "ducklake")}
        cmd = fl.FlightDescriptor.for_command(
            json.dumps({"table": "lakeside", "backend": "ducklake"})
        )
        writer, reader = client.do_put(cmd, sample_table(7, offset=10).schema)
        writer.write_table(sample_table(7, offset=10))
        writer.done_writing()
        ack = json.loads(reader.read().to_pybytes())
        writer.close()
        assert ack["committed_rows"] == 7
    finally:
        client.close()
    assert query(server, "SELECT count(*) FROM lake.lakeside") == [(17,)]


def test_a_stream_reloaded_onto_ducklake_is_warned_and_refused_alike(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A reload routing a stream to DuckLake, which the server did not open, logs a WARNING
    naming both; HTTP and Flight then refuse it alike: 400 backend_unavailable,
    FAILED_PRECONDITION, saying what to configure."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("reload_interval: 0.1\nstreams:\n  plain: {}\n")
    server = server_factory(tmp_path, config=config).start()
    config.write_text(
        "reload_interval: 0.1\nstreams:\n  plain: {}\n  lakeside: {storage_backend: ducklake}\n"
    )
    server.wait_for("which this server does not run")
    (warning,) = [line for line in server.log if "does not run" in line]
    assert " WARNING arrowport.server" in warning
    assert "'lakeside'" in warning and "'ducklake'" in warning
    hint = "set storage_backend: ducklake"
    refused = [
        server.post("lakeside", ipc_bytes(sample_table(5))),
        server.get("/ducklake/lakeside"),
        server.get("/ducklake/lakeside/version/1"),
    ]
    for response in refused:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "backend_unavailable"
        assert hint in response.json()["detail"] and "restart" in response.json()["detail"]
    assert "stream 'lakeside' routes to the 'ducklake' backend" in refused[0].json()["detail"]
    client = flight(server)
    try:
        lake_cmd = fl.FlightDescriptor.for_command(
            json.dumps({"table": "lakeside", "backend": "ducklake"})
        )
        calls = [
            lambda: put_table(client, "lakeside", sample_table(5)),
            lambda: put_table(client, lake_cmd, sample_table(5)),
            lambda: client.get_flight_info(lake_cmd),
            lambda: client.do_get(
                fl.Ticket(json.dumps({"table": "lakeside", "backend": "ducklake"}).encode())
            ).read_all(),
        ]
        for call in calls:
            with pytest.raises(pa.ArrowInvalid, match="precondition failed") as raised:
                call()
            assert hint in str(raised.value)
        assert put_table(client, "plain", sample_table(3))[0]["committed_rows"] == 3
    finally:
        client.close()
    server.assert_serving()
    assert not (tmp_path / "arrowport.ducklake").exists()
