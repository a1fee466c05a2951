"""Flight SQL metadata: SqlInfo, catalogs, schemas, tables, table types, keys, types.

Catalogs are the backends this server runs, by name: ``delta`` (always),
``duckdb`` (always) and ``ducklake`` (when configured); each has one database
schema, ``main``, holding the tables ``list_tables`` of that backend's store
lists. Every table's type is ``TABLE``. So a table is addressed as
``catalog.main.table``, e.g. ``ducklake.main.events``.

Invariants:

* GetFlightInfo answers with the command's result schema and one endpoint
  whose ticket is the command itself, packed (``total_records`` and
  ``total_bytes`` unknown, -1); the listing is made when that ticket comes
  back to DoGet, and sent through ``flight_read.stream_reader`` (bounded
  messages). GetSchema answers the schema without listing anything.
* Filters: ``catalog`` is an exact name and patterns are SQL LIKE
  (``flight_sql_info.like``), all ignoring case, as DuckDB matches
  identifiers; results are ordered as FlightSql.proto says (catalog, schema,
  table). An unknown catalog, schema or table type is an empty result, not an
  error.
* Auth: with auth on, a token limited to streams sees only the tables its
  streams write (``route.table`` of ``route.backend``, the rule of
  ``auth.authorize_table``); an unscoped token sees every table. Catalogs,
  schemas, table types and SqlInfo are the same for every token.
* Keys: Arrowport's tables have no primary or foreign keys (it creates them
  from Arrow schemas, which have none, and the stores expose none), so the
  key commands answer their schemas with no rows.
* Storage runs in worker threads; the facts SqlInfo takes from DuckDB
  (keywords, functions, casts) come from a throwaway in-memory DuckDB, once
  per process.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import duckdb
import pyarrow as pa

from .. import __version__
from ..errors import ArrowportError
from ..names import MAX_NAME_LENGTH
from ..protocol import flight_sql as sql
from ..protocol import flight_sql_info as meta
from ..protocol.flight_pb import FlightDescriptor, FlightEndpoint, FlightInfo, Ticket
from ..protocol.flight_sql import pack
from ..protocol.flight_sql_types import with_column_metadata, xdbc_type_info
from ..protocol.protobuf import Message
from .flight_read import stream_reader
from .grpc import GrpcCall

CATALOGS = ("delta", "duckdb", "ducklake")  # sorted; those the server runs are served
DB_SCHEMA = "main"
TABLE_TYPE = "TABLE"

# -- the facts SqlInfo reports ------------------------------------------------------------

# The throwaway DuckDB loads and installs nothing and reads no files.
THROWAWAY: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "enable_external_access": False,
}


@functools.cache
def dialect() -> tuple[meta.DialectFacts, frozenset[str]]:
    """What an in-memory DuckDB says about its SQL, and its keywords (lower case)."""
    con = duckdb.connect(":memory:", config=THROWAWAY)
    try:
        words = sorted(
            row[0] for row in con.execute("SELECT keyword_name FROM duckdb_keywords()").fetchall()
        )
        names = {
            row[0].lower()
            for row in con.execute("SELECT function_name FROM duckdb_functions()").fetchall()
        }
        functions = {
            info: [name.upper() for name in candidates.split() if name in names]
            for info, candidates in meta.FUNCTION_CANDIDATES.items()
        }
        converts = {
            source: [
                target
                for target, (kind, _) in meta.CONVERT_TYPES.items()
                if _casts(con, sample, kind)
            ]
            for source, (_, sample) in meta.CONVERT_TYPES.items()
        }
    finally:
        con.close()
    facts = meta.DialectFacts(
        keywords=[word.upper() for word in words],
        functions=functions,
        converts=converts,
        max_table_name_length=MAX_NAME_LENGTH,
    )
    return facts, frozenset(word.lower() for word in words)


def _casts(con: duckdb.DuckDBPyConnection, sample: str, kind: str) -> bool:
    """Whether DuckDB casts ``sample``'s type to ``kind`` (that this value fails is no matter)."""
    try:
        con.execute(f"SELECT CAST(v AS {kind}) FROM (SELECT {sample} AS v)").fetchall()
    except duckdb.Error as exc:
        return "Unimplemented type for cast" not in str(exc)
    return True


def queries_enabled(config: Any) -> bool:
    """``flight_sql.queries`` (on unless the config turns it off)."""
    return bool(getattr(getattr(config, "flight_sql", None), "queries", True))


async def sql_info(call: GrpcCall, service: Any, command: sql.CommandGetSqlInfo) -> pa.Table:
    facts, _ = await service._thread(dialect)
    server = meta.ServerFacts(
        version=__version__, arrow_version=pa.__version__, sql=queries_enabled(service.state.config)
    )
    return meta.sql_info_table(meta.all_info(server, facts), command.info)


# -- catalogs, schemas and tables -----------------------------------------------------------


def _served(service: Any, catalog: str | None) -> list[str]:
    """The catalogs (backends) the server runs, of name ``catalog`` if given."""
    wanted = None if catalog is None else catalog.lower()
    return [
        name
        for name in CATALOGS
        if service.state.store_for(name) is not None and wanted in (None, name)
    ]


def _visible(call: GrpcCall, config: Any) -> set[tuple[str, str]] | None:
    """The (backend, table in lower case) a scoped token's streams write; None: all."""
    token = call.token
    if token is None or token.streams is None:
        return None
    seen = set()
    for stream in token.streams:
        try:
            route = config.route(stream)
        except ArrowportError:  # a stream name no table can have
            continue
        seen.add((route.backend, route.table.lower()))
    return seen


