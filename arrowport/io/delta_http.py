"""HTTP routes of the Delta backend: table info, history, time travel, CDC.

Reads are thin adapters over ``storage.delta_tables``: the storage call
runs in a worker thread and raises its specific error (404, 400) before a
response starts; Arrow responses are then streamed one batch at a time, the
next batch read only after the previous one is sent, so memory stays
bounded by one batch.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pyarrow as pa
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from ..protocol import ArrowportError
from ..storage import InvalidReadError, delta_tables
from ..storage.delta import DeltaStore

ARROW_STREAM = "application/vnd.apache.arrow.stream"
READ_BATCH_ROWS = 65_536


# Not flight_messages.MessageSink: that one re-parses what is written into (header, body)
# messages for FlightData; HTTP sends the raw IPC bytes, so it would parse only to re-join.
class _Sink:
    """The file pyarrow's IPC writer writes into; ``take()`` empties it."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

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

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    """The reader's next batch, or None at its end (for ``trio.to_thread``; Flight DoGet too)."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


async def _arrow_stream(reader: pa.RecordBatchReader) -> AsyncIterator[bytes]:
    sink = _Sink()
    try:
        with pa.ipc.new_stream(sink, reader.schema) as writer:
            yield sink.take()  # the schema, at once
            while True:
                batch = await trio.to_thread.run_sync(next_batch, reader)
                if batch is None:
                    break
                writer.write_batch(batch)
                del batch
                yield sink.take()
        yield sink.take()  # the end-of-stream marker
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reader.close)


def _int_arg(name: str, *, minimum: int = 0) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidReadError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise InvalidReadError(f"{name} must be at least {minimum}, not {value}")
    return value


def _columns_arg() -> list[str] | None:
    raw = request.args.get("columns")
    if raw is None or raw.strip() == "":
        return None
    return [c.strip() for c in raw.split(",")]


def _error(exc: ArrowportError) -> Response:
    response = jsonify(exc.to_json())
    response.status_code = exc.http_status
    return response


def add_delta_read_routes(app: QuartTrio, store: Callable[[], DeltaStore]) -> None:
    """``GET /delta/{table}``, ``/history``, ``/version/{v}``, ``/changes``."""

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(store(), *args, **kwargs))

    async def arrow(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
        reader = await run(fn, *args, **kwargs)
        return Response(_arrow_stream(reader), mimetype=ARROW_STREAM)

    @app.get("/delta/<table>")
    async def delta_info(table: str) -> Response:
        try:
            info = await run(delta_tables.describe, table)
        except ArrowportError as exc:
            return _error(exc)
        info.pop("path", None)  # the server's file system is not the client's business
        return jsonify(info)

    @app.get("/delta/<table>/history")
    async def delta_history(table: str) -> Response:
        try:
            limit = _int_arg("limit", minimum=1)
            return jsonify(
                {"table": table, "history": await run(delta_tables.history, table, limit)}
            )
        except ArrowportError as exc:
            return _error(exc)

    @app.get("/delta/<table>/version/<version>")
    async def delta_version(table: str, version: str) -> Response:
        try:
            if not re.fullmatch(r"[0-9]+", version):  # not isdigit(): "²" is a digit
                raise InvalidReadError(f"version must be a non-negative integer, not {version!r}")
            return await arrow(
                delta_tables.scan,
                table,
                version=int(version),
                columns=_columns_arg(),
                limit=_int_arg("limit"),
                batch_rows=READ_BATCH_ROWS,
            )
        except ArrowportError as exc:
            return _error(exc)

    @app.get("/delta/<table>/changes")
    async def delta_changes(table: str) -> Response:
        try:
            return await arrow(
                delta_tables.changes,
                table,
                from_version=_int_arg("from_version") or 0,
                to_version=_int_arg("to_version"),
                columns=_columns_arg(),
            )
        except ArrowportError as exc:
            return _error(exc)
