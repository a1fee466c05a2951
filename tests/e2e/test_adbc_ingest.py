"""ADBC bulk ingest (Flight SQL ``CommandStatementIngest``) on a real server, with the real
ADBC Flight SQL driver (Go, grpc-go), into real DuckDB, DuckLake and Delta tables."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from deltalake import DeltaTable
from lake_support import attach_lake
from support import Server, sample_table

from arrowport.protocol.flight_sql import (
    CommandStatementIngest,
    DoPutUpdateResult,
    StringMapEntry,
    TableDefinitionOptions,
    pack,
)

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

BACKENDS = ("duckdb", "ducklake", "delta")
ADMIN = "admin-token-0123456789abcdef"
SCOPED = "scoped-token-0123456789abcdef"
LIMIT = 3_000_000  # limits.max_request_size: a replace larger than this fails midway
KEY_OPTION = "adbc.flight.sql.rpc.call_header.idempotency-key"


def config(workdir: Path, extra: str = "") -> Path:
    path = workdir / "arrowport.yaml"
    path.write_text(
        f"delta_config: {{table_path: {workdir / 'lake'}}}\n"
        "ducklake:\n"
        f"  catalog: {workdir / 'meta.ducklake'}\n"
        f"  data_path: {workdir / 'lakedata'}\n"
        "  merge_interval: 0\n"
        f"limits: {{max_request_size: {LIMIT}}}\n"
        "streams:\n"
        "  lake_events: {storage_backend: ducklake}\n"
        "  routed: {storage_backend: delta, target_table: routed_t}\n" + extra
    )
    return path


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    return server_factory(tmp_path, config=config(tmp_path)).start()


def connect(server: Server, token: str | None = None) -> Any:
    port = httpx.URL(server.url).port
    kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {token}"} if token else {}
    return flightsql.connect(f"grpc://127.0.0.1:{port}", db_kwargs=kwargs)


@pytest.fixture
def conn(server: Server) -> Iterator[Any]:
    with connect(server) as c:
        yield c


def ingest(
    conn: Any,
    table: str,
    data: pa.Table | pa.RecordBatchReader,
    mode: str,
    catalog: str | None = None,
    *,
    schema: str | None = None,
    key: str | None = None,
    temporary: bool = False,
) -> int:
    """``adbc_ingest``; the record count the server answered."""
    with conn.cursor() as cur:
        if key is not None:
            cur.adbc_statement.set_options(**{KEY_OPTION: key})
        return int(
            cur.adbc_ingest(
                table,
                data,
                mode=mode,
                catalog_name=catalog,
                db_schema_name=schema,
                temporary=temporary,
            )
        )


def refused(conn: Any, code: str, *args: Any, **kwargs: Any) -> str:
    """The message of an ingest refused with gRPC status ``code`` (as grpc-go names it)."""
    with pytest.raises(Exception) as caught:  # the driver's DB-API classes vary by status
        ingest(conn, *args, **kwargs)
    message = str(caught.value)
    assert f"({code};" in message, message
    return message


def words(*values: str) -> pa.Table:
    return pa.table(
        {"word": pa.array(values, pa.string()), "n": pa.array(range(len(values)), pa.int32())}
    )


def rows(data: pa.Table) -> list[dict[str, Any]]:
    key = data.schema.names[0]
    return sorted(data.to_pylist(), key=lambda row: row[key])


def read_back(server: Server, backend: str, table: str) -> pa.Table | None:
    """The table as its backend's own reader sees it (stops the server for DuckDB and
    DuckLake, whose files one process holds); None if it does not exist."""
    if backend == "delta":
        path = server.workdir / "lake" / table
        return DeltaTable(str(path)).to_pyarrow_table() if (path / "_delta_log").is_dir() else None
    server.stop()
    with duckdb.connect(str(server.db) if backend == "duckdb" else ":memory:") as con:
        catalog = "current_database()"
        if backend == "ducklake":
            attach_lake(con, server.workdir / "meta.ducklake", server.workdir / "lakedata")
            catalog = "'lake'"
        found = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            f"WHERE table_catalog = {catalog} AND table_name = ?",
            [table],
        ).fetchone()
        if not found or not found[0]:
            return None
        name = f"lake.{table}" if backend == "ducklake" else table
        return con.execute(f"SELECT * FROM {name}").to_arrow_table()


def slow_words(batches: int, pause: float) -> pa.RecordBatchReader:
    """A stream of one-row batches, ``pause`` seconds apart (a producer slower than a deadline)."""

    def produce() -> Iterator[pa.RecordBatch]:
        for i in range(batches):
            time.sleep(pause)
            yield words(f"w{i}").to_batches()[0]

    return pa.RecordBatchReader.from_batches(words().schema, produce())


def metrics(server: Server) -> str:
    return server.get("/metrics").text


def groups(server: Server) -> float:
    found = re.search(r"^arrowport_group_commit_requests_count (\S+)$", metrics(server), re.M)
    return float(found.group(1)) if found else 0.0


# -- the four modes -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_mode_writes_exactly_its_rows(server: Server, conn: Any, backend: str) -> None:
    """create, append, create_append and replace each write exactly the rows sent."""
    first = sample_table(300)
    assert ingest(conn, "t", first.to_reader(max_chunksize=70), "create", backend) == 300
    assert ingest(conn, "t", sample_table(50, offset=300), "append", backend) == 50
    assert ingest(conn, "ca", sample_table(20), "create_append", backend) == 20  # creates
    assert ingest(conn, "ca", sample_table(5, offset=20), "create_append", backend) == 5
    assert ingest(conn, "r", sample_table(40), "create", backend) == 40
    assert ingest(conn, "r", words("b", "a", "c"), "replace", backend) == 3
    assert ingest(conn, "new_r", words("z"), "replace", backend) == 1  # missing: created
    expected = {
        "t": rows(pa.concat_tables([first, sample_table(50, offset=300)])),
        "ca": rows(pa.concat_tables([sample_table(20), sample_table(5, offset=20)])),
        "r": rows(words("b", "a", "c")),
        "new_r": rows(words("z")),
    }
    got = {name: read_back(server, backend, name) for name in expected}
    for name, want in expected.items():
        data = got[name]
        assert data is not None, name
        assert rows(data) == want, name
    assert got["r"] is not None and got["r"].schema.names == ["word", "n"]  # the new schema


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_on_an_existing_table_and_append_to_a_missing_one_are_refused(
    server: Server, conn: Any, backend: str
) -> None:
    """create on an existing table: ALREADY_EXISTS, table unchanged; append to a missing
    table: NOT_FOUND, nothing created; the connection and server keep serving."""
    assert ingest(conn, "t", sample_table(10), "create", backend) == 10
    message = refused(conn, "AlreadyExists", "t", sample_table(99, offset=10), "create", backend)
    assert "table 't' already exists" in message
    message = refused(conn, "NotFound", "missing", sample_table(5), "append", backend)
    assert "table 'missing' does not exist" in message
    assert ingest(conn, "t", sample_table(1, offset=10), "append", backend) == 1
    server.assert_serving()
    table = read_back(server, backend, "t")
    assert table is not None
    assert rows(table) == rows(pa.concat_tables([sample_table(10), sample_table(1, offset=10)]))
    assert read_back(server, backend, "missing") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_replace_failing_midway_leaves_the_old_table(
    server: Server, conn: Any, backend: str
) -> None:
    """A replace that breaks a limit after sending batches changes nothing: the old table,
    its schema and rows stay (the DROP, CREATE and inserts are rolled back together)."""
    assert ingest(conn, "t", sample_table(100), "create", backend) == 100
    big = pa.table({"blob": [b"x" * 50_000] * 120})  # ~6 MB in 40 batches, over LIMIT
    message = refused(conn, "ResourceExhausted", "t", big.to_reader(max_chunksize=3), "replace")
    assert "exceeds the limit" in message
    assert ingest(conn, "t", sample_table(1, offset=100), "append", backend) == 1
    table = read_back(server, backend, "t")
    assert table is not None
    assert rows(table) == rows(pa.concat_tables([sample_table(100), sample_table(1, offset=100)]))
    assert table.schema.names == sample_table(1).schema.names


def test_a_replace_past_its_deadline_changes_nothing(server: Server, conn: Any) -> None:
    """A replace whose grpc-timeout (ADBC's update timeout) passes mid-upload ends with
    DEADLINE_EXCEEDED and leaves the old table; with time enough, a replace commits."""
    timeout = "adbc.flight.sql.rpc.timeout_seconds.update"
    assert ingest(conn, "t", words("a", "b"), "create") == 2
    with conn.cursor() as cur:
        cur.adbc_statement.set_options(**{timeout: "0.3"})
        with pytest.raises(Exception, match="DeadlineExceeded"):
            cur.adbc_ingest("t", slow_words(40, pause=0.05), mode="replace")  # 2 s
    with conn.cursor() as cur:
        cur.adbc_statement.set_options(**{timeout: "60"})
        assert cur.adbc_ingest("t", words("c"), mode="append") == 1
        assert cur.adbc_ingest("u", words("d"), mode="replace") == 1
    table = read_back(server, "duckdb", "t")
    assert table is not None and sorted(table.column("word").to_pylist()) == ["a", "b", "c"]


# -- idempotency -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_retried_key_replays_in_every_mode(server: Server, conn: Any, backend: str) -> None:
    """The same idempotency-key call header twice: one write, the same record_count; a
    retried create replays instead of finding its own table, a retried replace does not
    replace again (even after the table changed)."""
    assert ingest(conn, "c", sample_table(30), "create", backend, key="create-1") == 30
    assert ingest(conn, "c", sample_table(30), "create", backend, key="create-1") == 30
    assert ingest(conn, "c", sample_table(7, offset=30), "append", backend, key="append-1") == 7
    assert ingest(conn, "c", sample_table(7, offset=30), "append", backend, key="append-1") == 7
    assert ingest(conn, "r", words("a", "b"), "replace", backend, key="replace-1") == 2
    assert ingest(conn, "r", words("c"), "append", backend) == 1  # the table changes
    assert ingest(conn, "r", words("a", "b"), "replace", backend, key="replace-1") == 2
    assert ingest(conn, "ca", words("q"), "create_append", backend, key="ca-1") == 1
    assert ingest(conn, "ca", words("q"), "create_append", backend, key="ca-1") == 1
    assert ingest(conn, "ca", words("q"), "create_append", backend, key="ca-2") == 1
    assert "replayed" in metrics(server)
    got = {name: read_back(server, backend, name) for name in ("c", "r", "ca")}
    expected = pa.concat_tables([sample_table(30), sample_table(7, offset=30)])
    assert got["c"] is not None and rows(got["c"]) == rows(expected)
    assert got["r"] is not None and sorted(got["r"].column("word").to_pylist()) == ["a", "b", "c"]
    assert got["ca"] is not None and got["ca"].column("word").to_pylist() == ["q", "q"]


def test_a_malformed_key_is_refused_before_anything_is_written(server: Server, conn: Any) -> None:
    """An idempotency-key header that HTTP would refuse is INVALID_ARGUMENT here too."""
    message = refused(conn, "InvalidArgument", "t", words("a"), "create", key="has space")
    assert "idempotency key" in message
    assert read_back(server, "duckdb", "t") is None


# -- catalogs, schemas and what is refused ----------------------------------------------------


def test_without_a_catalog_a_table_goes_where_its_stream_goes(server: Server, conn: Any) -> None:
    """No catalog: a configured stream's table goes to its backend, any other table to the
    default backend; db_schema 'main' is accepted."""
    assert ingest(conn, "routed_t", words("d"), "create") == 1  # stream 'routed': Delta
    assert ingest(conn, "lake_events", words("l"), "create", schema="main") == 1  # DuckLake
    assert ingest(conn, "plain", words("p"), "create", schema="MAIN") == 1  # default: DuckDB
    delta = read_back(server, "delta", "routed_t")
    assert delta is not None and delta.column("word").to_pylist() == ["d"]
    assert read_back(server, "duckdb", "routed_t") is None
    plain = read_back(server, "duckdb", "plain")
    assert plain is not None and plain.column("word").to_pylist() == ["p"]
    lake = read_back(server, "ducklake", "lake_events")
    assert lake is not None and lake.column("word").to_pylist() == ["l"]


def test_bad_catalogs_schemas_and_temporary_tables_are_refused(server: Server, conn: Any) -> None:
    """Unknown catalog or schema: INVALID_ARGUMENT naming the choices; temporary tables:
    UNIMPLEMENTED; a bad table name: INVALID_ARGUMENT. Nothing is created."""
    message = refused(conn, "InvalidArgument", "t", words("a"), "create", "postgres")
    assert "unknown catalog 'postgres'" in message and "duckdb, ducklake, delta" in message
    message = refused(conn, "InvalidArgument", "t", words("a"), "create", schema="sales")
    assert "unknown db_schema 'sales'" in message and "'main'" in message
    message = refused(conn, "Unimplemented", "t", words("a"), "create", temporary=True)
    assert "temporary tables are not supported" in message
    refused(conn, "InvalidArgument", "bad name;", words("a"), "create")
    refused(conn, "InvalidArgument", "_arrowport_ledger", words("a"), "replace")
    server.assert_serving()
    assert read_back(server, "duckdb", "t") is None


def test_a_backend_the_server_does_not_run_is_failed_precondition(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """catalog 'ducklake' on a server without DuckLake: FAILED_PRECONDITION, saying why."""
    server = server_factory(tmp_path).start()
    with connect(server) as conn:
        message = refused(conn, "FailedPrecondition", "t", words("a"), "create", "ducklake")
    assert "does not run" in message


def raw_ingest(server: Server, command: CommandStatementIngest, data: pa.Table) -> Any:
    """DoPut of ``command`` from pyarrow's Flight client (for fields ADBC never sets):
    the decoded DoPutUpdateResult, or the FlightError."""
    client = fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")
    descriptor = fl.FlightDescriptor.for_command(pack(command))
    try:
        writer, reader = client.do_put(descriptor, data.schema)
        try:
            writer.write_table(data)
            writer.done_writing()
            answers = []
            while (buf := reader.read()) is not None:
                answers.append(DoPutUpdateResult.decode(buf.to_pybytes()))
            return answers
        finally:
            writer.close()
    except pa.ArrowException as exc:  # INVALID_ARGUMENT is ArrowInvalid, not a FlightError
        return exc
    finally:
        client.close()


def test_fields_adbc_never_sets_are_checked(server: Server) -> None:
    """transaction_id, options and UNSPECIFIED or unsupported modes are refused with a
    message naming them; a plain command gets exactly one DoPutUpdateResult."""
    modes = TableDefinitionOptions(if_not_exist=1, if_exists=2)
    data = words("a", "b")
    answers = raw_ingest(
        server, CommandStatementIngest(table_definition_options=modes, table="t"), data
    )
    assert answers == [DoPutUpdateResult(record_count=2)]
    cases = {
        "transaction_id is set": CommandStatementIngest(
            table_definition_options=modes, table="t", transaction_id=b"tx1"
        ),
        "unknown options 'partition'": CommandStatementIngest(
            table_definition_options=modes,
            table="t",
            options=(StringMapEntry(key="partition", value="x"),),
        ),
        "if_not_exist is UNSPECIFIED": CommandStatementIngest(
            table_definition_options=TableDefinitionOptions(if_not_exist=0, if_exists=2), table="t"
        ),
        "if_exists is UNSPECIFIED": CommandStatementIngest(
            table_definition_options=TableDefinitionOptions(if_not_exist=1, if_exists=0), table="t"
        ),
        "table_definition_options is missing": CommandStatementIngest(table="t"),
        "if_not_exist=FAIL with if_exists=FAIL": CommandStatementIngest(
            table_definition_options=TableDefinitionOptions(if_not_exist=2, if_exists=1), table="t"
        ),
    }
    for text, command in cases.items():
        error = raw_ingest(server, command, data)
        assert isinstance(error, pa.ArrowInvalid) and text in str(error), (text, error)
        assert "invalid argument error" in str(error), error
    server.assert_serving()
    table = read_back(server, "duckdb", "t")
    assert table is not None and table.num_rows == 2


# -- the pipeline: refusals after the data, group commit, metrics ------------------------------


def test_a_refusal_after_a_large_upload_ends_the_call_cleanly(server: Server, conn: Any) -> None:
    """The driver sends all its data before it reads the answer: a refusal still arrives as
    its own status (not INTERNAL or UNAVAILABLE), and the same connection keeps working."""
    big = pa.table({"blob": [b"y" * 100_000] * 200})  # 20 MB
    for _ in range(2):
        refused(conn, "InvalidArgument", "t", big.to_reader(max_chunksize=4), "create", "nope")
    assert ingest(conn, "t", words("ok"), "create") == 1
    server.assert_serving()


def test_only_create_append_joins_group_commits(server: Server, conn: Any) -> None:
    """create_append may share a group commit; create, append and replace commit alone.
    Their metrics carry protocol="flight_sql"."""
    before = groups(server)
    ingest(conn, "g", words("a"), "create")
    ingest(conn, "g", words("b"), "append")
    ingest(conn, "g", words("c"), "replace")
    assert groups(server) == before
    ingest(conn, "g", words("d"), "create_append")
    assert groups(server) == before + 1
    text = metrics(server)
    assert re.search(r'arrowport_rows_total\{[^}]*protocol="flight_sql"[^}]*\} 4\.0', text), text


# -- auth ---------------------------------------------------------------------------------


def test_tokens_and_scopes(server_factory: type[Server], tmp_path: Path) -> None:
    """No token: UNAUTHENTICATED; a token scoped to stream 'events' writes its table on its
    backend only (PERMISSION_DENIED elsewhere); an unscoped token writes anywhere."""
    auth = f"auth:\n  tokens:\n    - {ADMIN}\n    - {{token: {SCOPED}, streams: [events]}}\n"
    server = server_factory(tmp_path, config=config(tmp_path, auth)).start()
    with connect(server, "not-a-valid-token-0123456789") as conn:
        refused(conn, "Unauthenticated", "events", words("a"), "create")
    with connect(server, SCOPED) as conn:
        assert ingest(conn, "events", words("a"), "create") == 1
        message = refused(conn, "PermissionDenied", "other", words("a"), "create")
        assert "may not write table 'other'" in message
        refused(conn, "PermissionDenied", "events", words("a"), "create", "delta")
    with connect(server, ADMIN) as conn:
        assert ingest(conn, "other", words("b"), "create", "delta") == 1
    assert read_back(server, "delta", "events") is None
    other = read_back(server, "delta", "other")
    assert other is not None and other.column("word").to_pylist() == ["b"]
    events = read_back(server, "duckdb", "events")
    assert events is not None and events.column("word").to_pylist() == ["a"]
