"""TLS on the one port: HTTPS and grpc+tls:// by ALPN, plaintext refused, bad setups exit 2."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow.flight as fl
import pytest
import trio
from support import ARROW, Server, ipc_bytes, sample_table

from arrowport.config import ConfigError, load_config
from arrowport.io import listener
from arrowport.io.h2conn import PREFACE
from arrowport.io.server import hypercorn_config

Certs = dict[str, Path]


def _openssl_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)),
            *("-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A self-signed certificate for 127.0.0.1 and its key, and a second, unrelated pair."""
    directory = tmp_path_factory.mktemp("certs")
    cert, key = _openssl_cert(directory, "server")
    other_cert, other_key = _openssl_cert(directory, "other")
    return {"cert": cert, "key": key, "other_cert": other_cert, "other_key": other_key}


def _trust(cert: Path) -> ssl.SSLContext:
    """A client context that trusts ``cert`` only."""
    return ssl.create_default_context(cafile=str(cert))


def _tls_server(factory: type[Server], tmp_path: Path, certs: Certs) -> Server:
    args = ("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]))
    return factory(tmp_path, args=args).start()


def _port(server: Server) -> int:
    port = httpx.URL(server.url).port
    assert port is not None
    return port


def _assert_serving_https(server: Server, certs: Certs) -> None:
    assert server.running, "server process died:\n" + "".join(server.log)
    response = httpx.get(f"{server.url}/health", verify=_trust(certs["cert"]), timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert not any("Traceback" in line for line in server.log), "".join(server.log)


def _serve(certs: Certs, args: tuple[str, ...], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "arrowport", "serve", "--port", "0"]
    cmd += ["--db", str(tmp_path / "x.duckdb"), *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_https_ingest_commits_rows(
    server_factory: type[Server], tmp_path: Path, certs: Certs
) -> None:
    """POST /ingest over HTTPS (httpx verifying our certificate) answers 200 and commits."""
    server = _tls_server(server_factory, tmp_path, certs)
    assert server.url.startswith("https://127.0.0.1:")
    response = httpx.post(
        f"{server.url}/ingest/tls_events",
        content=ipc_bytes(sample_table(500)),
        headers={"Content-Type": ARROW},
        verify=_trust(certs["cert"]),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 500
    assert response.http_version == "HTTP/1.1"
    assert server.query("SELECT count(*), sum(id) FROM tls_events") == [(500, sum(range(500)))]


def test_curl_over_https(server_factory: type[Server], tmp_path: Path, certs: Certs) -> None:
    """curl --cacert (which offers h2 and http/1.1) gets HTTP/1.1, for health and for ingest."""
    server = _tls_server(server_factory, tmp_path, certs)
    health = subprocess.run(
        ["curl", "-s", "-i", "--cacert", str(certs["cert"]), f"{server.url}/health"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert health.returncode == 0, health.stderr
    assert health.stdout.startswith("HTTP/1.1 200"), health.stdout[:200]
    assert '"status":"ok"' in health.stdout
    body = tmp_path / "body.arrows"
    body.write_bytes(ipc_bytes(sample_table(300)))
    ingest = subprocess.run(
        [
            *("curl", "-s", "--fail-with-body", "--cacert", str(certs["cert"])),
            *("-H", f"Content-Type: {ARROW}", "--data-binary", f"@{body}"),
            f"{server.url}/ingest/curl_tls",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert json.loads(ingest.stdout)["rows"] == 300
    assert server.query("SELECT count(*) FROM curl_tls") == [(300,)]


def test_flight_over_tls(server_factory: type[Server], tmp_path: Path, certs: Certs) -> None:
    """A stock pyarrow client on grpc+tls:// (ALPN h2) can DoPut, ListFlights and DoGet.

    The server gets its files from ARROWPORT_CERTFILE/ARROWPORT_KEYFILE here.
    """
    env = {"ARROWPORT_CERTFILE": str(certs["cert"]), "ARROWPORT_KEYFILE": str(certs["key"])}
    server = server_factory(tmp_path, env=env).start()
    assert server.url.startswith("https://")
    client = fl.FlightClient(
        f"grpc+tls://127.0.0.1:{_port(server)}", tls_root_certs=certs["cert"].read_bytes()
    )
    table = sample_table(20_000)
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("tls_flight"), table.schema)
    writer.write_table(table, max_chunksize=5_000)
    writer.done_writing()
    ack = reader.read()
    writer.close()
    assert ack is not None
    assert json.loads(ack.to_pybytes())["committed_rows"] == 20_000
    listed = [f.descriptor.path for f in client.list_flights()]
    assert [b"tls_flight"] in listed
    got = client.do_get(fl.Ticket(b"tls_flight")).read_all()
    assert got.num_rows == 20_000
    assert got.sort_by("id").column("id").equals(table.column("id"))
    client.close()
    _assert_serving_https(server, certs)


def test_plaintext_on_the_tls_port_is_refused_and_serving_goes_on(
    server_factory: type[Server], tmp_path: Path, certs: Certs
) -> None:
    """Plain HTTP gets a 400 naming https://, h2c and garbage are closed; no traceback."""
    server = _tls_server(server_factory, tmp_path, certs)
    plain = server.url.replace("https://", "http://")
    response = httpx.get(f"{plain}/health", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "tls_required"
    assert "https://" in response.json()["detail"]
    assert response.headers["connection"] == "close"
    for opening in (PREFACE, b"\x00\x01garbage\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
            sock.sendall(opening)
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", answer
    plain_flight = fl.FlightClient(f"grpc://127.0.0.1:{_port(server)}")
    with pytest.raises(fl.FlightUnavailableError):
        list(plain_flight.list_flights(options=fl.FlightCallOptions(timeout=10)))
    plain_flight.close()
    assert any("plaintext HTTP request" in line for line in server.log)
    _assert_serving_https(server, certs)


def test_a_client_trusting_another_certificate_fails_verification(
    server_factory: type[Server], tmp_path: Path, certs: Certs
) -> None:
    """Clients that do not trust the server's certificate fail the handshake; serving goes on."""
    server = _tls_server(server_factory, tmp_path, certs)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/health", verify=_trust(certs["other_cert"]), timeout=10)
    client = fl.FlightClient(
        f"grpc+tls://127.0.0.1:{_port(server)}", tls_root_certs=certs["other_cert"].read_bytes()
    )
    with pytest.raises(fl.FlightUnavailableError):
        list(client.list_flights(options=fl.FlightCallOptions(timeout=10)))
    client.close()
    server.wait_for("TLS handshake with 127.0.0.1:")
    _assert_serving_https(server, certs)


def test_clients_without_alpn_are_sniffed(
    server_factory: type[Server], tmp_path: Path, certs: Certs
) -> None:
    """With no ALPN, HTTP/1.1 goes to hypercorn and the HTTP/2 preface to the h2 server."""
    server = _tls_server(server_factory, tmp_path, certs)
    context = ssl.create_default_context(cafile=str(certs["cert"]))  # offers no ALPN
    for opening, expected in (
        (b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200"),
        # the server's first frame: SETTINGS (type 4) on stream 0
        (PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"\x04\x00\x00\x00\x00\x00"),
    ):
        with (
            socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            assert sock.selected_alpn_protocol() is None
            sock.sendall(opening)
            answer = sock.recv(65536)
        if expected.startswith(b"HTTP"):
            assert answer.startswith(expected), answer[:100]
        else:
            assert answer[3:9] == expected, answer[:20]
    _assert_serving_https(server, certs)


def test_certfile_without_keyfile_exits_2(tmp_path: Path, certs: Certs) -> None:
    """--certfile alone is refused before serving, with exit code 2 and a clear message."""
    out = _serve(certs, ("--certfile", str(certs["cert"])), tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "tls: set both certfile and keyfile" in out.stderr


def test_missing_key_file_exits_2_naming_the_key(tmp_path: Path, certs: Certs) -> None:
    """A keyfile that does not exist is named in the error (exit code 2)."""
    missing = tmp_path / "nope.key"
    out = _serve(certs, ("--certfile", str(certs["cert"]), "--keyfile", str(missing)), tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "tls.keyfile" in out.stderr and "nope.key" in out.stderr


def test_mismatched_key_exits_2(tmp_path: Path, certs: Certs) -> None:
    """A key that does not belong to the certificate is refused at start-up (exit code 2)."""
    args = ("--certfile", str(certs["cert"]), "--keyfile", str(certs["other_key"]))
    out = _serve(certs, args, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "the private key does not match the certificate" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "x.duckdb").exists()  # refused before the database was opened


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda c, d: (c["key"], c["key"]), "tls.certfile: "),
        (lambda c, d: (c["cert"], c["cert"]), "tls.keyfile: "),
        (lambda c, d: (c["cert"], _encrypted_key(c, d)), "is encrypted"),
    ],
    ids=["no-certificate", "no-key", "encrypted-key"],
)
def test_unusable_tls_files_are_named(
    tmp_path: Path,
    certs: Certs,
    setup: Callable[[Certs, Path], tuple[Path, Path]],
    message: str,
) -> None:
    """tls_context says which file is wrong and why, as a ConfigError (never a prompt)."""
    cert, key = setup(certs, tmp_path)
    with pytest.raises(ConfigError, match=message):
        listener.tls_context(str(cert), str(key))


def _encrypted_key(certs: Certs, directory: Path) -> Path:
    out = directory / "encrypted.key"
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(certs["key"]), "-aes256"),
            *("-passout", "pass:secret", "-out", str(out)),
        ],
        check=True,
        capture_output=True,
    )
    return out


async def test_asgi_scheme_is_https(tmp_path: Path, certs: Certs) -> None:
    """hypercorn sees TLS: the ASGI scope's scheme is https, with ALPN http/1.1 and without."""
    schemes: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        schemes.append(scope["scheme"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def no_flight(stream: Any) -> None:
        raise AssertionError("no HTTP/2 expected")

    config = hypercorn_config(load_config(env={}, overrides={"port": 0}))
    stop = trio.Event()
    context = listener.tls_context(str(certs["cert"]), str(certs["key"]))
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: listener.serve(
                app,
                config,
                no_flight,
                shutdown_trigger=stop.wait,
                ssl_context=context,
                task_status=task_status,
            )
        )
        url = binds[0]
        assert url.startswith("https://")

        def requests() -> list[int]:
            with_alpn = httpx.get(url, verify=_trust(certs["cert"])).status_code
            client = ssl.create_default_context(cafile=str(certs["cert"]))
            port = httpx.URL(url).port
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname="localhost") as sock,
            ):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                without = int(sock.recv(65536).split()[1])
            return [with_alpn, without]

        assert await trio.to_thread.run_sync(requests) == [204, 204]
        stop.set()
    assert schemes == ["https", "https"]


@pytest.mark.slow
def test_a_stalled_handshake_is_closed(
    server_factory: type[Server], tmp_path: Path, certs: Certs
) -> None:
    """A client that starts a handshake and stalls is closed after the handshake timeout."""
    server = _tls_server(server_factory, tmp_path, certs)
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello record, then nothing
        started = time.monotonic()
        _assert_serving_https(server, certs)  # meanwhile others are served
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
        waited = time.monotonic() - started
    assert answer == b""
    assert 5 < waited < 20, waited
    _assert_serving_https(server, certs)


def test_the_metrics_port_speaks_tls_when_the_server_does(
    server_factory: type[Server], tmp_path: Path, certs: Certs
) -> None:
    """With TLS on, the metrics port is HTTPS too: a scrape's token never travels in clear."""
    args = ("--certfile", str(certs["cert"]), "--keyfile", str(certs["key"]), "--metrics-port", "0")
    server = server_factory(tmp_path, args=args).start()
    line = next(line for line in server.log if "metrics on" in line)
    match = re.search(r"metrics on (https://\S+)/metrics", line)
    assert match is not None, line
    scrape = httpx.get(f"{match.group(1)}/metrics", verify=_trust(certs["cert"]), timeout=10)
    assert scrape.status_code == 200 and "arrowport_in_flight_requests" in scrape.text
    with pytest.raises(httpx.TransportError):  # plain HTTP gets no answer
        httpx.get(match.group(1).replace("https://", "http://") + "/metrics", timeout=10)
    _assert_serving_https(server, certs)
