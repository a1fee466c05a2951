"""HTTP/1.1 framing and gRPC conformance that attackers and real clients rely on (issue 17):
Content-Length with Transfer-Encoding, Expect: 100-continue before the checks, grpc-timeout,
DoGet of wide batches under grpcio's default 4 MiB receive limit, grpc-accept-encoding on a
refused compressed message.

grpcio is a test-only client here (never imported by arrowport/).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
from attack_h2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    SERVICE,
    RawH2,
    doput_messages,
    flight_data_ipc,
    frame,
    grpc_message,
    header_block,
    header_blocks,
)
from attack_support import (
    address,
    health_seconds,
    start_server,
    written,
)
from support import ARROW, Server, ipc_bytes

TOKEN = "attack-test-token-0123456789abcdef"


def _raw_http(server: Server, request: bytes, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send ``request`` on a new connection; what came back within ``wait`` s, and whether
    the server closed the connection."""
    sock = socket.create_connection(address(server))
    sock.sendall(request)
    sock.settimeout(0.2)
    got, closed = b"", False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            closed = True
            break
        got += chunk
    sock.close()
    return got, closed


def test_content_length_with_chunked_is_refused_and_closed(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A request with both Content-Length and Transfer-Encoding: chunked gets 400 and the
    connection closed (RFC 9112 6.1); nothing is written."""
    server = start_server(server_factory, tmp_path)
    body = ipc_bytes(pa.table({"id": pa.array([1, 2, 3], pa.int64())}))
    request = (
        f"POST /ingest/smuggled HTTP/1.1\r\nHost: x\r\nContent-Type: {ARROW}\r\n"
        f"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    got, closed = _raw_http(server, request)
    status = got.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"answer {status!r}; closed {closed}")
    assert status.startswith("HTTP/1.1 400"), f"answer {status!r}; closed {closed}"
    assert closed, f"answer {status!r}; the connection was kept open"
    assert written(server, "smuggled") == 0


def test_expect_continue_only_after_auth_route_and_content_type(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Expect: 100-continue is never answered 100 Continue for a request that will be
    refused: no token (401), an unknown route (404), a wrong content type (415)."""
    server = start_server(server_factory, tmp_path, {"auth": {"tokens": [TOKEN]}})
    bearer = f"Authorization: Bearer {TOKEN}\r\n"
    cases = {
        401: ("/ingest/expect", ARROW, ""),
        404: ("/nowhere/expect", ARROW, bearer),
        415: ("/ingest/expect", "text/plain", bearer),
    }
    answers = {}
    for expected, (path, content_type, auth) in cases.items():
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{auth}"
            "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        got, _ = _raw_http(server, request, wait=1.5)
        answers[expected] = got.split(b"\r\n", 1)[0].decode(errors="replace")
    print(answers)
    for expected, first in answers.items():
        assert first.startswith(f"HTTP/1.1 {expected}"), answers
    assert written(server, "expect") == 0


def test_grpc_timeout_is_honoured_and_nothing_committed(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A DoPut with grpc-timeout 500m that is still sending after its deadline gets
    DEADLINE_EXCEEDED (4), and ending it later commits nothing."""
    server = start_server(server_factory, tmp_path)
    table = pa.table({"id": pa.array(range(100), pa.int64())})
    messages = doput_messages(table, "late")
    attacker = RawH2(server)
    attacker.send(
        frame(HEADERS, END_HEADERS, 1, header_block("DoPut", [("grpc-timeout", "500m")]))
        + b"".join(frame(DATA, 0, 1, m) for m in messages)
    )
    time.sleep(1.5)
    attacker.send(frame(DATA, END_STREAM, 1))  # too late
    deadline = time.monotonic() + 3
    blocks: list[dict[str, str]] = []
    while time.monotonic() < deadline and not any("grpc-status" in b for b in blocks):
        time.sleep(0.05)
        blocks = header_blocks(attacker).get(1, [])
    attacker.close()
    statuses = [b["grpc-status"] for b in blocks if "grpc-status" in b]
    print(f"stream answered {blocks}")
    assert statuses == ["4"], f"stream answered {blocks}"
    assert written(server, "late") == 0


def test_grpcio_client_past_its_deadline_commits_nothing(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A grpcio DoPut with a 0.5 s deadline whose client stalls gets DEADLINE_EXCEEDED and
    commits nothing."""
    server = start_server(server_factory, tmp_path)
    messages = [
        m[5:] for m in doput_messages(pa.table({"id": pa.array([1, 2], pa.int64())}), "slow")
    ]

    def requests() -> Iterator[bytes]:
        yield from messages
        time.sleep(1.5)

    host, port = address(server)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.stream_stream(SERVICE + "DoPut")
        try:
            list(call(requests(), timeout=0.5))
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
    print(f"grpcio DoPut ended {code}")
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert health_seconds(server) <= 1.0
    assert written(server, "slow") == 0


def test_grpcio_reads_a_table_of_16_mib_batches_with_default_limits(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A grpcio client with the default 4 MiB receive limit reads a table stored in 16 MiB
    batches (DoGet slices messages to flight.max_message_size)."""
    server = start_server(server_factory, tmp_path)
    rows = 40_000
    wide = pa.table(
        {"id": pa.array(range(rows), pa.int64()), "blob": pa.array([b"w" * 512] * rows)}
    )
    assert server.post("wide", ipc_bytes(wide)).status_code == 200
    ticket = b"\x0a\x04wide"  # Ticket{ticket: "wide"}
    host, port = address(server)
    payloads: list[bytes] = []
    try:
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            payloads.extend(channel.unary_stream(SERVICE + "DoGet")(ticket, timeout=30))
        error = ""
    except grpc.RpcError as exc:
        error = f"{exc.code()}: {exc.details()}"
    largest = max((len(p) for p in payloads), default=0)
    print(f"{len(payloads)} messages, largest {largest:,} bytes; error {error!r}")
    assert not error, f"{len(payloads)} messages read, then {error}"
    stream = b"".join(flight_data_ipc(p) for p in payloads) + b"\xff\xff\xff\xff\x00\x00\x00\x00"
    assert pa.ipc.open_stream(stream).read_all().num_rows == rows
    assert largest <= 4 * 1024 * 1024


def test_refused_compressed_message_names_identity(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A compressed gRPC message is refused UNIMPLEMENTED (12) with grpc-accept-encoding
    naming identity, so the client can retry uncompressed."""
    server = start_server(server_factory, tmp_path)
    attacker = RawH2(server)
    attacker.send(
        frame(HEADERS, END_HEADERS, 1, header_block("DoAction", [("grpc-encoding", "gzip")]))
        + frame(DATA, END_STREAM, 1, grpc_message(b"\x1f\x8b" + b"\x00" * 18, flag=1))
    )
    deadline = time.monotonic() + 3
    blocks: list[dict[str, str]] = []
    while time.monotonic() < deadline and not any("grpc-status" in b for b in blocks):
        time.sleep(0.05)
        blocks = header_blocks(attacker).get(1, [])
    attacker.close()
    merged = {k: v for b in blocks for k, v in b.items()}
    print(f"answered {blocks}")
    assert merged.get("grpc-status") == "12", f"answered {blocks}"
    accepted = [e.strip() for e in merged.get("grpc-accept-encoding", "").split(",")]
    assert "identity" in accepted, f"answered {blocks}"
