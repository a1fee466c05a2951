"""The Arrow Flight service, on Arrowport's own HTTP/2 transport (no grpcio).

Methods: Handshake, ListFlights, GetFlightInfo, GetSchema, DoGet, DoPut,
ListActions and DoAction (``health``, ``streams``, ``table.drop``).
PollFlightInfo and DoExchange answer UNIMPLEMENTED.

Invariants:

* DoPut feeds the request's DATA through a ``FlightDataDecoder`` into the same
  ingest pipeline as HTTP: the same routing, limits, schema policy and
  transactions. A ``PutResult`` is sent only after a commit; a client that
  disconnects or cancels before ending its stream gets a rollback.
* DoGet reads one batch at a time in a worker thread and sends it before
  reading the next, so a slow reader holds the server's memory flat.
* Storage calls run in worker threads; nothing here blocks the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import trio

from .. import __version__
from ..protocol import NEED_DATA, ArrowportError, GrpcStatus
from ..protocol.flight import DescriptorReceived, FlightDataDecoder
from ..protocol.flight_pb import (
    DESCRIPTOR_PATH,
    Action,
    ActionType,
    Criteria,
    FlightDescriptor,
    FlightEndpoint,
    FlightInfo,
    HandshakeRequest,
    HandshakeResponse,
    PutResult,
    Result,
    SchemaResult,
    Ticket,
    encode_flight_data_prefix,
)
from .grpc import GRPC_CONTENT_TYPE, GrpcCall
from .h2conn import H2Stream, StreamGone
from .ingest import Commit, Progress, ingest, refusal_reason
from .state import ServerState

log = logging.getLogger("arrowport.flight")

SERVICE = "/arrow.flight.protocol.FlightService/"


def bad_request(detail: str, error: str = "invalid_request") -> ArrowportError:
    return ArrowportError(detail, error=error, http_status=400)


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
            "health": ("Server health and version, as JSON.", self.action_health),
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
            await _not_grpc(stream)
            return
        method = stream.path[len(SERVICE) :] if stream.path.startswith(SERVICE) else ""
        call = GrpcCall(stream, method or stream.path)
        handler = self.methods.get(method)
        try:
            if stream.method != "POST":
                raise ArrowportError(
                    f"gRPC calls use POST, not {stream.method}",
                    error="invalid_request",
                    grpc_status=GrpcStatus.UNIMPLEMENTED,
                )
            if handler is None:
                raise ArrowportError(
                    f"unknown method {stream.path}; this server implements the Arrow Flight "
                    f"methods {', '.join(sorted(self.methods))}",
                    error="unimplemented",
                    grpc_status=GrpcStatus.UNIMPLEMENTED,
                )
            await handler(call)
        except (StreamGone, trio.Cancelled):
            raise
        except Exception as exc:
            await call.fail(exc)
            return
        await call.finish(GrpcStatus.OK)

    def store(self) -> Any:
        return (
            self.state.store_for(self.state.config.storage_backend) or self.state.stores["duckdb"]
        )

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # -- Handshake (authentication comes later: echo the protocol version) ---

    async def handshake(self, call: GrpcCall) -> None:
        async for message in call.messages():
            request = HandshakeRequest.decode(message)
            reply = HandshakeResponse(protocol_version=request.protocol_version)
            await call.send_message(reply.encode())

    # -- metadata -----------------------------------------------------------

    def _flight_info(self, info: Any) -> FlightInfo:
        name = info.name
        return FlightInfo(
            schema=info.schema.serialize().to_pybytes(),
            flight_descriptor=FlightDescriptor(type=DESCRIPTOR_PATH, path=(name,)),
            endpoint=(FlightEndpoint(ticket=Ticket(ticket=name.encode())),),
            total_records=info.rows,
            total_bytes=info.bytes,
        )

    async def list_flights(self, call: GrpcCall) -> None:
        Criteria.decode(await call.unary_request("Criteria"))  # no filtering: every table
        for info in await self._thread(self.store().list_tables):
            await call.send_message(self._flight_info(info).encode())

    async def _described_table(self, call: GrpcCall) -> Any:
        descriptor = FlightDescriptor.decode(await call.unary_request("FlightDescriptor"))
        name = descriptor_name(descriptor)
        store = self.store()
        try:
            return await self._thread(store.table_info, name)
        except ArrowportError as exc:
            if exc.grpc_status is not GrpcStatus.NOT_FOUND:
                raise
            route = self.state.config.route(name)  # a stream name: look up its table
            if route.table.lower() == name.lower():
                raise
            return await self._thread(store.table_info, route.table)

    async def get_flight_info(self, call: GrpcCall) -> None:
        info = await self._described_table(call)
        await call.send_message(self._flight_info(info).encode())

    async def get_schema(self, call: GrpcCall) -> None:
        info = await self._described_table(call)
        await call.send_message(SchemaResult(schema=info.schema.serialize().to_pybytes()).encode())

    # -- DoGet --------------------------------------------------------------

    async def do_get(self, call: GrpcCall) -> None:
        ticket = Ticket.decode(await call.unary_request("Ticket"))
        table, columns, limit = parse_ticket(ticket.ticket)
        reader = await self._thread(self.store().scan, table, columns=columns, limit=limit)
        sink = _MessageSink()
        try:
            writer = pa.ipc.new_stream(sink, reader.schema)
            while True:
                batch = await trio.to_thread.run_sync(_next_batch, reader)
                if batch is None:
                    break
                writer.write_batch(batch)
                del batch
                for header, body in sink.messages():
                    await _send_flight_data(call, header, body)
            if call.messages_sent == 0:  # no rows: the schema alone
                writer.close()
                for header, body in sink.messages():
                    await _send_flight_data(call, header, body)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(reader.close)

    # -- DoPut --------------------------------------------------------------

    async def do_put(self, call: GrpcCall) -> None:
        started = time.monotonic()
        config = self.state.config  # one snapshot for the whole request
        decoder = FlightDataDecoder(**config.limits.decoder_kwargs())
        chunks = call.chunks()
        descriptor = await _first_descriptor(decoder, chunks)
        stats = self.state.stats
        try:
            route = config.route(descriptor_name(descriptor))
        except ArrowportError:
            stats.refused("bad_input")
            raise
        store = self.state.store_for(route.backend)
        if store is None:
            stats.refused("bad_input")
            raise ArrowportError(
                f"stream {route.stream!r} routes to the {route.backend!r} backend, "
                "which this server does not run",
                error="backend_unavailable",
                grpc_status=GrpcStatus.FAILED_PRECONDITION,
            )

        async def acknowledge(commit: Commit) -> None:
            await call.send_message(PutResult(app_metadata=ack_json(route, commit)).encode())

        progress = Progress()
        stats.in_flight += 1
        try:
            result = await ingest(
                chunks,
                route=route,
                store=store,
                limits=config.limits,
                locks=self.state.locks,
                stats=stats,
                progress=progress,
                limiter=self.state.write_limiter,
                decoder=decoder,
                on_commit=acknowledge,
            )
        except ArrowportError as exc:
            stats.finished(route.stream, ok=False)
            stats.refused(refusal_reason(exc))
            log.info("DoPut %s refused: %s: %s", route.stream, exc.error, exc.detail)
            raise
        except BaseException as exc:
            stats.finished(route.stream, ok=False)
            if isinstance(exc, trio.Cancelled | StreamGone):
                stats.refused("disconnected")
                log.info(
                    "DoPut %s: client went away; %d rows committed", route.stream, progress.rows
                )
            raise
        finally:
            stats.in_flight -= 1
        stats.finished(route.stream, ok=True)
        log.info(
            "DoPut %s -> %s: %d rows, %d batches, %d bytes in %.1f ms",
            route.stream,
            result.table,
            result.rows,
            result.batches,
            result.bytes,
            (time.monotonic() - started) * 1000,
        )

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

    async def do_action(self, call: GrpcCall) -> None:
        action = Action.decode(await call.unary_request("Action"))
        entry = self.actions.get(action.type)
        if entry is None:
            raise ArrowportError(
                f"unknown action {action.type!r}; available: {', '.join(self._enabled_actions())}",
                error="unknown_action",
                grpc_status=GrpcStatus.UNIMPLEMENTED,
            )
        body = await entry[1](action.body)
        await call.send_message(Result(body=body).encode())

    async def action_health(self, body: bytes) -> bytes:
        return json.dumps({"status": "ok", "version": __version__}).encode()

    async def action_streams(self, body: bytes) -> bytes:
        return json.dumps(self.state.streams_report()).encode()

    async def action_drop(self, body: bytes) -> bytes:
        if not self.state.config.flight.allow_table_drop:
            raise ArrowportError(
                "table.drop is disabled on this server; set flight.allow_table_drop: true "
                "in the config to allow it",
                error="action_disabled",
                grpc_status=GrpcStatus.PERMISSION_DENIED,
            )
        table = _text(body, "table.drop body").strip()
        if table.startswith("{"):
            table = str(_json_object(body, "table.drop body").get("table", ""))
        store = self.store()
        info = await self._thread(store.table_info, table)
        async with self.state.locks(info.name):
            await self._thread(store.drop_table, info.name)
        log.info("table %s dropped by a Flight table.drop action", info.name)
        return json.dumps({"dropped": info.name}).encode()


# -- helpers ----------------------------------------------------------------


def descriptor_name(descriptor: FlightDescriptor) -> str:
    """The stream or table a descriptor names: its one path element, or its cmd."""
    if descriptor.path:
        if len(descriptor.path) != 1:
            raise bad_request(
                f"the descriptor path {list(descriptor.path)!r} has {len(descriptor.path)} "
                "elements; name one stream or table"
            )
        return descriptor.path[0]
    if descriptor.cmd:
        cmd = descriptor.cmd
        if cmd.lstrip().startswith(b"{"):
            value = _json_object(cmd, "descriptor cmd").get("stream") or ""
            return str(value)
        return _text(cmd, "descriptor cmd")
    raise bad_request("the descriptor names no stream: set its path or its cmd")


def parse_ticket(raw: bytes) -> tuple[str, list[str] | None, int | None]:
    """A table name, or JSON ``{"table": …, "columns": […], "limit": …}``."""
    if not raw.lstrip().startswith(b"{"):
        return _text(raw, "ticket"), None, None
    spec = _json_object(raw, "ticket")
    unknown = set(spec) - {"table", "columns", "limit"}
    if unknown:
        raise bad_request(
            f"unknown ticket keys {sorted(unknown)}; a JSON ticket has table, columns, limit"
        )
    table = spec.get("table")
    if not isinstance(table, str):
        raise bad_request('a JSON ticket needs "table": a table name')
    columns = spec.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise bad_request('ticket "columns" must be a list of column names')
    limit = spec.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise bad_request('ticket "limit" must be a non-negative integer')
    return table, columns, limit


def ack_json(route: Any, commit: Commit) -> bytes:
    """A ``PutResult``'s app_metadata: what is committed, and the client's echo."""
    body: dict[str, object] = {
        "stream": route.stream,
        "table": route.table,
        "committed_rows": commit.rows,
        "committed_batches": commit.batches,
    }
    if commit.app_metadata:
        body["app_metadata"] = [_echo(m) for m in commit.app_metadata]
    return json.dumps(body).encode()


def _echo(raw: bytes) -> object:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(raw).decode("ascii")}


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the {what} is not UTF-8 text") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the {what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the {what} must be a JSON object")
    return value


async def _first_descriptor(decoder: FlightDataDecoder, chunks: Any) -> FlightDescriptor:
    """Read until DoPut's first event, which must be its descriptor."""
    iterator = aiter(chunks)
    while True:
        event = decoder.next_event()
        if isinstance(event, DescriptorReceived):
            return event.descriptor
        if event is not NEED_DATA:
            raise bad_request(
                "DoPut's first FlightData must carry a FlightDescriptor naming the stream"
            )
        decoder.receive_data(await anext(iterator, b""))


