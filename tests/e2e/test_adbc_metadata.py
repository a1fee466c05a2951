"""Flight SQL metadata with the real ADBC Flight SQL driver (Go) against a real server.

One server runs all three backends (catalogs ``delta``, ``duckdb``, ``ducklake``,
each with the schema ``main``); tables are ingested over HTTP first. Raw
commands go through pyarrow's Flight client, packed by hand.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import duckdb
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client
from support import Server, ipc_bytes, sample_table

from arrowport import __version__
from arrowport.config import Config
from arrowport.protocol import flight_sql as sql
from arrowport.protocol import flight_sql_info as info

CONFIG = """
ducklake: {catalog: ./meta.ducklake, data_path: ./lakedata}
delta_config: {table_path: ./lake}
streams:
  lake_events: {storage_backend: ducklake}
  delta_events: {storage_backend: delta}
"""
ADMIN = "admin-token-0123456789abcdef"
SCOPED = "scoped-token-0123456789abcdef"
AUTH = f"""
auth:
  tokens:
    - {ADMIN}
    - {{token: {SCOPED}, streams: [events, lake_events]}}
"""
TABLES = {
    "delta": ["delta_events"],
    "duckdb": ["events", "orders", "order_items"],
    "ducklake": ["lake_events"],
}


def _ingest(server: Server, stream: str, table: pa.Table, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    response = server.post(stream, ipc_bytes(table), headers=headers)
    assert response.status_code == 200, response.text


def _start(server_factory: type[Server], tmp_path: Path, extra: str = "") -> Server:
    config = tmp_path / "arrowport.yaml"
    config.write_text(CONFIG + extra)
    return server_factory(tmp_path, config=config).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only read (they change nothing)."""
    workdir = tmp_path_factory.mktemp("adbc_metadata")
    (workdir / "arrowport.yaml").write_text(CONFIG)
    server = Server(workdir, config=workdir / "arrowport.yaml").start()
    try:
        for stream in ["events", "orders", "order_items", "lake_events", "delta_events"]:
            _ingest(server, stream, sample_table(20))
        yield server
    finally:
        server.stop()


def _uri(server: Server) -> str:
    return f"grpc://127.0.0.1:{httpx.URL(server.url).port}"


@pytest.fixture
def conn(server: Server) -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cannot disable autocommit": no transactions
        connection = flightsql.connect(_uri(server))
    yield connection
    connection.close()


def _objects(conn: Any, **filters: Any) -> list[dict[str, Any]]:
    return list(conn.adbc_get_objects(**filters).read_all().to_pylist())


def _tables(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        catalog["catalog_name"]: [
            table["table_name"]
            for schema in catalog["catalog_db_schemas"]
            for table in schema["db_schema_tables"]
        ]
        for catalog in objects
    }


def _command(client: fl.FlightClient, command: sql.Message) -> tuple[fl.FlightInfo, pa.Table]:
    """GetFlightInfo for ``command``, then DoGet of its one endpoint."""
    flight = client.get_flight_info(fl.FlightDescriptor.for_command(sql.pack(command)))
    assert len(flight.endpoints) == 1
    return flight, client.do_get(flight.endpoints[0].ticket).read_all()


# -- SqlInfo -----------------------------------------------------------------------------------


def test_get_info_reports_the_server(conn: Any) -> None:
    """adbc_get_info: vendor name, version and Arrow version come from the server."""
    got = conn.adbc_get_info()
    assert got["vendor_name"] == "Arrowport"
    assert got["vendor_version"] == __version__
    assert got["vendor_arrow_version"] == pa.__version__
    handle = conn.adbc_connection.get_info([3, 4])  # ADBC_INFO_VENDOR_SQL, _SUBSTRAIT
    rows = pa.RecordBatchReader._import_from_c(handle.address).read_all().to_pylist()
    assert {row["info_name"]: row["info_value"] for row in rows} == {3: True, 4: False}


