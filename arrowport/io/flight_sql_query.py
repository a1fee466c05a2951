"""Flight SQL queries: statements and prepared statements, read-only, each in a process.

As ADBC drives it: ``CreatePreparedStatement`` (the query's result and
parameter schemas, and a handle); for parameters, a DoPut of one row of
values with ``CommandPreparedStatementQuery`` (answered with a new handle
carrying them); GetFlightInfo with ``CommandPreparedStatementQuery`` (or
``CommandStatementQuery`` for a plain statement) → a FlightInfo whose one
ticket is a ``TicketStatementQuery``; DoGet of that ticket runs the query
and streams its rows; ``ClosePreparedStatement``.

Invariants:

* Nothing runs while ``flight_sql.queries`` is off: UNIMPLEMENTED, naming it.
* Every call that looks at a query (CreatePreparedStatement, GetFlightInfo,
  GetSchema, DoGet) checks it again from its text, under the calling token,
  in a process of its own (``storage/sql_process``): one read-only statement,
  its tables resolved, authorized and looked up. Handles are stateless
  (``flight_sql_handles``).
* Who may query: with auth off, anyone; an unscoped token, every table; a
  token scoped to streams, only the tables its streams write (the name is
  refused, PERMISSION_DENIED, before its store is asked about it).
* At most ``flight_sql.max_concurrent_queries`` query processes exist at once
  (binding or running); a call waits for one within its time.
* A query's call (its wait, binding, running and sending its rows) has
  ``flight_sql.query_timeout``; when it passes, or the call ends otherwise
  (its grpc-timeout, the client gone), its process is killed, so no worker
  thread waits on. DoGet streams with ``flight_read.stream_reader``:
  a gathered batch at a time, sliced to ``flight.max_message_size``.
* Updates (``CommandStatementUpdate``, ``CommandPreparedStatementUpdate``) and
  transactions are not served: this SQL is read-only.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pyarrow as pa
import trio

from ..errors import ArrowportError
from ..protocol import NEED_DATA
from ..protocol.events import BatchReceived, SchemaReceived, StreamEnded
from ..protocol.flight import FlightDataDecoder
from ..protocol.flight_pb import FlightDescriptor, FlightEndpoint, FlightInfo, PutResult, Ticket
from ..protocol.flight_sql import (
    ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult,
    CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate,
    CommandStatementQuery,
    CommandStatementUpdate,
    DoPutPreparedStatementResult,
    TicketStatementQuery,
    pack,
    unpack_as,
)
from ..storage.sql_process import Authorize, QueryProcess, describe, run
from ..storage.sql_query import Statement, parameter_schema
from ..storage.sql_sandbox import QueryError, SandboxLimits
from . import flight_sql_handles as handles
from .auth import ForbiddenError
from .flight_read import stream_reader
from .grpc import GrpcCall

log = logging.getLogger("arrowport.flight")
T = TypeVar("T")

# what a DoPut of parameter values may send (one row: handles keep at most 1 MiB of it)
MAX_PARAMETER_WIRE_BYTES = 2 * handles.MAX_PARAMETER_BYTES
_limiters: weakref.WeakKeyDictionary[Any, trio.CapacityLimiter] = weakref.WeakKeyDictionary()


# -- the rules every query call follows ----------------------------------------------


def _settings(service: Any) -> Any:
    settings = service.state.config.flight_sql
    if not settings.queries:
        raise ArrowportError(
            "SQL queries are turned off on this server (flight_sql.queries: false)",
            error="unimplemented",
        )
    return settings


def _no_transaction(transaction_id: bytes | None) -> None:
    if transaction_id:
        raise ArrowportError(
            "this server has no transactions (SqlInfo 8 is false): send the query "
            "without a transaction_id",
            error="invalid_request",
        )


def authorizer(token: Any, config: Any) -> Authorize:
    """Who may read a table: any caller, unless its token is scoped to streams; then
    only the tables those streams write (as ``auth.authorize_table`` for writes)."""
    if token is None or token.streams is None:
        return lambda backend, table: None
    allowed = set()
    for stream in token.streams:
        try:
            route = config.route(stream)
        except ArrowportError:
            continue
        allowed.add((route.backend, route.table.lower()))
    streams = ", ".join(token.streams)

    def authorize(backend: str, table: str) -> None:
        if (backend, table.lower()) not in allowed:
            raise ForbiddenError(
                f"this token may not query table {table!r} of the {backend} backend: a "
                f"token scoped to streams ({streams}) queries only the tables they write"
            )

    return authorize


def _limiter(service: Any, total: int) -> trio.CapacityLimiter:
    limiter = _limiters.get(service)
    if limiter is None:
        limiter = _limiters[service] = trio.CapacityLimiter(total)
    elif limiter.total_tokens != total:  # the config was reloaded
        limiter.total_tokens = total
    return limiter


async def _watchdog(process: QueryProcess, deadline: float) -> None:
    try:
        await trio.sleep_until(deadline)
    finally:  # the time is up, or the call ended (done, cancelled, failed)
        process.interrupt(timed_out=trio.current_time() >= deadline)


async def _in_process(
    service: Any, settings: Any, body: Callable[[QueryProcess], Awaitable[T]]
) -> T:
    """Run ``body`` with a process of its own, within the concurrency bound and the
    query timeout; the process is interrupted and closed whatever happens."""
    limiter = _limiter(service, settings.max_concurrent_queries)
    deadline = trio.current_time() + settings.query_timeout
    acquired = False
    with trio.move_on_at(deadline):
        await limiter.acquire()
        acquired = True
    if not acquired:
        raise ArrowportError(
            f"{limiter.total_tokens} queries (flight_sql.max_concurrent_queries) ran for all "
            f"of flight_sql.query_timeout ({settings.query_timeout:g} s); try again later",
            error="too_many_requests",
        )
    process = QueryProcess(
        SandboxLimits(
            memory_limit=settings.query_memory_limit,
            threads=settings.query_threads,
            timeout=settings.query_timeout,
        )
    )
    try:
        # the deadline also ends what waits on the client (a DoGet's sends to a client that
        # stopped reading): the process is not all a query holds, its slot is too
        with trio.move_on_at(deadline) as scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_watchdog, process, deadline)
                    result = await body(process)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _single(group) from None
        if scope.cancelled_caught:
            raise QueryError(
                f"the query ran longer than flight_sql.query_timeout "
                f"({settings.query_timeout:g} s) and was stopped",
                error="deadline_exceeded",
            )
        return result
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(process.close)
        limiter.release()


def _single(group: BaseExceptionGroup[Any]) -> BaseException:
    """What the nursery's group stands for: a cancellation of the call if there is one (an
    error the body raised then comes from its killed process), else the body's one error."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    cancelled = [e for e in leaves if isinstance(e, trio.Cancelled)]
    if cancelled:
        return cancelled[0]
    return leaves[0] if len(leaves) == 1 else group


