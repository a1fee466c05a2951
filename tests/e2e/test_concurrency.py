"""Concurrency end to end: many producers at once against one real server process on loopback.

Every producer is a thread of this test process with its own connection (a fresh httpx request,
or its own pyarrow FlightClient), released together by a barrier. Each producer sends ids no
other producer sends, so the tables can be checked exactly: row count, sum and distinct count
of the ids, or the sorted ids themselves. Everything is bounded: fixed producer, batch and row
counts, per-call timeouts, and a deadline for all producers to finish.

The figures each test prints (``-s``) are recorded in docs/reliability.md, "## Concurrency".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.flight as fl
from deltalake import DeltaTable
from flight_helpers import flight_client, put
from support import ARROW, Server, ipc_bytes

PRODUCERS = 64  # the default limits.max_concurrent_requests: all 64 are served at once
BATCHES = 1000  # record batches per producer, in one request (one IPC stream / one DoPut)
ROWS = 10  # rows per batch
DEADLINE = 120.0  # seconds for every producer of a test to finish
CALL_TIMEOUT = 90.0  # seconds for one HTTP request or DoPut


def producer_table(producer: int, batches: int, rows: int, start: int | None = None) -> pa.Table:
    """``batches * rows`` rows tagged ``producer``, ids ``start`` (default ``producer * n``)
    up to ``start + n``."""
    n = batches * rows
    start = producer * n if start is None else start
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "producer": pa.array([producer] * n, pa.int32()),
        }
    )


def run_all(jobs: list[Callable[[], Any]], deadline: float = DEADLINE) -> tuple[list[Any], float]:
    """Run ``jobs`` in one thread each, released together; return their results and wall time.

    Fails the test if a job raised or has not finished within ``deadline`` seconds.
    """
    results: list[Any] = [None] * len(jobs)
    errors: list[tuple[int, BaseException]] = []
    barrier = threading.Barrier(len(jobs) + 1)

    def run(i: int, job: Callable[[], Any]) -> None:
        barrier.wait(30)
        try:
            results[i] = job()
        except BaseException as exc:
            errors.append((i, exc))

    threads = [threading.Thread(target=run, args=(i, j), daemon=True) for i, j in enumerate(jobs)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    started = time.monotonic()
    for thread in threads:
        thread.join(max(0.0, started + deadline - time.monotonic()))
    elapsed = time.monotonic() - started
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"producers {stuck} still running after {deadline}s"
    assert not errors, f"{len(errors)} producers failed, first: {errors[:3]}"
    return results, elapsed


def http_job(url: str, body: bytes) -> Callable[[], httpx.Response]:
    def job() -> httpx.Response:
        return httpx.post(url, content=body, headers={"Content-Type": ARROW}, timeout=CALL_TIMEOUT)

    return job


def flight_job(
    client: fl.FlightClient, target: str | fl.FlightDescriptor, table: pa.Table, rows: int
) -> Callable[[], list[dict[str, Any]]]:
    options = fl.FlightCallOptions(timeout=CALL_TIMEOUT)

    def job() -> list[dict[str, Any]]:
        return put(
            client, target, table.to_batches(max_chunksize=rows), table.schema, options=options
        )

    return job


def report(what: str, producers: int, batches: int, rows: int, elapsed: float) -> None:
    total = producers * batches * rows
    print(
        f"\n{what}: {producers} producers x {batches} batches x {rows} rows = {total} rows "
        f"in {elapsed:.2f} s ({total / elapsed:,.0f} rows/s, {producers * batches / elapsed:,.0f}"
        " batches/s)"
    )


def assert_exact_duckdb(server: Server, table: str, producers: int, per_producer: int) -> None:
    """Count, sum and distinct count of the ids, and rows per producer, are exact."""
    total = producers * per_producer
    got = server.query(
        f"SELECT count(*), sum(id), count(DISTINCT id), min(id), max(id) FROM {table}"
    )
    assert got == [(total, total * (total - 1) // 2, total, 0, total - 1)]
    per = server.query(f"SELECT producer, count(*) FROM {table} GROUP BY producer ORDER BY 1")
    assert per == [(p, per_producer) for p in range(producers)]


# -- 1. 64 producers x 1000 batches into one DuckDB table ------------------------------------


def test_64_http_producers_1000_batches_each_land_exactly(server: Server) -> None:
    """64 concurrent POST /ingest/many, each ONE request whose body is one IPC stream of 1000
    batches of 10 rows: every producer gets 200 with its own counts, the table has exactly
    640,000 rows, the exact id sum, no duplicate id and 10,000 rows per producer."""
    bodies = [
        ipc_bytes(producer_table(p, BATCHES, ROWS), max_chunksize=ROWS) for p in range(PRODUCERS)
    ]
    url = f"{server.url}/ingest/many"
    responses, elapsed = run_all([http_job(url, body) for body in bodies])
    report("HTTP -> DuckDB, one table", PRODUCERS, BATCHES, ROWS, elapsed)

    assert len(responses) == PRODUCERS
    for p, response in enumerate(responses):
        assert response.status_code == 200, (p, response.text)
        body = response.json()
        assert (body["table"], body["backend"], body["commit"]) == ("many", "duckdb", "request")
        assert (body["rows"], body["batches"]) == (BATCHES * ROWS, BATCHES), (p, body)
        assert body["bytes"] == len(bodies[p])
    server.assert_serving()
    assert_exact_duckdb(server, "many", PRODUCERS, BATCHES * ROWS)


def test_64_flight_producers_1000_batches_each_land_exactly(server: Server) -> None:
    """64 concurrent DoPuts to one table, each on its own FlightClient, 1000 batches of 10 rows
    each: every producer gets exactly one ack saying 10,000 rows / 1000 batches committed, and
    the table has exactly 640,000 rows, the exact id sum and no duplicate id."""
    tables = [producer_table(p, BATCHES, ROWS) for p in range(PRODUCERS)]
    clients = [flight_client(server) for _ in range(PRODUCERS)]
    try:
        jobs = [flight_job(c, "many", t, ROWS) for c, t in zip(clients, tables, strict=True)]
        acks, elapsed = run_all(jobs)
    finally:
        for client in clients:
            client.close()
    report("Flight -> DuckDB, one table", PRODUCERS, BATCHES, ROWS, elapsed)

    assert len(acks) == PRODUCERS
    for p, got in enumerate(acks):
        assert got == [
            {
                "stream": "many",
                "table": "many",
                "committed_rows": BATCHES * ROWS,
                "committed_batches": BATCHES,
            }
        ], p
    server.assert_serving()
    assert_exact_duckdb(server, "many", PRODUCERS, BATCHES * ROWS)


# -- 2. mixed load: HTTP and Flight, several tables, DuckDB and Delta, request and batch mode --

MIXED_CONFIG = """
delta_config: {table_path: lake}
streams:
  lake_events: {storage_backend: delta}
  lake_ticks: {storage_backend: delta, commit: batch}
  duck_ticks: {commit: batch}
