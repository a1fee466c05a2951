"""A Flight DoPut's stream through the ingest pipeline: acknowledged, counted and logged.

Shared by plain Flight DoPut (``flight_put``) and Flight SQL's bulk ingest
(``flight_sql_ingest``), which differ in how they route the request and in
what their ``PutResult`` says.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from ..config import Config, Route
from ..protocol import ArrowportError
from ..protocol.flight import FlightDataDecoder
from ..protocol.flight_pb import PutResult
from ..stats import Labels
from ..storage.modes import CREATE_APPEND
from .deadline import DeadlineStore
from .grpc import GrpcCall
from .h2conn import StreamGone
from .ingest import Commit, Progress, ingest, refusal_reason, result_of

# gRPC: "the RPC's deadline expiring is considered a client cancellation"; it is counted as
# one whichever side notices first (the client's RST_STREAM, or the server's own deadline)
GONE = "disconnected"

log = logging.getLogger("arrowport.flight")


def refused_reason(exc: ArrowportError) -> str:
    """The ``refused`` metric's reason for ``exc``; a passed deadline counts as gone."""
    return GONE if exc.error == "deadline_exceeded" else refusal_reason(exc)


async def put_into(
    call: GrpcCall,
    service: Any,
    config: Config,
    route: Route,
    store: Any,
    decoder: FlightDataDecoder,
    chunks: AsyncIterator[bytes | memoryview],
    *,
    started: float,
    answer: Callable[[Commit], bytes],
    key: str | None,
    key_from_metadata: Callable[[bytes | None], str | None] | None = None,
    protocol: str = "flight",
    table_mode: str = CREATE_APPEND,
) -> None:
    """Run a DoPut's stream into ``store`` through the ingest pipeline, counted and logged.

    Each commit is acknowledged with one ``PutResult`` whose app_metadata is
    ``answer(commit)``, sent after it. Shared by plain Flight DoPut and Flight
    SQL's bulk ingest (``protocol`` "flight_sql", with its ``table_mode``).
    """
    stats = service.state.stats
    if call.timeout is not None:
        store = DeadlineStore(store, call.deadline_monotonic, call.timeout)

    async def acknowledge(commit: Commit) -> None:
        # batch mode sends acks holding the table: a client that reads none cannot hold it
        with trio.move_on_after(config.limits.body_idle_timeout or math.inf) as scope:
            await call.send_message(PutResult(app_metadata=answer(commit)).encode())
        if scope.cancelled_caught:
            idle = config.limits.body_idle_timeout
            raise ArrowportError(
                f"the client read no acknowledgement for {idle:g} s; the request was "
                "abandoned (what was acknowledged before stays committed)",
                error="ack_timeout",
            )

    try:
        service.state.admit(config)
    except ArrowportError:
        stats.refused("limit")
        raise
    progress = Progress()
    labels = Labels.of(route, protocol)
    what = "DoPut" if protocol == "flight" else f"Flight SQL ingest ({table_mode})"
    stats.in_flight += 1
    try:
        result = await ingest(
            chunks,
            route=route,
            store=store,
            limits=config.limits,
            pipeline=service.state.pipeline,
            progress=progress,
            decoder=decoder,
            on_commit=acknowledge,
            idempotency_key=key,
            key_from_metadata=key_from_metadata,
            group_settings=config.group_commit,
            protocol=protocol,
            table_mode=table_mode,
        )
    except ArrowportError as exc:
        stats.finished(labels, GONE if exc.error == "deadline_exceeded" else result_of(exc))
        stats.refused(refused_reason(exc), labels)
        log.info("%s %s refused: %s: %s", what, route.stream, exc.error, exc.detail)
        raise
    except BaseException as exc:
        gone = isinstance(exc, trio.Cancelled | StreamGone)
        stats.finished(labels, "disconnected" if gone else "error")
        if gone:
            stats.refused("disconnected", labels)
            log.info(
                "%s %s: client went away; %d rows committed", what, route.stream, progress.rows
            )
        raise
    finally:
        stats.in_flight -= 1
    stats.succeeded(labels, result, time.monotonic() - started)
    log.info(
        "%s %s -> %s: %d rows, %d batches, %d bytes in %.1f ms%s",
        what,
        route.stream,
        result.table,
        result.rows,
        result.batches,
        result.bytes,
        (time.monotonic() - started) * 1000,
        " (replayed)" if result.replayed else "",
    )