def _next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


async def _send_flight_data(call: GrpcCall, header: pa.Buffer, body: pa.Buffer | None) -> None:
    body_length = body.size if body is not None else 0
    head = encode_flight_data_prefix(memoryview(header), None, body_length)
    payload = memoryview(body) if body is not None else b""
    await call.send_parts(head, payload, len(head) + body_length)


class _MessageSink:
    """A file pyarrow's IPC writer writes into; yields the messages written."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[Any] = []
        self._position = 0

    def write(self, data: Any) -> int:
        self._parts.append(data)
        n = memoryview(data).nbytes
        self._position += n
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def messages(self) -> list[tuple[pa.Buffer, pa.Buffer | None]]:
        if not self._parts:
            return []
        data = pa.py_buffer(b"".join(memoryview(p) for p in self._parts))
        self._parts.clear()
        reader = pa.ipc.MessageReader.open_stream(data)
        out = []
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            if message is None:
                break
            out.append((message.metadata, message.body))
        return out


async def _not_grpc(stream: H2Stream) -> None:
    body = json.dumps(
        {
            "error": "unsupported_protocol",
            "detail": "HTTP/2 on this port carries Arrow Flight (gRPC) only; send HTTP "
            "requests such as POST /ingest/{stream} over HTTP/1.1",
        }
    ).encode()
    await stream.send_headers(
        [
            (b":status", b"505"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    )
    await stream.send_data(body, end_stream=True)