async def _describe(
    call: GrpcCall, service: Any, sql: str, params: pa.RecordBatch | None
) -> tuple[Statement, pa.Schema | None]:
    settings = _settings(service)
    config = service.state.config

    def work(process: QueryProcess) -> tuple[Statement, pa.Schema | None]:
        return describe(
            process,
            sql,
            stores=service.store,
            default_backend=config.storage_backend,
            authorize=authorizer(call.token, config),
            params=params,
        )

    async def body(process: QueryProcess) -> tuple[Statement, pa.Schema | None]:
        return await trio.to_thread.run_sync(work, process)

    return await _in_process(service, settings, body)


def _unbound(statement: Statement) -> QueryError:
    return QueryError(
        f"the query has {len(statement.parameters)} parameter(s): prepare it "
        "(CreatePreparedStatement) and bind one row of values before running it"
    )


def _flight_info(schema: pa.Schema, descriptor: FlightDescriptor, handle: bytes) -> FlightInfo:
    ticket = Ticket(ticket=pack(TicketStatementQuery(statement_handle=handle)))
    return FlightInfo(
        schema=schema.serialize().to_pybytes(),
        flight_descriptor=descriptor,
        endpoint=(FlightEndpoint(ticket=ticket),),
    )


# -- GetFlightInfo (and GetSchema, which answers the FlightInfo's schema) --------------


async def statement_info(
    call: GrpcCall, service: Any, command: CommandStatementQuery, descriptor: FlightDescriptor
) -> FlightInfo:
    """A plain statement: its result's schema, and a ticket that runs it."""
    _no_transaction(command.transaction_id)
    statement, schema = await _describe(call, service, command.query, None)
    if schema is None:
        raise _unbound(statement)
    return _flight_info(schema, descriptor, handles.make(command.query, None, call.token))


async def prepared_info(
    call: GrpcCall,
    service: Any,
    command: CommandPreparedStatementQuery,
    descriptor: FlightDescriptor,
) -> FlightInfo:
    """A prepared statement (with the values bound to its handle): schema and ticket."""
    ttl = _settings(service).prepared_statement_ttl
    handle = handles.read(command.prepared_statement_handle, call.token, ttl)
    statement, schema = await _describe(call, service, handle.query, handle.params)
    if schema is None:
        raise _unbound(statement)
    return _flight_info(schema, descriptor, command.prepared_statement_handle)


# -- DoGet: run it --------------------------------------------------------------------


async def statement_get(call: GrpcCall, service: Any, command: TicketStatementQuery) -> None:
    """Run the ticket's query and stream its rows."""
    settings = _settings(service)
    handle = handles.read(command.statement_handle, call.token, settings.prepared_statement_ttl)
    config = service.state.config
    started = time.monotonic()

    async def body(process: QueryProcess) -> None:
        def start() -> Any:
            return run(
                process,
                handle.query,
                stores=service.store,
                default_backend=config.storage_backend,
                authorize=authorizer(call.token, config),
                params=handle.params,
            )

        reader = await trio.to_thread.run_sync(start)
        await stream_reader(call, reader, config.flight.max_message_size)

    await _in_process(service, settings, body)
    log.info(
        "Flight SQL query answered: %d messages in %.1f ms",
        call.messages_sent,
        (time.monotonic() - started) * 1000,
    )


