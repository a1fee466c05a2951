"""gRPC clients other than pyarrow's (grpcio, a raw h2 client) against a real server.

DoGet messages fit the standard 4 MiB receive limit, ``grpc-timeout`` is honoured
(DEADLINE_EXCEEDED, nothing committed, and never for committed data), and a
compressed message is refused with ``grpc-accept-encoding: identity``.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator

import grpc
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table

from arrowport.protocol.flight_pb import DESCRIPTOR_PATH, Action, FlightDescriptor, Ticket
from arrowport.protocol.grpc import frame
from tests.io.h2_client import SERVICE, H2Client, Response, flight_data, ipc_messages
from tests.support import Server, ipc_bytes, read_response, start_upload

MiB = 1024 * 1024
WIDE_ROWS = 40_000  # 512-byte strings: DoGet reads 32,768-row batches of about 17 MiB
GRPC_DEFAULT_RECEIVE = 4 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("grpc_clients")
    started = Server(workdir).start()
    wide = pa.table({"id": pa.array(range(WIDE_ROWS)), "s": pa.array(["x" * 512] * WIDE_ROWS)})
    assert started.post("wide", ipc_bytes(wide)).status_code == 200
    huge = pa.table({"id": pa.array([1]), "s": pa.array(["y" * (5 * MiB)])})
    assert started.post("huge_row", ipc_bytes(huge)).status_code == 200
    yield started
    started.stop()


def _port(server: Server) -> int:
    port = httpx.URL(server.url).port
    assert port is not None
    return port


def _channel(server: Server) -> grpc.Channel:
    """A grpcio channel with its default limits (4 MiB per received message)."""
    return grpc.insecure_channel(f"127.0.0.1:{_port(server)}")


def _identity(data: bytes) -> bytes:
    return data


# -- FlightData as raw bytes (grpcio knows no Flight) ---------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _ipc_message(flight_data_bytes: bytes) -> pa.ipc.Message:
    """The IPC message in one FlightData (its data_header and data_body)."""
    fields: dict[int, bytes] = {}
    at = 0
    while at < len(flight_data_bytes):
        key, at = _varint(flight_data_bytes, at)
        length, at = _varint(flight_data_bytes, at)
        fields[key >> 3] = flight_data_bytes[at : at + length]
        at += length
    header, body = fields.get(2, b""), fields.get(1000, b"")
    padded = header + b"\0" * (-len(header) % 8)
    return pa.ipc.read_message(b"\xff\xff\xff\xff" + struct.pack("<i", len(padded)) + padded + body)


def _grpcio_do_get(server: Server, ticket: bytes) -> tuple[pa.Table, int]:
    """DoGet with grpcio's defaults; the table and the largest message's size."""
    with _channel(server) as channel:
        call = channel.unary_stream(
            SERVICE + "DoGet", request_serializer=_identity, response_deserializer=_identity
        )
        messages = list(call(Ticket(ticket=ticket).encode(), timeout=60))
    schema = pa.ipc.read_schema(_ipc_message(messages[0]))
    batches = [pa.ipc.read_record_batch(_ipc_message(m), schema) for m in messages[1:]]
    return pa.Table.from_batches(batches, schema), max(len(m) for m in messages)


def test_grpcio_reads_a_table_of_wide_batches_under_its_default_limit(server: Server) -> None:
    """DoGet of ~17 MiB stored batches reaches grpcio (4 MiB limit) whole, in fitting slices."""
    table, largest = _grpcio_do_get(server, b"wide")
    assert table.num_rows == WIDE_ROWS and table["id"].to_pylist() == list(range(WIDE_ROWS))
    assert GRPC_DEFAULT_RECEIVE // 2 < largest <= GRPC_DEFAULT_RECEIVE


def test_a_row_larger_than_the_message_limit_is_refused_by_name(server: Server) -> None:
    """A single row over flight.max_message_size: RESOURCE_EXHAUSTED naming the limit."""
    client = flight_client(server)
    with pytest.raises(pa.ArrowInvalid) as raised:  # how pyarrow reports RESOURCE_EXHAUSTED
        client.do_get(fl.Ticket(b"huge_row")).read_all()
    message = str(raised.value)
    assert "RESOURCE_EXHAUSTED" in message and "flight.max_message_size (4194304 bytes)" in message


# -- deadlines ------------------------------------------------------------------


def _rows(server: Server, table: str) -> int:
    """The rows of ``table`` as DoGet sees them (0 if it does not exist)."""
    client = flight_client(server)
    try:
        return int(client.do_get(fl.Ticket(table.encode())).read_all().num_rows)
    except pa.ArrowKeyError as exc:  # NOT_FOUND
        assert "does not exist" in str(exc)
        return 0


def _put_messages(stream: str, batch: pa.RecordBatch) -> list[bytes]:
    """DoPut's FlightData messages (gRPC-framed): descriptor + schema, then the batch."""
    (schema_header, _), (batch_header, body) = ipc_messages(batch)
    desc = FlightDescriptor(type=DESCRIPTOR_PATH, path=(stream,))
    return [flight_data(schema_header, None, desc), flight_data(batch_header, body)]