def test_sql_info_over_raw_flight(server: Server) -> None:
    """CommandGetSqlInfo: the spec's schema; asked ids answered in order, unknown ones left
    out; no ids asked: every server id and every syntax id 500-576."""
    client = flight_client(server)
    flight, table = _command(client, sql.CommandGetSqlInfo(info=(8, 10, 11, 9999, 504, 508)))
    assert flight.schema == info.SQL_INFO_SCHEMA and table.schema == info.SQL_INFO_SCHEMA
    assert (flight.total_records, flight.total_bytes) == (-1, -1)
    assert flight.descriptor.command == sql.pack(
        sql.CommandGetSqlInfo(info=(8, 10, 11, 9999, 504, 508))
    )
    rows = {row["info_name"]: row["value"] for row in table.to_pylist()}
    assert list(rows) == [8, 10, 11, 504, 508]
    assert (rows[8], rows[10], rows[11], rows[504]) == (0, True, False, '"')
    keywords = set(rows[508])
    assert {"SELECT", "FROM", "WHERE", "PIVOT", "QUALIFY"} <= keywords  # DuckDB's own
    union = table.column("value").chunk(0)
    assert union.type_codes.to_pylist() == [3, 1, 1, 0, 4]  # int32, bool, bool, string, list
    _, everything = _command(client, sql.CommandGetSqlInfo())
    ids = everything["info_name"].to_pylist()
    assert ids == sorted(ids)
    assert set(range(500, 577)) | {0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 100, 101} == set(ids)
    values = {row["info_name"]: row["value"] for row in everything.to_pylist()}
    assert "ABS" in values[509] and "LOWER" in values[510] and "DATE_TRUNC" in values[512]
    converts = dict(values[517])
    assert 19 in converts[4] and 7 not in converts[4]  # DATE -> VARCHAR, not -> INTEGER
    schema = client.get_schema(fl.FlightDescriptor.for_command(sql.pack(sql.CommandGetSqlInfo())))
    assert schema.schema == info.SQL_INFO_SCHEMA


@pytest.mark.skipif(
    "flight_sql" not in {f.name for f in dataclasses.fields(Config)},
    reason="the flight_sql config section comes with the query work of issue 19",
)
def test_queries_off_reports_no_sql(server_factory: type[Server], tmp_path: Path) -> None:
    """With flight_sql.queries off, SqlInfo 4 (and 506) say no SQL; bulk ingest stays on."""
    server = _start(server_factory, tmp_path, "flight_sql: {queries: false}\n")
    _, table = _command(flight_client(server), sql.CommandGetSqlInfo(info=(4, 506, 10)))
    rows = {row["info_name"]: row["value"] for row in table.to_pylist()}
    assert rows == {4: False, 506: False, 10: True}


# -- catalogs, schemas, tables ---------------------------------------------------------------


def test_get_objects_catalogs_and_schemas(conn: Any) -> None:
    """Catalogs are the backends served, sorted; each has the one schema main; filters apply."""
    catalogs = _objects(conn, depth="catalogs")
    assert [c["catalog_name"] for c in catalogs] == ["delta", "duckdb", "ducklake"]
    assert all(c["catalog_db_schemas"] is None for c in catalogs)
    duck = _objects(conn, depth="catalogs", catalog_filter="duck%")
    assert [c["catalog_name"] for c in duck] == ["duckdb", "ducklake"]
    schemas = _objects(conn, depth="db_schemas")
    assert [
        (c["catalog_name"], [s["db_schema_name"] for s in c["catalog_db_schemas"]]) for c in schemas
    ] == [("delta", ["main"]), ("duckdb", ["main"]), ("ducklake", ["main"])]
    assert all(s["db_schema_tables"] is None for c in schemas for s in c["catalog_db_schemas"])
    none = _objects(conn, depth="db_schemas", db_schema_filter="public")
    assert all(c["catalog_db_schemas"] == [] for c in none)
    assert _objects(conn, depth="db_schemas", db_schema_filter="MA_N")[0]["catalog_db_schemas"]


def test_get_objects_tables_with_filters(conn: Any) -> None:
    """Tables of every backend, sorted; table name patterns (% and _) and types filter them."""
    assert _tables(_objects(conn, depth="tables")) == {
        "delta": ["delta_events"],
        "duckdb": ["events", "order_items", "orders"],
        "ducklake": ["lake_events"],
    }
    assert _tables(_objects(conn, depth="tables", table_name_filter="%events")) == {
        "delta": ["delta_events"],
        "duckdb": ["events"],
        "ducklake": ["lake_events"],
    }
    assert _tables(_objects(conn, depth="tables", table_name_filter="order_")) == {
        "delta": [],
        "duckdb": ["orders"],
        "ducklake": [],
    }
    only = _objects(conn, depth="tables", catalog_filter="duckdb", table_name_filter="ORDER%")
    assert _tables(only) == {"duckdb": ["order_items", "orders"]}
    kinds = {
        table["table_type"]
        for catalog in _objects(conn, depth="tables")
        for schema in catalog["catalog_db_schemas"]
        for table in schema["db_schema_tables"]
    }
    assert kinds == {"TABLE"}
    views = _objects(conn, depth="tables", table_types_filter=["VIEW"])
    assert _tables(views) == {"delta": [], "duckdb": [], "ducklake": []}
    both = _objects(conn, depth="tables", table_types_filter=["VIEW", "TABLE"])
    assert _tables(both)["ducklake"] == ["lake_events"]


