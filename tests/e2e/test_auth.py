"""Bearer-token authentication on both protocols: a real server, real clients."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table
from support import ARROW, Server, ipc_bytes, sample_table

ADMIN = "admin-token-0123456789abcdef"
SCOPED = "scoped-token-0123456789abcdef"
ENV_TOKEN = "env-token-0123456789abcdef01"
CONFIG = f"""
auth:
  tokens:
    - {ADMIN}
    - {{token: {SCOPED}, streams: [events]}}
"""


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    config = tmp_path / "arrowport.yaml"
    config.write_text(CONFIG)
    return server_factory(tmp_path, config=config, env={"ARROWPORT_TOKEN": ENV_TOKEN}).start()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tables(server: Server) -> list[str]:
    response = httpx.get(f"{server.url}/streams", headers=_bearer(ADMIN))
    assert response.status_code == 200
    return sorted(s["name"] for s in response.json()["streams"] if s["rows"])


def test_http_refuses_missing_and_wrong_tokens_and_writes_nothing(server: Server) -> None:
    """No token or a wrong one: 401 with WWW-Authenticate and a JSON body; nothing stored."""
    body = ipc_bytes(sample_table(10))
    missing = server.post("events", body)
    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthenticated"
    assert "Bearer <token>" in missing.json()["detail"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = server.post("events", body, headers=_bearer("not-the-token-0123456789"))
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "the token is not valid")
    basic = server.post("events", body, headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401
    assert httpx.get(f"{server.url}/streams").status_code == 401
    assert httpx.get(f"{server.url}/delta/events").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # stays open
    assert _tables(server) == []


def test_http_accepts_valid_tokens_and_scopes_writes(server: Server) -> None:
    """A token writes; a scoped token writes only its streams (403 elsewhere); env token works."""
    body = ipc_bytes(sample_table(10))
    assert server.post("events", body, headers=_bearer(ADMIN)).status_code == 200
    assert server.post("events", body, headers=_bearer(SCOPED)).status_code == 200
    assert server.post("EVENTS", body, headers=_bearer(SCOPED)).status_code == 200
    forbidden = server.post("orders", body, headers=_bearer(SCOPED))
    assert forbidden.status_code == 403
    assert forbidden.json() == {
        "error": "forbidden",
        "detail": "this token may not write stream 'orders'",
    }
    delta = httpx.post(
        f"{server.url}/delta/orders",
        content=body,
        headers={"Content-Type": ARROW, **_bearer(SCOPED)},
    )
    assert delta.status_code == 403
    assert server.post("orders", body, headers=_bearer(ENV_TOKEN)).status_code == 200
    assert httpx.get(f"{server.url}/streams", headers=_bearer(SCOPED)).status_code == 200
    assert server.query("SELECT count(*) FROM events") == [(30,)]  # (stops the server)
    assert server.query("SELECT count(*) FROM orders") == [(10,)]


def test_a_refused_upload_is_not_read(server: Server, tmp_path: Path) -> None:
    """A 200 MB body with a wrong token is answered at once, without reading the body."""
    path = tmp_path / "big.arrows"
    path.write_bytes(ipc_bytes(sample_table(10)) * 1 + b"\0" * 200_000_000)
    started = time.monotonic()
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\\n%{http_code}",
            "--data-binary",
            f"@{path}",
            "-H",
            f"Content-Type: {ARROW}",
            "-H",
            "Authorization: Bearer wrong-token-0123456789",
            f"{server.url}/ingest/events",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert out.stdout.rstrip().endswith("401"), (out.stdout[-300:], out.stderr)
    assert '"unauthenticated"' in out.stdout
    assert elapsed < 30  # not the time to push 200 MB through the decoder
    server.assert_serving()


def test_flight_needs_a_token_and_scopes_doput(server: Server) -> None:
    """Flight: no token is UNAUTHENTICATED; the authorization header works; scoping applies."""
    client = flight_client(server)
    with pytest.raises(fl.FlightUnauthenticatedError, match="needs a token"):
        list(client.list_flights())
    with pytest.raises(fl.FlightUnauthenticatedError):
        put_table(client, "events", pa.table({"id": [1]}))
    admin = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {ADMIN}".encode())])
    acks = put_table(client, "events", pa.table({"id": [1, 2]}), options=admin)
    assert acks[0]["committed_rows"] == 2
    scoped = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {SCOPED}".encode())])
    with pytest.raises(fl.FlightUnauthorizedError, match="may not write stream 'orders'"):
        put_table(client, "orders", pa.table({"id": [1]}), options=scoped)
    assert [i.total_records for i in client.list_flights(options=scoped)] == [2]


def _table_cmd(**spec: str) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_command(json.dumps(spec).encode())


def test_a_scoped_token_writes_only_its_streams_tables_directly(server: Server) -> None:
    """A token limited to stream "events" (DuckDB table events) may DoPut the
    {"table", "backend"} descriptor of that table, and no other table: not a table
    of another backend that happens to have the stream's name, nor POST /delta/events."""
    client = flight_client(server)
    scoped = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {SCOPED}".encode())])
    data = pa.table({"id": [1, 2, 3]})
    for allowed in (_table_cmd(table="events", backend="duckdb"), _table_cmd(table="EVENTS")):
        assert put_table(client, allowed, data, options=scoped)[0]["committed_rows"] == 3
    for refused in (
        _table_cmd(table="events", backend="delta"),
        _table_cmd(table="orders", backend="duckdb"),
        _table_cmd(table="orders"),
    ):
        with pytest.raises(fl.FlightUnauthorizedError, match="none of its streams"):
            put_table(client, refused, data, options=scoped)
    delta = httpx.post(
        f"{server.url}/delta/events",
        content=ipc_bytes(sample_table(10)),
        headers={"Content-Type": ARROW, **_bearer(SCOPED)},
    )
    assert delta.status_code == 403 and "none of its streams" in delta.json()["detail"]
    admin = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {ADMIN}".encode())])
    assert put_table(client, _table_cmd(table="orders"), data, options=admin)[0]["table"] == (
        "orders"
    )
    assert server.query("SELECT count(*) FROM events") == [(6,)]  # (stops the server)
    assert server.query("SELECT count(*) FROM orders") == [(3,)]


def test_flight_handshake_with_basic_token(server: Server) -> None:
    """pyarrow's authenticate_basic_token: the password is the token; the answer's bearer
    header works for later calls. A wrong password is refused."""
    client = flight_client(server)
    with pytest.raises(fl.FlightUnauthenticatedError):
        client.authenticate_basic_token("anyone", "wrong-password-0123456789")
    name, value = client.authenticate_basic_token("anyone", ADMIN)
    assert (name, value) == (b"authorization", f"Bearer {ADMIN}".encode())
    options = fl.FlightCallOptions(headers=[(name, value)])
    acks = put_table(client, "events", pa.table({"id": [7]}), options=options)
    assert acks[0]["committed_rows"] == 1


def test_auth_is_off_without_tokens(server_factory: type[Server], tmp_path: Path) -> None:
    """With no token configured, no header is needed (and one is ignored)."""
    open_server = server_factory(tmp_path).start()
    body = ipc_bytes(sample_table(3))
    assert open_server.post("events", body).status_code == 200
    assert open_server.post("events", body, headers=_bearer("whatever")).status_code == 200
    assert open_server.query("SELECT count(*) FROM events") == [(6,)]
