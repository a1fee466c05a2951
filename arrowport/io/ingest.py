"""The ingest pipeline: body chunks -> IPC decoder -> bounded queue -> writer.

Invariants:

* The request's task reads each message and decodes and fully validates
  each batch in one worker thread hop (decoders run with ``validate=False``
  and ``announce=True``, so that decompression and validation leave the event
  loop), and queues it in a bounded memory channel; a writer task takes
  batches in groups and runs each group's INSERT in a thread of its own. Only
  validated batches are queued, so nothing is stored unvalidated, and
  validation overlaps writing.
  Decoding overlaps inserting, memory is bounded by the in-flight budget
  (``budget.py``: bodies from before they are allocated, batches from before
  they are decompressed), and no thread ever waits on the network: a slow
  client holds no thread.
* Writes to one table are ordered: a request holds its table's lock from its
  schema until its commit or rollback. It takes the lock before it takes
  any memory budget, so it never waits for a lock holding budget.
* Request mode commits only after the decoder reported a clean end of stream
  and the body ended, and only if the request is not cancelled by then (a
  client that hung up gets a rollback). Anything else (protocol error,
  disconnect, cancellation) rolls back; the request waits for the rollback.
* Batch mode commits each batch the writer takes. On a bad stream the writer
  still commits what was queued before the error, and the error answer says
  exactly how much is committed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pyarrow as pa
import trio

from ..config import GroupCommitSettings, Limits, Route
from ..protocol import (
    NEED_DATA,
    ArrowportError,
    BatchReceived,
    IPCStreamDecoder,
    SchemaReceived,
    StreamEnded,
)
from ..protocol.errors import GrpcStatus, ProtocolError
from ..protocol.events import (
    BatchAnnounced,
    BodyAnnounced,
    DictionaryReceived,
    Event,
    _NeedData,
)
from ..protocol.flight import MetadataReceived
from ..protocol.messages import validate_batch
from ..stats import Labels, Stats
from ..storage import IngestAborted, WriteResult
from ..storage.port import Part, Store, Write
from .body import with_eof
from .budget import Hold, MemoryBudget, MessageCosts
from .group_commit import GroupCommitter
from .ingest_results import (
    Commit,
    IngestResult,
    OnCommit,
    Progress,
    TableLocks,
    _primary,
    missing_eos_error,
    refusal_reason,
    result_of,
    trailing_data_error,
)

__all__ = [
    "Commit",
    "IngestResult",
    "OnCommit",
    "Progress",
    "Store",
    "TableLocks",
    "Write",
    "ingest",
    "missing_eos_error",
    "refusal_reason",
    "result_of",
    "trailing_data_error",
]

_END = object()
_FLUSH = object()  # write the batches held so far (the memory budget is short)


class Decoder(Protocol):
    @property
    def wire_bytes(self) -> int: ...
    @property
    def decoded_bytes(self) -> int: ...

    announce: bool

    def decode_announced(self) -> BatchReceived: ...
    def receive_data(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_event(self) -> Event | _NeedData: ...
    @property
    def trailing_data(self) -> tuple[bytes, bool]: ...


async def ingest(
    chunks: AsyncIterator[bytes | memoryview],
    *,
    route: Route,
    store: Store,
    limits: Limits,
    locks: TableLocks,
    stats: Stats,
    progress: Progress | None = None,
    limiter: trio.CapacityLimiter | None = None,
    decoder: Decoder | None = None,
    on_commit: OnCommit | None = None,
    idempotency_key: str | None = None,
    key_from_metadata: Callable[[bytes | None], str | None] | None = None,
    budget: MemoryBudget | None = None,
    protocol: str = "http",
    groups: GroupCommitter | None = None,
    group_settings: GroupCommitSettings | None = None,
) -> IngestResult:
    """Stream ``chunks`` into ``route.table``; return after commit.

    ``chunks`` is an Arrow IPC stream unless ``decoder`` says otherwise (Flight
    passes a ``FlightDataDecoder`` that may already hold decoded events).
    ``on_commit`` is awaited after each commit, before the next one starts.
    With an ``idempotency_key`` already committed to the table, the body is
    read and validated but nothing is written, and the result is the
    original one, flagged ``replayed``. With ``key_from_metadata`` (Flight,
    when the descriptor has no key), the writer starts with the event after
    the schema, whose app_metadata may name the key.

    With ``groups``, a request-mode stream is held in memory while it is small
    (``group_settings.max_request_bytes`` of decoded batches): if it ends that
    small, it is committed in a group with the other small requests waiting for
    its table (``group_commit.py``); once larger, its writer takes the table and
    the held batches, and it streams as any other.
    """
    started = trio.current_time()
    labels = Labels.of(route, protocol)  # for the metrics
    progress = progress if progress is not None else Progress()
    if decoder is None:
        decoder = IPCStreamDecoder(**limits.decoder_kwargs(), validate=False)
    assert decoder is not None
    decoder.announce = True  # bodies and batches are announced before they cost memory
    # An HTTP body may end cleanly on a message boundary because its producer died (a pipe
    # into curl): only the end-of-stream marker tells a complete stream. Flight has none.
    require_eos = limits.require_eos_marker and isinstance(decoder, IPCStreamDecoder)
    send, receive = trio.open_memory_channel[Any](limits.queue_depth)
    results: list[WriteResult] = []
    hold = Hold(budget)  # this request's share of the in-flight memory budget

    async def flush() -> None:  # the budget is short: write what this request holds
        if held_schema is not None:
            await stream_held()  # a held request streams instead (its writer writes it)
        else:
            await send.send(_FLUSH)

    costs = MessageCosts(hold, flush)
    key_known = trio.Event()  # key_from_metadata: the writer opens once the key is known
    metadata: list[bytes] = []  # request mode: the client's app_metadata, for the one ack
    max_request = limits.max_request_size or math.inf
    grouping = (
        groups is not None
        and group_settings is not None
        and group_settings.enabled
        and route.commit == "request"
    )
    held: list[BatchReceived | MetadataReceived] = []  # a small request's stream, held
    held_bytes = 0
    held_schema: pa.Schema | None = None

    async def committed(
        group: list[BatchReceived],
        rows: int,
        batches: int,
        pending: list[bytes],
        version: int | None = None,
    ) -> None:
        progress.rows, progress.batches = rows, batches
        wire = sum(e.wire_bytes for e in group)
        progress.bytes += wire
        if group:  # else app_metadata after the last batch: no commit to count
            stats.committed(
                labels,
                rows=sum(e.batch.num_rows for e in group),
                batches=len(group),
                wire=wire,
                decoded=sum(e.decoded_bytes for e in group),
            )
        if on_commit is not None:
            echo = pending + [e.app_metadata for e in group if e.app_metadata is not None]
            await on_commit(Commit(rows, batches, echo, version))

    async def in_thread(fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    async def writer(schema: pa.Schema, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with locks(route.table):
            if key_from_metadata is not None:  # the key comes with the event after the schema
                task_status.started()
                await key_known.wait()
            write = await in_thread(
                lambda: store.open_write(
                    route.table,
                    schema,
                    commit=route.commit,
                    options=route.delta,
                    idempotency_key=idempotency_key,
                )
            )
            if key_from_metadata is None:
                task_status.started()
            try:
                with receive:
                    ended = await _write_groups(
                        receive, write, in_thread, committed, route.commit, metadata, hold
                    )
                if not ended:
                    if route.commit == "batch":  # the request failed; keep what is committed
                        return
                    raise IngestAborted(
                        "the request ended before its Arrow stream completed; nothing was committed"
                    )
                await trio.lowlevel.checkpoint_if_cancelled()  # hung up: roll back, not commit
                results.append(await in_thread(write.finish))
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(write.rollback)  # no-op after finish()
                if not results and route.commit != "batch" and not write.replayed:
                    stats.rolled_back(labels)

    received = 0
    ended = False
    writing = False
    awaiting_key = False  # the writer holds the lock and waits for the key
    failure: ArrowportError | None = None
    try:
        async with trio.open_nursery() as nursery:

            def decode() -> BatchReceived:  # in a worker thread: decompress, validate
                received = decoder.decode_announced()
                if not received.validated:
                    validate_batch(received.batch)
                return received

            async def stream_held() -> None:
                """The held request grew too large for a group (or the memory budget is
                short): its writer takes the table and what is held, and it streams."""
                nonlocal writing, held_schema
                assert held_schema is not None
                schema, held_schema = held_schema, None
                await nursery.start(writer, schema)  # takes the table's lock
                writing = True
                for item in held:
                    await send.send(item)
                held.clear()

            async def drain() -> None:
                nonlocal ended, writing, awaiting_key, idempotency_key, held_schema, held_bytes
                while True:
                    event = decoder.next_event()
                    if event is NEED_DATA:
                        return
                    if isinstance(event, BodyAnnounced):
                        await costs.body(event.nbytes)
                        continue
                    if isinstance(event, DictionaryReceived):
                        await costs.dictionary(event)
                        continue
                    announced = isinstance(event, BatchAnnounced)
                    if isinstance(event, BatchAnnounced):  # one thread hop per batch
                        event = await costs.batch(event, lambda: trio.to_thread.run_sync(decode))
                    if awaiting_key:  # the event after the schema: the writer may open
                        if isinstance(event, BatchReceived | MetadataReceived):
                            assert key_from_metadata is not None
                            idempotency_key = key_from_metadata(event.app_metadata)
                        key_known.set()
                        awaiting_key, writing = False, held_schema is None
                    if isinstance(event, SchemaReceived) and grouping:
                        held_schema = event.schema  # the table is taken only if it grows
                        awaiting_key = key_from_metadata is not None
                    elif isinstance(event, SchemaReceived):
                        await nursery.start(writer, event.schema)  # takes the table's lock
                        writing = key_from_metadata is None
                        awaiting_key = not writing
                    elif held_schema is not None and isinstance(
                        event, BatchReceived | MetadataReceived
                    ):
                        if isinstance(event, BatchReceived):
                            if not announced:  # decoded before ``announce`` was set
                                if not event.validated:
                                    await trio.to_thread.run_sync(validate_batch, event.batch)
                                await costs.take(event.decoded_bytes)
                                costs.current = 0
                                hold.queue(event.decoded_bytes)
                            held_bytes += event.decoded_bytes
                        held.append(event)
                        assert group_settings is not None
                        if held_bytes > group_settings.max_request_bytes:
                            await stream_held()
                    elif isinstance(event, BatchReceived):
                        if not announced:  # decoded before ``announce`` was set
                            if not event.validated:
                                await trio.to_thread.run_sync(validate_batch, event.batch)
                            await costs.take(event.decoded_bytes)
                            costs.current = 0
                            hold.queue(event.decoded_bytes)
                        await send.send(event)
                    elif isinstance(event, MetadataReceived):
                        if writing:
                            await send.send(event)
                        else:  # no writer yet to take it from the queue: keep it for the ack
                            metadata.append(event.app_metadata)
                    elif isinstance(event, StreamEnded):
                        if require_eos and not event.eos_marker:
                            raise missing_eos_error(route.commit)
                        ended = True
                        trailing, _ = decoder.trailing_data
                        if trailing:
                            raise trailing_data_error()

            try:
                with send:
                    await drain()  # what the caller's decoder already holds
                    async for chunk in with_eof(chunks, limits, route.commit):
                        received += len(chunk)
                        if received > max_request:
                            raise ProtocolError(
                                "request body exceeds the limit of "
                                f"{limits.max_request_size} bytes",
                                error="limit_exceeded",
                                http_status=413,
                                grpc_status=GrpcStatus.RESOURCE_EXHAUSTED,
                            )
                        if ended:
                            if chunk:
                                raise trailing_data_error()
                            continue
                        decoder.receive_data(chunk)
                        await drain()
                    if held_schema is None:
                        await send.send(_END)
            except ArrowportError as exc:
                if route.commit != "batch" or not writing:
                    raise
                failure = exc  # the channel is closed: the writer commits what it holds, then stops
        if held_schema is not None:  # ended small: commit it with the others waiting
            assert groups is not None and group_settings is not None
            await trio.lowlevel.checkpoint_if_cancelled()  # hung up: nothing is written
            part = _held_part(held_schema, held, idempotency_key, route, store, metadata)
            base = getattr(store, "inner", store)  # a DeadlineStore's own store
            results.append(await groups.commit(base, route.table, part, held_bytes, group_settings))
    except BaseExceptionGroup as group:
        raise _primary(group) from None
    finally:
        hold.release_all()  # what the writer did not get to (a failed request)
    if failure is not None:
        raise failure

    result = results[0]
    if route.commit == "batch":  # each commit was counted; add the framing (schema, ...)
        framing = decoder.wire_bytes - progress.bytes
        progress.bytes = decoder.wire_bytes
        stats.framing(labels, framing)
    else:  # one commit for the whole request
        progress.rows, progress.batches, progress.bytes = (
            result.rows,
            result.batches,
            decoder.wire_bytes,
        )
        if result.replayed:
            stats.replayed(labels)
        else:
            stats.committed(
                labels,
                rows=result.rows,
                batches=result.batches,
                wire=decoder.wire_bytes,
                decoded=decoder.decoded_bytes,
            )
    if on_commit is not None and route.commit != "batch":  # acked after the table is free
        await on_commit(
            Commit(result.rows, result.batches, metadata, result.version, result.replayed)
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
        version=result.version,
        idempotency_key=idempotency_key,
        replayed=result.replayed,
    )


async def _write_groups(
    receive: trio.MemoryReceiveChannel[Any],
    write: Write,
    in_thread: Any,
    committed: Any,
    mode: str,
    metadata: list[bytes],
    hold: Hold,
) -> bool:
    """Insert queued batches group by group; True if the end marker arrived.

    Request mode collects the client's ``app_metadata`` into ``metadata``;
    batch mode reports it with each commit.
    """
    group: list[BatchReceived] = []
    rows = size = 0
    ended = False
    while not ended:
        try:
            item = await receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            break
        if item is _END:
            ended = True
        elif item is _FLUSH:
            pass  # write the group now, however small
        elif isinstance(item, MetadataReceived):
            metadata.append(item.app_metadata)
            continue
        else:
            if item.app_metadata is not None and mode != "batch":
                metadata.append(item.app_metadata)
            group.append(item)
            rows += item.batch.num_rows
            size += _size(item)
            if not write.group_full(rows, size, len(group)):
                continue
        if group:
            await in_thread(write.insert, [e.batch for e in group])
            hold.release(size)
            if mode == "batch":
                await committed(group, write.rows, write.batches, metadata, write.version)
                metadata.clear()
            group, rows, size = [], 0, 0
    if ended and mode == "batch" and metadata:  # app_metadata after the last batch
        await committed([], write.rows, write.batches, metadata)
        metadata.clear()
    return ended


def _size(event: BatchReceived) -> int:
    return event.decoded_bytes  # what the request took of the budget for it


def _held_part(
    schema: pa.Schema,
    held: list[BatchReceived | MetadataReceived],
    key: str | None,
    route: Route,
    store: Any,
    metadata: list[bytes],
) -> Part:
    """A held request as a group's part; its app_metadata, in order, into ``metadata``."""
    batches = []
    for item in held:
        if isinstance(item, BatchReceived):
            batches.append(item.batch)
        if item.app_metadata is not None:
            metadata.append(item.app_metadata)
    deadline = getattr(store, "check_deadline", None)
    return Part(schema, tuple(batches), key, route.delta, deadline)
