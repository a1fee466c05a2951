"""What one running server shares between requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config
from ..stats import Stats
from .ingest import Store, TableLocks


@dataclass(slots=True)
class ServerState:
    config: Config
    stores: dict[str, Store]
    stats: Stats = field(default_factory=Stats)
    locks: TableLocks = field(default_factory=TableLocks)

    def store_for(self, backend: str) -> Store | None:
        return self.stores.get(backend)
