"""What one running server shares between requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..config import Config
from ..stats import Stats
from .ingest import Store, TableLocks

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

    def store_for(self, backend: str) -> Store | None:
        return self.stores.get(backend)
