"""Several Arrowport instances writing one DuckLake table through a PostgreSQL catalog."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from lake_support import lake_query
from pg_fixtures import postgres  # noqa: F401
from pg_support import PgServer
from s3_support import MotoS3
from support import ARROW, Server, ipc_bytes

PRODUCERS = 16  # threads, spread round-robin over the instances; half HTTP, half Flight
REQUESTS = 4  # per producer
ROWS = 1500  # per request


def batch(producer: int, request: int) -> pa.Table:
    start = (producer * REQUESTS + request) * ROWS
    ids = pa.array(range(start, start + ROWS), pa.int64())
    return pa.table(
        {
            "id": ids,
            "producer": pa.array([producer] * ROWS, pa.int32()),
            "payload": pa.array([f"p{producer}-r{request}-{i}" for i in range(ROWS)]),
        }
    )


def s3_data(s3: MotoS3) -> str:
    """The ducklake: keys that put the data files in the moto bucket."""
    host = s3.endpoint.removeprefix("http://")
    return (
        f"  data_path: {s3.root()}/\n"
        f"  storage_options: {{endpoint: '{host}', use_ssl: false, url_style: path,"
        " key_id: testing, secret: testing, region: us-east-1}\n"
    )


def start_instances(
    workdir: Path, conninfo: str, count: int, extra: str = "", data: str | None = None
) -> list[Server]:
    config = workdir / "shared.yaml"
    config.write_text(
        "storage_backend: ducklake\n"
        "ducklake:\n"
        f"  catalog: 'postgres:{conninfo}'\n"
        + (data or f"  data_path: {workdir / 'lakedata'}\n")
        + extra
    )
    servers = []
    try:
        for i in range(count):
            db = workdir / f"instance{i}.duckdb"  # each instance's own DuckDB file
            servers.append(Server(workdir, config=config, db=db).start())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@pytest.fixture
def instances() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def rollbacks(conninfo: str) -> int:
    """PostgreSQL transactions rolled back in the catalog's database: lost commit races."""
    with psycopg.connect(conninfo, autocommit=True) as con:
        row = con.execute(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def produce(servers: list[Server], producer: int, answers: list[dict[str, object]]) -> None:
    server = servers[producer % len(servers)]
    if producer % 2 == 0:
        with httpx.Client(timeout=120) as client:
            for request in range(REQUESTS):
                response = client.post(
                    f"{server.url}/ingest/shared",
                    content=ipc_bytes(batch(producer, request), max_chunksize=500),
                    headers={"Content-Type": ARROW, "Idempotency-Key": f"p{producer}-r{request}"},
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
        return
    client = fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")
    try:
        for request in range(REQUESTS):
            data = batch(producer, request)
            writer, reader = client.do_put(fl.FlightDescriptor.for_path("shared"), data.schema)
            writer.write_table(data, max_chunksize=500)
            writer.done_writing()
            answers.append(json.loads(reader.read().to_pybytes()))
            writer.close()
    finally:
        client.close()


# 4 instances race harder than 2; the 2-instance run is behind --runslow (suite time)
@pytest.mark.parametrize("count", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_instances_append_to_one_table_with_exact_counts(
    count: int,
    postgres: PgServer,  # noqa: F811
    instances: list[Server],
    tmp_path: Path,
) -> None:
    """N instances with many producers land every row exactly once; races are retried."""
    conninfo = postgres.create_database(f"multi_lake_{count}")
    instances += start_instances(tmp_path, conninfo, count)
    before = rollbacks(conninfo)
    answers: list[dict[str, object]] = []
    errors: list[BaseException] = []

    def run(producer: int) -> None:
        try:
            produce(instances, producer, answers)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:3]
    assert len(answers) == PRODUCERS * REQUESTS
    rows = [a.get("rows", a.get("committed_rows")) for a in answers]
    assert rows == [ROWS] * len(answers)
    # each answer names the snapshot that committed it; small requests that arrive together
    # at one instance share one (group commit), so a snapshot may be named more than once
    versions = [a["version"] for a in answers]
    assert all(isinstance(v, int) and v > 0 for v in versions), versions
    raced = rollbacks(conninfo) - before
    for server in instances:
        server.assert_serving()
        server.stop()
    total = PRODUCERS * REQUESTS * ROWS
    found = lake_query(
        f"postgres:{conninfo}",
        "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM lake.shared",
    )
    assert found == [(total, total, 0, total - 1)]
    per_producer = dict(
        lake_query(
            f"postgres:{conninfo}", "SELECT producer, count(*) FROM lake.shared GROUP BY ALL"
        )
    )
    assert per_producer == {p: REQUESTS * ROWS for p in range(PRODUCERS)}
    snapshots = lake_query(
        f"postgres:{conninfo}",
        "SELECT count(*) FROM ducklake_snapshots('lake') WHERE snapshot_id IN "
        f"({', '.join(str(v) for v in set(versions))})",
    )
    assert snapshots == [(len(set(versions)),)]  # every answered version is a real snapshot
    print(f"{count} instances: {raced} catalog transactions rolled back (commit races)")
    assert raced > 0, "no commit race happened: the test did not test concurrency"


def test_instances_with_data_files_on_s3(
    postgres: PgServer,  # noqa: F811
    instances: list[Server],
    tmp_path: Path,
) -> None:
    """Two instances with the catalog in PostgreSQL and the Parquet files in an
    S3-compatible store land exact counts, and a refused request leaves no object."""
    conninfo = postgres.create_database("multi_lake_s3")
    with MotoS3("lake-data") as s3:
        data = s3_data(s3)
        instances += start_instances(tmp_path, conninfo, 2, data=data)
        answers: list[dict[str, object]] = []
        threads = [threading.Thread(target=produce, args=(instances, p, answers)) for p in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(answers) == 4 * REQUESTS
        objects = s3.keys("")
        assert objects and all(key.endswith(".parquet") for key in objects)
        cut = ipc_bytes(batch(9, 0), max_chunksize=100)
        refused = instances[0].post("shared", cut[: len(cut) // 2])
        assert refused.status_code == 400
        assert s3.keys("") == objects  # the cut request's files are gone
        total = 4 * REQUESTS * ROWS
        for server in instances:  # each instance reads the whole table back from S3
            info = server.get("/ducklake/shared").json()
            assert info["rows"] == total, info
            server.stop()
    tables = lake_query(
        f"postgres:{conninfo}",
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake'",
    )
    listed = [
        str(f).rsplit("/", 1)[-1]
        for (name,) in tables
        for (f,) in lake_query(
            f"postgres:{conninfo}", f"SELECT data_file FROM ducklake_list_files('lake', '{name}')"
        )
    ]
    assert sorted(listed) == sorted(key.rsplit("/", 1)[-1] for key in objects)


def test_a_retry_on_another_instance_is_a_replay(
    postgres: PgServer,  # noqa: F811
    instances: list[Server],
    tmp_path: Path,
) -> None:
    """A request committed by one instance, retried on another with its key, is a replay."""
    conninfo = postgres.create_database("multi_lake_replay")
    instances += start_instances(tmp_path, conninfo, 2)
    body = ipc_bytes(batch(0, 0))
    headers = {"Idempotency-Key": "once-only"}
    first = instances[0].post("keyed", body, headers=headers)
    second = instances[1].post("keyed", body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert (first.json()["replayed"], second.json()["replayed"]) == (False, True)
    assert second.json()["rows"] == ROWS
    for server in instances:
        server.stop()
    assert lake_query(f"postgres:{conninfo}", "SELECT count(*) FROM lake.keyed") == [(ROWS,)]


def test_maintenance_on_every_instance_keeps_every_row(
    postgres: PgServer,  # noqa: F811
    instances: list[Server],
    tmp_path: Path,
) -> None:
    """Merges and expiry racing on two instances beside ingest lose nothing."""
    conninfo = postgres.create_database("multi_lake_maintenance")
    extra = "  merge_interval: 0.3\n  cleanup_interval: 0.7\n  snapshot_retention_hours: 0\n"
    instances += start_instances(tmp_path, conninfo, 2, extra)
    for request in range(20):
        server = instances[request % 2]
        response = server.post("small", ipc_bytes(batch(1, request)))
        assert response.status_code == 200, response.text
    for server in instances:
        server.assert_serving()
        server.stop()
    found = lake_query(
        f"postgres:{conninfo}", "SELECT count(*), count(DISTINCT id) FROM lake.small"
    )
    assert found == [(20 * ROWS, 20 * ROWS)]
    files = list((tmp_path / "lakedata").rglob("*.parquet"))
    assert 0 < len(files) < 20, "no merge and cleanup happened"