# -- DoPut: parameter values; updates refused ---------------------------------------------


async def _parameters(
    decoder: FlightDataDecoder, chunks: AsyncIterator[bytes | memoryview]
) -> pa.RecordBatch | None:
    """The one row of values a DoPut binds (None: a schema alone, or nothing).

    At most ``MAX_PARAMETER_WIRE_BYTES`` are read: values are small, and a larger
    upload is refused as it arrives, before it is decoded.
    """
    iterator = aiter(chunks)
    schema: pa.Schema | None = None
    rows: list[pa.RecordBatch] = []
    received = 0
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            chunk = await anext(iterator, b"")
            received += len(chunk)
            if received > MAX_PARAMETER_WIRE_BYTES:
                raise ArrowportError(
                    f"the parameter values sent are over {MAX_PARAMETER_WIRE_BYTES} bytes; "
                    "bind one row of values",
                    error="limit_exceeded",
                )
            decoder.receive_data(chunk)
        elif isinstance(event, SchemaReceived):
            schema = event.schema
        elif isinstance(event, BatchReceived):
            if event.batch.num_rows:
                rows.append(event.batch)
            if sum(b.num_rows for b in rows) > 1:
                raise QueryError("bind one row of parameter values; a query runs once per request")
        elif isinstance(event, StreamEnded):
            break
    if schema is None:
        return None
    batch = rows[0] if rows else pa.RecordBatch.from_pylist([], schema=schema)
    try:
        batch.validate(full=True)
    except pa.ArrowException as exc:
        raise QueryError(f"the parameter values are not valid Arrow data: {exc}") from None
    return batch


async def bind_parameters(
    call: GrpcCall,
    service: Any,
    command: CommandPreparedStatementQuery,
    decoder: FlightDataDecoder,
    chunks: AsyncIterator[bytes | memoryview],
) -> None:
    """Bind a row of values to a prepared statement: the answer is a new handle carrying them."""
    ttl = _settings(service).prepared_statement_ttl
    handle = handles.read(command.prepared_statement_handle, call.token, ttl)
    params = await _parameters(decoder, chunks)
    if params is not None and params.num_columns == 0:
        params = None
    new = handles.make(handle.query, params, call.token)
    result = DoPutPreparedStatementResult(prepared_statement_handle=new)
    await call.send_message(PutResult(app_metadata=result.encode()).encode())


async def refuse_update(
    call: GrpcCall,
    service: Any,
    command: Any,
    decoder: FlightDataDecoder,
    chunks: AsyncIterator[bytes | memoryview],
) -> None:
    raise ArrowportError(
        f"{type(command).__name__} is not served: this server's SQL is read-only (queries "
        "alone); write with bulk ingest (ADBC adbc_ingest, CommandStatementIngest)",
        error="unimplemented",
    )


# -- actions -------------------------------------------------------------------------------


async def create_prepared(call: GrpcCall, service: Any, body: bytes) -> list[bytes]:
    """Check and bind a query: its handle, its result's schema (when it has no parameters)
    and its parameters (null-typed: their types are known once values are bound)."""
    request = unpack_as(body, ActionCreatePreparedStatementRequest)
    _no_transaction(request.transaction_id)
    statement, schema = await _describe(call, service, request.query, None)
    result = ActionCreatePreparedStatementResult(
        prepared_statement_handle=handles.make(request.query, None, call.token),
        dataset_schema=b"" if schema is None else schema.serialize().to_pybytes(),
        parameter_schema=(
            parameter_schema(statement).serialize().to_pybytes() if statement.parameters else b""
        ),
    )
    return [pack(result)]


async def close_prepared(call: GrpcCall, service: Any, body: bytes) -> list[bytes]:
    """Nothing is kept per statement: a genuine handle of the caller's is closed at once."""
    request = unpack_as(body, ActionClosePreparedStatementRequest)
    handles.check_owner(request.prepared_statement_handle, call.token)
    return []


INFO: dict[Any, Any] = {
    CommandStatementQuery: statement_info,
    CommandPreparedStatementQuery: prepared_info,
}
SCHEMA: dict[Any, Any] = {}  # GetSchema answers the FlightInfo's schema (flight_sql.get_schema)
GETS: dict[Any, Any] = {TicketStatementQuery: statement_get}
PUTS: dict[Any, Any] = {
    CommandPreparedStatementQuery: bind_parameters,
    CommandStatementUpdate: refuse_update,
    CommandPreparedStatementUpdate: refuse_update,
}
ACTIONS: dict[str, Any] = {
    "CreatePreparedStatement": (
        "Check a read-only query and prepare it: its handle and result schema.",
        create_prepared,
    ),
    "ClosePreparedStatement": (
        "Close a prepared statement (nothing is kept per statement).",
        close_prepared,
    ),
}
