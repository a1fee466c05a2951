"""The bad-input catalogue: every hostile input of ``catalogue_inputs.CASES``, on every
protocol it has a form for, against real ``arrowport serve`` processes.

For each run the test asserts three things:

1. the answer: HTTP status, JSON ``error`` and a part of ``detail``; Flight: gRPC status
   (or the pyarrow exception class) and a part of ``grpc-message``;
2. the server still serves: a good ingest on the same protocol, right after, commits
   (into the same table when the input named a valid one, so its lock must be free);
3. no trace: every table on the server (ListFlights: DuckDB and Delta, with row counts)
   and every file under the server's directory are exactly as before the bad input.

Four servers are shared by the whole module: ``plain`` (DuckDB), ``lake`` (Delta by
default), ``limited`` (small limits) and ``auth`` (a bearer token). The last test stops
them and audits the DuckDB files and Delta tables on disk against what was committed.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import h2.errors
import h2.exceptions
import h11
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from catalogue_inputs import (
    CASES,
    GOOD_ROWS,
    LIMIT_BODY,
    LIMIT_COLUMNS,
    LIMIT_DICTIONARY,
    LIMIT_METADATA,
    LIMIT_REQUEST,
    SCHEMA,
    SEED_ROWS,
    VICTIM,
    Case,
    FlightInput,
    Grpc,
    Http,
    HttpInput,
    _big_body,
    _big_metadata,
    _over_request_size,
    good_stream,
    good_table,
)
from deltalake import DeltaTable
from flight_helpers import put_table
from h2_client import SERVICE, H2Client, Response
from lake_support import attach_lake
from support import Server

from arrowport.protocol.grpc import decode_grpc_message

TOKEN = "catalogue-token-0123456789abcdef"
CONFIGS = {
    "plain": "",
    "lake": "storage_backend: delta\ndelta_config: {table_path: ./lake}\n",
    "ducklake": (
        "storage_backend: ducklake\n"
        "ducklake: {catalog: ./meta.ducklake, data_path: ./lakedata, merge_interval: 0}\n"
    ),
    "limited": (
        "limits:\n"
        f"  max_metadata_size: {LIMIT_METADATA}\n"
        f"  max_body_size: {LIMIT_BODY}\n"
        f"  max_dictionary_bytes: {LIMIT_DICTIONARY}\n"
        f"  max_columns: {LIMIT_COLUMNS}\n"
        f"  max_request_size: {LIMIT_REQUEST}\n"
    ),
    "auth": f"auth:\n  tokens: [{TOKEN}]\n",
}
NOT_NULL_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])
TIMEOUT = 30.0
BUG_WORDS = (" ERROR ", " CRITICAL ", "Traceback", "internal error")

# What each server must hold: (backend, table) -> rows, kept up to date by every commit.
EXPECTED: dict[str, dict[tuple[str, str], int]] = {}
STARTED: dict[str, Server] = {}


# -- servers -------------------------------------------------------------------------------


def _not_null_tables() -> list[str]:
    return [
        f"n_{case.name}_{proto}"
        for case in CASES
        if case.target == "not_null"
        for proto in ("http", "flight")
    ]


def _start(kind: str, factory: pytest.TempPathFactory) -> Server:
    workdir = factory.mktemp(f"catalogue_{kind}")
    config = workdir / "arrowport.yaml"
    config.write_text(CONFIGS[kind])
    server = Server(workdir, config=config)
    if kind == "plain":  # an Arrow non-nullable field does not make a NOT NULL column: create them
        with duckdb.connect(str(server.db)) as con:
            for table in _not_null_tables():
                con.execute(f'CREATE TABLE "{table}" (id BIGINT NOT NULL, name VARCHAR)')
    if kind == "ducklake":  # the same, in a lake
        with duckdb.connect() as con:
            attach_lake(con, workdir / "meta.ducklake", workdir / "lakedata", read_only=False)
            for table in _not_null_tables():
                con.execute(f'CREATE TABLE lake."{table}" (id BIGINT NOT NULL, name VARCHAR)')
    server.start()
    STARTED[kind] = server
    EXPECTED[kind] = {}
    if kind in ("plain", "ducklake"):
        for table in _not_null_tables():
            EXPECTED[kind][(_backend(kind), table)] = 0
    if kind in ("plain", "lake", "ducklake"):
        _seed(server, kind, VICTIM)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Server]]:
    """Start each kind of server on first use; restart one that died (its test failed)."""

    STARTED.clear()
    EXPECTED.clear()

    def get(kind: str) -> Server:
        server = STARTED.get(kind)
        if server is None:
            return _start(kind, tmp_path_factory)
        if not server.running:
            server.start()
        return server

    yield get
    for server in STARTED.values():
        server.stop()


def _backend(kind: str) -> str:
    return {"lake": "delta", "ducklake": "ducklake"}.get(kind, "duckdb")


def _auth(kind: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"} if kind == "auth" else {}


def _options(kind: str) -> fl.FlightCallOptions | None:
    if kind != "auth":
        return None
    return fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])


def _client(server: Server) -> fl.FlightClient:
    return fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")


# -- good ingests --------------------------------------------------------------------------


_next_id = iter(range(10_000_000, 100_000_000, 1000))


def _good_http(server: Server, kind: str, table: str, rows: int = GOOD_ROWS, **kw: Any) -> None:
    response = httpx.post(
        f"{server.url}/ingest/{table}",
        content=good_stream(next(_next_id), rows, **kw),
        headers={"Content-Type": "application/vnd.apache.arrow.stream", **_auth(kind)},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == rows, response.json()
    _committed(kind, table, rows)


def _good_flight(server: Server, kind: str, table: str) -> None:
    client = _client(server)
    try:
        acks = put_table(client, table, good_table(next(_next_id)), options=_options(kind))
    finally:
        client.close()
    assert [a["committed_rows"] for a in acks] == [GOOD_ROWS], acks
    _committed(kind, table, GOOD_ROWS)


def _committed(kind: str, table: str, rows: int) -> None:
    key = (_backend(kind), table)
    EXPECTED[kind][key] = EXPECTED[kind].get(key, 0) + rows


def _seed(server: Server, kind: str, table: str, *, not_null: bool = False) -> None:
    schema = NOT_NULL_SCHEMA if not_null else SCHEMA
    _good_http(server, kind, table, SEED_ROWS, schema=schema)


# -- what the server holds -----------------------------------------------------------------


def _tables(server: Server, kind: str) -> dict[tuple[str, str], int]:
    """Every table ListFlights reports (DuckDB and Delta) and its row count."""
    client = _client(server)
    try:
        out = {}
        for info in client.list_flights(options=_options(kind)):
            descriptor = info.descriptor
            if descriptor.path:
                key = (_backend(kind), descriptor.path[0].decode())
            else:
                spec = json.loads(descriptor.command)
                key = (spec["backend"], spec["table"])
            out[key] = info.total_records
        return out
    finally:
        client.close()


def _files(server: Server) -> set[str]:
    """Every file under the server's directory (but DuckDB's own), and its siblings' names."""
    root = server.workdir
    files = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(server.db.name)
    }
    return files | {
        f"../{p.name}" for p in root.parent.iterdir() if not p.name.startswith("catalogue_")
    }


