"""The Arrow Flight service, on Arrowport's own HTTP/2 transport (no grpcio).

Methods: Handshake, ListFlights, GetFlightInfo, GetSchema, DoGet, DoPut,
ListActions and DoAction (``health``, ``streams``, ``table.drop``).
PollFlightInfo and DoExchange answer UNIMPLEMENTED.

Invariants:

* DoPut feeds the request's DATA through a ``FlightDataDecoder`` into the same
  ingest pipeline as HTTP: the same routing, limits, schema policy and
  transactions. A descriptor names a stream (its path, or a JSON cmd's
  ``"stream"``), or one table of one backend: ``{"table": …, "backend": …}``,
  as ListFlights and GetFlightInfo describe tables not of the default
  backend (``Config.table_route``). A ``PutResult`` is sent only after a
  commit; a client that disconnects or cancels before ending its stream gets
  a rollback.
* A backend the server does not run is FAILED_PRECONDITION (HTTP 400
  ``backend_unavailable``), whatever the method.
* DoGet (``flight_read``) reads one batch at a time in a worker thread and
  sends it, in slices of at most ``flight.max_message_size``, before reading
  the next, so a slow reader holds the server's memory flat.
* A ``grpc-timeout`` bounds the call: past it, the call ends with
  DEADLINE_EXCEEDED. A DoPut (``flight_put``) is not cancelled but refused
  where it waits for data, and its commit checks the deadline in the thread
  that commits (``deadline``): an answer never says DEADLINE_EXCEEDED for
  committed data.
* Storage calls run in worker threads; nothing here blocks the event loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .. import logs
from ..protocol import ArrowportError, GrpcStatus
from ..protocol.flight_descriptors import action_table, descriptor_backend, descriptor_name
from ..protocol.flight_pb import (
    DESCRIPTOR_CMD,
    DESCRIPTOR_PATH,
    Action,
    ActionType,
    Criteria,
    FlightDescriptor,
    FlightEndpoint,
    FlightInfo,
    HandshakeRequest,
    HandshakeResponse,
    Result,
    SchemaResult,
    Ticket,
)
from ..protocol.flight_sql import unpack_command
from ..protocol.grpc import deadline_exceeded, parse_timeout
from . import flight_sql
from .auth import authenticate, handshake_token
from .backends import backend_unavailable
from .flight_messages import not_grpc
from .flight_put import _first_descriptor, do_put  # noqa: F401  (bench imports the first from here)
from .flight_read import do_get
from .grpc import GRPC_CONTENT_TYPE, GrpcCall
from .h2conn import H2Stream, StreamGone
from .health import liveness, readiness
from .state import ServerState
from .status import grpc_status

ANSWER_GRACE = 5.0  # seconds to send the answer of a change already made, past its deadline
log = logging.getLogger("arrowport.flight")

SERVICE = "/arrow.flight.protocol.FlightService/"


class FlightService:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.methods: dict[str, Callable[[GrpcCall], Awaitable[None]]] = {
            "Handshake": self.handshake,
            "ListFlights": self.list_flights,
            "GetFlightInfo": self.get_flight_info,
            "GetSchema": self.get_schema,
            "DoGet": self.do_get,
            "DoPut": self.do_put,
            "ListActions": self.list_actions,
            "DoAction": self.do_action,
        }
        self.actions: dict[str, tuple[str, Callable[[bytes], Awaitable[bytes]]]] = {
            "health": (
                "Server health (liveness, and readiness per backend) and version, as JSON.",
                self.action_health,
            ),
            "streams": (
                "The configured streams and their counters, as JSON (like GET /streams).",
                self.action_streams,
            ),
            "table.drop": (
                "Drop the table named by the body (only if flight.allow_table_drop is set).",
                self.action_drop,
            ),
        }

    async def __call__(self, stream: H2Stream) -> None:
        """Serve one HTTP/2 request stream."""
        content_type = stream.headers.get(b"content-type", b"")
        if not content_type.startswith(GRPC_CONTENT_TYPE):
            await not_grpc(stream)
            return
        method = stream.path[len(SERVICE) :] if stream.path.startswith(SERVICE) else ""
        call = GrpcCall(stream, method or stream.path)
        rid = logs.start_request(_header(stream, b"x-request-id"))
        call.response_headers.append((b"x-request-id", rid.encode()))
        handler = self.methods.get(method)
        try:
            if stream.method != "POST":
                raise ArrowportError(
                    f"gRPC calls use POST, not {stream.method}",
                    error="method_not_allowed",
                )
            if handler is None:
                raise ArrowportError(
                    f"unknown method {stream.path}; this server implements the Arrow Flight "
                    f"methods {', '.join(sorted(self.methods))}",
                    error="unimplemented",
                )
            timeout = stream.headers.get(b"grpc-timeout")
            if timeout is not None:
                call.set_timeout(parse_timeout(timeout))
            if method != "Handshake":  # from the headers, before any message is read
                call.token = self._authenticate(stream)
            if call.timeout is None or method == "DoPut":  # DoPut checks it where it waits
                await handler(call)
            else:
                with trio.move_on_at(call.deadline):
                    await handler(call)
                    call.timeout = None
                if call.timeout is not None:
                    raise deadline_exceeded(call.timeout, "the call was abandoned")
        except (StreamGone, trio.Cancelled):
            raise
        except Exception as exc:
            await call.fail(exc)
            return
        await call.finish(GrpcStatus.OK)

    def store(self, backend: str | None = None, stream: str | None = None) -> Any:
        """The store of ``backend``; by default, of the config's default backend.

        Raises ``BackendUnavailable`` (FAILED_PRECONDITION) when the server does
        not run it; ``stream`` names the stream routed there, for the message.
        """
        name = backend or self.state.config.storage_backend
        store = self.state.store_for(name)
        if store is None:
            raise backend_unavailable(name, stream)
        return store

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # -- Handshake (authentication comes later: echo the protocol version) ---

    def _authenticate(self, stream: H2Stream) -> Any:
        auth = self.state.config.auth
        try:
            return authenticate(auth, _header(stream, b"authorization"))
        except ArrowportError:
            self.state.stats.refused("auth")
            raise

    async def handshake(self, call: GrpcCall) -> None:
        """Echo the client's handshake; with auth on, its token must be valid.

        The token may come as a Basic password (pyarrow's
        ``authenticate_basic_token``), a Bearer header or the payload. The
        answer carries ``authorization: Bearer <token>`` for the client to
        send on later calls.
        """
        auth = self.state.config.auth
        header = _header(call.stream, b"authorization")
        async for message in call.messages():
            request = HandshakeRequest.decode(message)
            try:
                token = handshake_token(auth, header, request.payload)
            except ArrowportError:
                self.state.stats.refused("auth")
                raise
            if token is not None and not call.headers_sent:
                call.response_headers.append((b"authorization", f"Bearer {token.token}".encode()))
            reply = HandshakeResponse(
                protocol_version=request.protocol_version, payload=request.payload
            )
            await call.send_message(reply.encode())
        if auth.enabled and not call.headers_sent:  # no message at all: a header is enough
            token = handshake_token(auth, header, b"")
            if token is not None:
                call.response_headers.append((b"authorization", f"Bearer {token.token}".encode()))

    # -- metadata -----------------------------------------------------------

    def _flight_info(self, info: Any, backend: str) -> FlightInfo:
        """A table of the default backend is named by its path and a plain
        ticket; one of the other backend by JSON naming the backend."""
        name = info.name
        if backend == self.state.config.storage_backend:
            descriptor = FlightDescriptor(type=DESCRIPTOR_PATH, path=(name,))
            ticket = name.encode()
        else:
            spec = json.dumps({"table": name, "backend": backend}).encode()
            descriptor = FlightDescriptor(type=DESCRIPTOR_CMD, cmd=spec)
            ticket = spec
        return FlightInfo(
            schema=info.schema.serialize().to_pybytes(),
            flight_descriptor=descriptor,
            endpoint=(FlightEndpoint(ticket=Ticket(ticket=ticket)),),
            total_records=info.rows,
            total_bytes=info.bytes,
        )

    async def list_flights(self, call: GrpcCall) -> None:
        """Every table: DuckDB's, DuckLake's (when the server runs it), then Delta's."""
        Criteria.decode(await call.unary_request("Criteria"))  # no filtering: every table
        for backend in ("duckdb", "ducklake", "delta"):
            if self.state.store_for(backend) is None:
                continue
            for info in await self._thread(self.store(backend).list_tables):
                await call.send_message(self._flight_info(info, backend).encode())

    async def _described_table(self, descriptor: FlightDescriptor) -> tuple[Any, str]:
        table, backend = descriptor_backend(descriptor)
        if table is not None:
            backend = backend or self.state.config.storage_backend
            return await self._thread(self.store(backend).table_info, table), backend
        name = descriptor_name(descriptor)
        backend = self.state.config.storage_backend
        store = self.store()
        try:
            return await self._thread(store.table_info, name), backend
        except ArrowportError as exc:
            if grpc_status(exc) is not GrpcStatus.NOT_FOUND:
                raise
            route = self.state.config.route(name)  # a stream name: look up its table
            if route.table.lower() == name.lower() and route.backend == backend:
                raise
            store = self.store(route.backend, None if table is not None else route.stream)
            return await self._thread(store.table_info, route.table), route.backend

    async def get_flight_info(self, call: GrpcCall) -> None:
        descriptor = FlightDescriptor.decode(await call.unary_request("FlightDescriptor"))
        command = unpack_command(descriptor.cmd)
        if command is not None:  # Flight SQL
            await flight_sql.get_flight_info(call, self, command, descriptor)
            return
        info, backend = await self._described_table(descriptor)
        await call.send_message(self._flight_info(info, backend).encode())

    async def get_schema(self, call: GrpcCall) -> None:
        descriptor = FlightDescriptor.decode(await call.unary_request("FlightDescriptor"))
        command = unpack_command(descriptor.cmd)
        if command is not None:  # Flight SQL
            await flight_sql.get_schema(call, self, command)
            return
        info, _ = await self._described_table(descriptor)
        await call.send_message(SchemaResult(schema=info.schema.serialize().to_pybytes()).encode())

    # -- DoGet --------------------------------------------------------------

    async def do_get(self, call: GrpcCall) -> None:
        ticket = Ticket.decode(await call.unary_request("Ticket")).ticket
        command = unpack_command(ticket)
        if command is not None:  # Flight SQL
            await flight_sql.do_get(call, self, command)
            return
        await do_get(call, self, ticket)

    # -- DoPut --------------------------------------------------------------

    async def do_put(self, call: GrpcCall) -> None:
        await do_put(call, self)

    # -- actions ------------------------------------------------------------

    def _enabled_actions(self) -> list[str]:
        names = ["health", "streams"]
        if self.state.config.flight.allow_table_drop:
            names.append("table.drop")
        return names

    async def list_actions(self, call: GrpcCall) -> None:
        for name in self._enabled_actions():
            description = self.actions[name][0]
            await call.send_message(ActionType(type=name, description=description).encode())
        for name, (description, _) in flight_sql.ACTIONS.items():
            await call.send_message(ActionType(type=name, description=description).encode())

    async def do_action(self, call: GrpcCall) -> None:
        action = Action.decode(await call.unary_request("Action"))
        if flight_sql.serves_action(action.type):
            await flight_sql.do_action(call, self, action.type, action.body)
            return
        entry = self.actions.get(action.type)
        if entry is None:
            raise ArrowportError(
                f"unknown action {action.type!r}; available: {', '.join(self._enabled_actions())}",
                error="unknown_action",
            )
        if action.type == "table.drop":  # it changes state: its answer must be true
            body = await self.action_drop(action.body, call)
            # dropped: say so even if the deadline passed meanwhile (bounded, for a stalled client)
            with trio.CancelScope(shield=True, deadline=trio.current_time() + ANSWER_GRACE):
                await call.send_message(Result(body=body).encode())
            return
        body = await entry[1](action.body)
        await call.send_message(Result(body=body).encode())

    async def action_health(self, body: bytes) -> bytes:
        """Liveness and readiness: ``status`` "ok" while serving, ``ready`` false (with
        ``backends``' reasons) while a backend cannot write."""
        ready, report = await readiness(self.state)
        return json.dumps({**liveness(), "ready": ready, "backends": report["backends"]}).encode()

    async def action_streams(self, body: bytes) -> bytes:
        return json.dumps(self.state.streams_report()).encode()

    async def action_drop(self, body: bytes, call: GrpcCall | None = None) -> bytes:
        """Drop a table. Past the call's deadline nothing is dropped (checked in the thread
        that drops); a drop that started is answered as done, whatever the time then."""
        if not self.state.config.flight.allow_table_drop:
            raise ArrowportError(
                "table.drop is disabled on this server; set flight.allow_table_drop: true "
                "in the config to allow it",
                error="action_disabled",
            )
        table = action_table(body)
        store = self.store()
        info = await self._thread(store.table_info, table)

        def drop() -> None:
            if call is not None and call.past_deadline():
                assert call.timeout is not None
                raise deadline_exceeded(call.timeout, "nothing was dropped")
            store.drop_table(info.name)

        async with self.state.locks(info.name):
            with trio.CancelScope(shield=True):  # once it runs, the drop is answered
                await self._thread(drop)
        if call is not None:
            call.timeout = None  # done: answered as done, not DEADLINE_EXCEEDED
        log.info("table %s dropped by a Flight table.drop action", info.name)
        return json.dumps({"dropped": info.name}).encode()


def _header(stream: H2Stream, name: bytes) -> str | None:
    value = stream.headers.get(name)
    return None if value is None else value.decode("latin-1")