"""


@dataclass(frozen=True)
class Producer:
    """One producer of the mixed load: ``via`` is http (``path``) or flight (``target``)."""

    via: str
    table: str
    backend: str
    commit: str
    batches: int
    path: str = ""
    target: str | fl.FlightDescriptor = ""


def stream_cmd(stream: str) -> fl.FlightDescriptor:
    """A JSON cmd descriptor naming a stream (the form that can carry an idempotency key)."""
    return fl.FlightDescriptor.for_command(json.dumps({"stream": stream}).encode())


def table_cmd(table: str, backend: str) -> fl.FlightDescriptor:
    """The JSON cmd descriptor ListFlights gives a table of a non-default backend."""
    cmd = json.dumps({"table": table, "backend": backend}).encode()
    return fl.FlightDescriptor.for_command(cmd)


def mixed_producers() -> list[Producer]:
    """50 producers (under the default limit of 64 uploads at once) on five tables."""

    def http(
        n: int, table: str, backend: str, commit: str, batches: int, path: str
    ) -> list[Producer]:
        return [Producer("http", table, backend, commit, batches, path=path)] * n

    def flight(
        n: int, table: str, backend: str, commit: str, batches: int, target: Any
    ) -> list[Producer]:
        return [Producer("flight", table, backend, commit, batches, target=target)] * n

    return [
        # one DuckDB table written over both protocols
        *http(8, "duck_mix", "duckdb", "request", 1000, "/ingest/duck_mix"),
        *flight(8, "duck_mix", "duckdb", "request", 1000, "duck_mix"),
        # commit: batch on DuckDB: a commit and an ack per batch
        *http(4, "duck_ticks", "duckdb", "batch", 200, "/ingest/duck_ticks"),
        *flight(4, "duck_ticks", "duckdb", "batch", 200, "duck_ticks"),
        # a Delta table reached four ways: a routed stream, /delta/{table}, and DoPuts to the
        # routed stream by descriptor path and by JSON cmd
        *http(4, "lake_events", "delta", "request", 300, "/ingest/lake_events"),
        *http(4, "lake_events", "delta", "request", 300, "/delta/lake_events"),
        *flight(4, "lake_events", "delta", "request", 300, "lake_events"),
        *flight(4, "lake_events", "delta", "request", 300, stream_cmd("lake_events")),
        # a Delta table no stream routes: /delta/{table}, and DoPuts to the
        # {"table", "backend": "delta"} descriptor ListFlights gives for it
        *http(4, "lake_direct", "delta", "request", 300, "/delta/lake_direct"),
        *flight(2, "lake_direct", "delta", "request", 300, table_cmd("lake_direct", "delta")),
        # commit: batch on Delta: a Delta version per batch
        *http(2, "lake_ticks", "delta", "batch", 60, "/ingest/lake_ticks"),
        *flight(2, "lake_ticks", "delta", "batch", 60, "lake_ticks"),
    ]


def check_http(spec: Producer, response: httpx.Response, rows: int) -> int | None:
    """The answer says the producer's rows were committed; returns the Delta version, if any."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["table"], body["backend"], body["commit"]) == (
        spec.table,
        spec.backend,
        spec.commit,
    ), body
    assert (body["rows"], body["batches"]) == (spec.batches * rows, spec.batches), body
    if spec.backend == "delta":
        assert isinstance(body["version"], int), body
        return int(body["version"])
    assert "version" not in body, body
    return None


