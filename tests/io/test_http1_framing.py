"""HTTP/1.1 framing over raw sockets to a real server: smuggling shapes and Expect: 100-continue."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ARROW, Server, ipc_bytes, sample_table

TOKEN = "framing-token-0123456789abcdef"
BODY = ipc_bytes(sample_table(10))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("framing")
    config = workdir / "arrowport.yaml"
    config.write_text(f"auth:\n  tokens:\n    - {TOKEN}\n")
    started = Server(workdir, config=config).start()
    yield started
    started.stop()


def _connect(server: Server) -> socket.socket:
    url = httpx.URL(server.url)
    sock = socket.create_connection((url.host, url.port))
    sock.settimeout(10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes (a timeout fails the test)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _read_one(sock: socket.socket) -> bytes:
    """One answer with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _head(method: str, path: str, *lines: str) -> bytes:
    """A request head; a line "HTTP/1.0" among ``lines`` makes it an HTTP/1.0 request."""
    version = "HTTP/1.0" if "HTTP/1.0" in lines else "HTTP/1.1"
    fields = "".join(f"{x}\r\n" for x in lines if x != "HTTP/1.0")
    return f"{method} {path} {version}\r\nHost: x\r\n{fields}".encode()


def _status_and_json(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


AUTH = f"Authorization: Bearer {TOKEN}"
CT = f"Content-Type: {ARROW}"
SMUGGLING = {
    "cl_and_te": ["Content-Length: 5", "Transfer-Encoding: chunked"],
    "te_and_cl": ["Transfer-Encoding: chunked", "Content-Length: 5"],
    "duplicate_cl_equal": ["Content-Length: 5", "Content-Length: 5"],
    "duplicate_cl_conflicting": ["Content-Length: 5", "Content-Length: 6"],
    "cl_list": ["Content-Length: 5, 5"],
    "cl_sign": ["Content-Length: +5"],
    "te_chunked_identity": ["Transfer-Encoding: chunked, identity"],
    "te_xchunked": ["Transfer-Encoding: xchunked"],
    "te_twice": ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
    "te_obs_fold": ["Transfer-Encoding:", " chunked"],
    "obs_fold_elsewhere": ["X-Note: a", "\tb", "Transfer-Encoding: chunked"],
    "te_space_before_colon": ["Transfer-Encoding : chunked"],
    "te_in_http_1_0": ["Transfer-Encoding: chunked", "HTTP/1.0"],
}


@pytest.mark.parametrize("lines", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_framing_is_400_json_and_closed(server: Server, lines: list[str]) -> None:
    """Each ambiguous framing gets 400 with {error, detail} and the connection is closed."""
    with _connect(server) as sock:
        # a smuggled second request follows: it must never be answered
        sock.sendall(
            _head("POST", "/ingest/smuggled", AUTH, CT, *lines, "")
            + b"5\r\nhello\r\n0\r\n\r\n"
            + _head("GET", "/health", "")
        )
        answer = _read_until_closed(sock)
    status, body = _status_and_json(answer)
    assert status == 400 and body["error"] == "bad_request" and body["detail"], answer
    assert answer.count(b"HTTP/1.1 ") == 1 and b"connection: close" in answer.lower()


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n"],
    ids=["bad_header_line", "bad_request_line"],
)
def test_h11_refusals_get_a_json_body_too(server: Server, head: bytes) -> None:
    """Requests h11 itself refuses get 400 with {error, detail} as well, then the close."""
    with _connect(server) as sock:
        sock.sendall(head)
        answer = _read_until_closed(sock)
    status, body = _status_and_json(answer)
    assert status == 400 and body["error"] == "bad_request" and body["detail"], answer


def test_gzip_then_chunked_is_400_and_closed(server: Server) -> None:
    """A transfer coding before chunked that Arrowport does not implement: 400 JSON, closed."""
    with _connect(server) as sock:
        sock.sendall(_head("POST", "/ingest/gz", AUTH, CT, "Transfer-Encoding: gzip, chunked", ""))
        answer = _read_until_closed(sock)
    status, body = _status_and_json(answer)
    assert status == 400 and body["error"] == "bad_request", answer
    assert "only Transfer-Encoding: chunked" in body["detail"], answer


def test_plain_chunked_and_content_length_still_work(server: Server) -> None:
    """Unambiguous framing (chunked alone, Content-Length alone, Chunked in any case) is served."""
    with _connect(server) as sock:
        chunk = f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n"
        sock.sendall(_head("POST", "/ingest/plain", AUTH, CT, "Transfer-Encoding: Chunked", ""))
        sock.sendall(chunk)
        first = _read_one(sock)
        sock.sendall(_head("POST", "/ingest/plain", AUTH, CT, f"Content-Length: {len(BODY)}", ""))
        sock.sendall(BODY)
        second = _read_one(sock)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), (first, second)


def _expect(server: Server, *lines: str, path: str = "/ingest/expect") -> tuple[bytes, bool]:
    """Send a head with Expect: 100-continue; return the first answer and whether it is final."""
    sock = _connect(server)
    head = _head("POST", path, *lines, f"Content-Length: {len(BODY)}", "Expect: 100-continue", "")
    sock.sendall(head)
    first = sock.recv(65536)
    if first.startswith(b"HTTP/1.1 100"):
        sock.sendall(BODY)
        rest = first.partition(b"\r\n\r\n")[2] or _read_one(sock)
        sock.close()
        return rest, False
    rest = _read_until_closed(sock)
    sock.close()
    return first + rest, True


def test_expect_continue_is_answered_after_the_checks_pass(server: Server) -> None:
    """A valid upload with Expect gets 100 Continue, then its 200 once the body is sent."""
    answer, final_first = _expect(server, AUTH, CT)
    assert not final_first and answer.startswith(b"HTTP/1.1 200"), answer


@pytest.mark.parametrize(
    ("lines", "path", "status"),
    [
        ((CT,), "/ingest/expect", 401),
        ((AUTH, CT), "/nowhere", 404),
        ((AUTH, "Content-Type: text/csv"), "/ingest/expect", 415),
        ((AUTH, CT), "/ingest/bad%20name", 400),
    ],
    ids=["no_token", "no_route", "wrong_type", "bad_stream_name"],
)
def test_expect_continue_refused_gets_final_status_without_100(
    server: Server, lines: tuple[str, ...], path: str, status: int
) -> None:
    """A refused request with Expect gets its final status, no 100, and the connection closes."""
    answer, final_first = _expect(server, *lines, path=path)
    assert final_first and b"HTTP/1.1 100" not in answer, answer
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
    assert server.get("/health").status_code == 200
