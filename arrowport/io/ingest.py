"""The ingest pipeline: body chunks -> IPC decoder -> bounded queue -> writer thread.

Invariants:

* The trio side decodes; the storage writer runs in a worker thread and pulls
  batches through a bounded memory channel, so decoding the next chunk
  overlaps with inserting the previous batch, and memory is bounded by
  ``queue_depth`` batches plus one partial message.
* Writes to one table are ordered: a request holds its table's lock from its
  schema until its commit or rollback.
* The writer commits only after the decoder reported a clean end of stream
  and the body ended. If anything else happens (protocol error, disconnect,
  cancellation) the channel closes without the end marker, the writer's
  iterator raises ``IngestAborted`` and the transaction rolls back. The
  request waits for that rollback before it returns.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import trio

from ..config import Limits, Route
from ..protocol import (
    NEED_DATA,
    ArrowportError,
    BatchReceived,
    IPCStreamDecoder,
    SchemaReceived,
    StreamEnded,
)
from ..protocol.errors import GrpcStatus, ProtocolError
from ..stats import Stats
from ..storage import IngestAborted, WriteResult

_END = object()


class Store(Protocol):
    backend: str

    def write(
        self,
        table: str,
        schema: pa.Schema,
        batches: Any,
        *,
        commit: str = ...,
        on_commit: Any = ...,
        before_commit: Any = ...,
    ) -> WriteResult: ...


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

    def to_json(self) -> dict[str, object]:
        return {
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


@dataclass(slots=True)
class Progress:
    """What is committed so far (per-batch mode commits before the end)."""

    rows: int = 0
    batches: int = 0
    bytes: int = 0


class TableLocks:
    """One FIFO lock per table (case-insensitive, as DuckDB resolves names)."""

    def __init__(self) -> None:
        self._locks: dict[str, trio.Lock] = {}

    def __call__(self, table: str) -> trio.Lock:
        return self._locks.setdefault(table.lower(), trio.Lock())


def trailing_data_error() -> ProtocolError:
    return ProtocolError(
        "bytes follow the end-of-stream marker; send one IPC stream per request",
        error="trailing_data",
    )


@dataclass(slots=True)
class _ThreadSource:
    """The writer thread's view of the channel: batches until the end marker."""

    receive: trio.MemoryReceiveChannel[Any]
    # DuckDB pulls from its own scan threads, not the trio worker thread.
    token: trio.lowlevel.TrioToken = field(default_factory=trio.lowlevel.current_trio_token)
    last: BatchReceived | None = field(default=None)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                item = trio.from_thread.run(self.receive.receive, trio_token=self.token)
            except (
                trio.EndOfChannel,
                trio.ClosedResourceError,
                trio.Cancelled,
                trio.RunFinishedError,
            ):
                raise IngestAborted(
                    "the request ended before its Arrow stream completed; nothing was committed"
                ) from None
            if item is _END:
                return
            self.last = item
            yield item.batch


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
    for exc in leaves:  # the cause, not its echo in the other task
        if isinstance(exc, ArrowportError) and not isinstance(exc, IngestAborted):
            return exc
    for exc in leaves:  # a bug
        if not isinstance(exc, trio.Cancelled | trio.BrokenResourceError | IngestAborted):
            return exc
    for exc in leaves:  # cancelled from outside (client gone, shutdown): trio must see it
        if isinstance(exc, trio.Cancelled):
            return exc
    for exc in leaves:
        if isinstance(exc, IngestAborted):
            return exc
    return group


