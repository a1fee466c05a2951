"""Prometheus metrics: what ``Stats`` counts, plus gauges read at scrape time.

``GET /metrics`` on the main port serves ``render(state)``; with
``metrics.port`` a plain-HTTP listener of its own serves it too (``serve``).
Scrapes run in a worker thread: the gauges stat files and read Delta logs.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client as prom
import pyarrow as pa
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..protocol import ArrowportError
from ..stats import LABELS
from ..storage import DeltaStore, DuckLakeStore, StorageError
from . import h2conn
from .auth import authenticate
from .connections import ConnectionTracker
from .state import ServerState

log = logging.getLogger(__name__)

CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
GROWTH_WINDOW = 600.0  # seconds of version history behind the growth rate
HEAD_LIMIT = 8192  # bytes of request head the metrics port reads
HEAD_TIMEOUT = 10.0
S3_STATS_TTL = 10.0  # seconds a Delta table's gauges are reused when its log has no mtime (S3)


class ServerCollector(Collector):
    """Gauges of one server: load, memory, DuckDB files, Delta tables, recent throughput."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._delta: dict[str, tuple[int, tuple[int, int, int]]] = {}  # table: (log mtime, stats)
        self._versions: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()  # scrapes run in worker threads, maybe two at once

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # else registering would run a whole scrape (Delta logs included) at start

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.state
        yield _gauge("arrowport_in_flight_requests", "Uploads being served.", state.stats.in_flight)
        yield _gauge(
            "arrowport_in_flight_bytes",
            "Bytes held against the limits.max_inflight_bytes budget, all uploads together: "
            "message bodies from before they are allocated, batches (at their decoded, "
            "expanded size) until written, dictionaries until their request ends.",
            state.budget.used,
        )
        yield _gauge(
            "arrowport_arrow_memory_pool_bytes",
            "Bytes allocated by Arrow's default memory pool.",
            pa.total_allocated_bytes(),
        )
        rates = GaugeMetricFamily(
            "arrowport_rows_per_second",
            "Rows committed per second, averaged over the last 60 seconds.",
            labels=LABELS,
        )
        for labels, rate in sorted(state.stats.rates().items(), key=lambda item: str(item[0])):
            rates.add_metric([labels.stream, labels.table, labels.backend, labels.protocol], rate)
        yield rates
        yield from _h2_closes()
        yield from self._duckdb()
        yield from self._reopens()
        yield from self._delta_tables()
        yield from self._ducklake()

    def _duckdb(self) -> Iterator[GaugeMetricFamily]:
        store = self.state.stores.get("duckdb")
        path = getattr(store, "path", None)
        if not isinstance(path, str) or path == ":memory:":
            return
        for name, help_text, file in (
            ("arrowport_duckdb_file_bytes", "Size of the DuckDB database file.", path),
            ("arrowport_duckdb_wal_bytes", "Size of the DuckDB write-ahead log.", path + ".wal"),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["path"])
            family.add_metric([path], _size(file))
            yield family

    def _reopens(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Fatal engine errors that invalidated a DuckDB/DuckLake database, and reopens."""
        invalidations = CounterMetricFamily(
            "arrowport_storage_invalidations",
            "Times a fatal engine error invalidated a backend's database (each is reopened).",
            labels=["backend"],
        )
        reopens = CounterMetricFamily(
            "arrowport_storage_reopens",
            "Times a backend's database was reopened after an invalidation.",
            labels=["backend"],
        )
        ready = GaugeMetricFamily(
            "arrowport_storage_ready",
            "1 while a backend's database is usable, 0 while it is being reopened.",
            labels=["backend"],
        )
        for name, store in sorted(self.state.stores.items()):
            gate = getattr(store, "gate", None)
            if gate is None:
                continue
            invalidations.add_metric([name], gate.invalidations)
            reopens.add_metric([name], gate.reopens)
            ready.add_metric([name], 1 if gate.ready else 0)
        yield from (invalidations, reopens, ready)

    def _ducklake(self) -> Iterator[GaugeMetricFamily]:
        store = self.state.stores.get("ducklake")
        if not isinstance(store, DuckLakeStore):
            return
        try:
            snapshot = store.current_snapshot()
        except Exception as exc:  # the catalog is unreachable: say so by leaving it out
            log.debug("metrics: no DuckLake snapshot: %s", exc)
        else:
            yield _gauge("arrowport_ducklake_snapshot", "The lake's latest snapshot id.", snapshot)
        runs = GaugeMetricFamily(
            "arrowport_ducklake_maintenance_runs",
            "Background DuckLake maintenance runs since start, by job and result "
            "(a run that raced another instance's fails and is retried next time).",
            labels=["job", "result"],
        )
        for (job, result), count in sorted(store.maintenance.items()):
            runs.add_metric([job, result], count)
        yield runs

    def _delta_tables(self) -> Iterator[GaugeMetricFamily]:
        store = self.state.stores.get("delta")
        if not isinstance(store, DeltaStore):
            return
        yield _gauge(
            "arrowport_delta_commits_raced",
            "Delta commits that lost their version to another writer and landed at a later "
            "one (delta-rs retried them), since start.",
            store.commits_raced,
        )
        yield _gauge(
            "arrowport_delta_commit_retries",
            "Delta commits Arrowport retried with backoff after delta-rs gave up on a "
            "conflict, since start.",
            store.conflicts_retried,
        )
        if store.location.local is not None and not store.root.is_dir():
            return
        version = GaugeMetricFamily(
            "arrowport_delta_table_version", "Latest version of a Delta table.", labels=["table"]
        )
        files = GaugeMetricFamily(
            "arrowport_delta_table_files",
            "Data files in the latest version of a Delta table.",
            labels=["table"],
        )
        size = GaugeMetricFamily(
            "arrowport_delta_table_bytes",
            "Size on disk of the data files of the latest version of a Delta table.",
            labels=["table"],
        )
        growth = GaugeMetricFamily(
            "arrowport_delta_table_versions_per_second",
            "How fast a Delta table's version grows: new versions per second over the last "
            "10 minutes this server has watched it (0 until two scrapes have seen it).",
            labels=["table"],
        )
        now = time.monotonic()
        try:
            stats = self._delta_stats(store)
        except StorageError as exc:  # an object store that cannot be reached: no gauges
            log.debug("metrics: no Delta tables: %s", exc.detail)
            stats = {}
        for table, (v, n, b) in sorted(stats.items()):
            version.add_metric([table], v)
            files.add_metric([table], n)
            size.add_metric([table], b)
            growth.add_metric([table], self._growth(table, v, now))
        yield from (version, files, size, growth)

    def _delta_stats(self, store: DeltaStore) -> dict[str, tuple[int, int, int]]:
        """Each table's statistics, re-read only when its log has changed (on S3,
        where a log has no cheap mtime: at most every ``S3_STATS_TTL`` seconds)."""
        if store.location.local is not None and not any(
            entry.is_dir() for entry in os.scandir(store.root)
        ):
            return {}  # no tables: deltalake stays unloaded (see storage.delta)
        from ..storage.delta_tables import table_names, table_stats

        out = {}
        for table in table_names(store):
            if store.location.local is not None:
                stamp = _mtime(store.root / table / "_delta_log")
            else:
                stamp = int(time.monotonic() // S3_STATS_TTL)
            cached = self._delta.get(table)
            if cached is None or cached[0] != stamp:
                try:
                    cached = (stamp, table_stats(store, table))
                except StorageError as exc:  # removed meanwhile, or a broken log
                    log.debug("metrics: skipping Delta table %s: %s", table, exc)
                    continue
                self._delta[table] = cached
            out[table] = cached[1]
        return out

    def _growth(self, table: str, version: int, now: float) -> float:
        seen = self._versions.setdefault(table, deque())
        if not seen or seen[-1][1] != version or now - seen[-1][0] > 1:
            seen.append((now, version))
        while len(seen) > 2 and now - seen[0][0] > GROWTH_WINDOW:
            seen.popleft()
        (t0, v0), (t1, v1) = seen[0], seen[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


def _h2_closes() -> Iterator[CounterMetricFamily]:
    """HTTP/2 connections the server closed, by reason; streams reset for waiting too long."""
    closed = CounterMetricFamily(
        "arrowport_h2_connections_closed",
        "HTTP/2 (Flight) connections closed by the server, by reason (a flood budget "
        "spent, a protocol error, a client that reads nothing, idleness).",
        labels=["reason"],
    )
    for reason, count in sorted(h2conn.CLOSED.items()):
        closed.add_metric([reason], count)
    yield closed
    yield CounterMetricFamily(
        "arrowport_h2_streams_expired",
        "HTTP/2 streams reset (CANCEL) after waiting on their client for "
        "http2.stream_idle_timeout.",
        value=h2conn.STREAMS_EXPIRED[0],
    )


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def install(state: ServerState) -> None:
    """Add the gauges above, and the process's RSS and CPU, to the server's registry (once)."""
    prom.disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
    state.stats.registry.register(ServerCollector(state))
    prom.ProcessCollector(registry=state.stats.registry)


class ConnectionCollector(Collector):
    """Open connections, and connections closed at once for being over a limit."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self.tracker = tracker

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        tracker = self.tracker
        yield _gauge(
            "arrowport_connections_open",
            "Connections open now, HTTP/1.1 and HTTP/2 together.",
            tracker.open,
        )
        yield _gauge(
            "arrowport_connections_limit",
            "Most connections open at once: limits.max_connections, lowered to fit the "
            "descriptor limit less its headroom.",
            tracker.limit,
        )
        refused = CounterMetricFamily(
            "arrowport_connections_refused",
            "New connections closed at once: over the server-wide limit (server) or over "
            "limits.max_connections_per_client (client).",
            labels=["reason"],
        )
        for reason, count in tracker.refused.items():
            refused.add_metric([reason.value], count)
        yield refused


