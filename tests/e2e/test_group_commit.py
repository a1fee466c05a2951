"""Group commit end to end: small concurrent requests to one table share one commit.

Each test runs a real server with ``group_commit.max_wait`` long enough that requests
released together by a barrier land in one group, checks from ``/metrics`` that they did
(fewer groups than requests), and checks the tables exactly: every acknowledged row once,
nothing of a refused request.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from flight_helpers import flight_client, put_table
from lake_support import lake_query
from support import ARROW, Server, ipc_bytes

WAIT = 0.4  # group_commit.max_wait: requests released together fall into one group


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "arrowport.yaml"
    path.write_text(f"group_commit:\n  max_wait: {WAIT}\n" + extra)
    return path


def _rows(start: int, n: int = 1) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "name": pa.array([f"n{i}" for i in range(start, start + n)]),
        }
    )


def _together(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run ``jobs`` at once, one thread each; their results (or exceptions), in order."""
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait(30)
        try:
            results[i] = jobs[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a request did not finish"
    return results


def _post(server: Server, stream: str, table: pa.Table, key: str | None = None) -> httpx.Response:
    headers = {"Content-Type": ARROW}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(
        f"{server.url}/ingest/{stream}", content=ipc_bytes(table), headers=headers, timeout=60
    )


def _groups(server: Server) -> tuple[int, int]:
    """(group commits, requests in them) from /metrics."""
    text = server.get("/metrics").text
    count = re.search(r"^arrowport_group_commit_requests_count (\S+)$", text, re.M)
    total = re.search(r"^arrowport_group_commit_requests_sum (\S+)$", text, re.M)
    assert count and total, text
    return int(float(count.group(1))), int(float(total.group(1)))


def _ids(server: Server, table: str) -> list[int]:
    return [r[0] for r in server.query(f"SELECT id FROM {table} ORDER BY id")]  # type: ignore[misc]


def test_concurrent_small_requests_share_commits_and_every_row_lands_once(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = server_factory(tmp_path, config=_config(tmp_path)).start()
    assert _post(server, "t", _rows(0)).status_code == 200  # creates the table
    answers = _together([lambda i=i: _post(server, "t", _rows(10 * i, 3)) for i in range(1, 17)])
    assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers]
    assert all(a.json()["rows"] == 3 for a in answers)
    groups, requests = _groups(server)
    assert requests == 17 and groups < requests  # some requests shared a commit
    expected = [0] + [10 * i + k for i in range(1, 17) for k in range(3)]
    assert _ids(server, "t") == expected


def test_a_bad_request_in_a_group_fails_alone(server_factory: type[Server], tmp_path: Path) -> None:
    """One request whose schema does not fit, one whose rows break the table's primary key
    (the INSERT fails: the group is retried request by request): both refused, the rest
    committed exactly."""
    db = tmp_path / "test.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR)")
        con.execute("INSERT INTO t VALUES (1000, 'taken')")
    server = server_factory(tmp_path, config=_config(tmp_path), db=db).start()
    wrong = pa.table({"id": pa.array(["not a number"]), "name": pa.array(["x"])})
    jobs: list[Callable[[], Any]] = [lambda i=i: _post(server, "t", _rows(i)) for i in range(8)]
    jobs.append(lambda: _post(server, "t", wrong))
    jobs.append(lambda: _post(server, "t", _rows(1000)))  # the primary key is taken
    answers = _together(jobs)
    assert [a.status_code for a in answers[:8]] == [200] * 8
    assert answers[8].status_code == 422 and answers[8].json()["error"] == "schema_mismatch"
    assert answers[9].status_code == 422, answers[9].text
    assert "constraint" in answers[9].json()["detail"].lower()
    groups, requests = _groups(server)
    assert groups < requests
    assert _ids(server, "t") == [*range(8), 1000]


