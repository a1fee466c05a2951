"""HTTP routes of the Delta backend: table info, history, time travel, CDC.

Reads are thin adapters over ``storage.delta_tables``: the storage call
runs in a worker thread and raises its specific error (404, 400) before a
response starts; Arrow responses are then streamed one batch at a time
(``read_http.arrow_stream``), the next batch read only after the previous
one is sent, so memory stays bounded by one batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import trio
from quart import Response, jsonify
from quart_trio import QuartTrio

from ..protocol import ArrowportError
from ..storage import InvalidReadError, delta_tables
from ..storage.delta import DeltaStore
from .read_http import (
    ARROW_STREAM,
    READ_BATCH_ROWS,
    arrow_stream,
    columns_arg,
    error_json,
    int_arg,
)


def add_delta_read_routes(app: QuartTrio, store: Callable[[], DeltaStore]) -> None:
    """``GET /delta/{table}``, ``/history``, ``/version/{v}``, ``/changes``."""

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(store(), *args, **kwargs))

    async def arrow(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
        reader = await run(fn, *args, **kwargs)
        return Response(arrow_stream(reader), mimetype=ARROW_STREAM)

    @app.get("/delta/<table>")
    async def delta_info(table: str) -> Response:
        try:
            info = await run(delta_tables.describe, table)
        except ArrowportError as exc:
            return error_json(exc)
        info.pop("path", None)  # the server's file system is not the client's business
        return jsonify(info)

    @app.get("/delta/<table>/history")
    async def delta_history(table: str) -> Response:
        try:
            limit = int_arg("limit", minimum=1)
            return jsonify(
                {"table": table, "history": await run(delta_tables.history, table, limit)}
            )
        except ArrowportError as exc:
            return error_json(exc)

    @app.get("/delta/<table>/version/<version>")
    async def delta_version(table: str, version: str) -> Response:
        try:
            if not re.fullmatch(r"[0-9]+", version):  # not isdigit(): "²" is a digit
                raise InvalidReadError(f"version must be a non-negative integer, not {version!r}")
            return await arrow(
                delta_tables.scan,
                table,
                version=int(version),
                columns=columns_arg(),
                limit=int_arg("limit"),
                batch_rows=READ_BATCH_ROWS,
            )
        except ArrowportError as exc:
            return error_json(exc)

    @app.get("/delta/<table>/changes")
    async def delta_changes(table: str) -> Response:
        try:
            return await arrow(
                delta_tables.changes,
                table,
                from_version=int_arg("from_version") or 0,
                to_version=int_arg("to_version"),
                columns=columns_arg(),
            )
        except ArrowportError as exc:
            return error_json(exc)
