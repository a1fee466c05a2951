"""Flight SQL on the Flight service: the dispatch of its commands and actions.

A Flight SQL client sends ordinary Flight calls whose descriptor cmd, ticket
or action body is a Flight SQL message packed in an ``Any``
(``protocol/flight_sql.py``). ``FlightService`` hands such calls here:

* GetFlightInfo / GetSchema with a command → ``INFO`` / ``SCHEMA`` handlers;
* DoGet with a ticket that is a command (metadata commands are their own
  ticket) or a ``TicketStatementQuery`` → ``GETS`` handlers;
* DoPut whose first descriptor is a command → ``PUTS`` handlers
  (``CommandStatementIngest``);
* DoAction with a Flight SQL action type → ``ACTIONS`` handlers.

The handlers live by concern: metadata (``flight_sql_meta``), bulk ingest
(``flight_sql_ingest``) and queries (``flight_sql_query``); each module
exports its own tables, merged here. A command or action without a handler
is UNIMPLEMENTED, naming it: never read as a table or stream name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..protocol.flight import FlightDataDecoder
from ..protocol.flight_pb import FlightDescriptor, FlightInfo, Result, SchemaResult
from ..protocol.flight_sql import (
    CLOSE_SESSION_CLOSED,
    CloseSessionResult,
    UnknownCommand,
    pack,
)
from ..protocol.protobuf import Message
from . import flight_sql_ingest, flight_sql_meta, flight_sql_query
from .grpc import GrpcCall

# (call, service, command, descriptor) -> the FlightInfo to answer
InfoHandler = Callable[[GrpcCall, Any, Any, FlightDescriptor], Awaitable[FlightInfo]]
# (call, service, command) -> the IPC-serialized schema of what the command reads
SchemaHandler = Callable[[GrpcCall, Any, Any], Awaitable[bytes]]
# (call, service, command): sends the FlightData itself
GetHandler = Callable[[GrpcCall, Any, Any], Awaitable[None]]
# (call, service, command, decoder, chunks): reads the rest of the DoPut, sends its PutResult
PutHandler = Callable[
    [GrpcCall, Any, Any, FlightDataDecoder, AsyncIterator[bytes | memoryview]], Awaitable[None]
]
# (call, service, body) -> the bodies of the Results to send
ActionHandler = Callable[[GrpcCall, Any, bytes], Awaitable[list[bytes]]]

INFO: dict[type[Message], InfoHandler] = {**flight_sql_meta.INFO, **flight_sql_query.INFO}
SCHEMA: dict[type[Message], SchemaHandler] = {**flight_sql_meta.SCHEMA, **flight_sql_query.SCHEMA}
GETS: dict[type[Message], GetHandler] = {**flight_sql_meta.GETS, **flight_sql_query.GETS}
PUTS: dict[type[Message], PutHandler] = {**flight_sql_ingest.PUTS, **flight_sql_query.PUTS}


async def close_session(call: GrpcCall, service: Any, body: bytes) -> list[bytes]:
    """CloseSession: nothing is kept per session; it is closed."""
    return [CloseSessionResult(status=CLOSE_SESSION_CLOSED).encode()]


ACTIONS: dict[str, tuple[str, ActionHandler]] = {
    "CloseSession": ("Close the client's session (nothing is kept per session).", close_session),
    **flight_sql_query.ACTIONS,
}

# Flight SQL and Flight session actions this server does not serve: UNIMPLEMENTED, named.
KNOWN_ACTIONS = frozenset(
    {
        "BeginTransaction",
        "EndTransaction",
        "BeginSavepoint",
        "EndSavepoint",
        "CancelQuery",
        "CancelFlightInfo",
        "RenewFlightEndpoint",
        "CreatePreparedSubstraitPlan",
        "SetSessionOptions",
        "GetSessionOptions",
        "CreatePreparedStatement",
        "ClosePreparedStatement",
    }
)


def _handler(table: dict[type[Message], Any], command: Message) -> Any:
    handler = table.get(type(command))
    if handler is None:
        raise UnknownCommand(type(command).__name__)
    return handler


async def get_flight_info(
    call: GrpcCall, service: Any, command: Message, descriptor: FlightDescriptor
) -> None:
    info = await _handler(INFO, command)(call, service, command, descriptor)
    await call.send_message(info.encode())


async def get_schema(call: GrpcCall, service: Any, command: Message) -> None:
    handler = SCHEMA.get(type(command))
    if handler is not None:
        schema = await handler(call, service, command)
    else:
        descriptor = FlightDescriptor(type=2, cmd=pack(command))
        schema = (await _handler(INFO, command)(call, service, command, descriptor)).schema
    await call.send_message(SchemaResult(schema=schema).encode())


async def do_get(call: GrpcCall, service: Any, command: Message) -> None:
    await _handler(GETS, command)(call, service, command)


async def do_put(
    call: GrpcCall,
    service: Any,
    command: Message,
    decoder: FlightDataDecoder,
    chunks: AsyncIterator[bytes | memoryview],
) -> None:
    await _handler(PUTS, command)(call, service, command, decoder, chunks)


def serves_action(name: str) -> bool:
    """Whether ``name`` is a Flight SQL or session action (served here, or UNIMPLEMENTED)."""
    return name in ACTIONS or name in KNOWN_ACTIONS


async def do_action(call: GrpcCall, service: Any, name: str, body: bytes) -> None:
    entry = ACTIONS.get(name)
    if entry is None:
        raise UnknownCommand(name)  # "the Flight SQL command X is not implemented"
    for result in await entry[1](call, service, body):
        await call.send_message(Result(body=result).encode())
