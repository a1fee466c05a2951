"""Connection limits against a real server: per client address, server-wide, and descriptors."""

from __future__ import annotations

import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from arrowport.io.connections import ConnectionTracker, Refusal, effective_limit, headroom
from tests.support import Server

MAX_CONNECTIONS = 8
PER_CLIENT = 3


def _config(path: Path, max_connections: int, per_client: int) -> Path:
    config = path / "arrowport.yaml"
    config.write_text(
        "limits:\n"
        f"  max_connections: {max_connections}\n"
        f"  max_connections_per_client: {per_client}\n"
        "  connection_idle_timeout: 60\n"
    )
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("limits")
    started = Server(workdir, config=_config(workdir, MAX_CONNECTIONS, PER_CLIENT)).start()
    yield started
    started.stop()


def _open(server: Server, source: str) -> socket.socket:
    """A connection from ``source`` (any 127/8 address) that sends nothing yet."""
    url = httpx.URL(server.url)
    sock = socket.create_connection((url.host, url.port), timeout=5, source_address=(source, 0))
    return sock


def _closed_at_once(sock: socket.socket) -> bool:
    """True if the server closes the connection without reading or answering it."""
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _health(server: Server, source: str) -> int:
    """GET /health from ``source`` on a fresh connection; the status (0 if closed)."""
    with _open(server, source) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(5)
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            return 0
    return int(answer.split(b" ")[1]) if answer else 0


def _settle() -> None:
    time.sleep(0.2)  # the server counts a close once its handler has ended


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_per_client_limit_closes_the_extra_connection_and_serves_others(server: Server) -> None:
    """A client at its limit gets its next connection closed; other clients are served."""
    held = [_open(server, "127.0.0.1") for _ in range(PER_CLIENT)]
    try:
        _settle()
        extra = _open(server, "127.0.0.1")
        assert _closed_at_once(extra)
        extra.close()
        assert _health(server, "127.0.0.2") == 200  # another address is served
    finally:
        for sock in held:
            sock.close()
    _settle()
    assert _health(server, "127.0.0.1") == 200  # released: served again
    assert _metric(server, 'arrowport_connections_refused_total{reason="client"}') >= 1


def test_closed_keep_alive_connections_stop_counting_at_once(server: Server) -> None:
    """A client that opens, uses and closes many keep-alive connections is never refused."""
    for _ in range(PER_CLIENT * 4):
        with httpx.Client() as client:  # keep-alive: the client closes the idle connection
            assert client.get(f"{server.url}/health", timeout=5).status_code == 200
    _settle()
    assert _metric(server, "arrowport_connections_open") == 1  # the scrape's own


def test_server_wide_limit_closes_new_connections_until_one_closes(server: Server) -> None:
    """With max_connections open (from several addresses), a new one is closed; then served."""
    held = [
        _open(server, f"127.0.0.{10 + i // PER_CLIENT}") for i in range(MAX_CONNECTIONS)
    ]  # 3 + 3 + 2 from three addresses
    try:
        _settle()
        extra = _open(server, "127.0.0.20")
        assert _closed_at_once(extra)
        extra.close()
        held.pop().close()
        _settle()
        assert _health(server, "127.0.0.20") == 200
    finally:
        for sock in held:
            sock.close()
    _settle()
    assert _metric(server, 'arrowport_connections_refused_total{reason="server"}') >= 1
    assert _metric(server, "arrowport_connections_open") == 1  # the scrape's own


def test_descriptor_limit_caps_connections_and_accept_never_fails(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Under ulimit -n 256, 300 held connections: 192 served, the rest closed, no EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:  # the server inherits the lower limit
        server = server_factory(tmp_path, config=_config(tmp_path, 4096, 4096)).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limit = 256 - 64
    held = [_open(server, f"127.0.1.{1 + i // 100}") for i in range(300)]
    try:
        _settle()
        probe = _open(server, "127.0.2.1")
        assert _closed_at_once(probe)
        probe.close()
        for sock in held[limit:]:
            sock.close()
        for sock in held[:limit]:  # the first 192 were kept: each is still served
            sock.settimeout(0.01)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        held[0].close()
        _settle()
        started = time.monotonic()
        assert _health(server, "127.0.2.1") == 200 and time.monotonic() - started < 1
    finally:
        for sock in held:
            sock.close()
    log = "".join(server.log)
    assert "EMFILE" not in log and "accept returned" not in log
    assert f"at most {limit} connections" in log


def test_tracker_counts_and_refuses_by_reason() -> None:
    """admit/release keep exact counts; refusals name their reason and are not counted as open."""
    tracker = ConnectionTracker(max_connections=3, max_per_client=2)
    assert [tracker.admit("a"), tracker.admit("a"), tracker.admit("a")] == [
        None,
        None,
        Refusal.CLIENT,
    ]
    assert tracker.admit("b") is None and tracker.admit("c") is Refusal.SERVER
    tracker.release("a")
    assert tracker.admit("c") is None
    assert tracker.open == 3 and tracker.per_client == {"a": 1, "b": 1, "c": 1}
    assert tracker.refused == {Refusal.CLIENT: 1, Refusal.SERVER: 1}


def test_effective_limit_keeps_the_headroom() -> None:
    """The limit stays below the descriptor limit less max(64, 10%)."""
    assert headroom(256) == 64 and headroom(20_000) == 2_000
    assert effective_limit(4096, 256) == 192
    assert effective_limit(4096, 20_000) == 4096
    assert effective_limit(4096, None) == 4096
    assert effective_limit(4096, 10) == 1


def test_client_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    """IPv6 clients count per /64 network, IPv4-mapped addresses as their IPv4 address, and
    IPv4 addresses as themselves."""
    from arrowport.io.connections import client_key

    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" == client_key("192.0.2.7")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("") == ""