def install_connections(state: ServerState, tracker: ConnectionTracker) -> None:
    """Add the connection gauges and refusal counter of ``tracker`` to the server's registry."""
    state.stats.registry.register(ConnectionCollector(tracker))


# Scrapes take one thread of their own at a time, never the default limiter's threads that
# ingest validation and rollbacks use; concurrent scrapes queue here.
SCRAPES = trio.CapacityLimiter(1)


async def render(state: ServerState) -> bytes:
    """The Prometheus text format, built in a worker thread."""
    registry = state.stats.registry
    return await trio.to_thread.run_sync(prom.generate_latest, registry, limiter=SCRAPES)


def authorized(state: ServerState, authorization: str | None) -> bool:
    """Whether a scrape may read /metrics: always, unless auth is on and protects it."""
    auth = state.config.auth
    if not auth.enabled or not auth.protect_metrics:
        return True
    try:
        authenticate(auth, authorization)
    except ArrowportError:
        return False
    return True


async def serve(
    state: ServerState,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    task_status: Any,
) -> None:
    """Serve ``GET /metrics`` (HTTP/1.1, one request per connection) on a port of its own:
    HTTPS with the server's certificate when it has one, else plain HTTP."""

    async def answer(tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        try:
            head = b""
            with trio.move_on_after(HEAD_TIMEOUT):  # the TLS handshake included
                while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    head += data
            status, body, kind = _route(state, head)
            if status.startswith("200"):
                body = await render(state)
            reply = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            with trio.move_on_after(HEAD_TIMEOUT):  # a scraper that never reads
                await stream.send_all(reply + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    scheme = "https" if ssl_context is not None else "http"
    log.info("metrics on %s://%s:%d/metrics", scheme, host, bound)
    task_status.started(bound)
    await trio.serve_listeners(answer, listeners)


def _route(state: ServerState, head: bytes) -> tuple[str, bytes, str]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if b"\r\n\r\n" not in head or len(parts) != 3:
        return "400 Bad Request", b"bad request\n", "text/plain"
    method, target = parts[0], parts[1].split(b"?")[0]
    if target != b"/metrics":
        return "404 Not Found", b"only /metrics is served on this port\n", "text/plain"
    if method != b"GET":
        return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
    authorization = next(
        (
            line.split(b":", 1)[1].strip().decode("latin-1")
            for line in lines[1:]
            if line.lower().startswith(b"authorization:")
        ),
        None,
    )
    if not authorized(state, authorization):
        return "401 Unauthorized", b"a bearer token is required\n", "text/plain"
    return "200 OK", b"", CONTENT_TYPE
