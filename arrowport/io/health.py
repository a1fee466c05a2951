"""Liveness, readiness, and the test-only hooks.

Kubernetes' split: ``GET /health`` (and ``/health/live``) is liveness, 200
whenever the process serves requests, as it always was; ``GET /health/ready``
is readiness, 200 when every backend the server runs can write and 503
naming those that cannot (a DuckDB database reopening after a fatal engine
error, a catalog that does not answer, a Delta root that is not writable).
Readiness runs a trivial query on each DuckDB/DuckLake store, in a worker
thread. The Flight ``health`` action answers the same.

Test hooks (``ARROWPORT_TEST_HOOKS=1`` in the server's environment, never
set in production): ``POST /_test/invalidate/{backend}?hold=S`` invalidates
that backend's database as a fatal engine error would, and holds its reopen
for ``S`` seconds. Without the variable the route does not exist (404).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from .. import __version__
from ..storage import DeltaStore
from .state import ServerState

TEST_HOOKS_ENV = "ARROWPORT_TEST_HOOKS"
ENDPOINTS = ("health", "health_live", "health_ready")  # answered without a token
PROBES = trio.CapacityLimiter(2)  # readiness probes never take the writers' threads


def test_hooks_enabled() -> bool:
    return os.environ.get(TEST_HOOKS_ENV) == "1"


def liveness() -> dict[str, object]:
    return {"status": "ok", "version": __version__}


def probe_delta(store: DeltaStore) -> str | None:
    """None if the Delta root can be written (a local root: the nearest existing directory
    is writable; an object store is not probed), else why not."""
    local = store.location.local
    if local is None:
        return None
    path = Path(local)
    while not path.exists() and path != path.parent:
        path = path.parent
    if not os.access(path, os.W_OK | os.X_OK):
        return "delta: the table root is not writable"
    return None


def probe(store: Any) -> str | None:
    if isinstance(store, DeltaStore):
        return probe_delta(store)
    check = getattr(store, "probe", None)
    return None if check is None else check()  # type: ignore[no-any-return]


async def readiness(state: ServerState) -> tuple[bool, dict[str, object]]:
    """Whether every backend can write, and the JSON body that says so."""
    backends: dict[str, dict[str, object]] = {}
    for name, store in sorted(state.stores.items()):
        reason = await trio.to_thread.run_sync(probe, store, limiter=PROBES)
        backends[name] = {"ready": True} if reason is None else {"ready": False, "reason": reason}
    failing = [name for name, entry in backends.items() if not entry["ready"]]
    body: dict[str, object] = {
        "status": "ready" if not failing else "not_ready",
        "version": __version__,
        "backends": backends,
    }
    if failing:
        body["error"] = "not_ready"
        body["detail"] = "cannot write: " + "; ".join(
            str(backends[name]["reason"]) for name in failing
        )
    return not failing, body


def add_health_routes(app: QuartTrio, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Response:
        return jsonify(liveness())

    @app.get("/health/live")
    async def health_live() -> Response:
        return jsonify(liveness())

    @app.get("/health/ready")
    async def health_ready() -> Response:
        ready, body = await readiness(state)
        response = jsonify(body)
        response.status_code = 200 if ready else 503
        return response

    if not test_hooks_enabled():
        return

    @app.post("/_test/invalidate/<backend>")
    async def test_invalidate(backend: str) -> Response:
        store = state.stores.get(backend)
        if store is None or not hasattr(store, "invalidate_for_test"):
            response = jsonify({"error": "not_found", "detail": f"no DuckDB store {backend!r}"})
            response.status_code = 404
            return response
        hold = float(request.args.get("hold", "0"))
        message = await trio.to_thread.run_sync(store.invalidate_for_test, hold)
        return jsonify({"invalidated": backend, "engine_message": message})
