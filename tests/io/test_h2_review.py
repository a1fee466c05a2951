"""Regressions from the HTTP/2 transport review: each test replays one reported defect
against a real server process on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import struct
import time
from pathlib import Path
from typing import Any

import h2.settings
import httpx
import hyperframe.frame
import pyarrow as pa
import pyarrow.flight as flight
from h2.errors import ErrorCodes
from h2_client import SERVICE, H2Client, Response, do_get_request, flight_data, ipc_messages
from support import ARROW, Server, ipc_bytes
from test_h2_transport import (
    _assert_no_tracebacks,
    _client,
    _count,
    _ints,
    _pid,
    _rss_mb,
    _settled_rss,
    _timeout,
    _wait_in_flight,
)

from arrowport.protocol import NEED_DATA
from arrowport.protocol.events import BatchReceived, StreamEnded
from arrowport.protocol.flight import FlightDataDecoder
from arrowport.protocol.flight_pb import (
    DESCRIPTOR_PATH,
    Action,
    FlightDescriptor,
    PutResult,
    encode_flight_data_prefix,
)
from arrowport.protocol.grpc import frame

MiB = 1024 * 1024
GOAWAY = 0x7


class GoawayKeepingClient(H2Client):
    """The raw client, but it records GOAWAY frames and keeps them from h2.

    h2 closes its connection on the first GOAWAY it reads; a real client (gRPC)
    goes on with the calls it has in flight, and so can this one.
    """

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.goaways: list[hyperframe.frame.GoAwayFrame] = []
        self._partial = bytearray()

    def pump(self, timeout: float, *, auto_ack: bool = False) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        if not data:
            self.closed = True
            raise ConnectionError("the server closed the connection")
        self._partial += data
        passed = bytearray()
        while len(self._partial) >= 9:
            end = 9 + int.from_bytes(self._partial[:3], "big")
            if len(self._partial) < end:
                break
            raw = bytes(self._partial[:end])
            del self._partial[:end]
            if raw[3] == GOAWAY:
                goaway, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(raw[:9]))
                goaway.parse_body(memoryview(raw[9:]))
                assert isinstance(goaway, hyperframe.frame.GoAwayFrame)
                self.goaways.append(goaway)
            else:
                passed += raw
        for event in self.conn.receive_data(bytes(passed)):
            self.events.append(event)
            self._record(event, auto_ack)
        self.flush()
        return True


def _grpc_messages(data: bytes | bytearray) -> list[bytes]:
    """The payloads of the gRPC messages in ``data`` (uncompressed, complete)."""
    out = []
    pos = 0
    while pos < len(data):
        flag, length = struct.unpack_from(">BI", data, pos)
        assert flag == 0 and pos + 5 + length <= len(data), "truncated gRPC message"
        out.append(bytes(data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def _acks(response: Response) -> list[dict[str, Any]]:
    """The PutResults of a raw DoPut, decoded from JSON."""
    return [json.loads(PutResult.decode(m).app_metadata) for m in _grpc_messages(response.data)]


def _rows_of_do_get(data: bytes | bytearray) -> int:
    """The rows of a DoGet answer (FlightData messages), which must end cleanly."""
    decoder = FlightDataDecoder()
    decoder.receive_data(bytes(data))
    decoder.receive_data(b"")
    rows = 0
    while True:
        event = decoder.next_event()
        assert event is not NEED_DATA, "the DoGet answer stops mid-message"
        if isinstance(event, BatchReceived):
            rows += event.batch.num_rows
        elif isinstance(event, StreamEnded):
            return rows


def _ten_rows() -> tuple[tuple[pa.Buffer, None], tuple[pa.Buffer, pa.Buffer]]:
    """The schema and batch messages of a 10-row int64 batch."""
    (schema, _), (header, body) = ipc_messages(_ints(10, columns=1).to_batches()[0])
    assert body is not None
    return (schema, None), (header, body)


def _descriptor(name: str) -> FlightDescriptor:
    return FlightDescriptor(type=DESCRIPTOR_PATH, path=(name,))


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arrowport.yaml"
    path.write_text(text)
    return path


# -- exp13: empty DATA frames -----------------------------------------------------------


def test_empty_and_padding_only_data_frames_do_not_end_a_do_put(server: Server) -> None:
    """Empty or padding-only DATA frames mid-DoPut are not its end: every batch commits."""
    (schema, _), (header, body) = _ten_rows()
    raw = H2Client(server.url)
    try:
        answers = {}
        for table, pad in (("empty_frame", None), ("padded_frame", 17)):
            sid = raw.request(SERVICE + "DoPut")
            raw.send(sid, flight_data(schema, None, _descriptor(table)))
            raw.send(sid, flight_data(header, body))
            raw.conn.send_data(sid, b"", pad_length=pad)  # no payload, stream still open
            raw.flush()
            time.sleep(0.2)  # (the server once answered here, as if the upload had ended)
            for _ in range(3):
                raw.send(sid, flight_data(header, body))
            raw.send(sid, b"", end_stream=True)
            answers[table] = raw.finish(sid)
        # A unary call whose message follows an empty DATA frame.
        sid = raw.request(SERVICE + "DoAction")
        raw.conn.send_data(sid, b"")
        raw.flush()
        raw.send(sid, frame(Action(type="health").encode()), end_stream=True)
        health = raw.finish(sid)
    finally:
        raw.close()
    acked = {table: [a["committed_rows"] for a in _acks(r)] for table, r in answers.items()}
    assert acked == {"empty_frame": [40], "padded_frame": [40]}
    for response in answers.values():
        assert response.final_headers[b"grpc-status"] == b"0", response.final_headers
    assert health.final_headers[b"grpc-status"] == b"0", health.final_headers
    assert b'"ok"' in health.data
    _assert_no_tracebacks(server)
    counts = "SELECT (SELECT count(*) FROM empty_frame), (SELECT count(*) FROM padded_frame)"
    assert server.query(counts) == [(40, 40)]


# -- exp2 / exp1: SIGTERM with calls in flight ----------------------------------------


def test_sigterm_during_a_large_do_put_commit_still_acknowledges_it(server: Server) -> None:
    """SIGTERM while a DoPut's commit runs: the client gets its full ack, exit 0, rows kept."""
    rows = 3_000_000
    table = _ints(rows, columns=6)  # 144 MB: the commit outlasts the signal's delivery
    client = _client(server)
    writer, reader = client.do_put(
        flight.FlightDescriptor.for_path("big"), table.schema, options=_timeout()
    )
    writer.write_table(table, max_chunksize=122_880)
    writer.done_writing()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    ack = reader.read()
    writer.close()
    client.close()
    code = server.proc.wait(30)
    log = "".join(server.log)
    assert ack is not None, "no PutResult:\n" + log
    assert json.loads(ack.to_pybytes())["committed_rows"] == rows
    assert code == 0, log
    # The signal did land before the commit finished (else this tests nothing).
    sigterm = log.index("received SIGTERM")
    assert sigterm < log.index("DoPut big -> big"), log
    _assert_no_tracebacks(server)
    assert _count(server.db, "big") == rows