def _slow_requests(stream: str, pause: float) -> Iterator[bytes]:
    batch = pa.record_batch({"id": pa.array([1, 2, 3])})
    first, second = _put_messages(stream, batch)
    yield first[5:]  # grpcio frames each message itself
    time.sleep(pause)
    yield second[5:]


def test_grpcio_doput_outliving_its_deadline_commits_nothing(server: Server) -> None:
    """A grpcio DoPut streaming slower than its 0.5 s deadline: DEADLINE_EXCEEDED, no rows."""
    with _channel(server) as channel:
        call = channel.stream_stream(
            SERVICE + "DoPut", request_serializer=_identity, response_deserializer=_identity
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(call(_slow_requests("grpcio_slow", 1.5), timeout=0.5))
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.5)  # the rest would have arrived by now
    assert _rows(server, "grpcio_slow") == 0


def test_pyarrow_doput_with_a_timeout_commits_nothing(server: Server) -> None:
    """pyarrow's FlightCallOptions(timeout) on a DoPut that stalls: timed out, no rows."""
    client = flight_client(server)
    batch = pa.record_batch({"id": pa.array([1, 2, 3])})
    options = fl.FlightCallOptions(timeout=0.5)
    writer, reader = client.do_put(
        fl.FlightDescriptor.for_path("pyarrow_slow"), batch.schema, options=options
    )
    with pytest.raises(fl.FlightError):
        writer.write_batch(batch)
        time.sleep(1.5)
        writer.done_writing()
        reader.read()
    with contextlib.suppress(fl.FlightError):
        writer.close()
    assert _rows(server, "pyarrow_slow") == 0
    assert (
        put_table(
            client,
            "pyarrow_fast",
            pa.Table.from_batches([batch]),
            options=fl.FlightCallOptions(timeout=30),
        )[-1]["committed_rows"]
        == 3
    )


def _timed_put(client: H2Client, stream: str, timeout: bytes) -> int:
    """Send a whole DoPut with ``grpc-timeout: timeout`` (its stream ended); the stream id."""
    sid: int = client.conn.get_next_available_stream_id()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1"),
        (b":path", (SERVICE + "DoPut").encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", timeout),
    ]
    client.conn.send_headers(sid, headers)
    client.responses[sid] = Response()
    client.flush()
    client.send(
        sid, b"".join(_put_messages(stream, pa.record_batch({"id": [7, 8]}))), end_stream=True
    )
    return sid


