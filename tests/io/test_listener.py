"""The one-port listener: HTTP/2 only through the preface, never through hypercorn."""

from __future__ import annotations

import socket
import subprocess

import httpx
from support import Server


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_h2c_upgrade_is_ignored_and_answered_in_http1(server: Server) -> None:
    """A request asking to upgrade to h2c gets a plain HTTP/1.1 answer, not 101."""
    out = subprocess.run(
        ["curl", "-s", "-i", "--http2", f"{server.url}/health"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200"), out.stdout[:200]
    assert '"status":"ok"' in out.stdout


def test_http2_preface_after_http1_requests_closes_the_connection(server: Server) -> None:
    """The HTTP/2 preface mid-connection closes it; the server keeps serving others."""
    with socket.create_connection(_address(server), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        assert b"HTTP/2" not in rest and not rest.startswith(b"HTTP/1.1 101")
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert any("switch to HTTP/2" in line for line in server.log)
