"""HTTP read routes of the DuckLake backend: table info, snapshots, time travel.

``GET /ducklake/{table}`` describes a table at the latest snapshot,
``/snapshots`` lists the snapshots that changed it (newest first), and
``/version/{v}`` streams the table as of snapshot ``v`` as Arrow IPC. As for
Delta (``delta_http``), the storage call raises its specific error before a
response starts, and Arrow responses are streamed a batch at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import trio
from quart import Response, jsonify
from quart_trio import QuartTrio

from ..protocol import ArrowportError, GrpcStatus
from ..storage import DuckLakeStore, InvalidReadError
from .delta_http import ARROW_STREAM, READ_BATCH_ROWS, _arrow_stream, _columns_arg, _error, _int_arg


class BackendUnavailable(ArrowportError):
    error = "backend_unavailable"
    http_status = 409
    grpc_status = GrpcStatus.FAILED_PRECONDITION


def add_ducklake_read_routes(app: QuartTrio, store: Callable[[], DuckLakeStore | None]) -> None:
    """``GET /ducklake/{table}``, ``/snapshots``, ``/version/{v}``."""

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        lake = store()
        if lake is None:
            raise BackendUnavailable(
                "this server does not run the DuckLake backend: set storage_backend: ducklake "
                "(or a stream's storage_backend) and restart"
            )
        return await trio.to_thread.run_sync(lambda: fn(lake, *args, **kwargs))

    @app.get("/ducklake/<table>")
    async def ducklake_info(table: str) -> Response:
        try:
            info = await run(DuckLakeStore.table_info, table)
            version = await run(DuckLakeStore.current_snapshot)
        except ArrowportError as exc:
            return _error(exc)
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
            limit = _int_arg("limit", minimum=1)
            snapshots = await run(DuckLakeStore.snapshots, table, limit)
        except ArrowportError as exc:
            return _error(exc)
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
                columns=_columns_arg(),
                limit=_int_arg("limit"),
                batch_rows=READ_BATCH_ROWS,
            )
        except ArrowportError as exc:
            return _error(exc)
        return Response(_arrow_stream(reader), mimetype=ARROW_STREAM)