def _snapshot(server: Server, kind: str) -> tuple[dict[tuple[str, str], int], set[str]]:
    return _tables(server, kind), _files(server)


def _assert_unchanged(
    server: Server, kind: str, before: tuple[dict[tuple[str, str], int], set[str]], wait: bool
) -> None:
    """Nothing of the bad request is left: tables, row counts and files are as before.

    After a client-side cut the server rolls back on its own time: wait for it.
    """
    deadline = time.monotonic() + (10 if wait else 0)
    while True:
        after = _snapshot(server, kind)
        if after == before or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    tables_before, files_before = before
    tables_after, files_after = after
    assert tables_after == tables_before, {
        "new or changed": {k: v for k, v in tables_after.items() if tables_before.get(k) != v},
        "gone": sorted(set(tables_before) - set(tables_after)),
    }
    assert files_after == files_before, {
        "new files": sorted(files_after - files_before),
        "removed files": sorted(files_before - files_after),
    }
    assert tables_after == EXPECTED[kind], "the server holds other data than was committed"


def _assert_no_bug_logged(lines: list[str]) -> None:
    """A refusal is logged at INFO; an ERROR or a traceback would be a bug."""
    bad = [line for line in lines if any(word in line for word in BUG_WORDS)]
    assert not bad, "".join(bad)


# -- sending hostile input -----------------------------------------------------------------


