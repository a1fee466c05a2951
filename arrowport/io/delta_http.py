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
from ..storage import InvalidReadError
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

    async def run(name: str, *args: Any, **kwargs: Any) -> Any:
        """``delta_tables.<name>(store, ...)`` in a worker thread (which imports deltalake
        on the first Delta read: see ``storage.delta``)."""

        def call() -> Any:
            from ..storage import delta_tables

            fn: Callable[..., Any] = getattr(delta_tables, name)
            return fn(store(), *args, **kwargs)

        return await trio.to_thread.run_sync(call)

    async def arrow(name: str, *args: Any, **kwargs: Any) -> Response:
        reader = await run(name, *args, **kwargs)
        return Response(arrow_stream(reader), mimetype=ARROW_STREAM)

    @app.get("/delta/<table>")
    async def delta_info(table: str) -> Response:
        try:
            info = await run("describe", table)
        except ArrowportError as exc:
            return error_json(exc)
        info.pop("path", None)  # the server's file system is not the client's business
        return jsonify(info)

    @app.get("/delta/<table>/history")
    async def delta_history(table: str) -> Response:
        try:
            limit = int_arg("limit", minimum=1)
            return jsonify({"table": table, "history": await run("history", table, limit)})
        except ArrowportError as exc:
            return error_json(exc)

    @app.get("/delta/<table>/version/<version>")
    async def delta_version(table: str, version: str) -> Response:
        try:
            if not re.fullmatch(r"[0-9]+", version):  # not isdigit(): "²" is a digit
                raise InvalidReadError(f"version must be a non-negative integer, not {version!r}")
            return await arrow(
                "scan",
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
                "changes",
                table,
                from_version=int_arg("from_version") or 0,
                to_version=int_arg("to_version"),
                columns=columns_arg(),
            )
        except ArrowportError as exc:
            return error_json(exc)
