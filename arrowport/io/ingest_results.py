"""What an ingest reports (results, progress, acks), its table locks and refusal reasons."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..protocol import ArrowportError
from ..protocol.errors import GrpcStatus, ProtocolError
from ..storage import IngestAborted
from .status import http_status, statuses


@dataclass(frozen=True, slots=True)
class IngestResult:
    stream: str
    table: str
    backend: str
    rows: int
    batches: int
    bytes: int
    decoded_bytes: int
    duration_ms: float
    commit: str
    version: int | None = None
    idempotency_key: str | None = None
    replayed: bool = False

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "stream": self.stream,
            "table": self.table,
            "backend": self.backend,
            "rows": self.rows,
            "batches": self.batches,
            "bytes": self.bytes,
            "decoded_bytes": self.decoded_bytes,
            "duration_ms": round(self.duration_ms, 3),
            "commit": self.commit,
        }
        if self.version is not None:
            body["version"] = self.version
        if self.idempotency_key is not None:
            body["idempotency_key"] = self.idempotency_key
            body["replayed"] = self.replayed
        return body


@dataclass(slots=True)
class Progress:
    """What is committed so far (per-batch mode commits before the end)."""

    rows: int = 0
    batches: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit, as an acknowledgement reports it."""

    rows: int  # committed by this request so far
    batches: int
    app_metadata: list[bytes] = field(default_factory=list)  # the client's, in order
    version: int | None = None  # Delta: the version committed
    replayed: bool = False  # an idempotency key committed before: nothing was written


OnCommit = Callable[[Commit], Awaitable[None]]


class TableLocks:
    """One FIFO lock per table (case-insensitive, as DuckDB resolves names)."""

    def __init__(self) -> None:
        self._locks: dict[str, trio.Lock] = {}

    def __call__(self, table: str) -> trio.Lock:
        return self._locks.setdefault(table.lower(), trio.Lock())


def refusal_reason(exc: ArrowportError) -> str:
    """The reason a refused request is counted under."""
    http, grpc = statuses(exc)
    if http == 413 or grpc is GrpcStatus.RESOURCE_EXHAUSTED:
        return "limit"
    if http == 422:
        return "schema_mismatch" if exc.error == "schema_mismatch" else "bad_input"
    if http >= 500:
        return "storage"
    return "bad_input"


def result_of(exc: ArrowportError) -> str:
    """The ``arrowport_requests_total`` result of a request that failed with ``exc``."""
    return "error" if http_status(exc) >= 500 else "refused"


def missing_eos_error(mode: str) -> ProtocolError:
    kept = "batches before it stay committed" if mode == "batch" else "nothing was committed"
    return ProtocolError(
        "the body ended without the Arrow end-of-stream marker, as when a producer stops "
        f"mid-stream, so it is treated as truncated: {kept}. Close the stream writer to end "
        "a stream (pyarrow: use pa.ipc.new_stream as a context manager), or set "
        "limits.require_eos_marker: false to accept such bodies",
        error="missing_eos_marker",
    )


def trailing_data_error() -> ProtocolError:
    return ProtocolError(
        "bytes follow the end-of-stream marker; send one IPC stream per request",
        error="trailing_data",
    )


def _primary(group: BaseExceptionGroup[Any]) -> BaseException:
    """Pick the exception that explains a failed ingest."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:  # a bug
        if not isinstance(exc, trio.Cancelled | trio.BrokenResourceError | ArrowportError):
            return exc
    for exc in leaves:  # cancelled from outside (client gone, shutdown): trio must see it
        if isinstance(exc, trio.Cancelled):  # (the nursery absorbs its own cancellations)
            return exc
    for exc in leaves:  # the cause, not its echo in the other task
        if isinstance(exc, ArrowportError) and not isinstance(exc, IngestAborted):
            return exc
    for exc in leaves:
        if isinstance(exc, IngestAborted):
            return exc
    for exc in leaves:  # the client went away (a reset Flight stream)
        if isinstance(exc, trio.BrokenResourceError):
            return exc
    return group
