"""Group commit: small requests to one table wait together and share one commit.

A request small enough to hold (``group_commit.max_request_bytes``) reads its
whole stream first, then calls ``GroupCommitter.commit`` with its ``Part``.
Requests for one table queue; the first one that finds no group forming
leads: it takes the table's lock (so groups and streaming writes to a table
stay in order), waits ``max_wait`` if configured, takes the queue (up to the
group bounds) and runs ``storage.group_write.commit_group`` in a worker
thread. Each request is answered with its own outcome once the group's
commit is done. Then the leader hands the lead to the first request still
queued, and returns with its own answer: no request serves more than one group.

While a group commits, the requests that arrive queue for the next one: a
lone producer never waits, and many producers share commits without a timer.

Invariants:

* A queued request that is cancelled (its client went away) leaves the queue
  and is not written. Once taken into a group it is committed with it (the
  commit runs in a thread, which cancellation cannot stop); its client gets
  no answer, and a keyed retry is answered as a replay.
* The lead is never lost: a leader's work is shielded from its own
  cancellation, and a request elected while being cancelled still leads.
"""

from __future__ import annotations

import copy
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..config import GroupCommitSettings
from ..storage.errors import StorageError
from ..storage.group_write import commit_group
from ..storage.port import Outcome, Part
from ..storage.table_write import WriteResult
from .ingest_results import TableLocks

log = logging.getLogger("arrowport.ingest")


class Turn(enum.Enum):
    QUEUED = "queued"  # waiting for a group
    LEADING = "leading"  # elected: takes the next group and commits it
    TAKEN = "taken"  # in a group whose commit runs
    DONE = "done"  # ``outcome`` is set


@dataclass(eq=False, slots=True)
class _Entry:
    part: Part
    size: int  # decoded bytes
    turn: Turn = Turn.QUEUED
    outcome: Outcome | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class GroupCommitted:
    """What one group commit came to (for the metrics)."""

    requests: int
    rows: int
    seconds: float


class GroupCommitter:
    """The queues of small requests, one per (store, table)."""

    def __init__(
        self,
        locks: TableLocks,
        limiter: trio.CapacityLimiter | None = None,
        on_group: Callable[[GroupCommitted], None] | None = None,
    ) -> None:
        self._locks = locks
        self._limiter = limiter
        self._on_group = on_group
        self._queues: dict[tuple[int, str], list[_Entry]] = {}
        self._led: set[tuple[int, str]] = set()  # a leader is elected for these
        self._settings = GroupCommitSettings()

    async def commit(
        self, store: Any, table: str, part: Part, size: int, settings: GroupCommitSettings
    ) -> WriteResult:
        """Commit ``part`` into ``table`` with whoever else waits for it; its result, or
        raise its error."""
        where = (id(store), table.lower())
        self._settings = settings  # the bounds of the next group taken
        entry = _Entry(part, size)
        queue = self._queues.setdefault(where, [])
        queue.append(entry)
        if where not in self._led:
            self._led.add(where)
            entry.turn = Turn.LEADING
        lock = self._locks(table)
        try:
            while entry.turn is Turn.QUEUED or entry.turn is Turn.TAKEN:
                await entry.wakeup.wait()
                entry.wakeup = trio.Event()
            if entry.turn is Turn.LEADING:
                await lock.acquire()
        except trio.Cancelled:
            if entry.turn is Turn.QUEUED or entry.turn is Turn.LEADING:  # never written
                queue.remove(entry)
                if entry.turn is Turn.LEADING:
                    self._elect(where, queue)
            else:  # taken: its group commits anyway; its batches stay counted until then
                with trio.CancelScope(shield=True):
                    while entry.turn is not Turn.DONE:
                        await entry.wakeup.wait()
                        entry.wakeup = trio.Event()
            raise
        if entry.turn is Turn.LEADING:
            try:
                if settings.max_wait > 0:
                    await trio.sleep(settings.max_wait)  # for more requests to join
            except trio.Cancelled:
                lock.release()
                queue.remove(entry)
                self._elect(where, queue)
                raise
            with trio.CancelScope(shield=True):  # the others' commit depends on it now
                try:
                    await self._lead(where, store, table)
                finally:
                    lock.release()
        if entry.turn is not Turn.DONE or entry.outcome is None:  # cannot happen
            raise StorageError("the group commit did not answer this request")
        if isinstance(entry.outcome, BaseException):
            raise entry.outcome
        return entry.outcome

    async def _lead(self, where: tuple[int, str], store: Any, table: str) -> None:
        """Take the next group and commit it (the table's lock is held)."""
        queue = self._queues[where]
        group: list[_Entry] = []
        outcomes: list[Outcome] = []
        started = trio.current_time()
        try:
            group = _take(queue, self._settings)
            for entry in group:
                entry.turn = Turn.TAKEN
            outcomes = await trio.to_thread.run_sync(
                commit_group, store, table, [e.part for e in group], limiter=self._limiter
            )
        except Exception as exc:  # the store failed as a whole (closed, ...)
            outcomes = [copy.copy(exc) for _ in group]
        finally:
            # every request taken is answered, whatever happened
            if len(outcomes) != len(group):
                outcomes = [StorageError("the group commit failed") for _ in group]
            self._elect(where, queue)
            for entry, outcome in zip(group, outcomes, strict=True):
                entry.outcome, entry.turn = outcome, Turn.DONE
                entry.wakeup.set()
        if self._on_group is not None:
            rows = sum(e.part.rows for e in group)
            try:
                self._on_group(GroupCommitted(len(group), rows, trio.current_time() - started))
            except Exception:  # the metrics: never the requests' answers
                log.exception("recording a group commit failed")

    def _elect(self, where: tuple[int, str], queue: list[_Entry]) -> None:
        """Hand the lead to the first request still queued, or end the table's turn."""
        waiting = [e for e in queue if e.turn is Turn.QUEUED]
        if waiting:
            waiting[0].turn = Turn.LEADING
            waiting[0].wakeup.set()
        else:
            self._led.discard(where)
            if not queue:
                self._queues.pop(where, None)


def _take(queue: list[_Entry], settings: GroupCommitSettings) -> list[_Entry]:
    """The next group: queued requests in order, up to the bounds (at least one)."""
    group: list[_Entry] = []
    rows = size = 0
    for entry in queue:
        if entry.turn is not Turn.QUEUED and entry.turn is not Turn.LEADING:
            continue
        if group and (
            len(group) >= settings.max_group_requests
            or rows + entry.part.rows > settings.max_group_rows
            or size + entry.size > settings.max_group_bytes
        ):
            break
        group.append(entry)
        rows += entry.part.rows
        size += entry.size
    for entry in group:
        queue.remove(entry)
    return group