def _send_http(server: Server, kind: str, inp: HttpInput, table: str) -> tuple[int | None, Any]:
    """Send the request byte for byte; the status and JSON answer (None: no answer)."""
    body = inp.body()
    declared = len(inp.full()) if inp.drop and inp.full is not None else len(body)
    headers = [("Host", "127.0.0.1"), ("Content-Length", str(declared))]
    if inp.content_type is not None:
        headers.append(("Content-Type", inp.content_type))
    headers += inp.headers
    if inp.authenticated:
        headers += _auth(kind).items()
    conn = h11.Connection(h11.CLIENT)
    url = httpx.URL(server.url)
    with socket.create_connection((url.host, url.port), timeout=TIMEOUT) as sock:
        target = inp.path.replace("{table}", table).encode()
        sock.sendall(conn.send(h11.Request(method="POST", target=target, headers=headers)))
        try:
            sock.sendall(conn.send(h11.Data(data=body)))
            if inp.drop:
                _wait_in_flight(server, kind)  # cut it once the server is ingesting it
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.sendall(conn.send(h11.EndOfMessage()))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; read its answer
        status, data = None, b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                if status is None:
                    return None, None
                raise
            if event is h11.NEED_DATA:
                try:
                    chunk = sock.recv(1 << 16)
                except ConnectionResetError:
                    chunk = b""
                conn.receive_data(chunk)
                if not chunk and status is None:
                    return None, None
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return status, json.loads(data) if data else None


def _wait_in_flight(server: Server, kind: str) -> None:
    """Wait until the server counts one upload in flight: it is inside its ingest."""
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(f"{server.url}/streams", headers=_auth(kind), timeout=TIMEOUT).json()
        if report["in_flight"] >= 1:
            return
        assert time.monotonic() < deadline, "the server never started ingesting the upload"
        time.sleep(0.02)


def _check_http(expect: Http, status: int | None, payload: Any) -> None:
    assert status == expect.status, (status, payload)
    if expect.error is None:
        assert payload is None, f"expected no JSON body, got {payload}"
        return
    assert isinstance(payload, dict), payload
    assert payload.get("error") == expect.error, payload
    assert re.search(expect.says, str(payload.get("detail", "")), re.IGNORECASE), payload


def _send_flight(server: Server, kind: str, inp: FlightInput, table: str) -> Response:
    assert inp.data is not None
    data = inp.data(table)
    raw = H2Client(server.url)
    try:
        sid = raw.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", (SERVICE + inp.method).encode()),
            (b"content-type", inp.content_type.encode()),
            (b"te", b"trailers"),
            *((k.lower().encode(), v.encode()) for k, v in inp.headers),
        ]
        if kind == "auth":
            headers.append((b"authorization", f"Bearer {TOKEN}".encode()))
        raw.conn.send_headers(sid, headers)
        response = raw.responses[sid] = Response()
        raw.flush()
        _send_all(raw, sid, response, data)
        if inp.reset:
            _wait_in_flight(server, kind)  # reset it once the server is ingesting it
            raw.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            raw.flush()
            return response
        if not (response.ended or response.reset is not None):
            raw.conn.end_stream(sid)
            raw.flush()
        return raw.finish(sid, TIMEOUT)
    finally:
        raw.close()


