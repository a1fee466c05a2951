"""HTTP routes on quart-trio: a thin adapter around the ingest pipeline.

Routes: ``POST /ingest/{stream}`` (alias ``/stream/{stream}``), ``POST
/delta/{table}`` (the Delta backend, whatever the config routes), ``GET
/health`` (with ``/health/live`` and ``/health/ready``: ``health``), ``GET
/streams``, ``GET /metrics``, and the Delta and DuckLake read routes
(``delta_http``, ``lake_http``). Errors are JSON ``{error, detail}`` with a
specific status (503s with ``Retry-After`` when retrying helps); a stream
routed to a backend the server does not run gets 400 ``backend_unavailable``
(``backends``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import logs
from ..config import Config, Route
from ..names import validate_idempotency_key
from ..protocol import ArrowportError
from ..redact import public_detail
from ..stats import Labels
from . import health, metrics
from .answers import public_json
from .auth import authenticate, authorize_table, authorize_write
from .backends import backend_unavailable
from .body import StreamingASGIHTTPConnection, StreamingRequest
from .delta_http import add_delta_read_routes
from .http1 import send_continue, waiting_for_continue
from .ingest import Progress, ingest, refusal_reason, result_of
from .lake_http import add_ducklake_read_routes
from .read_http import error_json, with_retry_after
from .state import ServerState, TooBusyError
from .status import http_status

log = logging.getLogger("arrowport.http")

ARROW_STREAM_TYPES = ("application/vnd.apache.arrow.stream", "application/octet-stream")
DRAIN_LIMIT = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0


def error_response(status: int, error: str, detail: str, **extra: Any) -> Response:
    response = jsonify({"error": error, "detail": detail, **extra})
    response.status_code = status
    return response


async def _drain_body(limit: int = DRAIN_LIMIT, seconds: float = DRAIN_SECONDS) -> None:
    """Read and discard what remains of a refused body, within bounds.

    Answering while the client is still sending makes many clients report a
    reset instead of our error; a bounded drain lets the answer arrive. A
    client still waiting for ``100 Continue`` has sent no body: nothing is
    read, and the connection closes after the answer.
    """
    if waiting_for_continue(request.scope):
        return
    drained = 0
    with trio.move_on_after(seconds):
        try:
            async for chunk in request.body:
                drained += len(chunk)
                if drained > limit:
                    break
        except HTTPException:
            pass


def create_app(state: ServerState) -> QuartTrio:
    app = QuartTrio("arrowport")
    app.asgi_http_class = StreamingASGIHTTPConnection  # type: ignore[assignment]
    app.request_class = StreamingRequest
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config["BODY_TIMEOUT"] = None
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    @app.before_request
    async def request_id() -> None:
        logs.start_request(request.headers.get("X-Request-Id"))

    @app.after_request
    async def send_request_id(response: Response) -> Response:
        rid = logs.REQUEST_ID.get()
        if rid:
            response.headers["X-Request-Id"] = rid
        if state.draining or waiting_for_continue(request.scope):
            response.headers["Connection"] = "close"  # (a body never sent is never read)
        return response

    @app.before_request
    async def check_token() -> Response | None:
        """Authenticate every route but health's from its headers, before any body is read."""
        if request.endpoint in health.ENDPOINTS:
            return None
        if request.endpoint == "metrics_route" and not state.config.auth.protect_metrics:
            return None
        try:
            token = authenticate(state.config.auth, request.headers.get("Authorization"))
            args = request.view_args or {}
            if request.method == "POST" and "stream" in args:
                authorize_write(token, args["stream"])
            elif request.method == "POST" and "table" in args:  # POST /delta/{table}
                authorize_table(token, state.config, args["table"], "delta")
        except ArrowportError as exc:
            state.stats.refused("auth")
            response = error_json(exc)
            if http_status(exc) == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="arrowport"'
            if request.method == "POST":  # the body is never read: end the connection
                response.headers["Connection"] = "close"
            return response
        return None

    health.add_health_routes(app, state)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(await metrics.render(state), content_type=metrics.CONTENT_TYPE)

    @app.get("/streams")
    async def streams() -> Response:
        return jsonify(state.streams_report())

    async def ingest_route(stream: str) -> Response:
        return await _ingest(lambda config: config.route(stream))

    async def delta_route(table: str) -> Response:
        return await _ingest(lambda config: config.table_route(table, "delta"))

    async def _ingest(resolve: Callable[[Config], Route]) -> Response:
        started = time.monotonic()
        config = state.config  # one snapshot for the whole request
        try:
            route = resolve(config)
            key = request.headers.get("Idempotency-Key")
            if key is not None:
                validate_idempotency_key(key)
        except ArrowportError as exc:
            state.stats.refused("bad_input")
            await _drain_body()
            return error_json(exc)
        stream = route.stream  # the configured spelling: names are case-insensitive
        mimetype = request.mimetype
        if mimetype not in ARROW_STREAM_TYPES:
            state.stats.refused("bad_input")
            await _drain_body()
            shown = mimetype or "none"
            return error_response(
                415,
                "unsupported_media_type",
                f"Content-Type {shown!r} is not accepted; send the body as an Arrow IPC stream "
                f"with Content-Type: {ARROW_STREAM_TYPES[0]} (or {ARROW_STREAM_TYPES[1]})",
            )
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity":
            state.stats.refused("bad_input")
            await _drain_body()
            return error_response(
                415,
                "unsupported_content_encoding",
                f"Content-Encoding {encoding!r} is not supported; use Arrow IPC body "
                "compression (LZ4_FRAME or ZSTD) instead",
            )
        try:
            state.admit(config)
        except TooBusyError as exc:
            state.stats.refused("limit")
            response = error_json(exc)
            response.headers["Retry-After"] = str(exc.retry_after)
            response.headers["Connection"] = "close"  # the body is not read
            return response
        limit = config.limits.max_request_size
        labels = Labels.of(route, "http")
        if limit is not None and (request.content_length or 0) > limit:
            state.stats.refused("limit", labels)
            state.stats.finished(labels, "refused")
            return error_response(
                413, "limit_exceeded", f"request body exceeds the limit of {limit} bytes"
            )
        store = state.store_for(route.backend)
        if store is None:
            state.stats.refused("bad_input")
            await _drain_body()
            return error_json(backend_unavailable(route.backend, stream))
        progress = Progress()
        state.stats.in_flight += 1
        try:
            await send_continue(request.scope)  # every check passed: now the body
            result = await ingest(
                request.body,
                route=route,
                store=store,
                limits=config.limits,
                pipeline=state.pipeline,
                progress=progress,
                idempotency_key=key,
                group_settings=config.group_commit,
                protocol="http",
            )
        except ArrowportError as exc:
            state.stats.finished(labels, result_of(exc))
            state.stats.refused(refusal_reason(exc), labels)
            log.info("ingest %s refused: %s: %s", stream, exc.error, exc.detail)
            if exc.error in ("body_timeout", "body_too_slow"):
                # the client stopped sending: answer at once and close the connection
                response = jsonify({**public_json(exc), **_progress(route.commit, progress)})
                response.status_code = http_status(exc)
                response.headers["Connection"] = "close"
                return response
            if not getattr(request.body, "complete", True):
                await _drain_body()
            extra: dict[str, Any] = {"stream": stream, "table": route.table}
            extra.update(_progress(route.commit, progress))
            response = jsonify({**public_json(exc), **extra})
            response.status_code = http_status(exc)
            return with_retry_after(response, exc)
        except RequestEntityTooLarge:
            state.stats.finished(labels, "refused")
            return error_response(413, "limit_exceeded", "request body too large")
        except trio.Cancelled:  # the client went away (or the server is stopping)
            state.stats.finished(labels, "disconnected")
            state.stats.refused("disconnected", labels)
            if route.commit == "batch":
                log.info(
                    "ingest %s: client disconnected after %d committed rows", stream, progress.rows
                )
            else:
                log.info("ingest %s: client disconnected; rolled back", stream)
            raise
        except Exception:
            state.stats.finished(labels, "error")
            raise
        finally:
            state.stats.in_flight -= 1
        state.stats.succeeded(labels, result, time.monotonic() - started)
        log.info(
            "ingest %s -> %s (%s): %d rows, %d batches, %d bytes in %.1f ms%s",
            stream,
            result.table,
            result.backend,
            result.rows,
            result.batches,
            result.bytes,
            (time.monotonic() - started) * 1000,
            " (replayed: nothing written)" if result.replayed else "",
        )
        return jsonify(result.to_json())

    app.add_url_rule("/ingest/<stream>", "ingest", ingest_route, methods=["POST"])
    app.add_url_rule("/stream/<stream>", "stream", ingest_route, methods=["POST"])
    app.add_url_rule("/delta/<table>", "delta_ingest", delta_route, methods=["POST"])
    add_delta_read_routes(app, state.delta_store)
    add_ducklake_read_routes(app, state.ducklake_store)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        return error_response(code, name, exc.description or name)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("internal error")
        shown = public_detail(f"{type(exc).__name__}: {exc}")  # the log has the traceback
        return error_response(500, "internal_error", shown)

    return app


def _progress(commit: str, progress: Progress) -> dict[str, int]:
    if commit != "batch":
        return {}
    return {"committed_rows": progress.rows, "committed_batches": progress.batches}
