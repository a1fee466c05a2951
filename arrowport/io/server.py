"""Run the server: storage, HTTP and Flight on one port, hot reload.

Shutdown is graceful: on SIGINT/SIGTERM the listener stops accepting, HTTP/2
connections get a GOAWAY (new calls refused), in-flight requests and calls
finish (up to ``graceful_timeout``), then the database is checkpointed and
closed.

Backends are opened at start only. A configured stream that routes to one the
server does not run (say, a DuckLake stream added by a reload) is logged as a
WARNING at start and after each reload; its requests get ``backend_unavailable``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import hypercorn.trio.tcp_server
import pyarrow as pa
import trio
from hypercorn.config import Config as HypercornConfig

from .. import redact
from ..config import Config, ConfigError, load_config
from ..preflight import preflight
from ..storage import DeltaStore, DuckDBStore, DuckLakeStore, StorageError
from . import listener, metrics
from .backends import warn_unserved
from .connections import ConnectionTracker
from .flight import FlightService
from .http import create_app
from .state import ServerState

log = logging.getLogger("arrowport.server")

# hypercorn's trio worker reads sockets 64 KiB at a time, and every read costs a
# trip through h11, hypercorn's event queue and the ASGI receive loop: for bulk
# uploads that per-chunk plumbing, not the data, was a third of the event loop's
# CPU. Larger reads cut the number of trips 16-fold; memory stays bounded by the
# body's high-water mark. (Module constant: hypercorn has no setting for it.)
RECEIVE_SIZE = 1024 * 1024
hypercorn.trio.tcp_server.MAX_RECV = RECEIVE_SIZE


def open_stores(config: Config) -> dict[str, Any]:
    store = DuckDBStore.from_config(config)
    store.open()
    delta = DeltaStore.from_config(config)
    stores: dict[str, Any] = {"duckdb": store, "delta": delta}
    try:
        if config.uses("delta"):  # else the root appears with the first POST /delta/{table}
            delta.open()
        if config.uses("ducklake"):  # else no catalog is created
            stores["ducklake"] = open_ducklake(config)
    except BaseException:
        store.close(checkpoint=False)
        raise
    return stores


def open_ducklake(config: Config) -> DuckLakeStore:
    lake, duck = config.ducklake, config.duckdb
    store = DuckLakeStore(
        lake.catalog,
        lake.data_path,
        storage_options=lake.storage_options,
        max_retry_count=lake.max_retry_count,
        retry_wait_ms=lake.retry_wait_ms,
        retry_backoff=lake.retry_backoff,
        data_inlining_row_limit=lake.data_inlining_row_limit,
        snapshot_retention_hours=lake.snapshot_retention_hours,
        extensions=config.duckdb_extensions,
        memory_limit=duck.memory_limit,
        threads=duck.threads,
        temp_directory=duck.temp_directory,
        key_ttl_hours=config.idempotency.key_ttl_hours,
    )
    store.open()
    return store


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("arrowport.hypercorn")
    hc.graceful_timeout = 30.0
    # HTTP/1.1 keep-alive, the first bytes of a connection, and HTTP/2 connections without a stream
    hc.keep_alive_timeout = config.limits.connection_idle_timeout or math.inf
    hc.ssl_handshake_timeout = 10.0  # with TLS: a stalled handshake is closed after this
    return hc


_UNSEEN = object()


def _fingerprint(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # ctime and inode catch edits that keep size and mtime (cp -p, rsync -t, renames)
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


async def watch_config(
    state: ServerState,
    reload: Callable[[], Config],
    path: str,
) -> None:
    """Poll ``path``; on a change, swap in the new config or keep the old one.

    A change is acted on once the file has looked the same for one whole
    interval, so an editor's truncate-then-write is never read half-way. The
    first poll compares the file with the config the server started with, so
    an edit made during start-up is not missed.
    """
    interval = state.config.reload_interval
    seen: object = _UNSEEN
    changed: object = _UNSEEN
    while True:
        await trio.sleep(interval)
        now = _fingerprint(path)
        if now == seen:
            changed = _UNSEEN
            continue
        if now != changed:  # still changing: look again next time
            changed = now
            continue
        seen, changed = now, _UNSEEN
        try:
            new = reload()
        except ConfigError as exc:
            log.error("config reload failed; keeping the previous config: %s", exc)
            continue
        except Exception:
            log.exception("config reload failed; keeping the previous config")
            continue
        old = state.config
        if new == old:
            continue
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("config reload: %s changed; it takes effect after a restart", key)
        state.config = replace(new, **{key: getattr(old, key) for key in RESTART_ONLY})
        log.info("config reloaded from %s (%d streams)", path, len(new.streams))
        warn_unserved(state.config, state.store_for)


RESTART_ONLY = (
    "host",
    "port",
    "db_path",
    "storage_backend",
    "delta_config",
    "ducklake",
    "tls",
    "duckdb_extensions",
    "duckdb",
    "reload_interval",
)


COMPACTION_POLL = 1.0


async def compaction_loop(store: DeltaStore, interval: float = COMPACTION_POLL) -> None:
    """Compact the Delta tables that are due, one at a time, beside ingest."""
    while True:
        await trio.sleep(interval)
        while store.compactions_due:
            # popitem is atomic: writer threads add to the dict meanwhile
            table, options = store.compactions_due.popitem()
            try:
                done = await trio.to_thread.run_sync(store.compact, table, options)
            except Exception:
                log.exception("background compaction of %s failed", table)
                continue
            log.info(
                "compacted %s: %s files removed, %s added",
                table,
                done.get("numFilesRemoved"),
                done.get("numFilesAdded"),
            )


async def ducklake_maintenance(store: DuckLakeStore, merge: float, cleanup: float) -> None:
    """Merge small files every ``merge`` seconds; expire snapshots and delete
    unreferenced files every ``cleanup`` seconds (0: never). Each step is a
    snapshot of its own; one that races another instance fails, is logged,
    and runs again next time."""
    steps = [
        (merge, store.merge_files, "merge of small files"),
        (cleanup, store.expire_and_clean, "snapshot expiry and file cleanup"),
    ]
    due = {name: interval for interval, _, name in steps if interval > 0}
    if not due:
        return
    now = 0.0
    while True:
        wake = min(due.values())
        await trio.sleep(wake - now)
        now = wake
        for interval, step, name in steps:
            if name in due and due[name] <= now:
                due[name] = now + interval
                try:
                    await trio.to_thread.run_sync(step)
                except Exception as exc:
                    log.warning("DuckLake %s failed (retried next time): %s", name, exc)


async def checkpoint_loop(store: DuckDBStore, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        try:
            await trio.to_thread.run_sync(store.checkpoint)
        except StorageError as exc:  # e.g. the database is being reopened: next time
            log.warning("periodic checkpoint failed: %s", exc.detail)
        except Exception:
            log.exception("periodic checkpoint failed")


async def memory_loop(stores: list[DuckDBStore], interval: float = 1.0) -> None:
    """Every ``interval`` s, give memory back after a large transaction: DuckDB's block
    cache (kept up to ``memory_limit`` otherwise) while a store is unused, then what
    Arrow's allocator holds of the freed batches (mimalloc purges only as it allocates)."""
    while True:
        await trio.sleep(interval)
        released = False
        for store in stores:
            try:
                released |= await trio.to_thread.run_sync(store.release_memory)
            except Exception:
                log.exception("releasing DuckDB's cached memory failed")
        if released:
            await trio.to_thread.run_sync(pa.default_memory_pool().release_unused)