def test_sigterm_mid_upload_lets_the_call_finish_and_refuses_new_streams(server: Server) -> None:
    """SIGTERM mid-DoPut: GOAWAY(NO_ERROR), the upload completes, new streams REFUSED, exit 0."""
    (schema, _), (header, body) = _ten_rows()
    raw = GoawayKeepingClient(server.url)
    try:
        sid = raw.request(SERVICE + "DoPut")
        raw.send(sid, flight_data(schema, None, _descriptor("inflight")))
        raw.send(sid, flight_data(header, body))
        _wait_in_flight(server, 1)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        raw.wait(lambda: bool(raw.goaways), timeout=5)
        goaway = raw.goaways[0]
        assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, sid)
        # A stream opened after the GOAWAY is refused (safe for the client to retry elsewhere).
        late = raw.request(SERVICE + "DoAction")
        refused = raw.finish(late, timeout=5)
        assert refused.reset == ErrorCodes.REFUSED_STREAM, refused
        # The call in flight goes on to its end, within the graceful window.
        for _ in range(2):
            raw.send(sid, flight_data(header, body))
        raw.send(sid, b"", end_stream=True)
        response = raw.finish(sid)
        assert response.reset is None, response
        assert response.final_headers[b"grpc-status"] == b"0", response.final_headers
        assert [a["committed_rows"] for a in _acks(response)] == [30]
        code = server.proc.wait(10)
    finally:
        raw.close()
    log = "".join(server.log)
    assert code == 0, log
    assert "HTTP/2 protocol error from client" not in log, log
    assert all(g.error_code == ErrorCodes.NO_ERROR for g in raw.goaways), raw.goaways
    _assert_no_tracebacks(server)
    assert _count(server.db, "inflight") == 30