async def catalogs(call: GrpcCall, service: Any, command: sql.CommandGetCatalogs) -> pa.Table:
    names = _served(service, None)
    return pa.table([pa.array(names, pa.string())], schema=meta.CATALOGS_SCHEMA)


async def db_schemas(call: GrpcCall, service: Any, command: sql.CommandGetDbSchemas) -> pa.Table:
    names = (
        []
        if not meta.like(command.db_schema_filter_pattern, DB_SCHEMA)
        else _served(service, command.catalog)
    )
    return pa.table(
        [pa.array(names, pa.string()), pa.array([DB_SCHEMA] * len(names), pa.string())],
        schema=meta.DB_SCHEMAS_SCHEMA,
    )


async def tables(call: GrpcCall, service: Any, command: sql.CommandGetTables) -> pa.Table:
    rows: dict[str, list[Any]] = {name: [] for name in meta.TABLES_WITH_SCHEMA_SCHEMA.names}
    types = {kind.upper() for kind in command.table_types}
    if meta.like(command.db_schema_filter_pattern, DB_SCHEMA) and (
        not types or TABLE_TYPE in types
    ):
        visible = _visible(call, service.state.config)
        _, keywords = (
            await service._thread(dialect) if command.include_schema else (None, frozenset())
        )
        for catalog in _served(service, command.catalog):
            for info in await service._thread(service.store(catalog).list_tables):
                if not meta.like(command.table_name_filter_pattern, info.name):
                    continue
                if visible is not None and (catalog, info.name.lower()) not in visible:
                    continue
                rows["catalog_name"].append(catalog)
                rows["db_schema_name"].append(DB_SCHEMA)
                rows["table_name"].append(info.name)
                rows["table_type"].append(TABLE_TYPE)
                if command.include_schema:
                    schema = with_column_metadata(
                        info.schema, catalog, DB_SCHEMA, info.name, keywords
                    )
                    rows["table_schema"].append(schema.serialize().to_pybytes())
    schema = _tables_schema(command)
    return pa.table([pa.array(rows[f.name], f.type) for f in schema], schema=schema)


def _tables_schema(command: sql.CommandGetTables) -> pa.Schema:
    return meta.TABLES_WITH_SCHEMA_SCHEMA if command.include_schema else meta.TABLES_SCHEMA


async def table_types(call: GrpcCall, service: Any, command: sql.CommandGetTableTypes) -> pa.Table:
    return pa.table([pa.array([TABLE_TYPE], pa.string())], schema=meta.TABLE_TYPES_SCHEMA)


async def type_info(call: GrpcCall, service: Any, command: sql.CommandGetXdbcTypeInfo) -> pa.Table:
    return xdbc_type_info(command.data_type)


def _empty(schema: pa.Schema) -> Callable[[GrpcCall, Any, Any], Awaitable[pa.Table]]:
    async def rows(call: GrpcCall, service: Any, command: Any) -> pa.Table:
        return schema.empty_table()

    return rows


# -- the handler tables ------------------------------------------------------------------------

Rows = Callable[[GrpcCall, Any, Any], Awaitable[pa.Table]]

# command -> (its result schema, its rows)
COMMANDS: dict[type[Message], tuple[Callable[[Any], pa.Schema], Rows]] = {
    sql.CommandGetSqlInfo: (lambda c: meta.SQL_INFO_SCHEMA, sql_info),
    sql.CommandGetCatalogs: (lambda c: meta.CATALOGS_SCHEMA, catalogs),
    sql.CommandGetDbSchemas: (lambda c: meta.DB_SCHEMAS_SCHEMA, db_schemas),
    sql.CommandGetTables: (_tables_schema, tables),
    sql.CommandGetTableTypes: (lambda c: meta.TABLE_TYPES_SCHEMA, table_types),
    sql.CommandGetXdbcTypeInfo: (lambda c: meta.XDBC_TYPE_INFO_SCHEMA, type_info),
    sql.CommandGetPrimaryKeys: (
        lambda c: meta.PRIMARY_KEYS_SCHEMA,
        _empty(meta.PRIMARY_KEYS_SCHEMA),
    ),
    sql.CommandGetExportedKeys: (lambda c: meta.KEYS_SCHEMA, _empty(meta.KEYS_SCHEMA)),
    sql.CommandGetImportedKeys: (lambda c: meta.KEYS_SCHEMA, _empty(meta.KEYS_SCHEMA)),
    sql.CommandGetCrossReference: (lambda c: meta.KEYS_SCHEMA, _empty(meta.KEYS_SCHEMA)),
}


async def get_flight_info(
    call: GrpcCall, service: Any, command: Message, descriptor: FlightDescriptor
) -> FlightInfo:
    """The command's schema and one endpoint whose ticket is the command."""
    return FlightInfo(
        schema=await get_schema(call, service, command),
        flight_descriptor=descriptor,
        endpoint=(FlightEndpoint(ticket=Ticket(ticket=pack(command))),),
        total_records=-1,
        total_bytes=-1,
    )


async def get_schema(call: GrpcCall, service: Any, command: Message) -> bytes:
    schema_of, _ = COMMANDS[type(command)]
    return bytes(schema_of(command).serialize().to_pybytes())


async def do_get(call: GrpcCall, service: Any, command: Message) -> None:
    _, rows = COMMANDS[type(command)]
    table = await rows(call, service, command)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    await stream_reader(call, reader, service.state.config.flight.max_message_size)


INFO: dict[Any, Any] = dict.fromkeys(COMMANDS, get_flight_info)
SCHEMA: dict[Any, Any] = dict.fromkeys(COMMANDS, get_schema)
GETS: dict[Any, Any] = dict.fromkeys(COMMANDS, do_get)
