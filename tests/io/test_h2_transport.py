"""The HTTP/2 transport under Flight: windows, backpressure, no head-of-line blocking,
early answers, and shutdown, each against a real server process."""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import hyperframe.frame
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from h2_client import SERVICE, H2Client, do_get_request, flight_data, ipc_messages
from support import Server, ipc_bytes, read_response, sample_table, start_upload

from arrowport.protocol.flight_pb import DESCRIPTOR_PATH, Action, FlightDescriptor
from arrowport.protocol.grpc import frame

KiB = 1024
MiB = 1024 * KiB
Codes = h2.settings.SettingCodes


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _pid(server: Server) -> int:
    assert server.proc is not None
    return server.proc.pid


def _client(server: Server) -> flight.FlightClient:
    return flight.FlightClient(server.url.replace("http://", "grpc+tcp://"))


def _timeout(seconds: float = 60) -> flight.FlightCallOptions:
    """Call options that turn a hang into a failure."""
    return flight.FlightCallOptions(timeout=seconds)


def _ints(rows: int, *, offset: int = 0, columns: int = 4) -> pa.Table:
    """``columns`` int64 columns of ``rows`` rows: 8 bytes per cell, cheap to build."""
    base = np.arange(offset, offset + rows, dtype=np.int64)
    return pa.table({f"c{i}": base + i for i in range(columns)})


def _put(client: flight.FlightClient, stream: str, table: pa.Table, **kw: Any) -> dict[str, Any]:
    """DoPut ``table`` to ``stream``; the server's PutResult (the commit ack), as JSON."""
    descriptor = flight.FlightDescriptor.for_path(stream)
    writer, reader = client.do_put(descriptor, table.schema, options=_timeout())
    writer.write_table(table, **kw)
    writer.done_writing()
    ack = reader.read()
    writer.close()
    assert ack is not None, "no PutResult"
    result: dict[str, Any] = json.loads(ack.to_pybytes())
    return result


def _stream_with_ends(table: pa.Table, chunk: int) -> tuple[bytes, list[int]]:
    """An IPC stream of ``table`` and the end offset of each message (schema first)."""
    sink = pa.BufferOutputStream()
    ends = []
    with pa.ipc.new_stream(sink, table.schema) as writer:
        ends.append(sink.tell())
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write_batch(batch)
            ends.append(sink.tell())
    return sink.getvalue().to_pybytes(), ends


