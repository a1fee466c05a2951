"""Server-wide limits: concurrent uploads and the in-flight memory budget (429)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest
from flight_helpers import flight_client, put_table
from support import Server, ipc_bytes, read_response, start_upload


def _stream(batches: int, rows: int) -> tuple[bytes, list[int]]:
    """An IPC stream of ``batches`` batches of one int64 column, and each message's end offset."""
    batch = pa.record_batch({"id": pa.array(range(rows), pa.int64())})
    sink = pa.BufferOutputStream()
    ends = []
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        ends.append(sink.tell())
        for _ in range(batches):
            writer.write_batch(batch)
            ends.append(sink.tell())
    return sink.getvalue().to_pybytes(), ends


def _wait_in_flight(server: Server, count: int) -> None:
    deadline = time.monotonic() + 10
    while server.get("/streams").json()["in_flight"] != count:
        assert time.monotonic() < deadline, "uploads did not start"
        time.sleep(0.05)


def test_uploads_over_the_concurrency_limit_get_429_then_succeed(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """With max_concurrent_requests: 2, a third upload is refused at once with 429 and
    Retry-After (Flight: RESOURCE_EXHAUSTED); once one ends, uploads are accepted again."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {max_concurrent_requests: 2}\n")
    server = server_factory(tmp_path, config=config).start()
    data, ends = _stream(2, 1000)
    slow = [start_upload(server.url, f"slow{i}", len(data), data[: ends[1]]) for i in range(2)]
    _wait_in_flight(server, 2)

    refused = server.post("other", ipc_bytes(pa.table({"id": [1]})))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "too_many_requests"
    assert "limit of 2 uploads" in refused.json()["detail"]
    with pytest.raises(pa.ArrowInvalid, match="resource exhausted"):
        put_table(flight_client(server), "other", pa.table({"id": [1]}))

    slow[0].sendall(data[ends[1] :])
    assert b" 200 " in read_response(slow[0]).split(b"\r\n")[0]
    _wait_in_flight(server, 1)
    accepted = server.post("other", ipc_bytes(pa.table({"id": [1]})))
    assert accepted.status_code == 200
    slow[1].sendall(data[ends[1] :])
    assert b" 200 " in read_response(slow[1]).split(b"\r\n")[0]
    for sock in slow:
        sock.close()
    assert server.get("/streams").json()["refusals"]["limit"] == 2
    assert server.query("SELECT count(*) FROM other") == [(1,)]
    assert server.query("SELECT count(*) FROM slow0") == [(2000,)]


def test_memory_budget_refuses_new_uploads_while_spent(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """max_inflight_bytes: 1MiB. An upload whose writer holds a 1.6 MB batch (waiting for more
    rows to fill an INSERT group) spends the budget: a new upload gets 429 with Retry-After;
    once it commits, the budget is given back and uploads are accepted again."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {max_inflight_bytes: 1MiB}\n")
    server = server_factory(tmp_path, config=config).start()
    batch = pa.record_batch(
        {"a": pa.array(range(100_000), pa.int64()), "b": pa.array(range(100_000), pa.int64())}
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
        first = sink.tell()
        writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    holder = start_upload(server.url, "t", len(data), data[:first])
    _wait_in_flight(server, 1)
    time.sleep(0.5)
    refused = server.post("other", ipc_bytes(pa.table({"id": [1]})))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "memory budget (1048576 bytes)" in refused.json()["detail"]
    holder.sendall(data[first:])
    assert b" 200 " in read_response(holder).split(b"\r\n")[0]
    holder.close()
    after = server.post("other", ipc_bytes(pa.table({"id": [1]})))
    assert after.status_code == 200  # the budget was given back
    assert server.query("SELECT count(*), sum(a) FROM t") == [(200_000, 2 * sum(range(100_000)))]


def test_a_flight_call_over_the_budget_waits_and_lands(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A DoPut of many batches larger than the whole budget still lands, batch by batch."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {max_inflight_bytes: 1MiB}\n")
    server = server_factory(tmp_path, config=config).start()
    table = pa.table({"id": pa.array(range(2_000_000), pa.int64())})  # 16 MB
    acks = put_table(flight_client(server), "big", table, max_chunksize=250_000)
    assert acks[0]["committed_rows"] == 2_000_000
    assert server.query("SELECT count(*) FROM big") == [(2_000_000,)]