def test_sigterm_mid_upload_stock_client_still_gets_its_ack(server: Server) -> None:
    """SIGTERM mid-DoPut from pyarrow: the client finishes its upload and gets the full ack."""
    table = _ints(1000, columns=1)
    client = _client(server)
    writer, reader = client.do_put(
        flight.FlightDescriptor.for_path("inflight"), table.schema, options=_timeout(20)
    )
    writer.write_table(table)
    _wait_in_flight(server, 1)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for("received SIGTERM")
    time.sleep(0.3)  # the GOAWAY reaches the client
    writer.write_table(table)
    writer.done_writing()
    ack = reader.read()
    writer.close()
    client.close()
    code = server.proc.wait(10)
    log = "".join(server.log)
    assert ack is not None, "no PutResult:\n" + log
    assert json.loads(ack.to_pybytes())["committed_rows"] == 2000
    assert code == 0, log
    assert "HTTP/2 protocol error from client" not in log, log
    _assert_no_tracebacks(server)
    assert _count(server.db, "inflight") == 2000


# -- exp12: a client's GOAWAY -----------------------------------------------------------


def test_client_goaway_does_not_cut_off_a_do_get(server: Server) -> None:
    """A client GOAWAY mid-DoGet: the DoGet still delivers every row; no traceback."""
    rows = 500_000  # 16 batches: far more than the client's 64 KiB window
    assert server.post("big", ipc_bytes(_ints(rows, columns=1))).status_code == 200
    raw = H2Client(server.url)
    try:
        sid = raw.request(SERVICE + "DoGet")
        raw.send(sid, do_get_request("big"), end_stream=True)
        response = raw.responses[sid]
        raw.wait(lambda: len(response.data) >= 65_535, auto_ack=False)  # window used up
        # GOAWAY as a client shutting its channel down sends it (h2 would stop reading).
        goaway = hyperframe.frame.GoAwayFrame(0)
        goaway.last_stream_id = 0
        raw.sock.sendall(goaway.serialize())
        time.sleep(0.3)
        raw.acknowledge(sid, len(response.data))  # read on, and open the window again
        raw.finish(sid, timeout=20)
    finally:
        raw.close()
    assert response.reset is None, response
    assert response.final_headers[b"grpc-status"] == b"0", response.final_headers
    assert _rows_of_do_get(response.data) == rows
    time.sleep(0.3)
    server.assert_serving()
    _assert_no_tracebacks(server)


# -- exp5: receive buffers pinned by tiny payloads ------------------------------------


def test_tiny_data_payloads_do_not_pin_receive_buffers(server: Server) -> None:
    """1-byte DATA frames, each after 4 MiB of extension frames, x100: RSS grows < 100 MB."""
    pid = _pid(server)
    raw = H2Client(server.url)
    sock = raw.sock  # from here on the client writes and reads frames by hand
    try:
        sid = raw.request(SERVICE + "DoAction")
        raw.conn.send_data(sid, struct.pack(">BI", 0, 4 * MiB - 1))  # a 4 MiB Action is coming
        raw.flush()
        time.sleep(0.3)
        before = _settled_rss(pid)
        size = MiB - 1  # unknown frame type 0xEE: h2 reads and ignores it
        filler = size.to_bytes(3, "big") + bytes([0xEE, 0]) + bytes(4) + bytes(size)
        one = hyperframe.frame.DataFrame(sid, data=b"x").serialize()
        started = time.perf_counter()
        for i in range(100):
            sock.sendall(one + filler * 4)
            if i % 25 == 24:  # drain what the server sends (WINDOW_UPDATEs)
                sock.settimeout(0.05)
                try:
                    while sock.recv(1 << 20):
                        pass
                except (TimeoutError, BlockingIOError):
                    pass
                sock.settimeout(None)
        time.sleep(1)  # the server reads the last of it
        after = max(_rss_mb(pid), _settled_rss(pid, 2))
        elapsed = time.perf_counter() - started
        print(f"sent 400 MiB in {elapsed:.1f} s; RSS {before:.0f} -> {after:.0f} MB")
        assert after - before < 100, f"RSS grew {after - before:.0f} MB for 100 held bytes"
        # The server still serves, on other connections.
        server.assert_serving()
        client = _client(server)
        assert list(client.do_action(flight.Action("health", b""), options=_timeout(10)))
        client.close()
    finally:
        sock.close()
    _assert_no_tracebacks(server)


# -- exp3: batch mode and a client that reads no acks ---------------------------------