def test_deadline_passing_before_the_commit_is_answered_and_rolled_back(server: Server) -> None:
    """A whole DoPut whose commit waits past its grpc-timeout: DEADLINE_EXCEEDED, no rows."""
    # 2.4 MB: past group_commit.max_request_bytes, so it streams and holds table "locked"
    batch = pa.table({"id": pa.array(range(300_000), pa.int64())})
    data = ipc_bytes(batch, max_chunksize=30_000)
    holder = start_upload(server.url, "locked", len(data), data[:-8])
    client = H2Client(server.url)
    try:
        time.sleep(0.3)
        sid = _timed_put(client, "locked", b"800m")
        time.sleep(1.2)  # past the deadline, still waiting for the table
        holder.sendall(data[-8:])
        assert read_response(holder, 30).startswith(b"HTTP/1.1 200")
        answer = client.finish(sid, 30)
    finally:
        holder.close()
        client.close()
    final = answer.final_headers
    assert final[b"grpc-status"] == b"4", final  # DEADLINE_EXCEEDED
    assert b"nothing was committed" in final.get(b"grpc-message", b"")
    assert _rows(server, "locked") == 300_000  # the holder's rows only


def test_doput_within_its_deadline_commits_and_says_ok(server: Server) -> None:
    """A DoPut done well within its grpc-timeout commits and ends OK."""
    client = H2Client(server.url)
    try:
        answer = client.finish(_timed_put(client, "in_time", b"30S"), 30)
    finally:
        client.close()
    assert answer.final_headers[b"grpc-status"] == b"0"
    assert _rows(server, "in_time") == 2


@pytest.mark.parametrize("value", [b"", b"5", b"S", b"123456789S", b"1s", b"-1S", b"1.5S"])
def test_malformed_grpc_timeout_is_invalid_argument(server: Server, value: bytes) -> None:
    """A grpc-timeout that is not 1-8 digits and a unit: INVALID_ARGUMENT, nothing written."""
    client = H2Client(server.url)
    try:
        answer = client.finish(_timed_put(client, "bad_timeout", value or b" "), 30)
    finally:
        client.close()
    assert answer.final_headers[b"grpc-status"] == b"3", answer.final_headers
    assert b"grpc-timeout" in answer.final_headers[b"grpc-message"]


def test_doget_stalled_past_its_deadline_ends_deadline_exceeded(server: Server) -> None:
    """A DoGet whose reader stops reading past grpc-timeout ends with DEADLINE_EXCEEDED."""
    client = H2Client(server.url)  # it never sends WINDOW_UPDATE: the server stalls
    try:
        sid: int = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1"),
                (b":path", (SERVICE + "DoGet").encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"grpc-timeout", b"700m"),
            ],
        )
        client.responses[sid] = Response()
        client.flush()
        client.send(sid, frame(Ticket(ticket=b"wide").encode()), end_stream=True)
        started = time.monotonic()
        response = client.responses[sid]
        client.wait(
            lambda: response.trailers is not None or response.reset is not None, 10, auto_ack=False
        )
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert response.trailers is not None and dict(response.trailers)[b"grpc-status"] == b"4"
    assert 0.5 < elapsed < 5


# -- compression ----------------------------------------------------------------


def test_compressed_message_is_unimplemented_with_accept_encoding(server: Server) -> None:
    """A compressed message gets UNIMPLEMENTED and grpc-accept-encoding: identity."""
    client = H2Client(server.url)
    try:
        sid = client.request(SERVICE + "DoAction")
        payload = Action(type="health", body=b"").encode()
        client.send(sid, b"\x01" + struct.pack(">I", len(payload)) + payload, end_stream=True)
        answer = client.finish(sid)
    finally:
        client.close()
    final = answer.final_headers
    assert final[b"grpc-status"] == b"12", final
    assert dict(answer.headers or [])[b"grpc-accept-encoding"] == b"identity"


def test_grpcio_gzip_call_is_refused_unimplemented(server: Server) -> None:
    """grpcio with gzip compression on: UNIMPLEMENTED, and the server keeps serving."""
    with _channel(server) as channel:
        call = channel.unary_stream(
            SERVICE + "DoAction", request_serializer=_identity, response_deserializer=_identity
        )
        with pytest.raises(grpc.RpcError) as raised:
            # (grpc core sends a message uncompressed unless compressing makes it smaller)
            big = Action(type="health", body=b"\0" * 65536).encode()
            list(call(big, compression=grpc.Compression.Gzip, timeout=30))
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    server.assert_serving()