def _count(db: Path, table: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _assert_no_tracebacks(server: Server) -> None:
    assert not any("Traceback" in line for line in server.log), "".join(server.log)


def _wait_in_flight(server: Server, count: int, timeout: float = 10) -> None:
    """Wait until ``count`` ingest requests are in progress (GET /streams)."""
    deadline = time.monotonic() + timeout
    while server.get("/streams").json()["in_flight"] != count:
        assert time.monotonic() < deadline, f"in_flight never reached {count}"
        time.sleep(0.05)


def _settled_rss(pid: int, timeout: float = 5.0) -> float:
    """RSS once it stops falling (memory freed by an earlier request returns lazily)."""
    samples = [_rss_mb(pid)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        samples.append(_rss_mb(pid))
        if len(samples) >= 3 and max(samples[-3:]) - min(samples[-3:]) < 4:
            break
    return samples[-1]


def _peak_rss_over(pid: int, seconds: float) -> float:
    peak = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.1)
    return peak


# -- 1. windows and frame sizes for bulk data ---------------------------------------


def test_server_advertises_bulk_windows_and_frames(server: Server) -> None:
    """The server advertises >= 1 MiB stream windows, >= 256 KiB frames, a raised conn window."""
    client = H2Client(server.url)
    try:
        settings: dict[int, int] = {}
        connection_window = 65_535
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (settings and connection_window > 65_535):
            client.pump(deadline - time.monotonic())
            for event in client.events:
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings.update(
                        {code: s.new_value for code, s in event.changed_settings.items()}
                    )
            connection_window = 65_535 + sum(
                e.delta
                for e in client.events
                if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0
            )
        print(f"settings {settings}, connection window {connection_window}")
        stream_window = settings.get(Codes.INITIAL_WINDOW_SIZE, 65_535)
        assert stream_window >= 1 * MiB
        assert settings.get(Codes.MAX_FRAME_SIZE, 16_384) >= 256 * KiB
        assert connection_window >= max(stream_window, 1 * MiB)
        assert client.conn.outbound_flow_control_window == connection_window  # h2 agrees
    finally:
        client.close()


def test_bulk_do_put_lands_exactly(server: Server) -> None:
    """A 64 MB DoPut through pyarrow's FlightClient commits every row, exactly once."""
    table = _ints(2_000_000)  # 4 x 8 B x 2M = 64 MB
    client = _client(server)
    started = time.perf_counter()
    ack = _put(client, "bulk", table, max_chunksize=250_000)
    elapsed = time.perf_counter() - started
    client.close()
    print(f"64 MB DoPut in {elapsed:.2f} s ({table.nbytes / MiB / elapsed:.0f} MiB/s)")
    assert ack["committed_rows"] == 2_000_000
    assert server.query("SELECT count(*), sum(c0), sum(c3) FROM bulk") == [
        (2_000_000, sum(range(2_000_000)), sum(range(3, 2_000_003)))
    ]


# -- 2. send-side backpressure --------------------------------------------------------

BIG_ROWS = 10_000_000  # 4 int64 columns: 320 MB of Arrow data
BIG_BYTES = BIG_ROWS * 4 * 8


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database whose table ``big`` holds BIG_ROWS rows (ingested once, over HTTP/1.1)."""
    workdir = tmp_path_factory.mktemp("big")
    server = Server(workdir).start()
    try:
        body = ipc_bytes(_ints(BIG_ROWS), max_chunksize=1_000_000)
        started = time.perf_counter()
        response = server.post("big", body)
        print(f"ingested {len(body) / MiB:.0f} MiB in {time.perf_counter() - started:.1f} s")
        assert response.status_code == 200, response.text
    finally:
        assert server.stop() == 0
    return server.db


@pytest.fixture
def big_server(server_factory: type[Server], tmp_path: Path, big_db: Path) -> Server:
    """A fresh server process on ``big_db``: its RSS holds nothing of earlier requests."""
    server = server_factory(tmp_path, db=big_db).start()
    # Warm up the read path, so the baseline includes DuckDB's and pyarrow's fixed costs.
    client = _client(server)
    ticket = flight.Ticket(b'{"table": "big", "limit": 500000}')
    assert client.do_get(ticket, options=_timeout()).read_all().num_rows == 500_000
    client.close()
    return server


def test_paused_flight_reader_holds_server_memory_flat(big_server: Server) -> None:
    """A DoGet reader paused after one batch grows server RSS by far less than the table."""
    pid = _pid(big_server)
    before = _settled_rss(pid)
    client = _client(big_server)
    reader = client.do_get(flight.Ticket(b"big"), options=_timeout())
    rows = reader.read_chunk().data.num_rows
    peak = _peak_rss_over(pid, 5.0)  # the client reads nothing more meanwhile
    grown = peak - before
    for chunk in reader:
        rows += chunk.data.num_rows
    client.close()
    print(f"RSS before {before:.0f} MB, peak while paused {peak:.0f} MB ({grown:+.0f} MB)")
    assert rows == BIG_ROWS
    assert grown < BIG_BYTES / MiB / 3, f"RSS grew {grown:.0f} MB for a paused reader"
    big_server.assert_serving()


def test_unread_do_get_is_held_by_tcp_not_buffered(big_server: Server) -> None:
    """A client with huge windows that never reads keeps RSS flat; other clients get answers."""
    pid = _pid(big_server)
    before = _settled_rss(pid)
    # Open windows wide, so only TCP (not HTTP/2 flow control) can hold the server back.
    raw = H2Client(
        big_server.url,
        settings={Codes.INITIAL_WINDOW_SIZE: 2**31 - 1, Codes.MAX_FRAME_SIZE: 2**24 - 1},
        connection_window=2**31 - 1,
        rcvbuf=64 * KiB,
    )
    try:
        sid = raw.request(SERVICE + "DoGet")
        raw.send(sid, do_get_request("big"), end_stream=True)
        peak = _peak_rss_over(pid, 3.0)
        started = time.perf_counter()
        health = httpx.get(f"{big_server.url}/health", timeout=10)
        health_s = time.perf_counter() - started
        assert health.status_code == 200 and health.json()["status"] == "ok"
        other = _client(big_server)  # and Flight on another connection
        action = flight.Action("health", b"")
        assert list(other.do_action(action, options=_timeout(10)))
        other.close()
        peak = max(peak, _rss_mb(pid))
        grown = peak - before
        print(
            f"RSS before {before:.0f} MB, peak {peak:.0f} MB ({grown:+.0f} MB); "
            f"GET /health meanwhile in {health_s * 1000:.1f} ms"
        )
        assert grown < BIG_BYTES / MiB / 3, f"RSS grew {grown:.0f} MB for a client not reading"
        # The DoGet really was streaming: its answer is there once the client reads.
        response = raw.responses[sid]
        raw.wait(lambda: len(response.data) > 8 * MiB, timeout=10, auto_ack=False)
        assert response.status == 200 and response.reset is None
    finally:
        raw.close()
    big_server.assert_serving()


# -- 3. no head-of-line blocking ------------------------------------------------------


def test_stalled_do_put_does_not_delay_other_calls_on_its_connection(server: Server) -> None:
    """With DoPuts stalled on a busy table, a DoAction on their connection is answered at once."""
    held, ends = _stream_with_ends(_ints(100_000), 50_000)
    holder = start_upload(server.url, "hol", len(held), held[: ends[1]])  # schema + 1 batch
    _wait_in_flight(server, 1)
    time.sleep(0.5)  # its schema has arrived: the upload holds table hol's lock

    client = _client(server)
    tables = [_ints(400_000, offset=1_000_000 * (i + 1)) for i in range(3)]  # 12.8 MB each
    outcomes: list[dict[str, Any]] = [{} for _ in tables]

    def put(table: pa.Table, outcome: dict[str, Any]) -> None:
        try:
            outcome["ack"] = _put(client, "hol", table, max_chunksize=100_000)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    # Three DoPuts, each sending more than a stream window, all stalled on table hol.
    putters = [
        threading.Thread(target=put, args=(t, o), daemon=True)
        for t, o in zip(tables, outcomes, strict=True)
    ]
    for putter in putters:
        putter.start()
    time.sleep(1.0)
    assert all(p.is_alive() for p in putters), f"DoPut not held back by the busy table: {outcomes}"

    latencies = []
    for _ in range(5):
        started = time.perf_counter()
        results = list(client.do_action(flight.Action("health", b""), options=_timeout(5)))
        latencies.append(time.perf_counter() - started)
        assert json.loads(results[0].body.to_pybytes())["status"] == "ok"
    print(f"do_action(health) during a stalled DoPut: {[f'{s * 1000:.1f} ms' for s in latencies]}")
    assert all(p.is_alive() for p in putters), f"a DoPut finished early: {outcomes}"
    # Head-of-line blocking would hold every call until the table is free (the 5 s
    # deadline); the median leaves room for a scheduling hiccup on a busy machine.
    assert sorted(latencies)[len(latencies) // 2] < 0.5

    holder.sendall(held[ends[1] :])  # the upload completes and frees the table
    assert b" 200 " in read_response(holder, 30).split(b"\r\n")[0]
    holder.close()
    for putter in putters:
        putter.join(60)
        assert not putter.is_alive()
    client.close()
    for outcome in outcomes:
        assert "error" not in outcome, outcome["error"]
        assert outcome["ack"]["committed_rows"] == 400_000
    assert server.query("SELECT count(*) FROM hol") == [(1_300_000,)]


# -- 4. h2's per-frame debug formatting is off the hot path -------------------------


def test_data_frame_repr_does_not_serialize_the_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    """After importing h2conn, repr of an 8 MB DATA frame is short and never serializes its body."""
    import arrowport.io.h2conn  # noqa: F401  (installs the cheap repr)

    # h2 still formats every received frame eagerly, so the patch is still needed.
    assert "repr(frame)" in inspect.getsource(h2.connection.H2Connection._receive_frame)
    calls = []
    serialize_body = hyperframe.frame.DataFrame.serialize_body

    def counting(self: hyperframe.frame.DataFrame) -> bytes:
        calls.append(len(self.data))
        return serialize_body(self)

    monkeypatch.setattr(hyperframe.frame.DataFrame, "serialize_body", counting)
    frame = hyperframe.frame.DataFrame(1, data=b"x" * (8 << 20))
    # The repr hyperframe would use: it serializes (copies) the body and hex-encodes it.
    stock = hyperframe.frame.Frame._body_repr(frame)
    assert stock.startswith("<hex:") and calls == [8 << 20]
    calls.clear()
    text = repr(frame)
    assert len(text) < 200 and "hex" not in text, text
    assert calls == []
    # And on h2's receive path itself: DATA frames arrive without a serialize_body call.
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1, [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "x")]
    )
    for _ in range(4):  # default frame size is 16 KiB
        client.send_data(1, b"y" * 15_000)
    client.end_stream(1)
    wire = client.data_to_send()
    calls.clear()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(wire)
    received = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert sum(len(e.data) for e in received) == 60_000
    assert calls == []


# -- 5. HTTP/1.1 alongside HTTP/2; non-gRPC and unknown requests ----------------------


def test_http1_upload_works_while_a_flight_connection_is_busy(server: Server) -> None:
    """An HTTP/1.1 upload on the same port commits while a Flight DoPut is mid-stream."""
    client = _client(server)
    part = _ints(200_000)
    descriptor = flight.FlightDescriptor.for_path("via_flight")
    writer, reader = client.do_put(descriptor, part.schema, options=_timeout())
    writer.write_table(part)  # mid-stream: no done_writing yet
    response = server.post("via_http", ipc_bytes(sample_table(5000)))
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 5000
    server.assert_serving()
    writer.write_table(_ints(100_000, offset=200_000))
    writer.done_writing()
    ack = reader.read()
    writer.close()
    client.close()
    assert ack is not None and json.loads(ack.to_pybytes())["committed_rows"] == 300_000
    assert server.query("SELECT count(*) FROM via_http") == [(5000,)]
    assert _count(server.db, "via_flight") == 300_000


def test_http2_request_that_is_not_grpc_gets_a_clear_answer(server: Server) -> None:
    """Non-gRPC HTTP/2 (prior knowledge) requests get 505 and a JSON reason, not a hang or reset."""
    raw = H2Client(server.url)
    try:
        sid = raw.request("/health", method="GET", grpc=False, end_stream=True)
        response = raw.finish(sid)
        assert response.reset is None
        assert response.status == 505
        assert dict(response.headers or [])[b"content-type"] == b"application/json"
        body = json.loads(response.data)
        assert body["error"] == "unsupported_protocol" and "HTTP/1.1" in body["detail"]
        # An HTTP/2 upload gets the same answer, and its body is drained, not reset.
        sid = raw.request("/ingest/h2", grpc=False)
        raw.send(sid, ipc_bytes(_ints(300_000)), end_stream=True)  # 9.6 MB: > a stream window
        upload = raw.finish(sid)
        assert upload.reset is None and upload.status == 505
        assert json.loads(upload.data)["error"] == "unsupported_protocol"
    finally:
        raw.close()
    server.assert_serving()
    assert "h2" not in server.tables()


def test_unknown_grpc_method_is_unimplemented(server: Server) -> None:
    """A gRPC call to an unknown method ends with grpc-status 12 and a message, not a reset."""
    raw = H2Client(server.url)
    try:
        for path in (SERVICE + "NoSuchMethod", "/some.other.Service/Call"):
            sid = raw.request(path)
            raw.send(sid, b"\x00\x00\x00\x00\x00", end_stream=True)  # one empty message
            response = raw.finish(sid)
            assert response.reset is None and response.status == 200
            final = response.final_headers
            assert final[b"grpc-status"] == b"12", final
            assert b"unknown method" in final[b"grpc-message"]
    finally:
        raw.close()
    server.assert_serving()


# -- 6. early answers never crash or reset ---------------------------------------------


def test_early_error_is_answered_without_reset_while_client_keeps_uploading(
    server: Server,
) -> None:
    """A DoPut refused at its first message gets status 3, no RST_STREAM, and its 20 MB drained."""
    raw = H2Client(server.url)
    try:
        sid = raw.request(SERVICE + "DoPut")
        (schema, _), (header, body) = ipc_messages(_ints(32_768).to_batches()[0])  # 1 MiB body
        descriptor = FlightDescriptor(type=DESCRIPTOR_PATH, path=("bad name!",))
        raw.send(sid, flight_data(schema, None, descriptor))
        message = flight_data(header, body)
        raw.send(sid, message)
        response = raw.responses[sid]
        raw.wait(lambda: response.ended or response.reset is not None)  # answered early
        total = 0
        while total < 20 * MiB:  # more than the stream window: WINDOW_UPDATEs must keep coming
            raw.send(sid, message)
            total += len(message)
        raw.send(sid, b"", end_stream=True)
        raw.pump(0.5)  # whatever the server says to the end of the upload
        bad = (h2.events.StreamReset, h2.events.ConnectionTerminated)
        resets = [e for e in raw.events if isinstance(e, bad)]
        assert resets == [], resets
        assert response.reset is None and response.status == 200
        final = response.final_headers
        assert final[b"grpc-status"] == b"3", final
        assert b"bad name!" in final[b"grpc-message"], final
        # The same connection still serves calls.
        sid = raw.request(SERVICE + "DoAction")
        raw.send(sid, frame(Action(type="health").encode()), end_stream=True)
        health = raw.finish(sid)
        assert health.final_headers[b"grpc-status"] == b"0" and b'"ok"' in health.data
    finally:
        raw.close()
    server.assert_serving()
    _assert_no_tracebacks(server)


# -- 7. shutdown and vanishing clients ------------------------------------------------


def test_sigterm_with_an_idle_flight_connection_exits_cleanly(server: Server) -> None:
    """SIGTERM with an idle FlightClient connected: exit in seconds, code 0, the DB intact."""
    client = _client(server)
    assert _put(client, "kept", _ints(50_000))["committed_rows"] == 50_000
    started = time.monotonic()
    code = server.stop(signal.SIGTERM)
    elapsed = time.monotonic() - started
    client.close()
    print(f"stopped in {elapsed:.2f} s with code {code}")
    assert code == 0, "".join(server.log)
    assert elapsed < 5, f"shutdown took {elapsed:.1f} s"
    assert any("stopped; database closed" in line for line in server.log)
    assert _count(server.db, "kept") == 50_000


KILLED_CLIENT = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa, pyarrow.flight as flight
    client = flight.FlightClient(sys.argv[1])
    table = pa.table({"c0": pa.array(range(100_000), pa.int64())})
    writer, _ = client.do_put(flight.FlightDescriptor.for_path("killed"), table.schema)
    writer.write_table(table)
    print("sent", flush=True)
    time.sleep(60)
    """
)


