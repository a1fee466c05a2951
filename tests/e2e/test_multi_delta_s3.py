"""Several Arrowport instances appending to one Delta table on an S3-compatible store (moto)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from deltalake import DeltaTable
from s3_support import NO_AWS_ENV, MotoS3
from support import ARROW, Server, ipc_bytes

PRODUCERS = 12  # threads, spread round-robin over the instances; half HTTP, half Flight
REQUESTS = 4  # per producer
ROWS = 500  # per request


def batch(producer: int, request: int) -> pa.Table:
    start = (producer * 1000 + request) * ROWS
    return pa.table(
        {
            "id": pa.array(range(start, start + ROWS), pa.int64()),
            "producer": pa.array([producer] * ROWS, pa.int32()),
            "payload": pa.array([f"p{producer}-r{request}-{i}" for i in range(ROWS)]),
        }
    )


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def instances() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def start_instances(workdir: Path, root: str, options: dict[str, str], count: int) -> list[Server]:
    config = workdir / "shared.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "storage_backend": "delta",
                "delta_config": {"table_path": root, "storage_options": options},
                # each request its own commit: what is tested is commit races between
                # processes, which group commit makes rarer (tests/e2e/test_group_commit.py)
                "group_commit": {"enabled": False},
            }
        )
    )
    servers = []
    try:
        for i in range(count):
            db = workdir / f"instance{i}.duckdb"  # each instance's own DuckDB file
            servers.append(Server(workdir, config=config, db=db, env=NO_AWS_ENV).start())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def produce(
    servers: list[Server], producer: int, requests: int, answers: list[dict[str, object]]
) -> None:
    server = servers[producer % len(servers)]
    if producer // len(servers) % 2 == 0:  # every instance gets HTTP and Flight producers
        with httpx.Client(timeout=120) as client:
            for request in range(requests):
                response = client.post(
                    f"{server.url}/ingest/shared",
                    content=ipc_bytes(batch(producer, request), max_chunksize=200),
                    headers={"Content-Type": ARROW},
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
        return
    client = fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")
    try:
        for request in range(requests):
            data = batch(producer, request)
            writer, reader = client.do_put(fl.FlightDescriptor.for_path("shared"), data.schema)
            writer.write_table(data, max_chunksize=200)
            writer.done_writing()
            answers.append(json.loads(reader.read().to_pybytes()))
            writer.close()
    finally:
        client.close()


def raced_commits(dt: DeltaTable) -> int:
    """Commits that landed later than right after the version their writer had read
    (``arrowport.read_version`` in commitInfo): another process took that version first,
    and the commit was retried."""
    raced = 0
    for entry in dt.history():
        read = entry.get("arrowport.read_version")
        if read is not None and int(read) >= 0:
            raced += int(entry["version"]) > int(read) + 1
    return raced


# 4 instances race harder than 2; the 2-instance run is behind --runslow (suite time)
@pytest.mark.parametrize("count", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_instances_append_to_one_s3_table_with_exact_counts(
    count: int, s3: MotoS3, instances: list[Server], tmp_path: Path
) -> None:
    """N instances with many producers land every row exactly once, a version per request
    or per group of requests; commit races between the processes happen and are retried."""
    requests = REQUESTS * 3 // 2 if count == 2 else REQUESTS  # races are rarer with 2
    root = s3.root(f"multi{count}")
    instances += start_instances(tmp_path, root, s3.storage_options, count)
    answers: list[dict[str, object]] = []
    errors: list[BaseException] = []

    def run(producer: int) -> None:
        try:
            produce(instances, producer, requests, answers)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(p,)) for p in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert len(answers) == PRODUCERS * requests
    rows = [a.get("rows", a.get("committed_rows")) for a in answers]
    assert rows == [ROWS] * len(answers)
    # every answer names its version; requests that arrive together at one instance share
    # one (group commit), and every version is named by at least one answer
    versions = sorted(int(a["version"]) for a in answers)  # type: ignore[call-overload]
    named = sorted(set(versions))
    for server in instances:
        server.assert_serving()
    dt = DeltaTable(f"{root}/shared", storage_options=s3.storage_options)
    raced = raced_commits(dt)
    assert named == list(range(dt.version() + 1)), named  # no commit without an answer
    table = dt.to_pyarrow_table(columns=["id", "producer"])
    expected = sorted(
        i
        for p in range(PRODUCERS)
        for r in range(requests)
        for i in batch(p, r).column("id").to_pylist()
    )
    assert table.num_rows == len(expected)
    assert sorted(table.column("id").to_pylist()) == expected  # every row once, none lost
    per_producer = table.group_by("producer").aggregate([("id", "count")]).to_pylist()
    assert {r["producer"]: r["id_count"] for r in per_producer} == {
        p: requests * ROWS for p in range(PRODUCERS)
    }
    print(f"{count} instances: {raced:.0f} commits raced and retried; {elapsed:.1f} s")
    assert raced > 0, "no commit race happened: the test did not test concurrency"
    reported = 0.0
    for server in instances:  # each instance's /metrics counts its own raced commits
        found = re.search(
            r"^arrowport_delta_commits_raced (\S+)$", server.get("/metrics").text, re.M
        )
        assert found is not None
        reported += float(found.group(1))
    assert reported == raced


def test_a_bad_bucket_is_a_clear_503_and_the_server_keeps_serving(
    s3: MotoS3, instances: list[Server], tmp_path: Path
) -> None:
    """Writing to a missing bucket answers 503 naming the cause; nothing is left behind."""
    instances += start_instances(tmp_path, "s3://no-such-bucket/x", s3.storage_options, 1)
    (server,) = instances
    response = server.post("events", ipc_bytes(batch(0, 0)))
    assert response.status_code == 503, response.text
    assert "bucket does not exist" in response.json()["detail"]
    server.assert_serving()
    assert server.get("/metrics").status_code == 200
