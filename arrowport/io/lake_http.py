"""HTTP read routes of the DuckLake backend: table info, snapshots, time travel.

``GET /ducklake/{table}`` describes a table at the latest snapshot,
``/snapshots`` lists the snapshots that changed it (newest first), and
``/version/{v}`` streams the table as of snapshot ``v`` as Arrow IPC. As for
Delta (``delta_http``), the storage call raises its specific error before a
response starts, and Arrow responses are streamed a batch at a time
(``read_http``). A server that does not run DuckLake answers 400
``backend_unavailable`` (``backends``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import trio
from quart import Response, jsonify
from quart_trio import QuartTrio

from ..protocol import ArrowportError
from ..storage import DuckLakeStore, InvalidReadError
from .backends import backend_unavailable
from .read_http import (
    ARROW_STREAM,
    READ_BATCH_ROWS,
    arrow_stream,
    columns_arg,
    error_json,
    int_arg,
)


def add_ducklake_read_routes(app: QuartTrio, store: Callable[[], DuckLakeStore | None]) -> None:
    """``GET /ducklake/{table}``, ``/snapshots``, ``/version/{v}``."""

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        lake = store()
        if lake is None:
            raise backend_unavailable("ducklake")
        return await trio.to_thread.run_sync(lambda: fn(lake, *args, **kwargs))

    @app.get("/ducklake/<table>")
    async def ducklake_info(table: str) -> Response:
        try:
            info, version = await run(DuckLakeStore.table_info_at, table)
        except ArrowportError as exc:
            return error_json(exc)
        return jsonify(
            {
                "table": info.name,
                "version": version,
                "rows": info.rows,
                "bytes": info.bytes,
                "columns": [{"name": f.name, "type": str(f.type)} for f in info.schema],
            }
        )

    @app.get("/ducklake/<table>/snapshots")
    async def ducklake_snapshots(table: str) -> Response:
        try:
            limit = int_arg("limit", minimum=1)
            snapshots = await run(DuckLakeStore.snapshots, table, limit)
        except ArrowportError as exc:
            return error_json(exc)
        return jsonify({"table": table, "snapshots": snapshots})

    @app.get("/ducklake/<table>/version/<version>")
    async def ducklake_version(table: str, version: str) -> Response:
        try:
            if not re.fullmatch(r"[0-9]+", version):  # not isdigit(): "²" is a digit
                raise InvalidReadError(f"version must be a non-negative integer, not {version!r}")
            reader = await run(
                DuckLakeStore.scan,
                table,
                version=int(version),
                columns=columns_arg(),
                limit=int_arg("limit"),
                batch_rows=READ_BATCH_ROWS,
            )
        except ArrowportError as exc:
            return error_json(exc)
        return Response(arrow_stream(reader), mimetype=ARROW_STREAM)
