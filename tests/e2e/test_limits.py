"""Server-wide limits: concurrent uploads and the in-flight memory budget (429)."""

from __future__ import annotations

import contextlib
import select
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table
from support import Server, ipc_bytes, read_response, sample_table, start_upload


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


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def test_trickling_uploads_are_cut_off_and_free_their_tables(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Slowloris: 30 uploads trickling 640 B/s, never idle, get 408 body_too_slow once their
    2 s of credit is spent. A client above the rate lands. Nothing trickled is stored, the
    tables are free, and the server's RSS barely moves."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        "limits: {body_idle_timeout: 2, min_body_rate: 4KiB, max_concurrent_requests: 100}\n"
    )
    server = server_factory(tmp_path, config=config).start()
    assert server.proc is not None
    body = ipc_bytes(sample_table(3000))
    assert len(body) > 30_000  # far more than 2 s of trickle
    rss_before = _rss_mb(server.proc.pid)

    fast: dict[str, int] = {}

    def send_fast() -> None:  # 1 kB every 50 ms: 20 kB/s, for longer than the credit
        sock = start_upload(server.url, "fast", len(body))
        for i in range(0, len(body), 1000):
            sock.sendall(body[i : i + 1000])
            time.sleep(0.05)
        fast["status"] = int(read_response(sock, 30).split(b" ")[1])
        sock.close()

    fast_thread = threading.Thread(target=send_fast)
    fast_thread.start()
    trickling = {f"t{i}": start_upload(server.url, f"t{i}", len(body)) for i in range(30)}
    started = time.monotonic()
    answered: dict[str, float] = {}
    offset = 0
    while len(answered) < len(trickling) and time.monotonic() - started < 20:
        for name, sock in trickling.items():
            if name in answered:
                continue
            if select.select([sock], [], [], 0)[0]:
                answered[name] = time.monotonic() - started
                continue
            with contextlib.suppress(OSError):
                sock.sendall(body[offset : offset + 64])
        offset += 64
        time.sleep(0.1)
    assert offset < len(body), "the trickle finished its body; make the body bigger"
    assert sorted(answered) == sorted(trickling), f"not cut off: {set(trickling) - set(answered)}"
    assert all(2.0 < t < 8.0 for t in answered.values()), answered  # past the idle timeout
    for sock in trickling.values():
        answer = read_response(sock, 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"body_too_slow" in answer and b"min_body_rate" in answer, answer
        sock.close()
    fast_thread.join(30)
    assert fast == {"status": 200}
    assert _rss_mb(server.proc.pid) - rss_before < 64
    assert server.post("t0", ipc_bytes(sample_table(5))).status_code == 200  # the table is free
    assert server.tables() == {"fast", "t0"}
    assert server.query("SELECT count(*) FROM t0") == [(5,)]


def test_a_trickling_flight_put_is_cut_off(server_factory: type[Server], tmp_path: Path) -> None:
    """A DoPut sending one tiny batch every 100 ms (a few kB/s) against 64 KiB/s ends with
    DEADLINE_EXCEEDED naming min_body_rate; nothing is committed and the table is free."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {body_idle_timeout: 2, min_body_rate: 64KiB}\n")
    server = server_factory(tmp_path, config=config).start()
    client = flight_client(server)
    batch = pa.record_batch({"id": pa.array([1], pa.int64())})
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("slow"), batch.schema)
    started = time.monotonic()
    with pytest.raises(fl.FlightError) as caught:
        while time.monotonic() - started < 20:
            writer.write_batch(batch)
            time.sleep(0.1)
        writer.done_writing()
        reader.read()
    elapsed = time.monotonic() - started
    with contextlib.suppress(fl.FlightError):
        writer.close()
    assert 2.0 < elapsed < 10.0, elapsed
    assert isinstance(caught.value, fl.FlightTimedOutError), repr(caught.value)
    assert "min_body_rate" in str(caught.value), str(caught.value)
    acks = put_table(client, "slow", pa.table({"id": [7, 8]}))
    assert acks[0]["committed_rows"] == 2  # the table is free
    assert server.query("SELECT count(*), sum(id) FROM slow") == [(2, 15)]
