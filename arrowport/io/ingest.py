"""The ingest pipeline: body chunks -> decoder -> (held, or queued to a writer) -> commit.

One upload is an ``IngestRequest``: its ``Phase`` says where its stream is,
``_on_event`` moves it on for each decoder event (as h11's ``next_event``
drives a connection), and ``run`` returns its result once committed.

Invariants:

* The request's task reads each message and decodes and fully validates each
  batch in one worker thread hop (decoders run with ``validate=False`` and
  ``announce=True``, so that decompression and validation leave the event
  loop). Only validated batches are held or queued, so nothing is stored
  unvalidated. Memory is bounded by the in-flight budget (``budget.py``:
  bodies from before they are allocated, batches from before they are
  decompressed), and no thread ever waits on the network.
* A request-mode upload starts ``HOLDING``: its batches are kept while they
  total at most ``group_commit.max_request_bytes``. If its stream ends that
  small, it is committed with the other small requests waiting for its table
  (``group_commit.py``), so it never holds its table while its client sends.
  Once larger (or when the memory budget is short), it goes ``STREAMING``:
  its writer (``ingest_writer.py``) takes the table's lock and the held
  batches, and inserts the rest as they are decoded. Batch mode, and request
  mode with group commit off, stream from the schema on; such a request holds
  its table from its schema until its commit or rollback, and takes the lock
  before it takes any memory budget.
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
from ..protocol.events import BatchAnnounced, BodyAnnounced, DictionaryReceived, Event
from ..protocol.flight import MetadataReceived
from ..protocol.messages import validate_batch
from ..stats import Labels
from ..storage import WriteResult
from ..storage.modes import CREATE_APPEND
from ..storage.port import Part, Store, Write
from .body import with_eof
from .budget import Hold, MessageCosts
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
from .ingest_types import INLINE_DECODE_BYTES, Decoder, Phase, Pipeline
from .ingest_writer import END, FLUSH, StreamWriter

__all__ = [
    "Commit",
    "IngestRequest",
    "IngestResult",
    "OnCommit",
    "Phase",
    "Pipeline",
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


async def ingest(
    chunks: AsyncIterator[bytes | memoryview],
    *,
    route: Route,
    store: Store,
    limits: Limits,
    pipeline: Pipeline,
    progress: Progress | None = None,
    decoder: Decoder | None = None,
    on_commit: OnCommit | None = None,
    idempotency_key: str | None = None,
    key_from_metadata: Callable[[bytes | None], str | None] | None = None,
    protocol: str = "http",
    group_settings: GroupCommitSettings | None = None,
    table_mode: str = CREATE_APPEND,
) -> IngestResult:
    """Stream ``chunks`` into ``route.table``; return after commit (``IngestRequest``)."""
    request = IngestRequest(
        route=route,
        store=store,
        limits=limits,
        pipeline=pipeline,
        progress=progress,
        decoder=decoder,
        on_commit=on_commit,
        idempotency_key=idempotency_key,
        key_from_metadata=key_from_metadata,
        protocol=protocol,
        group_settings=group_settings,
        table_mode=table_mode,
    )
    return await request.run(chunks)


class IngestRequest:
    """One upload into ``route.table``.

    ``chunks`` is an Arrow IPC stream unless ``decoder`` says otherwise (Flight
    passes a ``FlightDataDecoder`` that may already hold decoded events).
    ``on_commit`` is awaited after each commit, before the next one starts.
    With an ``idempotency_key`` already committed to the table, the body is
    read and validated but nothing is written, and the result is the original
    one, flagged ``replayed``. With ``key_from_metadata`` (Flight, when the
    descriptor has no key), the key is taken from the app_metadata of the event
    after the schema. ``table_mode`` (``storage/modes.py``) is what the write
    does with its table; only ``CREATE_APPEND`` (the default) joins group
    commits: the others are decided in the request's own transaction.
    """

    def __init__(
        self,
        *,
        route: Route,
        store: Store,
        limits: Limits,
        pipeline: Pipeline,
        progress: Progress | None = None,
        decoder: Decoder | None = None,
        on_commit: OnCommit | None = None,
        idempotency_key: str | None = None,
        key_from_metadata: Callable[[bytes | None], str | None] | None = None,
        protocol: str = "http",
        group_settings: GroupCommitSettings | None = None,
        table_mode: str = CREATE_APPEND,
    ) -> None:
        self.route, self.store, self.limits, self.pipeline = route, store, limits, pipeline
        self.labels = Labels.of(route, protocol)  # for the metrics
        self.progress = progress if progress is not None else Progress()
        if decoder is None:
            decoder = IPCStreamDecoder(**limits.decoder_kwargs(), validate=False)
        decoder.announce = True  # bodies and batches are announced before they cost memory
        self.decoder: Decoder = decoder
        # An HTTP body may end cleanly on a message boundary because its producer died (a
        # pipe into curl): only the end-of-stream marker tells a complete stream. Flight
        # has none.
        self.require_eos = limits.require_eos_marker and isinstance(decoder, IPCStreamDecoder)
        self.on_commit = on_commit
        self.key = idempotency_key
        self.key_from_metadata = key_from_metadata
        self.awaiting_key = False  # the key comes with the event after the schema
        self.group_settings = group_settings
        self.grouping = (
            pipeline.groups is not None
            and group_settings is not None
            and group_settings.enabled
            and route.commit == "request"
            and table_mode == CREATE_APPEND
        )
        self.phase = Phase.SCHEMA
        self.schema: pa.Schema | None = None
        self.held: list[BatchReceived | MetadataReceived] = []  # HOLDING: the stream so far
        self.held_bytes = 0
        self.hold = Hold(pipeline.budget)  # this request's share of the in-flight budget
        self.costs = MessageCosts(self.hold, self._flush)
        self.writer = StreamWriter(
            route,
            store,
            pipeline.stats,
            self.labels,
            self.hold,
            pipeline.limiter,
            limits.queue_depth,
            self.progress,
            on_commit,
            table_mode,
        )
        self.result: WriteResult | None = None
        self.submitted = False  # a held request was handed to the group committer
        self._nursery: trio.Nursery | None = None

    # -- the request ----------------------------------------------------------------------

    async def run(self, chunks: AsyncIterator[bytes | memoryview]) -> IngestResult:
        started = trio.current_time()
        failure: ArrowportError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    with self.writer.send:
                        await self._feed(chunks)
                except ArrowportError as exc:
                    writing = self.phase is Phase.STREAMING and not self.awaiting_key
                    if self.route.commit != "batch" or not writing:
                        raise
                    # the channel is closed: the writer commits what it holds, then stops
                    failure = exc
            if self.phase is Phase.HELD:
                self.submitted = True
                await self._commit_held()
        except BaseExceptionGroup as group:
            self._abandoned()
            raise _primary(group) from None
        except BaseException:
            self._abandoned()
            raise
        finally:
            self.hold.release_all()  # what the writer did not get to (a failed request)
        if failure is not None:
            raise failure
        return await self._finished(started)

    def _abandoned(self) -> None:
        """A held request failed before its commit (its stream did: truncated, invalid, its
        client gone): counted as a rolled-back transaction, as a streaming write's would be."""
        if self.phase in (Phase.HOLDING, Phase.HELD) and not self.submitted:
            self.pipeline.stats.rolled_back(self.labels)

    async def _feed(self, chunks: AsyncIterator[bytes | memoryview]) -> None:
        """Read the body into the decoder and act on its events."""
        max_request = self.limits.max_request_size or math.inf
        received = 0
        await self._drain()  # what the caller's decoder already holds
        async for chunk in with_eof(chunks, self.limits, self.route.commit):
            received += len(chunk)
            if received > max_request:
                raise ProtocolError(
                    f"request body exceeds the limit of {self.limits.max_request_size} bytes",
                    error="limit_exceeded",
                    http_status=413,
                    grpc_status=GrpcStatus.RESOURCE_EXHAUSTED,
                )
            if self.phase is Phase.ENDED or self.phase is Phase.HELD:
                if chunk:
                    raise trailing_data_error()
                continue
            self.decoder.receive_data(chunk)
            await self._drain()
        if self.phase is not Phase.HELD:
            await self.writer.send.send(END)  # the writer commits

    async def _drain(self) -> None:
        while (event := self.decoder.next_event()) is not NEED_DATA:
            await self._on_event(event)  # type: ignore[arg-type]

    # -- events -----------------------------------------------------------------------------

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, BodyAnnounced):
            await self.costs.body(event.nbytes)
            return
        if isinstance(event, DictionaryReceived):
            await self.costs.dictionary(event)
            return
        if isinstance(event, BatchAnnounced):  # one thread hop per batch, unless it is small
            small = event.decoded_bytes <= INLINE_DECODE_BYTES
            event = await self.costs.batch(event, self._decode_here if small else self._decode_off)
        elif isinstance(event, BatchReceived):  # decoded before ``announce`` was set
            if not event.validated:
                await trio.to_thread.run_sync(validate_batch, event.batch)
            await self.costs.take(event.decoded_bytes)
            self.costs.current = 0
            self.hold.queue(event.decoded_bytes)
        if self.awaiting_key:  # the event after the schema names the key
            self._take_key(event)
        if isinstance(event, SchemaReceived):
            await self._on_schema(event.schema)
        elif isinstance(event, BatchReceived | MetadataReceived):
            await self._on_data(event)
        elif isinstance(event, StreamEnded):
            self._on_end(event)

    async def _decode_here(self) -> BatchReceived:
        return self._decode()

    async def _decode_off(self) -> BatchReceived:
        return await trio.to_thread.run_sync(self._decode)

    def _decode(self) -> BatchReceived:  # decompress, validate
        received = self.decoder.decode_announced()
        if not received.validated:
            validate_batch(received.batch)
        return received

    def _take_key(self, event: Event) -> None:
        if isinstance(event, BatchReceived | MetadataReceived):
            assert self.key_from_metadata is not None
            self.key = self.writer.key = self.key_from_metadata(event.app_metadata)
        self.awaiting_key = False
        self.writer.key_known.set()

    async def _on_schema(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.awaiting_key = self.key_from_metadata is not None
        if self.grouping:
            # refuse what needs no table at once (names, types, the key), as a writer would
            check = getattr(self.store, "check_stream", None)
            if check is not None:
                check(schema, self.route.commit, self.key)  # a key in app_metadata: later
            self.phase = Phase.HOLDING  # the table is taken only if the stream grows
            return
        await self._start_writer(wait_for_key=self.awaiting_key)

    async def _on_data(self, event: BatchReceived | MetadataReceived) -> None:
        if self.phase is Phase.HOLDING:
            self.held.append(event)
            if isinstance(event, BatchReceived):
                self.held_bytes += event.decoded_bytes
                assert self.group_settings is not None
                if self.held_bytes > self.group_settings.max_request_bytes:
                    await self._stream_held()
        elif self.phase is Phase.STREAMING:
            await self.writer.send.send(event)
        elif isinstance(event, MetadataReceived):  # no writer yet: keep it for the ack
            self.writer.metadata.append(event.app_metadata)

    def _on_end(self, event: StreamEnded) -> None:
        if self.require_eos and not event.eos_marker:
            raise missing_eos_error(self.route.commit)
        trailing, _ = self.decoder.trailing_data
        if trailing:
            raise trailing_data_error()
        self.phase = Phase.HELD if self.phase is Phase.HOLDING else Phase.ENDED

    # -- holding and streaming -------------------------------------------------------------

    async def _start_writer(self, wait_for_key: bool) -> None:
        assert self._nursery is not None and self.schema is not None
        self.writer.key = self.key
        await self._nursery.start(self.writer.run, self.schema, self.pipeline.locks, wait_for_key)
        self.phase = Phase.STREAMING

    async def _stream_held(self) -> None:
        """Too large for a group (or the memory budget is short): the writer takes the
        table and what is held, and the request streams."""
        self._step_back_if_waiting()
        await self._start_writer(wait_for_key=False)  # the key is known by now
        held, self.held = self.held, []
        for item in held:
            await self.writer.send.send(item)

    def _step_back_if_waiting(self) -> None:
        """About to wait for the table while holding budget: if another request holds the
        table, give up being the one over the budget (see ``Hold.step_back``). If the table
        is free there is no wait, and the turn is kept, so that only one request at a time
        is ever over the budget."""
        if self.pipeline.locks(self.route.table).locked():
            self.hold.step_back()

    async def _flush(self) -> None:
        """The memory budget is short: write what this request holds."""
        if self.phase is Phase.HOLDING:
            await self._stream_held()
        await self.writer.send.send(FLUSH)  # write what it holds now, however little

    async def _commit_held(self) -> None:
        """The stream ended small: commit it with the other requests waiting for the table."""
        groups, settings = self.pipeline.groups, self.group_settings
        assert groups is not None and settings is not None and self.schema is not None
        await trio.lowlevel.checkpoint_if_cancelled()  # hung up: nothing is written
        batches = []
        for item in self.held:
            if isinstance(item, BatchReceived):
                batches.append(item.batch)
            if item.app_metadata is not None:
                self.writer.metadata.append(item.app_metadata)
        self._step_back_if_waiting()
        deadline = getattr(self.store, "check_deadline", None)  # a DeadlineStore's
        part = Part(self.schema, tuple(batches), self.key, self.route.delta, deadline)
        store = getattr(self.store, "inner", self.store)
        self.result = await groups.commit(store, self.route.table, part, self.held_bytes, settings)

    # -- commits and the result ------------------------------------------------------------

    async def _finished(self, started: float) -> IngestResult:
        """Count the request's commit once, acknowledge it (request mode), and answer."""
        result = self.result or self.writer.result
        if result is None:  # the decoders end a stream only after its schema
            raise ProtocolError("the Arrow stream ended before its schema", error="empty_stream")
        stats, labels, progress = self.pipeline.stats, self.labels, self.progress
        wire = self.decoder.wire_bytes
        if self.route.commit == "batch":  # each commit was counted; add the framing
            stats.framing(labels, wire - progress.bytes)
            progress.bytes = wire
        else:  # one commit for the whole request
            progress.rows, progress.batches, progress.bytes = result.rows, result.batches, wire
            if result.replayed:
                stats.replayed(labels)
            else:
                stats.committed(
                    labels,
                    rows=result.rows,
                    batches=result.batches,
                    wire=wire,
                    decoded=self.decoder.decoded_bytes,
                )
            if self.on_commit is not None:  # acknowledged after the table is free
                await self.on_commit(
                    Commit(
                        result.rows,
                        result.batches,
                        self.writer.metadata,
                        result.version,
                        result.replayed,
                    )
                )
        return IngestResult(
            stream=self.route.stream,
            table=self.route.table,
            backend=self.store.backend,
            rows=result.rows,
            batches=result.batches,
            bytes=wire,
            decoded_bytes=self.decoder.decoded_bytes,
            duration_ms=(trio.current_time() - started) * 1000,
            commit=self.route.commit,
            version=result.version,
            idempotency_key=self.key,
            replayed=result.replayed,
        )