def test_get_objects_columns(conn: Any) -> None:
    """Depth all: each column with its position, XDBC type and DuckDB type name; column
    filters apply."""
    objects = _objects(conn, catalog_filter="ducklake", table_name_filter="lake_events")
    (table,) = objects[0]["catalog_db_schemas"][0]["db_schema_tables"]
    columns = table["table_columns"]
    assert [(c["column_name"], c["ordinal_position"]) for c in columns] == [
        ("id", 1),
        ("name", 2),
        ("score", 3),
        ("day", 4),
        ("ts", 5),
    ]
    assert [c["xdbc_type_name"] for c in columns] == [
        "BIGINT",
        "VARCHAR",
        "DOUBLE",
        "DATE",
        "TIMESTAMP",
    ]
    assert {
        (c["xdbc_scope_catalog"], c["xdbc_scope_schema"], c["xdbc_scope_table"]) for c in columns
    } == {("ducklake", "main", "lake_events")}
    assert table["table_constraints"] == []
    named = _objects(
        conn, catalog_filter="duckdb", table_name_filter="events", column_name_filter="_d"
    )
    (events,) = named[0]["catalog_db_schemas"][0]["db_schema_tables"]
    assert [c["column_name"] for c in events["table_columns"]] == ["id"]


@pytest.mark.parametrize("catalog", ["duckdb", "ducklake", "delta"])
def test_get_table_schema_is_the_stored_schema(conn: Any, catalog: str) -> None:
    """adbc_get_table_schema: exactly the schema a read of the table returns, with the
    column metadata of Flight SQL."""
    name = TABLES[catalog][0]
    schema = conn.adbc_get_table_schema(name, catalog_filter=catalog, db_schema_filter="main")
    assert schema.equals(sample_table(1).schema)  # names, types, nullability
    metadata = schema.field("id").metadata
    assert metadata[b"ARROW:FLIGHT:SQL:CATALOG_NAME"] == catalog.encode()
    assert metadata[b"ARROW:FLIGHT:SQL:TABLE_NAME"] == name.encode()
    assert metadata[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"BIGINT"


def test_get_table_schema_of_a_missing_table_is_not_found(conn: Any) -> None:
    """A table no catalog has: the driver's NotFound, not an error of the server."""
    with pytest.raises(adbc_driver_manager.ProgrammingError) as caught:
        conn.adbc_get_table_schema("nothere", catalog_filter="duckdb")
    assert caught.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
    with pytest.raises(adbc_driver_manager.ProgrammingError):
        conn.adbc_get_table_schema("events", catalog_filter="nocatalog")


def test_type_names_are_duckdbs(server_factory: type[Server], tmp_path: Path) -> None:
    """TYPE_NAME is what DuckDB itself calls each stored column (DESCRIBE, read after stop)."""
    server = server_factory(tmp_path).start()
    table = pa.table(
        {
            "flag": pa.array([True]),
            "small": pa.array([1], pa.int16()),
            "big": pa.array([1], pa.uint64()),
            "price": pa.array([1], pa.decimal128(9, 2)),
            "when": pa.array([1], pa.timestamp("us", "UTC")),
            "tags": pa.array([["a"]], pa.list_(pa.string())),
            "point": pa.array([{"x": 1.0, "y": 2.0}]),
            "blob": pa.array([b"x"]),
        }
    )
    _ingest(server, "typed", table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn = flightsql.connect(_uri(server))
    schema = conn.adbc_get_table_schema("typed", catalog_filter="duckdb")
    named = {f.name: f.metadata[b"ARROW:FLIGHT:SQL:TYPE_NAME"].decode() for f in schema}
    conn.close()
    server.stop()
    with duckdb.connect(str(server.db), read_only=True) as db:
        described = {row[0]: row[1] for row in db.execute("DESCRIBE typed").fetchall()}
    assert named == described


def test_table_types(conn: Any, server: Server) -> None:
    """adbc_get_table_types and CommandGetTableTypes: TABLE only."""
    assert conn.adbc_get_table_types() == ["TABLE"]
    _, table = _command(flight_client(server), sql.CommandGetTableTypes())
    assert table.schema == info.TABLE_TYPES_SCHEMA and table.to_pylist() == [
        {"table_type": "TABLE"}
    ]


def test_raw_get_tables_catalog_schemas_and_get_schema(server: Server) -> None:
    """CommandGetTables over raw Flight: exact catalog filter, include_schema's IPC schema
    bytes; GetSchema answers the schema for either shape; "" is no catalog."""
    client = flight_client(server)
    command = sql.CommandGetTables(
        catalog="DuckDB", table_name_filter_pattern="events", include_schema=True
    )
    flight, table = _command(client, command)
    assert flight.schema == info.TABLES_WITH_SCHEMA_SCHEMA == table.schema
    (row,) = table.to_pylist()
    assert (row["catalog_name"], row["db_schema_name"], row["table_name"]) == (
        "duckdb",
        "main",
        "events",
    )
    assert (
        pa.ipc.read_schema(pa.py_buffer(row["table_schema"])).names == sample_table(1).schema.names
    )
    plain = sql.CommandGetTables(catalog="duckdb")
    schema = client.get_schema(fl.FlightDescriptor.for_command(sql.pack(plain))).schema
    assert schema == info.TABLES_SCHEMA
    assert _command(client, sql.CommandGetTables(catalog=""))[1].num_rows == 0
    _, schemas = _command(client, sql.CommandGetDbSchemas(catalog="ducklake"))
    assert schemas.to_pylist() == [{"catalog_name": "ducklake", "db_schema_name": "main"}]
    _, catalogs = _command(client, sql.CommandGetCatalogs())
    assert catalogs.schema == info.CATALOGS_SCHEMA
    assert catalogs["catalog_name"].to_pylist() == ["delta", "duckdb", "ducklake"]


def test_keys_and_type_info(server: Server) -> None:
    """Key commands answer their schemas with no rows; XDBC type info lists DuckDB's types."""
    client = flight_client(server)
    _, keys = _command(client, sql.CommandGetPrimaryKeys(catalog="duckdb", table="events"))
    assert keys.schema == info.PRIMARY_KEYS_SCHEMA and keys.num_rows == 0
    for command in (
        sql.CommandGetExportedKeys(table="events"),
        sql.CommandGetImportedKeys(table="events"),
        sql.CommandGetCrossReference(pk_table="orders", fk_table="order_items"),
    ):
        _, result = _command(client, command)
        assert result.schema == info.KEYS_SCHEMA and result.num_rows == 0
    _, types = _command(client, sql.CommandGetXdbcTypeInfo())
    assert types.schema == info.XDBC_TYPE_INFO_SCHEMA
    assert {"BIGINT", "VARCHAR", "TIMESTAMP"} <= set(types["type_name"].to_pylist())
    _, bigints = _command(client, sql.CommandGetXdbcTypeInfo(data_type=-5))
    assert bigints["type_name"].to_pylist() == ["BIGINT", "UBIGINT"]


def test_a_ducklake_less_server_has_two_catalogs(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A server without DuckLake has the catalogs delta and duckdb only."""
    server = server_factory(tmp_path).start()
    _ingest(server, "solo", sample_table(3))
    _, catalogs = _command(flight_client(server), sql.CommandGetCatalogs())
    assert catalogs["catalog_name"].to_pylist() == ["delta", "duckdb"]
    _, tables = _command(flight_client(server), sql.CommandGetTables(catalog="ducklake"))
    assert tables.num_rows == 0


# -- auth ----------------------------------------------------------------------------------------


def test_scoped_tokens_see_only_their_streams_tables(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """With auth on, a token scoped to streams lists only the tables they write; an unscoped
    token lists all; no token is UNAUTHENTICATED."""
    server = _start(server_factory, tmp_path, AUTH)
    for stream in ["events", "orders", "lake_events", "delta_events"]:
        _ingest(server, stream, sample_table(5), ADMIN)

    def listing(token: str) -> dict[str, list[str]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connection = flightsql.connect(
                _uri(server),
                db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"},
            )
        try:
            return _tables(_objects(connection, depth="columns"))
        finally:
            connection.close()

    assert listing(ADMIN) == {
        "delta": ["delta_events"],
        "duckdb": ["events", "orders"],
        "ducklake": ["lake_events"],
    }
    assert listing(SCOPED) == {"delta": [], "duckdb": ["events"], "ducklake": ["lake_events"]}
    client = flight_client(server)
    with pytest.raises(fl.FlightUnauthenticatedError):
        _command(client, sql.CommandGetCatalogs())


# -- what is not served ---------------------------------------------------------------------


def test_unserved_commands_are_unimplemented_naming_them(server: Server) -> None:
    """A Flight SQL command not served, or unknown: UNIMPLEMENTED naming it, never a table name."""
    client = flight_client(server)
    substrait = fl.FlightDescriptor.for_command(sql.pack(sql.CommandStatementSubstraitPlan()))
    with pytest.raises(pa.ArrowNotImplementedError, match="CommandStatementSubstraitPlan"):
        client.get_flight_info(substrait)
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandGetNothing"
    unknown = fl.FlightDescriptor.for_command(bytes((0x0A, len(url))) + url)
    with pytest.raises(pa.ArrowNotImplementedError, match="CommandGetNothing") as caught:
        client.get_flight_info(unknown)
    assert "table name" not in str(caught.value)


def test_close_session_is_ok(server: Server, conn: Any) -> None:
    """CloseSession answers CLOSED; the driver's close() succeeds."""
    results = list(flight_client(server).do_action(fl.Action("CloseSession", b"")))
    assert len(results) == 1
    assert sql.CloseSessionResult.decode(results[0].body.to_pybytes()).status == 1
    conn.adbc_get_table_types()
    conn.close()
