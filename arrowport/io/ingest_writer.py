"""The streaming writer of one upload: it holds the table and inserts queued batches.

``StreamWriter.run`` is the writer task of ``ingest.IngestRequest``: it takes
the table's lock, opens the store's write (a transaction) in a worker thread,
then takes the batches the request queues, in groups, and runs each group's
INSERT in a thread; request mode commits in ``finish()`` once the end marker
arrives. Anything else rolls back (shielded: the request waits for it).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import trio

from ..config import Route
from ..protocol import BatchReceived
from ..protocol.flight import MetadataReceived
from ..stats import Labels, Stats
from ..storage import IngestAborted, WriteResult
from ..storage.modes import CREATE_APPEND
from ..storage.port import Store, Write
from .budget import Hold
from .ingest_results import Commit, OnCommit, Progress

END = object()  # the stream ended cleanly: commit
FLUSH = object()  # write the batches held so far (the memory budget is short)


class StreamWriter:
    """One upload's write, fed through a bounded channel (see the module's doc)."""

    def __init__(
        self,
        route: Route,
        store: Store,
        stats: Stats,
        labels: Labels,
        hold: Hold,
        limiter: trio.CapacityLimiter | None,
        queue_depth: int,
        progress: Progress,
        on_commit: OnCommit | None,
        table_mode: str = CREATE_APPEND,
    ) -> None:
        self.route, self.store, self.stats, self.labels = route, store, stats, labels
        self.hold, self.limiter = hold, limiter
        self.progress, self.on_commit = progress, on_commit
        self.table_mode = table_mode  # what the write does with its table (storage/modes.py)
        self.send, self.receive = trio.open_memory_channel[Any](queue_depth)
        self.metadata: list[bytes] = []  # request mode: the client's app_metadata, for the ack
        self.result: WriteResult | None = None
        self.key: str | None = None
        self.key_known = trio.Event()  # with ``wait_for_key``: the write opens once it is set

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def run(
        self,
        schema: pa.Schema,
        locks: Any,
        wait_for_key: bool,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        route = self.route
        async with locks(route.table):
            if wait_for_key:  # the key comes with the event after the schema
                task_status.started()
                await self.key_known.wait()
            write: Write = await self._in_thread(
                lambda: self.store.open_write(
                    route.table,
                    schema,
                    commit=route.commit,
                    options=route.delta,
                    idempotency_key=self.key,
                    mode=self.table_mode,
                )
            )
            if not wait_for_key:
                task_status.started()
            try:
                with self.receive:
                    ended = await self._write_groups(write)
                if not ended:
                    if route.commit == "batch":  # the request failed; keep what is committed
                        return
                    raise IngestAborted(
                        "the request ended before its Arrow stream completed; nothing was committed"
                    )
                await trio.lowlevel.checkpoint_if_cancelled()  # hung up: roll back, not commit
                self.result = await self._in_thread(write.finish)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(write.rollback)  # no-op after finish()
                if self.result is None and route.commit != "batch" and not write.replayed:
                    self.stats.rolled_back(self.labels)

    async def committed(
        self,
        group: list[BatchReceived],
        rows: int,
        batches: int,
        pending: list[bytes],
        version: int | None,
    ) -> None:
        """Batch mode: ``group`` is committed (rows and batches: the request's so far);
        count it, and acknowledge it with the app_metadata to echo."""
        progress = self.progress
        progress.rows, progress.batches = rows, batches
        wire = sum(e.wire_bytes for e in group)
        progress.bytes += wire
        if group:  # else app_metadata after the last batch: no commit to count
            self.stats.committed(
                self.labels,
                rows=sum(e.batch.num_rows for e in group),
                batches=len(group),
                wire=wire,
                decoded=sum(e.decoded_bytes for e in group),
            )
        if self.on_commit is not None:
            echo = pending + [e.app_metadata for e in group if e.app_metadata is not None]
            await self.on_commit(Commit(rows, batches, echo, version))

    async def _write_groups(self, write: Write) -> bool:
        """Insert queued batches group by group; True if the end marker arrived.

        Request mode collects the client's ``app_metadata`` into ``metadata``;
        batch mode reports it with each commit.
        """
        batch_mode = self.route.commit == "batch"
        metadata = self.metadata
        group: list[BatchReceived] = []
        rows = size = 0
        ended = False
        while not ended:
            try:
                item = await self.receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
            if item is END:
                ended = True
            elif item is FLUSH:
                pass  # write the group now, however small
            elif isinstance(item, MetadataReceived):
                metadata.append(item.app_metadata)
                continue
            else:
                if item.app_metadata is not None and not batch_mode:
                    metadata.append(item.app_metadata)
                group.append(item)
                rows += item.batch.num_rows
                size += item.decoded_bytes  # what the request took of the budget for it
                if not write.group_full(rows, size, len(group)):
                    continue
            if group:
                await self._in_thread(write.insert, [e.batch for e in group])
                self.hold.release(size)
                if batch_mode:
                    await self.committed(group, write.rows, write.batches, metadata, write.version)
                    metadata.clear()
                group, rows, size = [], 0, 0
        if ended and batch_mode and metadata:  # app_metadata after the last batch
            await self.committed([], write.rows, write.batches, metadata, None)
            metadata.clear()
        return ended