def test_client_killed_mid_do_put_leaves_the_server_serving(server: Server) -> None:
    """A Flight client killed mid-DoPut gets a rollback; the server keeps serving that table."""
    url = server.url.replace("http://", "grpc+tcp://")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(10)
    server.wait_for("DoPut killed: client went away", timeout=10)
    server.assert_serving()
    client = _client(server)
    assert _put(client, "killed", _ints(10, columns=1))["committed_rows"] == 10
    client.close()
    _assert_no_tracebacks(server)
    assert server.query("SELECT count(*) FROM killed") == [(10,)]


def test_sigterm_with_an_early_answered_open_stream_exits_promptly(server: Server) -> None:
    """SIGTERM exits in seconds when the only open stream was already answered (early error)."""
    raw = H2Client(server.url)
    try:
        sid = raw.request(SERVICE + "DoPut")
        (schema, _), _ = ipc_messages(_ints(10).to_batches()[0])
        descriptor = FlightDescriptor(type=DESCRIPTOR_PATH, path=("bad name!",))
        raw.send(sid, flight_data(schema, None, descriptor))  # and the client never ends it
        assert raw.finish(sid).final_headers[b"grpc-status"] == b"3"
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = server.proc.wait(8)
        except subprocess.TimeoutExpired:
            code = None
            server.proc.kill()
        elapsed = time.monotonic() - started
    finally:
        raw.close()
    print(f"stopped in {elapsed:.2f} s with code {code}")
    assert code == 0, f"no clean exit within 8 s of SIGTERM (code {code}):\n" + "".join(server.log)