def test_batch_mode_client_reading_no_acks_releases_the_table(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Batch mode, client never reads acks: after body_idle_timeout the table is free again."""
    config = _config(
        tmp_path, "streams:\n  ev:\n    commit: batch\nlimits:\n  body_idle_timeout: 2\n"
    )
    server = server_factory(tmp_path, config=config).start()
    (schema, _), (header, body) = _ten_rows()
    raw = H2Client(server.url, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    try:
        sid = raw.request(SERVICE + "DoPut")
        raw.send(sid, flight_data(schema, None, _descriptor("ev")))
        for _ in range(3):
            raw.send(sid, flight_data(header, body))
        raw.pump(1.0)  # the answer's headers and 1 byte of the first ack; no WINDOW_UPDATE
        time.sleep(2.5)  # past body_idle_timeout
        started = time.monotonic()
        response = httpx.post(  # the table lock is free again: no waiting behind the DoPut
            f"{server.url}/ingest/ev",
            content=ipc_bytes(_ints(10, offset=100, columns=1)),
            headers={"Content-Type": ARROW},
            timeout=10,
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert elapsed < 10, f"the POST waited {elapsed:.1f} s for the table"
        committed = server.get("/streams").json()
    finally:
        raw.close()
    by_name = {s["name"]: s for s in committed["streams"]}
    print(f"POST answered in {elapsed:.2f} s; ev counters {by_name['ev']}")
    flight_rows = by_name["ev"]["rows"] - 10
    assert flight_rows in (10, 20, 30), "the first batch (committed before its ack) was not kept"
    server.wait_for("ack_timeout")
    _assert_no_tracebacks(server)
    assert server.query("SELECT count(*) FROM ev") == [(flight_rows + 10,)]


# -- exp6: a long error message -------------------------------------------------------


def test_long_error_message_reaches_a_stock_client_truncated(server: Server) -> None:
    """A ~40 KB error message reaches pyarrow as INVALID_ARGUMENT, truncated with an ellipsis."""
    wide = pa.table({f"column_number_{i}": [1] for i in range(3000)})
    client = _client(server)
    writer, reader = client.do_put(
        flight.FlightDescriptor.for_path("wide"), wide.schema, options=_timeout()
    )
    writer.write_table(wide)
    writer.done_writing()
    assert reader.read() is not None
    writer.close()
    ticket = flight.Ticket(json.dumps({"table": "wide", "columns": ["nope"]}).encode())
    try:
        client.do_get(ticket, options=_timeout(10)).read_all()
    except pa.ArrowInvalid as exc:
        error = str(exc)
    else:
        raise AssertionError("the DoGet of a missing column succeeded")
    finally:
        client.close()
    print(f"{len(error)} characters: {error[:120]}...")
    assert "invalid argument" in error.lower(), error
    assert "resource exhausted" not in error.lower(), error
    assert "has no column 'nope'" in error, error
    assert "…" in error and len(error) < 16_384, error
    server.assert_serving()


# -- exp7: a reset right after the descriptor ----------------------------------------


def test_do_put_reset_after_descriptor_is_a_disconnect(server: Server) -> None:
    """A DoPut reset after a descriptor-only first message counts as disconnected; no traceback."""
    raw = H2Client(server.url)
    try:
        sid = raw.request(SERVICE + "DoPut")
        raw.send(sid, frame(encode_flight_data_prefix(b"", None, 0, _descriptor("ev"))))
        _wait_in_flight(server, 1)  # routed, now waiting for the schema
        raw.conn.reset_stream(sid, ErrorCodes.CANCEL)
        raw.flush()
        deadline = time.monotonic() + 10
        while (report := server.get("/streams").json())["in_flight"] != 0:
            assert time.monotonic() < deadline, "the reset DoPut never ended"
            time.sleep(0.05)
    finally:
        raw.close()
    assert report["refusals"] == {"disconnected": 1}, report["refusals"]
    server.wait_for("DoPut ev: client went away")
    log = "".join(server.log)
    assert "failed with a bug" not in log, log
    _assert_no_tracebacks(server)
    server.assert_serving()


# -- a DoPut that never sends its first message ----------------------------------------


def test_silent_do_put_gets_deadline_exceeded(server_factory: type[Server], tmp_path: Path) -> None:
    """A DoPut that sends no FlightData is ended with DEADLINE_EXCEEDED after body_idle_timeout."""
    server = server_factory(tmp_path, config=_config(tmp_path, "limits:\n  body_idle_timeout: 1\n"))
    server.start()
    raw = H2Client(server.url)
    try:
        sid = raw.request(SERVICE + "DoPut")
        started = time.monotonic()
        try:
            response = raw.finish(sid, timeout=8)
        except TimeoutError:
            raise AssertionError("the silent DoPut was never ended") from None
        elapsed = time.monotonic() - started
    finally:
        raw.close()
    print(f"ended after {elapsed:.2f} s: {response.final_headers}")
    assert response.final_headers[b"grpc-status"] == b"4", response.final_headers  # DEADLINE
    assert 0.8 < elapsed < 5, elapsed
    server.assert_serving()
    _assert_no_tracebacks(server)
