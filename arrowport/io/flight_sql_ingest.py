"""Flight SQL bulk ingest: ``CommandStatementIngest`` over DoPut (ADBC's ``adbc_ingest``).

The DoPut's first FlightData carries the command; its schema and batches
follow, and go through the ingest pipeline as every upload's do
(``ingest.ingest``, as ``flight_put.do_put`` calls it): the same limits,
schema policy, admission, memory budget, metrics (protocol ``flight_sql``),
deadline and one transaction. The answer is exactly one ``PutResult`` whose
app_metadata is a serialized ``DoPutUpdateResult{record_count}``: the rows
committed, sent only after the commit.

How the command maps onto Arrowport:

* ``catalog`` is a backend: ``duckdb``, ``ducklake`` or ``delta`` (any case).
  Another name is INVALID_ARGUMENT, naming the three; a backend this server
  does not run is FAILED_PRECONDITION (``backend_unavailable``). Without a
  catalog (or with ``""``), the table goes to the backend of the configured
  stream that writes it (INVALID_ARGUMENT if streams on several backends do:
  then a catalog must say which), else to the server's default backend.
* ``schema`` (db_schema) is absent, ``""`` or ``main`` (any case): tables
  live in one schema. Anything else is INVALID_ARGUMENT.
* ``table`` is routed as a table of that backend (``Config.table_route``:
  the name is checked; a configured stream's ``delta_options`` apply) and
  authorized as one (``auth.authorize_table``: a token limited to some
  streams may write only the tables those streams write).
* ``table_definition_options`` give the mode (``storage/modes.py``):
  (CREATE, FAIL) ``create``, (FAIL, APPEND) ``append``, (CREATE, REPLACE)
  ``replace`` and (CREATE, APPEND) ``create_append``. An existing table for
  ``create`` is ALREADY_EXISTS (``table_exists``), a missing one for
  ``append`` NOT_FOUND (``table_not_found``); both are decided in the
  write's own transaction, under the table's lock. ``replace`` drops and
  recreates the table with the stream's schema and rows in one transaction
  (Delta: one overwrite commit, keeping the table's partition columns), so a
  failed upload leaves the old table. Only ``create_append`` joins group
  commits. UNSPECIFIED values are INVALID_ARGUMENT (the spec: "servers
  should error"), naming the field; (FAIL, REPLACE) and (FAIL, FAIL) are
  refused, saying what to send instead.
* ``temporary`` tables are refused (UNIMPLEMENTED): tables are permanent.
* ``transaction_id`` is refused (INVALID_ARGUMENT): the server reports no
  transactions (SqlInfo 8), so ADBC autocommits and never sends one.
* ``options`` (backend-specific): none are defined, and ADBC's driver sends
  none; any key is INVALID_ARGUMENT, naming it, rather than ignored.
* An ``idempotency-key`` call header (ADBC: the statement or connection
  option ``adbc.flight.sql.rpc.call_header.idempotency-key``) is checked as
  HTTP's ``Idempotency-Key`` is. A retry with a key already committed to the
  table is answered with the original ``record_count`` and writes nothing,
  whatever the table became meanwhile: a retried ``create`` replays rather
  than finding its own table.

Every refusal comes before anything is written; the client has usually sent
its data by then, and the call ends with its status as any DoPut does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ..config import Config
from ..config.streams import BACKENDS
from ..errors import ArrowportError
from ..names import validate_idempotency_key
from ..protocol.flight import FlightDataDecoder
from ..protocol.flight_sql import (
    TABLE_EXISTS_APPEND,
    TABLE_EXISTS_FAIL,
    TABLE_EXISTS_REPLACE,
    TABLE_NOT_EXIST_CREATE,
    TABLE_NOT_EXIST_FAIL,
    CommandStatementIngest,
    DoPutUpdateResult,
    TableDefinitionOptions,
)
from ..storage.modes import APPEND, CREATE, CREATE_APPEND, REPLACE
from .auth import authorize_table
from .grpc import GrpcCall
from .ingest import refusal_reason
from .put_stream import put_into

log = logging.getLogger("arrowport.flight")

PROTOCOL = "flight_sql"  # the metrics' protocol label
KEY_HEADER = b"idempotency-key"
SCHEMAS = ("", "main")

# (if_not_exist, if_exists) -> mode
MODES = {
    (TABLE_NOT_EXIST_CREATE, TABLE_EXISTS_FAIL): CREATE,
    (TABLE_NOT_EXIST_FAIL, TABLE_EXISTS_APPEND): APPEND,
    (TABLE_NOT_EXIST_CREATE, TABLE_EXISTS_REPLACE): REPLACE,
    (TABLE_NOT_EXIST_CREATE, TABLE_EXISTS_APPEND): CREATE_APPEND,
}
NOT_EXIST_NAMES = {TABLE_NOT_EXIST_CREATE: "CREATE", TABLE_NOT_EXIST_FAIL: "FAIL"}
EXISTS_NAMES = {
    TABLE_EXISTS_FAIL: "FAIL",
    TABLE_EXISTS_APPEND: "APPEND",
    TABLE_EXISTS_REPLACE: "REPLACE",
}


def bad_command(detail: str, error: str = "invalid_request") -> ArrowportError:
    return ArrowportError(f"CommandStatementIngest: {detail}", error=error)


def table_mode(options: TableDefinitionOptions | None) -> str:
    """The write mode ``options`` ask for (see the module's doc)."""
    if options is None:
        raise bad_command(
            "table_definition_options is missing; set if_not_exist (CREATE or FAIL) and "
            "if_exists (FAIL, APPEND or REPLACE), as ADBC's ingest modes do"
        )
    not_exist = NOT_EXIST_NAMES.get(options.if_not_exist)
    exists = EXISTS_NAMES.get(options.if_exists)
    if not_exist is None:
        what = "UNSPECIFIED" if options.if_not_exist == 0 else str(options.if_not_exist)
        raise bad_command(
            f"table_definition_options.if_not_exist is {what}; say what to do with a missing "
            "table: CREATE it or FAIL"
        )
    if exists is None:
        what = "UNSPECIFIED" if options.if_exists == 0 else str(options.if_exists)
        raise bad_command(
            f"table_definition_options.if_exists is {what}; say what to do with an existing "
            "table: FAIL, APPEND or REPLACE"
        )
    mode = MODES.get((options.if_not_exist, options.if_exists))
    if mode is None:
        raise bad_command(
            f"if_not_exist={not_exist} with if_exists={exists} is not supported: the modes are "
            "create (CREATE, FAIL), append (FAIL, APPEND), replace (CREATE, REPLACE) and "
            "create_append (CREATE, APPEND)",
            error="unimplemented" if exists == "REPLACE" else "invalid_request",
        )
    return mode


def command_backend(config: Config, command: CommandStatementIngest) -> str:
    """The backend ``command`` writes to: its catalog, else its table's (module doc)."""
    catalog = command.catalog
    if catalog:
        backend = catalog.lower()
        if backend not in BACKENDS:
            raise bad_command(
                f"unknown catalog {catalog!r}: the catalogs are this server's backends "
                f"({', '.join(BACKENDS)})"
            )
        return backend
    key = command.table.lower()
    backends = sorted(
        {
            conf.storage_backend or config.storage_backend
            for conf in config.streams.values()
            if conf.target_table.lower() == key
        }
    )
    if len(backends) > 1:
        raise bad_command(
            f"configured streams write table {command.table!r} on several backends "
            f"({', '.join(backends)}): name one as the catalog"
        )
    return backends[0] if backends else config.storage_backend


def check_command(command: CommandStatementIngest) -> str:
    """Refuse what this server does not serve; the mode the command asks for."""
    if command.transaction_id is not None:
        raise bad_command(
            "transaction_id is set, but this server has no transactions (SqlInfo 8 says so): "
            "each ingest is one transaction of its own; send it without a transaction"
        )
    if command.temporary:
        raise bad_command(
            "temporary tables are not supported: ingest into a permanent table (temporary=false)",
            error="unimplemented",
        )
    if command.options:
        keys = ", ".join(sorted(repr(entry.key) for entry in command.options))
        raise bad_command(
            f"unknown options {keys}: this server defines no backend-specific ingest options"
        )
    schema = command.schema
    if schema is not None and schema.lower() not in SCHEMAS:
        raise bad_command(
            f"unknown db_schema {schema!r}: each catalog has one schema, 'main' (or omit it)"
        )
    return table_mode(command.table_definition_options)


def call_idempotency_key(call: GrpcCall) -> str | None:
    """The ``idempotency-key`` call header, checked as HTTP's ``Idempotency-Key`` is."""
    raw = call.stream.headers.get(KEY_HEADER)
    if raw is None:
        return None
    return validate_idempotency_key(raw.decode("latin-1"))


async def do_put_ingest(
    call: GrpcCall,
    service: Any,
    command: CommandStatementIngest,
    decoder: FlightDataDecoder,
    chunks: AsyncIterator[bytes | memoryview],
) -> None:
    """Serve a ``CommandStatementIngest`` DoPut (``service`` is the ``FlightService``)."""
    started = time.monotonic()
    config = service.state.config  # one snapshot for the whole request
    stats = service.state.stats
    try:
        mode = check_command(command)
        route = config.table_route(command.table, command_backend(config, command))
        authorize_table(call.token, config, route.table, route.backend)
        key = call_idempotency_key(call)
        store = service.store(route.backend)
    except ArrowportError as exc:
        stats.refused(refusal_reason(exc))
        raise
    await put_into(
        call,
        service,
        config,
        route,
        store,
        decoder,
        chunks,
        started=started,
        answer=lambda commit: DoPutUpdateResult(record_count=commit.rows).encode(),
        key=key,
        protocol=PROTOCOL,
        table_mode=mode,
    )


PUTS: dict[Any, Any] = {CommandStatementIngest: do_put_ingest}