async def ingest(
    chunks: AsyncIterator[bytes],
    *,
    route: Route,
    store: Store,
    limits: Limits,
    locks: TableLocks,
    stats: Stats,
    progress: Progress | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> IngestResult:
    """Stream ``chunks`` (an IPC stream) into ``route.table``; return after commit."""
    started = trio.current_time()
    progress = progress if progress is not None else Progress()
    decoder = IPCStreamDecoder(**limits.decoder_kwargs())
    send, receive = trio.open_memory_channel[Any](limits.queue_depth)
    results: list[WriteResult] = []
    max_request = limits.max_request_size or math.inf

    def on_commit(source: _ThreadSource, rows: int, batches: int) -> None:
        last = source.last
        wire = last.wire_bytes if last is not None else 0
        decoded = last.decoded_bytes if last is not None else 0
        progress.rows, progress.batches = rows, batches
        progress.bytes += wire
        stats.committed(
            route.stream,
            rows=last.batch.num_rows if last else 0,
            batches=1,
            wire=wire,
            decoded=decoded,
        )

    async def writer(schema: pa.Schema, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with locks(route.table):
            task_status.started()
            source = _ThreadSource(receive)
            with receive:
                result = await trio.to_thread.run_sync(
                    lambda: store.write(
                        route.table,
                        schema,
                        source,
                        commit=route.commit,
                        on_commit=lambda r, b: on_commit(source, r, b),
                        # Request mode: a client that hung up before COMMIT gets a
                        # rollback, not a commit it will never hear about. Batch mode
                        # commits every batch that arrived whole, as it goes.
                        before_commit=(
                            trio.from_thread.check_cancelled if route.commit != "batch" else None
                        ),
                    ),
                    limiter=limiter,
                )
            results.append(result)

    received = 0
    ended = False
    try:
        async with trio.open_nursery() as nursery:
            with send:
                async for chunk in _with_eof(chunks, limits.body_idle_timeout):
                    received += len(chunk)
                    if received > max_request:
                        raise ProtocolError(
                            f"request body exceeds the limit of {limits.max_request_size} bytes",
                            error="limit_exceeded",
                            http_status=413,
                        )
                    if ended:
                        if chunk:
                            raise trailing_data_error()
                        continue
                    decoder.receive_data(chunk)
                    while True:
                        event = decoder.next_event()
                        if event is NEED_DATA:
                            break
                        if isinstance(event, SchemaReceived):
                            await nursery.start(writer, event.schema)
                        elif isinstance(event, BatchReceived):
                            await send.send(event)
                        elif isinstance(event, StreamEnded):
                            ended = True
                            trailing, _ = decoder.trailing_data
                            if trailing:
                                raise trailing_data_error()
                await send.send(_END)
    except BaseExceptionGroup as group:
        raise _primary(group) from None

    result = results[0]
    if route.commit != "batch":
        progress.rows, progress.batches, progress.bytes = (
            result.rows,
            result.batches,
            decoder.wire_bytes,
        )
        stats.committed(
            route.stream,
            rows=result.rows,
            batches=result.batches,
            wire=decoder.wire_bytes,
            decoded=decoder.decoded_bytes,
        )
    return IngestResult(
        stream=route.stream,
        table=route.table,
        backend=store.backend,
        rows=result.rows,
        batches=result.batches,
        bytes=decoder.wire_bytes,
        decoded_bytes=decoder.decoded_bytes,
        duration_ms=(trio.current_time() - started) * 1000,
        commit=route.commit,
    )


async def _with_eof(chunks: AsyncIterator[bytes], idle_timeout: float) -> AsyncIterator[bytes]:
    """Yield the body's chunks, then ``b""`` once the body is complete.

    A client that sends nothing for ``idle_timeout`` seconds is cut off: it
    would otherwise hold its table's writer for as long as it likes.
    """
    iterator = aiter(chunks)
    while True:
        try:
            with trio.fail_after(idle_timeout or math.inf):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        except trio.TooSlowError:
            raise ArrowportError(
                f"no request body data for {idle_timeout:g} s; the request was abandoned "
                "and nothing was committed",
                error="body_timeout",
                http_status=408,
                grpc_status=GrpcStatus.DEADLINE_EXCEEDED,
            ) from None
        if chunk:
            yield chunk
    yield b""
