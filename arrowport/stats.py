"""Live counters per stream, safe to update from worker threads.

These are the numbers ``/streams`` reports and that metrics read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class StreamCounters:
    rows: int = 0
    batches: int = 0
    bytes: int = 0
    decoded_bytes: int = 0
    requests: int = 0
    failed_requests: int = 0
    last_ingest: float | None = None


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, StreamCounters] = {}
        self.refusals: Counter[str] = Counter()
        self.in_flight = 0

    def committed(self, stream: str, *, rows: int, batches: int, wire: int, decoded: int) -> None:
        """Count data that is committed (called once per commit)."""
        with self._lock:
            c = self._streams.setdefault(stream, StreamCounters())
            c.rows += rows
            c.batches += batches
            c.bytes += wire
            c.decoded_bytes += decoded
            c.last_ingest = time.time()

    def finished(self, stream: str, *, ok: bool) -> None:
        with self._lock:
            c = self._streams.setdefault(stream, StreamCounters())
            c.requests += 1
            if not ok:
                c.failed_requests += 1

    def refused(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] += 1

    def stream(self, stream: str) -> dict[str, object]:
        with self._lock:
            return asdict(self._streams.get(stream, StreamCounters()))

    def stream_names(self) -> list[str]:
        with self._lock:
            return sorted(self._streams)

    def statistics(self) -> dict[str, object]:
        with self._lock:
            return {
                "streams": {name: asdict(c) for name, c in self._streams.items()},
                "refusals": dict(self.refusals),
                "in_flight": self.in_flight,
            }
