"""Live counters, safe to update from worker threads.

Two views of the same events: per-stream totals (what ``/streams`` reports)
and Prometheus metrics labelled by stream, table, backend and protocol (what
``/metrics`` serves, with the gauges ``io/metrics.py`` adds at scrape time).
Each ``Stats`` has a registry of its own, so that servers never share counts.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

import prometheus_client as prom

LABELS = ("stream", "table", "backend", "protocol")
RATE_WINDOW = 60.0  # seconds: arrowport_rows_per_second averages over this
RESULTS = ("ok", "replayed", "refused", "error", "disconnected")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
RATIO_BUCKETS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


UNKNOWN = "_unknown"  # the stream label of failed uploads to streams nothing has established


@dataclass(frozen=True, slots=True)
class Labels:
    """What a request's metrics are labelled with.

    A stream that is not in the config is known by name only once something has
    been committed to it; until
    then its failures count under ``UNKNOWN``, so that requests naming random
    streams cannot create series (or ``/streams`` rows) without end.
    """

    stream: str
    table: str
    backend: str
    protocol: str  # "http", "flight" or "flight_sql" (ADBC bulk ingest)
    configured: bool = True

    @classmethod
    def of(cls, route: Any, protocol: str) -> Labels:
        return cls(route.stream, route.table, route.backend, protocol, route.configured)


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
        self._recent: dict[Labels, deque[tuple[float, int]]] = {}
        self.refusals: Counter[str] = Counter()
        self.in_flight = 0
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rows = prom.Counter("arrowport_rows", "Rows committed.", LABELS, registry=r)
        self.batches = prom.Counter(
            "arrowport_batches", "Record batches committed.", LABELS, registry=r
        )
        self.wire = prom.Counter(
            "arrowport_received_bytes",
            "Arrow IPC bytes of committed data as received (compressed).",
            LABELS,
            registry=r,
        )
        self.decoded = prom.Counter(
            "arrowport_decoded_bytes",
            "Committed data's bytes once decompressed (Arrow buffer sizes).",
            LABELS,
            registry=r,
        )
        self.requests = prom.Counter(
            "arrowport_requests",
            "Upload requests (HTTP ingest, Flight DoPut) by result: ok, replayed (an "
            "idempotent retry), refused (4xx), error (5xx), disconnected.",
            (*LABELS, "result"),
            registry=r,
        )
        self.transactions = prom.Counter(
            "arrowport_transactions",
            "Storage transactions by outcome: committed, rolled_back, replayed.",
            (*LABELS, "outcome"),
            registry=r,
        )
        self.duration = prom.Histogram(
            "arrowport_ingest_duration_seconds",
            "Time from the start of an upload to its answer, for uploads that succeeded "
            "(replays included).",
            LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ratio = prom.Histogram(
            "arrowport_compression_ratio",
            "Per upload: decoded bytes / bytes received (1 for uncompressed data).",
            LABELS,
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.schema_mismatches = prom.Counter(
            "arrowport_schema_mismatches",
            "Uploads refused because their schema does not fit the table.",
            LABELS,
            registry=r,
        )
        self.refused_by_reason = prom.Counter(
            "arrowport_refusals",
            "Refused requests by reason: limit, auth, bad_input, schema_mismatch, storage, "
            "disconnected.",
            ("reason",),
            registry=r,
        )

        self.group_requests = prom.Histogram(
            "arrowport_group_commit_requests",
            "Requests per group commit (small requests to one table committed together).",
            buckets=GROUP_BUCKETS,
            registry=r,
        )
        self.group_seconds = prom.Histogram(
            "arrowport_group_commit_seconds",
            "Time a group commit took in storage (all its inserts and the commit).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )

    # -- events ---------------------------------------------------------------

    def group_committed(self, group: Any) -> None:
        """One group commit (``io/group_commit.GroupCommitted``) ended."""
        self.group_requests.observe(group.requests)
        self.group_seconds.observe(group.seconds)

    def committed(
        self, labels: Labels, *, rows: int, batches: int, wire: int, decoded: int
    ) -> None:
        """Count one commit's data (called once per commit)."""
        now, tick = time.time(), time.monotonic()
        with self._lock:
            c = self._streams.setdefault(labels.stream, StreamCounters())
            c.rows += rows
            c.batches += batches
            c.bytes += wire
            c.decoded_bytes += decoded
            c.last_ingest = now
            recent = self._recent.setdefault(labels, deque())
            recent.append((tick, rows))
            _expire(recent, tick - RATE_WINDOW)
        values = _values(labels)
        self.rows.labels(*values).inc(rows)
        self.batches.labels(*values).inc(batches)
        self.wire.labels(*values).inc(wire)
        self.decoded.labels(*values).inc(decoded)
        self.transactions.labels(*values, "committed").inc()

    def framing(self, labels: Labels, wire: int) -> None:
        """Bytes received besides the batches of a batch-mode upload (schema, end marker)."""
        with self._lock:
            self._streams.setdefault(labels.stream, StreamCounters()).bytes += wire
        self.wire.labels(*_values(labels)).inc(wire)

    def rolled_back(self, labels: Labels) -> None:
        self.transactions.labels(*_values(labels), "rolled_back").inc()

    def replayed(self, labels: Labels) -> None:
        self.transactions.labels(*_values(labels), "replayed").inc()

    def succeeded(self, labels: Labels, result: Any, seconds: float) -> None:
        """Count an upload that committed (or replayed) ``result`` (an ``IngestResult``)."""
        replayed = bool(result.replayed)
        self.finished(
            labels,
            "replayed" if replayed else "ok",
            seconds=seconds,
            wire=0 if replayed else result.bytes,
            decoded=0 if replayed else result.decoded_bytes,
        )

    def finished(
        self,
        labels: Labels,
        result: str,
        *,
        seconds: float | None = None,
        wire: int = 0,
        decoded: int = 0,
    ) -> None:
        """Count a finished upload; ``seconds``, ``wire`` and ``decoded`` when it committed."""
        assert result in RESULTS, result
        with self._lock:
            if result not in ("ok", "replayed"):
                labels = self._established(labels)
            if labels.stream != UNKNOWN:  # not a /streams row
                c = self._streams.setdefault(labels.stream, StreamCounters())
                c.requests += 1
                if result not in ("ok", "replayed"):
                    c.failed_requests += 1
        values = _values(labels)
        self.requests.labels(*values, result).inc()
        if seconds is not None:
            self.duration.labels(*values).observe(seconds)
        if wire and decoded:
            self.ratio.labels(*values).observe(decoded / wire)

    def refused(self, reason: str, labels: Labels | None = None) -> None:
        with self._lock:
            self.refusals[reason] += 1
        self.refused_by_reason.labels(reason).inc()
        if reason == "schema_mismatch" and labels is not None:
            with self._lock:
                labels = self._established(labels)
            self.schema_mismatches.labels(*_values(labels)).inc()

    def _established(self, labels: Labels) -> Labels:
        """``labels``, or the ``UNKNOWN`` ones for an unconfigured stream never committed to."""
        if labels.configured or labels.stream in self._streams:
            return labels
        return Labels(UNKNOWN, UNKNOWN, labels.backend, labels.protocol, False)

    # -- reading ----------------------------------------------------------------

    def rates(self) -> dict[Labels, float]:
        """Rows per second committed over the last ``RATE_WINDOW`` seconds, per label set."""
        horizon = time.monotonic() - RATE_WINDOW
        out = {}
        with self._lock:
            for labels, recent in self._recent.items():
                _expire(recent, horizon)
                out[labels] = sum(rows for _, rows in recent) / RATE_WINDOW
        return out

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


def _expire(recent: deque[tuple[float, int]], horizon: float) -> None:
    while recent and recent[0][0] < horizon:
        recent.popleft()


def _values(labels: Labels) -> tuple[str, str, str, str]:
    return (labels.stream, labels.table, labels.backend, labels.protocol)