def _send_all(raw: H2Client, sid: int, response: Response, data: bytes) -> None:
    """Send ``data`` as flow control allows; stop if the server already ended the call."""
    view = memoryview(data)
    deadline = time.monotonic() + TIMEOUT
    while view and not (response.ended or response.reset is not None):
        try:
            window = min(raw.conn.local_flow_control_window(sid), raw.conn.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            return
        if window <= 0:
            assert time.monotonic() < deadline, "the server stopped reading"
            raw.pump(1.0, auto_ack=True)
            continue
        raw.conn.send_data(sid, view[:window].tobytes())
        view = view[window:]
        raw.flush()


def _check_grpc(expect: Grpc, response: Response) -> None:
    assert response.reset is None, f"the server reset the stream (code {response.reset})"
    assert response.status == expect.http, response.headers
    if expect.http != 200:
        payload = json.loads(bytes(response.data))
        assert re.search(expect.says, payload["detail"], re.IGNORECASE), payload
        return
    final = response.final_headers
    status = int(final[b"grpc-status"])
    message = decode_grpc_message(final.get(b"grpc-message", b""))
    assert expect.status is not None
    assert status == int(expect.status), (status, message)
    assert re.search(expect.says, message, re.IGNORECASE), (status, message)


# -- the catalogue -------------------------------------------------------------------------


def _runs() -> list[Any]:
    runs = []
    for case in CASES:
        for proto, inp in (("http", case.http), ("flight", case.flight)):
            if inp is None:
                continue
            for kind in case.servers:
                runs.append(pytest.param(case, proto, kind, id=f"{case.name}-{proto}-{kind}"))
    return runs


def _table(case: Case, proto: str) -> str:
    prefix = {"fresh": "t", "seeded": "s", "not_null": "n", "named": "t"}[case.target]
    return f"{prefix}_{case.name}_{proto}"


@pytest.mark.parametrize(("case", "proto", "kind"), _runs())
def test_hostile_input(servers: Callable[[str], Server], case: Case, proto: str, kind: str) -> None:
    """The answer is the catalogued one, the server serves the next request, no trace is left."""
    server = servers(kind)
    table = _table(case, proto)
    if case.target == "seeded":
        _seed(server, kind, table)
    elif case.target == "not_null":
        _seed(server, kind, table, not_null=True)
    before = _snapshot(server, kind)
    logged = len(server.log)

    # 1. the answer
    if proto == "http":
        assert case.http is not None
        status, payload = _send_http(server, kind, case.http, table)
        _check_http(case.http.expect, status, payload)
        cut = case.http.drop
    else:
        assert case.flight is not None
        if case.flight.pyarrow is not None:
            expect = case.flight.expect
            assert expect.exception is not None
            client = _client(server)
            try:
                with pytest.raises(expect.exception, match=re.compile(expect.says, re.I)):
                    case.flight.pyarrow(client, table)
            finally:
                client.close()
        else:
            response = _send_flight(server, kind, case.flight, table)
            if not case.flight.reset:
                _check_grpc(case.flight.expect, response)
        cut = case.flight.reset

    if cut:  # the server saw the request begin, and the client go: it rolled back
        server.wait_for(f" {table}: client ")  # "client disconnected" / "client went away"

    # 3. no trace (checked before the good ingest, which may write to the same table)
    _assert_unchanged(server, kind, before, wait=cut)
    _assert_no_bug_logged(server.log[logged:])

    # 2. the server serves the next request, on the same protocol and (if valid) table
    good = f"canary_{proto}" if case.target == "named" else table
    assert server.running, "the server died:\n" + "".join(server.log[-50:])
    if proto == "http":
        _good_http(server, kind, good)
    else:
        _good_flight(server, kind, good)


def test_catalogue_size() -> None:
    """At least 30 hostile inputs, each on at least one protocol; the sizes the inputs'
    descriptions state are the real ones; docs/reliability.md lists every case, in order."""
    assert len(CASES) >= 30
    assert all(case.http is not None or case.flight is not None for case in CASES)
    assert len(_big_metadata()[0].metadata) == 8416 > LIMIT_METADATA
    assert len(_big_body()[1].body) == 213_000 > LIMIT_BODY
    assert len(_over_request_size()) == 925_840 > LIMIT_REQUEST
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    section = doc[doc.index("## Bad-input catalogue") :]
    assert f"The catalogue has {len(CASES)} inputs." in section
    assert [c.name for c in CASES] == re.findall(r"^\| \d+ \| `(\w+)` \|", section, re.M)


# -- the audit on disk (runs last) ---------------------------------------------------------


def test_zz_audit_on_disk() -> None:
    """Stop the servers; the DuckDB files and Delta tables hold exactly what was committed."""
    if not STARTED:
        pytest.skip("no catalogue server ran")
    for kind, server in STARTED.items():
        server.stop()
        expected = EXPECTED[kind]
        with duckdb.connect(str(server.db), read_only=True) as con:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_name NOT LIKE '\\_arrowport%' ESCAPE '\\'"
                ).fetchall()
            ]
            duck = {
                ("duckdb", n): con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]
                for n in names
            }
        lake_root = server.workdir / "lake"
        delta = {}
        if lake_root.exists():
            for path in lake_root.iterdir():
                assert DeltaTable.is_deltatable(str(path)), f"stray directory {path}"
                delta[("delta", path.name)] = DeltaTable(str(path)).to_pyarrow_table().num_rows
        ducklake = {}
        if (server.workdir / "meta.ducklake").exists():
            with duckdb.connect() as con:
                attach_lake(con, server.workdir / "meta.ducklake", server.workdir / "lakedata")
                for (n,) in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake' "
                    "AND table_name NOT LIKE '\\_arrowport%' ESCAPE '\\'"
                ).fetchall():
                    row = con.execute(f'SELECT count(*) FROM lake."{n}"').fetchone()
                    ducklake[("ducklake", n)] = row[0] if row else 0
        assert {**duck, **delta, **ducklake} == expected, kind
        _assert_no_bug_logged(server.log)
