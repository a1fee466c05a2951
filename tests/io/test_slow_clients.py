"""Slow, stalled and vanishing clients: nothing half-done is committed, nobody starves."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.flight as fl
from support import ARROW, Server, ipc_bytes, read_response, sample_table, start_upload


def test_client_hanging_up_after_its_body_gets_no_commit(server: Server) -> None:
    """A client that sends its whole body and hangs up at once gets nothing committed."""
    big = pa.table({f"c{i}": pa.array(range(3_000_000), pa.int64()) for i in range(6)})
    body = ipc_bytes(big, max_chunksize=250_000)
    sock = start_upload(server.url, "gone", len(body), body)
    sock.close()
    server.wait_for("client disconnected; rolled back", timeout=30)
    server.assert_serving()
    assert not any("Traceback" in line for line in server.log), "".join(server.log)
    assert "gone" not in server.tables()


def test_many_stalled_uploads_do_not_starve_other_tables(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Seventy uploads stalled mid-stream (one table each) leave other tables writable.

    More than pyarrow's I/O pool (8), trio's default thread limit (40) and the
    writer limiter (64): a stalled upload must hold no thread at all. (The
    concurrent-upload limit is raised above 70 for this.)
    """
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {max_concurrent_requests: 100}\n")
    server = server_factory(tmp_path, config=config).start()
    data = ipc_bytes(sample_table(2000), max_chunksize=500)
    stalled = [
        start_upload(server.url, f"stall{i}", len(data), data[: len(data) // 2]) for i in range(70)
    ]
    time.sleep(1)
    response = httpx.post(
        f"{server.url}/ingest/free",
        content=ipc_bytes(sample_table(10)),
        headers={"Content-Type": ARROW},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    for sock in stalled:
        sock.close()
    server.assert_serving()
    assert server.tables() == {"free"}


def test_idle_client_is_cut_off_and_releases_the_table(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A client idle past limits.body_idle_timeout gets 408, nothing lands, the table is free."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits:\n  body_idle_timeout: 1\n")
    server = server_factory(tmp_path, config=config).start()
    assert server.post("t", ipc_bytes(sample_table(5))).status_code == 200
    data = ipc_bytes(sample_table(100, offset=10))
    idle = start_upload(server.url, "t", len(data) + 1, data)  # one byte promised, never sent
    started = time.monotonic()
    answer = read_response(idle, 30)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer and b"nothing was committed" in answer
    assert time.monotonic() - started < 5  # answered at once, no drain of an idle client
    idle.close()
    assert server.post("t", ipc_bytes(sample_table(3, offset=500))).status_code == 200
    assert server.query("SELECT count(*) FROM t") == [(8,)]


def test_unsupported_arrow_types_are_422_naming_the_column(server: Server) -> None:
    """Arrow types DuckDB cannot store are refused with 422 naming the column, not 5xx
    (float16 is stored as float since the type plans; docs/types.md)."""
    for arrow_type in (pa.dense_union([pa.field("a", pa.int64())]), pa.decimal256(40, 2)):
        table = pa.table({"ok": pa.array([1]), "odd": pa.nulls(1, arrow_type)})
        response = server.post("types", ipc_bytes(table))
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "unsupported_type"
        assert "odd" in response.json()["detail"] and "ok (" not in response.json()["detail"]
    server.assert_serving()
    assert "types" not in server.tables()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes) -> tuple[bool, bytes]:
    """Trickle ``trickle`` a byte every 100 ms; (closed by the server in time, bytes received)."""
    sock.setblocking(False)
    received = b""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            data = None
        except ConnectionResetError:
            return True, received
        if data == b"":
            return True, received
        received += data or b""
        with contextlib.suppress(OSError):
            sock.send(trickle[i % len(trickle) : i % len(trickle) + 1])
        i += 1
        time.sleep(0.1)
    return False, received


def test_connections_that_never_complete_a_request_are_closed(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Slowloris on the connection: an HTTP/2 client trickling a frame that never completes a
    request gets a GOAWAY and is closed after limits.connection_idle_timeout; so is an HTTP/1.1
    client trickling its request head. Bytes alone do not keep a connection open."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {connection_idle_timeout: 1}\n")
    server = server_factory(tmp_path, config=config).start()
    u = httpx.URL(server.url)

    h2 = socket.create_connection((u.host, u.port))
    h2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    started = time.monotonic()
    closed, received = _closed_within(h2, 10, b"\x00\x40\x00\x01\x04\x00\x00\x00\x01" + b"a" * 64)
    assert closed, "an HTTP/2 connection trickling a HEADERS frame was not closed"
    assert 1.0 <= time.monotonic() - started < 5
    assert b"\x07\x00\x00\x00\x00\x00" in received  # a GOAWAY frame (type 7, no flags, stream 0)
    h2.close()

    h1 = socket.create_connection((u.host, u.port))
    h1.sendall(b"POST /ingest/t HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed, _ = _closed_within(h1, 10, b"X-Slow: y\r\n")
    assert closed, "an HTTP/1.1 connection trickling its request head was not closed"
    assert time.monotonic() - started < 5
    h1.close()
    server.assert_serving()


def test_flight_clients_reconnect_after_an_idle_close(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A pyarrow FlightClient idle past the timeout is closed, and its next calls just work."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits: {connection_idle_timeout: 1}\n")
    server = server_factory(tmp_path, config=config).start()
    client = fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64())})
    for _ in range(3):
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("idle"), table.schema)
        writer.write_table(table)
        writer.done_writing()
        assert reader.read() is not None  # the ack
        writer.close()
        time.sleep(2.5)  # the server closes the idle connection meanwhile
    assert len(client.list_actions()) > 0
    assert server.query("SELECT count(*) FROM idle") == [(9,)]