def check_flight(spec: Producer, acks: list[dict[str, Any]], rows: int) -> list[int]:
    """Request mode: one ack for everything; batch mode: one cumulative ack per batch.
    Returns the Delta versions the acks name."""
    if spec.commit == "batch":
        expected = [((i + 1) * rows, i + 1) for i in range(spec.batches)]
    else:
        expected = [(spec.batches * rows, spec.batches)]
    assert [(a["committed_rows"], a["committed_batches"]) for a in acks] == expected
    assert all(a["table"] == spec.table for a in acks), acks
    if spec.backend == "delta" and spec.commit == "request":
        assert all(isinstance(a["version"], int) for a in acks), acks
        return [int(a["version"]) for a in acks]
    # Batch-mode acks to Delta carry no version (docs/delta.md says a PutResult does;
    # reported), so they are not checked for one.
    if spec.backend == "duckdb":
        assert all("version" not in a for a in acks), acks
    return []


def test_mixed_http_flight_duckdb_delta_concurrently(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """50 producers at once: HTTP and Flight, two DuckDB and three Delta tables, request and
    batch commit mode. Afterwards every table holds exactly the ids sent to it (none lost,
    none twice), every producer was told its rows were committed, and every Delta commit got
    a version of its own (versions 0..n-1, n = the number of commits)."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(MIXED_CONFIG)
    server = server_factory(tmp_path, config=config).start()
    rows = ROWS
    specs = mixed_producers()
    tables, start = [], 0  # ids unique across all producers and tables
    for i, spec in enumerate(specs):
        tables.append(producer_table(i, spec.batches, rows, start))
        start += spec.batches * rows
    expected: dict[str, list[int]] = {}
    for spec, table in zip(specs, tables, strict=True):
        expected.setdefault(spec.table, []).extend(table.column("id").to_pylist())

    clients: list[fl.FlightClient] = []
    jobs: list[Callable[[], Any]] = []
    for spec, table in zip(specs, tables, strict=True):
        if spec.via == "http":
            jobs.append(http_job(server.url + spec.path, ipc_bytes(table, max_chunksize=rows)))
        else:
            clients.append(flight_client(server))
            jobs.append(flight_job(clients[-1], spec.target, table, rows))
    try:
        results, elapsed = run_all(jobs)
    finally:
        for client in clients:
            client.close()
    total_batches = sum(s.batches for s in specs)
    print(
        f"\nmixed: {len(specs)} producers, {len(expected)} tables, {total_batches} batches x "
        f"{rows} rows = {total_batches * rows} rows in {elapsed:.2f} s "
        f"({total_batches * rows / elapsed:,.0f} rows/s)"
    )

    # the Delta versions named by the answers (HTTP batch mode: its last batch's version)
    versions: dict[str, list[int]] = {}
    for spec, result in zip(specs, results, strict=True):
        if spec.via == "http":
            version = check_http(spec, result, rows)
            named = [] if version is None else [version]
        else:
            named = check_flight(spec, result, rows)
        versions.setdefault(spec.table, []).extend(named)
    server.assert_serving()

    lake = tmp_path / "lake"
    for name in ("lake_events", "lake_direct", "lake_ticks"):
        dt = DeltaTable(str(lake / name))
        ids = sorted(dt.to_pyarrow_table(columns=["id"]).column("id").to_pylist())
        assert ids == sorted(expected[name]), name
        if name == "lake_ticks":
            # one commit per batch: a version per batch; the HTTP answers name distinct ones
            commits = sum(s.batches for s in specs if s.table == name)
            acked = versions[name]
            answers = sum(1 for s in specs if s.table == name and s.via == "http")
            assert len(acked) == answers and len(set(acked)) == len(acked), sorted(acked)
            assert max(acked) <= dt.version() == commits - 1
        else:
            # one commit per request, or per group of small requests (group commit): every
            # answer names a version, and every version 0..n-1 is named by at least one
            requests = sum(1 for s in specs if s.table == name)
            assert len(versions[name]) == requests
            named = sorted(set(versions[name]))
            assert named == list(range(dt.version() + 1)), named
            assert dt.version() <= requests - 1

    for name in ("duck_mix", "duck_ticks"):  # Server.query stops the server (DuckDB's lock)
        want = sorted(expected[name])
        got = server.query(f"SELECT count(*), sum(id), count(DISTINCT id) FROM {name}")
        assert got == [(len(want), sum(want), len(set(want)))], name
        assert [r[0] for r in server.query(f"SELECT id FROM {name} ORDER BY id")] == want, name
    assert server.tables() == {"duck_mix", "duck_ticks"}