def test_keys_in_a_group_write_once_and_replay(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Two keys in one group, each sent twice at once, and a key committed before: one copy
    per key, the duplicate answered as a replay of the same rows."""
    server = server_factory(tmp_path, config=_config(tmp_path)).start()
    assert _post(server, "t", _rows(0, 2), key="before").status_code == 200
    jobs: list[Callable[[], Any]] = [
        lambda: _post(server, "t", _rows(10, 2), key="k1"),
        lambda: _post(server, "t", _rows(10, 2), key="k1"),
        lambda: _post(server, "t", _rows(20, 3), key="k2"),
        lambda: _post(server, "t", _rows(20, 3), key="k2"),
        lambda: _post(server, "t", _rows(0, 2), key="before"),
        lambda: _post(server, "t", _rows(30, 1)),
    ]
    answers = _together(jobs)
    bodies = [a.json() for a in answers]
    assert [a.status_code for a in answers] == [200] * 6, bodies
    for first, second in ((0, 1), (2, 3)):
        pair = sorted((bodies[first]["replayed"], bodies[second]["replayed"]))
        assert pair == [False, True]
        assert bodies[first]["rows"] == bodies[second]["rows"]
    assert bodies[4]["replayed"] is True and bodies[4]["rows"] == 2
    assert _groups(server)[0] < 7
    assert _ids(server, "t") == [0, 1, 10, 11, 20, 21, 22, 30]


def test_flight_puts_share_commits(server_factory: type[Server], tmp_path: Path) -> None:
    server = server_factory(tmp_path, config=_config(tmp_path)).start()
    put_table(flight_client(server), "t", _rows(0))

    def one(i: int) -> dict[str, Any]:
        client = flight_client(server)
        try:
            return put_table(client, "t", _rows(10 * i, 2))[-1]
        finally:
            client.close()

    answers = _together([lambda i=i: one(i) for i in range(1, 9)])
    assert all(isinstance(a, dict) and a["committed_rows"] == 2 for a in answers), answers
    groups, requests = _groups(server)
    assert requests == 9 and groups < requests
    assert _ids(server, "t") == [0] + [10 * i + k for i in range(1, 9) for k in range(2)]


def test_a_large_request_streams_alone_beside_a_group(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A request over group_commit.max_request_bytes takes the table as before; the small
    ones around it are grouped; every row lands once."""
    config = _config(tmp_path, "  max_request_bytes: 64KiB\n")
    server = server_factory(tmp_path, config=config).start()
    assert _post(server, "t", _rows(0)).status_code == 200
    big = _rows(100_000, 20_000)  # ~ 400 KB decoded
    jobs: list[Callable[[], Any]] = [lambda i=i: _post(server, "t", _rows(i)) for i in range(1, 9)]
    jobs.append(lambda: _post(server, "t", big))
    answers = _together(jobs)
    assert [a.status_code for a in answers] == [200] * 9
    groups, requests = _groups(server)
    assert requests == 9 and groups < requests  # the large one was not grouped
    assert _ids(server, "t") == [*range(9), *range(100_000, 120_000)]


@pytest.mark.parametrize("backend", ["ducklake", "delta"])
def test_groups_on_ducklake_and_delta(
    server_factory: type[Server], tmp_path: Path, backend: str
) -> None:
    if backend == "ducklake":
        extra = (
            "storage_backend: ducklake\nducklake:\n"
            f"  catalog: {tmp_path / 'cat.ducklake'}\n  data_path: {tmp_path / 'lake'}\n"
        )
    else:
        extra = f"storage_backend: delta\ndelta_config:\n  table_path: {tmp_path / 'delta'}\n"
    path = tmp_path / "arrowport.yaml"
    path.write_text(extra + f"group_commit:\n  max_wait: {WAIT}\n")
    server = server_factory(tmp_path, config=path).start()
    assert _post(server, "t", _rows(0), key="first").status_code == 200
    jobs: list[Callable[[], Any]] = [
        lambda i=i: _post(server, "t", _rows(10 * i, 2)) for i in range(1, 9)
    ]
    jobs += [
        lambda: _post(server, "t", _rows(100, 2), key="k"),
        lambda: _post(server, "t", _rows(100, 2), key="k"),
        lambda: _post(server, "t", _rows(0), key="first"),
    ]
    answers = _together(jobs)
    bodies = [a.json() for a in answers]
    assert [a.status_code for a in answers] == [200] * 11, bodies
    assert sorted((bodies[8]["replayed"], bodies[9]["replayed"])) == [False, True]
    assert bodies[10]["replayed"] is True
    groups, requests = _groups(server)
    assert requests == 12 and groups < requests
    server.stop()
    expected = [0] + [10 * i + k for i in range(1, 9) for k in range(2)] + [100, 101]
    if backend == "ducklake":
        sql = "SELECT id FROM lake.t ORDER BY id"
        rows = lake_query(tmp_path / "cat.ducklake", sql, tmp_path / "lake")
        assert [r[0] for r in rows] == expected
    else:
        dt = DeltaTable(str(tmp_path / "delta" / "t"))
        assert sorted(dt.to_pyarrow_table().column("id").to_pylist()) == expected
        assert dt.version() + 1 <= groups  # at most one Delta version per group
