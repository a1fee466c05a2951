"""What one running server shares between requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from ..config import Config
from ..errors import ArrowportError
from ..stats import Stats
from ..storage import DeltaStore, DuckLakeStore
from .budget import MemoryBudget
from .group_commit import GroupCommitter
from .ingest import Pipeline, Store, TableLocks

DEFAULT_WRITERS = 64


@dataclass(slots=True)
class ServerState:
    config: Config
    stores: dict[str, Store]
    stats: Stats = field(default_factory=Stats)
    locks: TableLocks = field(default_factory=TableLocks)
    # Writer threads get a limiter of their own, so that slow uploads holding
    # threads can never starve checkpoints, shutdown or other trio threads.
    write_limiter: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(DEFAULT_WRITERS)
    )
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(0))
    # set when shutdown begins: HTTP/1.1 answers then say "Connection: close", so a
    # proxy does not send another request on a connection that is about to close
    draining: bool = False
    groups: GroupCommitter = field(init=False)
    pipeline: Pipeline = field(init=False)  # what every upload shares

    def __post_init__(self) -> None:
        self.budget.limit = self.config.limits.max_inflight_bytes
        self.groups = GroupCommitter(self.locks, self.write_limiter, self.stats.group_committed)
        self.pipeline = Pipeline(
            self.locks, self.stats, self.write_limiter, self.budget, self.groups
        )

    def admit(self, config: Config) -> None:
        """Refuse a new upload (429 / RESOURCE_EXHAUSTED) when the server is full.

        Checked before any of the body is read.
        """
        limits = config.limits
        self.budget.limit = limits.max_inflight_bytes  # reloadable
        if self.stats.in_flight >= limits.max_concurrent_requests:
            raise TooBusyError(
                f"the server is serving its limit of {limits.max_concurrent_requests} "
                "uploads at once; retry shortly"
            )
        if self.budget.exhausted:
            raise TooBusyError(
                f"the server's in-flight memory budget ({limits.max_inflight_bytes} bytes) "
                "is spent; retry shortly"
            )

    def store_for(self, backend: str) -> Store | None:
        return self.stores.get(backend)

    def delta_store(self) -> DeltaStore:
        store = self.stores["delta"]
        assert isinstance(store, DeltaStore)
        return store

    def ducklake_store(self) -> DuckLakeStore | None:
        store = self.stores.get("ducklake")
        assert store is None or isinstance(store, DuckLakeStore)
        return store

    def streams_report(self) -> dict[str, object]:
        """The configured and seen streams with their counters (``GET /streams``).

        Each entry is ``describe_stream`` plus the stream's counters, with
        ``last_ingest`` (the last commit) as ISO 8601 UTC, or None.
        """
        config = self.config
        names = sorted(set(config.streams) | set(self.stats.stream_names()))
        listing = []
        for name in names:
            counters = self.stats.stream(name)
            last = counters.get("last_ingest")
            counters["last_ingest"] = iso_utc(last) if isinstance(last, int | float) else None
            listing.append({**describe_stream(config, name), **counters})
        totals = self.stats.statistics()
        return {
            "streams": listing,
            "refusals": totals["refusals"],
            "in_flight": totals["in_flight"],
            "config_source": config.source,
        }


def describe_stream(config: Config, name: str) -> dict[str, object]:
    """What ``config`` says about one stream: a ``/streams`` entry without its counters.

    ``table`` and ``backend`` are the route's; ``target_table`` and
    ``storage_backend`` are the same values under their older names.
    ``arrowport streams`` shows this when no server answers.
    """
    route = config.route(name)
    conf = config.streams.get(route.stream)
    compression = conf.compression if conf and conf.compression else config.compression
    return {
        "name": name,
        "configured": route.configured,
        "table": route.table,
        "backend": route.backend,
        "target_table": route.table,
        "storage_backend": route.backend,
        "commit": route.commit,
        "chunk_size": conf.chunk_size if conf else None,
        "compression": {"algorithm": compression.algorithm, "level": compression.level},
    }


def iso_utc(timestamp: float) -> str:
    """``2025-01-02T03:04:05.678Z`` for a POSIX timestamp."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TooBusyError(ArrowportError):
    """Over a server-wide limit: 429 with Retry-After, or RESOURCE_EXHAUSTED."""

    error = "too_many_requests"
    retry_after = 1  # seconds
