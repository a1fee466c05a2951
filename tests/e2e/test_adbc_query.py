"""Flight SQL queries on a real server, with the real ADBC driver (adbc-driver-flightsql)
and a stock pyarrow Flight client: tables of all three backends, prepared statements,
refusals that change nothing, limits, and who may query."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flightsql
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from adbc_driver_flightsql import DatabaseOptions
from adbc_driver_manager import Error as AdbcError
from support import ARROW, Server, ipc_bytes, sample_table

from arrowport.protocol.flight_sql import (
    ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult,
    AnyMessage,
    CommandPreparedStatementQuery,
    CommandStatementQuery,
    DoPutPreparedStatementResult,
    pack,
)

ROWS = 300
SECRET = "arrowport-e2e-secret-5c2a"
ADMIN = "admin-token-0123456789abcdef"
PLAIN_ONLY = "plain-token-0123456789abcdef"
# statuses a refused query may end with (ADBC's names): never INTERNAL, UNKNOWN or IO
CLIENT_FAULTS = {"INVALID_ARGUMENT", "UNAUTHORIZED", "NOT_FOUND"}


def _config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        f"delta_config: {{table_path: {tmp_path / 'lake'}}}\n"
        f"ducklake: {{catalog: {tmp_path / 'meta.ducklake'}, data_path: {tmp_path / 'lakedata'}}}\n"
        "streams:\n"
        "  ev_delta: {storage_backend: delta}\n"
        "  ev_lake: {storage_backend: ducklake}\n" + extra
    )
    return config


def _ingest(server: Server, stream: str, table: pa.Table, token: str | None = None) -> None:
    headers = {"Content-Type": ARROW}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.post(
        f"{server.url}/ingest/{stream}", content=ipc_bytes(table), headers=headers, timeout=120
    )
    assert response.status_code == 200, response.text


def _port(server: Server) -> int:
    port = httpx.URL(server.url).port
    assert port is not None
    return port


def connect(server: Server, token: str | None = None) -> Any:
    """An ADBC Flight SQL connection (the driver warns that it cannot turn off autocommit)."""
    kwargs: dict[str, Any] = {}
    if token is not None:
        kwargs["db_kwargs"] = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flightsql.connect(f"grpc://127.0.0.1:{_port(server)}", **kwargs)


def query(server: Server, sql: str, params: Any = None, token: str | None = None) -> pa.Table:
    with connect(server, token) as con, con.cursor() as cur:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        table: pa.Table = cur.fetch_arrow_table()
        return table


def failure(server: Server, sql: str, token: str | None = None) -> AdbcError:
    with pytest.raises(AdbcError) as caught:
        query(server, sql, token=token)
    return caught.value


def status(error: AdbcError) -> str:
    return str(error).split(":", 1)[0]


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    extra = "flight_sql: {query_memory_limit: 64MiB}\n"
    srv = server_factory(tmp_path, config=_config(tmp_path, extra)).start()
    for stream in ("plain", "ev_delta", "ev_lake"):
        _ingest(srv, stream, sample_table(ROWS))
    return srv


def _expected(rows: int = ROWS) -> list[dict[str, Any]]:
    return sample_table(rows).to_pylist()


def test_execute_reads_each_backend_exactly(server: Server) -> None:
    """execute + fetch_arrow_table returns the stored rows of DuckDB, Delta and DuckLake tables."""
    for name in ("plain", "duckdb.plain", "delta.ev_delta", "ducklake.main.ev_lake"):
        got = query(server, f"SELECT * FROM {name} ORDER BY id")
        assert got.to_pylist() == _expected(), name
    joined = query(
        server,
        "SELECT count(*) AS n, sum(p.id) AS s FROM plain p "
        "JOIN delta.ev_delta d USING (id) JOIN ducklake.ev_lake l USING (id) WHERE p.name = d.name",
    )
    assert joined.to_pylist() == [{"n": ROWS, "s": sum(range(ROWS))}]
    assert query(server, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_prepared_statements_with_and_without_parameters(server: Server) -> None:
    """A prepared statement runs again and again, with new parameter values each time."""
    with connect(server) as con, con.cursor() as cur:
        cur.adbc_prepare("SELECT name FROM plain WHERE id = ?")
        for i in (3, 7, 11):
            cur.execute("SELECT name FROM plain WHERE id = ?", (i,))
            assert cur.fetch_arrow_table().to_pylist() == [{"name": f"n{i % 7}"}]
        cur.execute("SELECT ?::INT + 1 AS x, ? AS s", (41, "a"))
        assert cur.fetch_arrow_table().to_pylist() == [{"x": 42, "s": "a"}]
        cur.execute("SELECT count(*) AS n FROM delta.ev_delta WHERE id >= ?", (ROWS - 10,))
        assert cur.fetch_arrow_table().to_pylist() == [{"n": 10}]
        schema = cur.adbc_execute_schema("SELECT id, name FROM ducklake.ev_lake")
        assert schema == pa.schema([("id", pa.int64()), ("name", pa.string())])


def test_a_statement_runs_through_get_flight_info_and_do_get(server: Server) -> None:
    """CommandStatementQuery → FlightInfo (its schema) → DoGet of its ticket: the rows."""
    client = fl.FlightClient(f"grpc://127.0.0.1:{_port(server)}")
    try:
        command = CommandStatementQuery(
            query="SELECT id, score FROM plain WHERE id < 5 ORDER BY id"
        )
        info = client.get_flight_info(fl.FlightDescriptor.for_command(pack(command)))
        table = client.do_get(info.endpoints[0].ticket).read_all()
    finally:
        client.close()
    assert info.schema == table.schema == pa.schema([("id", pa.int64()), ("score", pa.float64())])
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]


REFUSED = [
    "CREATE TABLE x (a INT)",
    "DROP TABLE plain",
    "ALTER TABLE plain ADD COLUMN z INT",
    "INSERT INTO plain SELECT * FROM plain",
    "UPDATE plain SET name = 'x'",
    "DELETE FROM plain",
    "SET threads = 64",
    "PRAGMA enable_profiling",
    "ATTACH '{tmp}/new.duckdb' AS n",
    "DETACH memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY plain TO '{tmp}/out.csv'",
    "EXPORT DATABASE '{tmp}/exported'",
    "IMPORT DATABASE '{tmp}'",
    "CALL pragma_version()",
    "CHECKPOINT",
    "SELECT 1; DELETE FROM plain",
    "EXPLAIN ANALYZE DELETE FROM plain",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM glob('{tmp}/*')",
    "FROM '{secret}'",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SELECT getenv('ARROWPORT_E2E_SECRET')",
    "SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')",
    "SELECT * FROM query_table('plain')",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM information_schema.tables",
]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".wal")}


def test_dangerous_sql_is_refused_and_changes_nothing(server: Server, tmp_path: Path) -> None:
    """DDL, DML, settings, ATTACH, extensions, COPY, EXPORT/IMPORT, CALL, several statements,
    files, URLs, environment and unnamed tables: each refused with a client status and a
    clear message, nothing read shown, no file made, every table unchanged."""
    (tmp_path / "secret.txt").write_text(SECRET)
    before = _files(tmp_path)
    for template in REFUSED:
        sql = template.format(tmp=tmp_path, secret=tmp_path / "secret.txt")
        error = failure(server, sql)
        assert status(error) in CLIENT_FAULTS, (sql, str(error))
        assert SECRET not in str(error) and str(tmp_path) not in str(error), (sql, str(error))
        assert "[FlightSQL]" in str(error)
    assert _files(tmp_path) == before
    for name in ("plain", "delta.ev_delta", "ducklake.ev_lake"):
        assert query(server, f"SELECT * FROM {name} ORDER BY id").to_pylist() == _expected()
    server.assert_serving()
    assert not any("Traceback" in line for line in server.log), "".join(server.log)


def test_updates_are_refused_as_unimplemented(server: Server) -> None:
    """CommandStatementUpdate (ADBC execute_update) answers UNIMPLEMENTED: the SQL is read-only."""
    with connect(server) as con, con.cursor() as cur:
        cur.adbc_statement.set_sql_query("DELETE FROM plain")
        with pytest.raises(AdbcError) as caught:
            cur.adbc_statement.execute_update()
    assert status(caught.value) == "NOT_IMPLEMENTED" and "read-only" in str(caught.value)
    assert query(server, "SELECT count(*) AS n FROM plain").to_pylist() == [{"n": ROWS}]


def test_a_query_over_its_memory_limit_fails_cleanly(server: Server) -> None:
    """A query that needs more than flight_sql.query_memory_limit fails RESOURCE_EXHAUSTED,
    naming the key; the server keeps serving queries."""
    error = failure(
        server, "SELECT count(*) FROM (SELECT * FROM range(20000000) ORDER BY random())"
    )
    assert "flight_sql.query_memory_limit" in str(error) and "ResourceExhausted" in str(error)
    assert query(server, "SELECT count(*) AS n FROM plain").to_pylist() == [{"n": ROWS}]
    server.assert_serving()


def test_values_built_outside_duckdbs_pool_fail_in_their_process(server: Server) -> None:
    """A query building a multi-GB string or list (outside DuckDB's memory_limit, even as a
    constant folded while planning) fails RESOURCE_EXHAUSTED in its own process: the server's
    memory does not move and it keeps serving."""
    assert server.proc is not None
    idle = _rss_mb(server.proc.pid)
    for sql in (
        "SELECT length(repeat('x', 3000000000)) AS n",
        "SELECT len([x FOR x IN range(200000000)]) AS n",
        "SELECT range(400000000) AS l",
    ):
        error = failure(server, sql)
        assert "ResourceExhausted" in str(error) and "query_memory_limit" in str(error), sql
    assert _rss_mb(server.proc.pid) - idle < 100
    assert query(server, "SELECT count(*) AS n FROM plain").to_pylist() == [{"n": ROWS}]
    server.assert_serving()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"VmRSS not in /proc/{pid}/status")


def test_a_large_result_streams_with_bounded_memory(server: Server) -> None:
    """Three million rows (~400 MB of Arrow) read slowly: server RSS grows by far less."""
    big = 1_000_000
    _ingest(server, "big", sample_table(big))
    assert server.proc is not None
    pid = server.proc.pid
    time.sleep(0.5)
    idle = _rss_mb(pid)
    peak = idle
    rows = total = nbytes = 0
    with connect(server) as con, con.cursor() as cur:
        cur.execute("SELECT b.*, r.range AS k, repeat('x', 80) AS pad FROM big b, range(3) r")
        for i, batch in enumerate(cur.fetch_record_batch()):
            rows += batch.num_rows
            total += pa.compute.sum(batch.column("id")).as_py() or 0
            nbytes += batch.nbytes
            if i % 20 == 0:
                peak = max(peak, _rss_mb(pid))
                time.sleep(0.01)  # a slow reader: the server must wait, not buffer
    assert rows == 3 * big and total == 3 * sum(range(big))
    assert nbytes > 350 * 1024**2
    print(f"RSS {idle:.0f} -> {peak:.0f} MB for {nbytes / 1024**2:.0f} MB of rows")
    assert peak - idle < 200, f"RSS grew {peak - idle:.0f} MB for {nbytes / 1024**2:.0f} MB"


@pytest.fixture
def slow_server(server_factory: type[Server], tmp_path: Path) -> Server:
    extra = "flight_sql: {query_timeout: 6, max_concurrent_queries: 1}\n"
    srv = server_factory(tmp_path, config=_config(tmp_path, extra)).start()
    _ingest(srv, "plain", sample_table(ROWS))
    return srv


LONG = "SELECT count(*) FROM range(1000000000000)"


def test_a_query_past_its_timeout_is_stopped(slow_server: Server) -> None:
    """A query longer than flight_sql.query_timeout ends DEADLINE_EXCEEDED naming the key,
    and frees its slot: the next query runs at once."""
    started = time.monotonic()
    error = failure(slow_server, LONG)
    elapsed = time.monotonic() - started
    assert "flight_sql.query_timeout" in str(error) and "DeadlineExceeded" in str(error)
    assert 5 < elapsed < 30
    started = time.monotonic()
    assert query(slow_server, "SELECT count(*) AS n FROM plain").to_pylist() == [{"n": ROWS}]
    assert time.monotonic() - started < 5


def test_the_calls_grpc_timeout_stops_the_query(slow_server: Server) -> None:
    """A DoGet whose grpc-timeout passes is stopped there: its slot is free long before
    flight_sql.query_timeout."""
    client = fl.FlightClient(f"grpc://127.0.0.1:{_port(slow_server)}")
    try:
        command = CommandStatementQuery(query=LONG)
        info = client.get_flight_info(fl.FlightDescriptor.for_command(pack(command)))
        with pytest.raises(fl.FlightTimedOutError):
            client.do_get(
                info.endpoints[0].ticket, options=fl.FlightCallOptions(timeout=0.5)
            ).read_all()
    finally:
        client.close()
    started = time.monotonic()
    assert query(slow_server, "SELECT 42 AS x").to_pylist() == [{"x": 42}]
    assert time.monotonic() - started < 4  # not waiting for the stopped query's 6 s
    assert not any("Traceback" in line or "bug" in line for line in slow_server.log)


def test_a_query_waits_for_a_slot(slow_server: Server) -> None:
    """With max_concurrent_queries 1, a query waits for the running one to end, then runs."""
    errors: list[BaseException] = []

    def hog() -> None:
        try:
            query(slow_server, LONG)
        except AdbcError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hog)
    thread.start()
    time.sleep(1.5)
    started = time.monotonic()
    assert query(slow_server, "SELECT 42 AS x").to_pylist() == [{"x": 42}]
    waited = time.monotonic() - started
    thread.join(60)
    assert len(errors) == 1 and "flight_sql.query_timeout" in str(errors[0])
    assert waited > 2, f"ran after {waited:.1f} s, beside the running query"


def test_queries_can_be_turned_off(server_factory: type[Server], tmp_path: Path) -> None:
    """flight_sql.queries: false answers UNIMPLEMENTED naming the switch; ingest still works."""
    srv = server_factory(tmp_path, config=_config(tmp_path, "flight_sql: {queries: false}\n"))
    srv.start()
    _ingest(srv, "plain", sample_table(10))
    error = failure(srv, "SELECT 1")
    assert status(error) == "NOT_IMPLEMENTED" and "flight_sql.queries" in str(error)


@pytest.fixture
def auth_server(server_factory: type[Server], tmp_path: Path) -> Iterator[Server]:
    extra = (
        "flight_sql: {prepared_statement_ttl: 3}\n"
        f"auth:\n  tokens:\n    - {ADMIN}\n    - {{token: {PLAIN_ONLY}, streams: [plain]}}\n"
    )
    srv = server_factory(tmp_path, config=_config(tmp_path, extra)).start()
    for stream in ("plain", "ev_delta", "ev_lake"):
        _ingest(srv, stream, sample_table(ROWS), token=ADMIN)
    yield srv


def test_who_may_query(auth_server: Server) -> None:
    """No token: UNAUTHENTICATED. An unscoped token queries every table; a token scoped to
    streams only the tables they write: any other table named is PERMISSION_DENIED."""
    with pytest.raises(AdbcError) as caught:
        query(auth_server, "SELECT 1")
    assert status(caught.value) == "UNAUTHENTICATED"
    for name in ("plain", "delta.ev_delta", "ducklake.ev_lake"):
        n = query(auth_server, f"SELECT count(*) AS n FROM {name}", token=ADMIN)
        assert n.to_pylist() == [{"n": ROWS}]
    scoped = query(auth_server, "SELECT count(*) AS n FROM plain", token=PLAIN_ONLY)
    assert scoped.to_pylist() == [{"n": ROWS}]
    for sql in (
        "SELECT * FROM delta.ev_delta",
        "SELECT * FROM plain JOIN ducklake.ev_lake USING (id)",
        "SELECT * FROM plain WHERE id IN (SELECT id FROM delta.ev_delta)",
        "SELECT * FROM ev_delta",  # the default backend has no such table: refused first
    ):
        error = failure(auth_server, sql, token=PLAIN_ONLY)
        assert status(error) == "UNAUTHORIZED" and "may not query" in str(error), sql
    # a table not named is out of reach even from inside query()
    error = failure(
        auth_server, "SELECT * FROM plain, query('SELECT * FROM ev_delta')", token=PLAIN_ONLY
    )
    assert status(error) in CLIENT_FAULTS


def _prepare(client: fl.FlightClient, sql: str, token: str) -> bytes:
    options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    body = pack(ActionCreatePreparedStatementRequest(query=sql))
    results = list(client.do_action(fl.Action("CreatePreparedStatement", body), options=options))
    packed = AnyMessage.decode(results[0].body.to_pybytes())
    handle: bytes = ActionCreatePreparedStatementResult.decode(
        packed.value
    ).prepared_statement_handle
    return handle


def _info(client: fl.FlightClient, handle: bytes, token: str) -> fl.FlightInfo:
    options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    command = CommandPreparedStatementQuery(prepared_statement_handle=handle)
    return client.get_flight_info(fl.FlightDescriptor.for_command(pack(command)), options)


def test_a_handle_is_its_tokens_unforgeable_and_expires(auth_server: Server) -> None:
    """A prepared statement's handle works for its token only, cannot be altered, and
    expires after flight_sql.prepared_statement_ttl."""
    client = fl.FlightClient(f"grpc://127.0.0.1:{_port(auth_server)}")
    try:
        handle = _prepare(client, "SELECT count(*) AS n FROM plain", PLAIN_ONLY)
        assert _info(client, handle, PLAIN_ONLY).schema == pa.schema([("n", pa.int64())])
        with pytest.raises(fl.FlightUnauthorizedError, match="another token"):
            _info(client, handle, ADMIN)
        tampered = handle.replace(b"plain", b"ev_lk")
        assert tampered != handle
        with pytest.raises(pa.ArrowInvalid, match="not made by this server"):
            _info(client, tampered, PLAIN_ONLY)
        time.sleep(3.5)
        with pytest.raises(pa.ArrowInvalid, match="expired"):
            _info(client, handle, PLAIN_ONLY)
    finally:
        client.close()


def test_parameter_uploads_are_one_small_row(server: Server) -> None:
    """A DoPut of values answers a new handle carrying them; more than one row, or a large
    upload, is refused with nothing bound."""
    client = fl.FlightClient(f"grpc://127.0.0.1:{_port(server)}")
    try:
        body = pack(
            ActionCreatePreparedStatementRequest(
                query="SELECT count(*) AS n FROM plain WHERE id < ?"
            )
        )
        (packed,) = client.do_action(fl.Action("CreatePreparedStatement", body))
        created = ActionCreatePreparedStatementResult.decode(
            AnyMessage.decode(packed.body.to_pybytes()).value
        )
        assert created.dataset_schema == b""  # known once values are bound
        assert pa.ipc.read_schema(pa.py_buffer(created.parameter_schema)).names == ["1"]
        command = CommandPreparedStatementQuery(
            prepared_statement_handle=created.prepared_statement_handle
        )
        descriptor = fl.FlightDescriptor.for_command(pack(command))

        def put(batch: pa.RecordBatch) -> bytes:
            writer, reader = client.do_put(descriptor, batch.schema)
            writer.write_batch(batch)
            writer.done_writing()
            answer = reader.read()
            writer.close()
            assert answer is not None
            bound = DoPutPreparedStatementResult.decode(answer.to_pybytes())
            assert bound.prepared_statement_handle is not None
            return bound.prepared_statement_handle

        handle = put(pa.record_batch({"limit": [10]}))
        bound = CommandPreparedStatementQuery(prepared_statement_handle=handle)
        info = client.get_flight_info(fl.FlightDescriptor.for_command(pack(bound)))
        assert client.do_get(info.endpoints[0].ticket).read_all().to_pylist() == [{"n": 10}]
        with pytest.raises(pa.ArrowInvalid, match="one row"):
            put(pa.record_batch({"limit": [1, 2]}))
        with pytest.raises(pa.ArrowInvalid, match=r"resource exhausted.*over 2097152 bytes"):
            put(pa.record_batch({"limit": ["x" * 3_000_000]}))
        with pytest.raises(pa.ArrowInvalid, match="parameter"):  # the original: none bound
            client.get_flight_info(descriptor)
    finally:
        client.close()
    server.assert_serving()


def test_an_empty_result_has_its_schema(server: Server) -> None:
    """A query with no rows answers its schema and no batch."""
    table = query(server, "SELECT id, name FROM plain WHERE id < 0")
    assert table.num_rows == 0
    assert table.schema == pa.schema([("id", pa.int64()), ("name", pa.string())])
