"""Exactly once across instances: one idempotency key sent to two Arrowport instances at
once (a hedged request) on one PostgreSQL-catalog DuckLake is written once, and both
answers report that one commit."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from lake_support import lake_query
from pg_fixtures import postgres  # noqa: F401
from pg_support import PgServer
from support import ARROW, Server, ipc_bytes
from test_multi_ducklake import start_instances

ROWS = 1500
CHUNK = 500  # rows per batch: a request is 3 batches
HTTP_ROUNDS = 8
FLIGHT_ROUNDS = 3


def rows_of(round_: int) -> pa.Table:
    """Round ``round_``'s rows: ids of its own, and the round as a column."""
    start = round_ * ROWS
    return pa.table(
        {
            "id": pa.array(range(start, start + ROWS), pa.int64()),
            "round": pa.array([round_] * ROWS, pa.int32()),
        }
    )


def post_keyed(server: Server, round_: int) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/ingest/hedged",
        content=ipc_bytes(rows_of(round_), max_chunksize=CHUNK),
        headers={"Content-Type": ARROW, "Idempotency-Key": f"round-{round_}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {"rows": body["rows"], "batches": body["batches"], "replayed": body["replayed"]}


def put_keyed(server: Server, round_: int) -> dict[str, Any]:
    cmd = json.dumps({"stream": "hedged", "idempotency_key": f"round-{round_}"}).encode()
    client = fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")
    try:
        data = rows_of(round_)
        writer, reader = client.do_put(fl.FlightDescriptor.for_command(cmd), data.schema)
        writer.write_table(data, max_chunksize=CHUNK)
        writer.done_writing()
        ack = json.loads(reader.read().to_pybytes())
        writer.close()
    finally:
        client.close()
    return {
        "rows": ack["committed_rows"],
        "batches": ack["committed_batches"],
        "replayed": ack.get("replayed", False),
    }


def hedge(servers: list[Server], send: Callable[[Server, int], dict[str, Any]], round_: int):  # type: ignore[no-untyped-def]
    """Send round ``round_`` to every instance at once; their answers, in instance order."""
    start = threading.Barrier(len(servers))
    answers: list[dict[str, Any] | BaseException] = [RuntimeError("no answer")] * len(servers)

    def run(i: int) -> None:
        try:
            start.wait(30)
            answers[i] = send(servers[i], round_)
        except BaseException as exc:  # reported by the caller
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return answers


@pytest.fixture
def instances() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_a_hedged_key_commits_once_across_instances(
    postgres: PgServer,  # noqa: F811
    instances: list[Server],
    tmp_path: Path,
) -> None:
    """Each round's key, sent to two instances at the same moment (HTTP, then Flight):
    one copy of its rows in the lake, one answer committed and one replayed, both with
    the committed rows and batches."""
    conninfo = postgres.create_database("multi_lake_hedged")
    instances += start_instances(tmp_path, conninfo, 2)
    created = instances[0].post("hedged", ipc_bytes(rows_of(-1)))  # the race is on appends
    assert created.status_code == 200, created.text
    rounds: dict[int, list[dict[str, Any] | BaseException]] = {}
    for round_ in range(HTTP_ROUNDS):
        rounds[round_] = hedge(instances, post_keyed, round_)
    for round_ in range(HTTP_ROUNDS, HTTP_ROUNDS + FLIGHT_ROUNDS):
        rounds[round_] = hedge(instances, put_keyed, round_)
    for server in instances:
        server.assert_serving()
        server.stop()
    stored = dict(
        lake_query(
            f"postgres:{conninfo}",
            "SELECT round, count(*) FROM lake.hedged WHERE round >= 0 GROUP BY ALL",
        )
    )
    copies = {round_: stored.get(round_, 0) // ROWS for round_ in rounds}
    assert copies == dict.fromkeys(rounds, 1), f"copies of each round's rows: {copies}"
    for round_, answers in rounds.items():
        errors = [a for a in answers if isinstance(a, BaseException)]
        assert not errors, (round_, errors)
        flags = sorted(a["replayed"] for a in answers if isinstance(a, dict))
        assert flags == [False, True], (round_, answers)
        assert all(
            isinstance(a, dict) and (a["rows"], a["batches"]) == (ROWS, ROWS // CHUNK)
            for a in answers
        ), (round_, answers)
    assert lake_query(
        f"postgres:{conninfo}", "SELECT count(*), count(DISTINCT id) FROM lake.hedged"
    ) == [(ROWS * (len(rounds) + 1), ROWS * (len(rounds) + 1))]