async def serve(
    config: Config,
    *,
    reload: Callable[[], Config] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (default: SIGINT or SIGTERM)."""
    tls = config.tls
    ssl_context = (
        listener.tls_context(tls.certfile, tls.keyfile)
        if tls.certfile is not None and tls.keyfile is not None
        else None
    )
    redact.remember(config.credentials())  # hidden in every log line and error from now on
    await trio.to_thread.run_sync(preflight, config)  # as `arrowport config check` does
    stores = await trio.to_thread.run_sync(open_stores, config)
    state = ServerState(config=config, stores=stores)
    warn_unserved(config, state.store_for)
    metrics.install(state)
    limits = config.limits  # read at start, like the port
    connections = ConnectionTracker.for_process(
        limits.max_connections, limits.max_connections_per_client
    )
    metrics.install_connections(state, connections)
    app = create_app(state)
    duck: DuckDBStore = stores["duckdb"]
    try:
        async with trio.open_nursery() as nursery:
            if reload is not None and config.source is not None and config.reload_interval > 0:
                nursery.start_soon(watch_config, state, reload, config.source)
            if config.duckdb.checkpoint_interval > 0:
                nursery.start_soon(checkpoint_loop, duck, config.duckdb.checkpoint_interval)
            nursery.start_soon(memory_loop, [duck])
            if config.delta_config.compact_every > 0:
                nursery.start_soon(compaction_loop, stores["delta"])
            lake = stores.get("ducklake")
            if lake is not None:
                settings = config.ducklake
                nursery.start_soon(
                    ducklake_maintenance, lake, settings.merge_interval, settings.cleanup_interval
                )
            if config.metrics.port is not None:  # read at start, like the main port
                host = config.metrics.host or config.host
                await nursery.start(metrics.serve, state, host, config.metrics.port, ssl_context)

            async def stop_when_told() -> None:
                await (shutdown_trigger or wait_for_signal)()
                state.draining = True

            async def run_http(task_status: trio.TaskStatus[list[str]]) -> None:
                await listener.serve(
                    app,
                    hypercorn_config(config),
                    FlightService(state),
                    shutdown_trigger=stop_when_told,
                    ssl_context=ssl_context,
                    connections=connections,
                    h2_settings=config.http2,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # stop the helpers too

            binds = await nursery.start(run_http)
            log.info(
                "serving on %s; writing %s (duckdb) and %s (delta)",
                ", ".join(binds),
                config.db_path,
                stores["delta"].uri,
            )
            if lake is not None:
                log.info("DuckLake catalog %s, data in %s", lake.catalog_label, lake.data_path)
            if ssl_context is not None:
                log.info("TLS only (HTTPS, Flight at grpc+tls://); certificate %s", tls.certfile)
            task_status.started(binds)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(
                lambda: duck.close(checkpoint=config.duckdb.checkpoint_on_shutdown)
            )
            if "ducklake" in stores:
                await trio.to_thread.run_sync(stores["ducklake"].close)
        log.info("stopped; database closed")


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            return


def run(config: Config, *, config_path: str | None, overrides: dict[str, Any]) -> None:
    """Blocking entry point for the CLI."""

    def reload() -> Config:
        return load_config(config_path, overrides=overrides)

    trio.run(lambda: serve(config, reload=reload))
