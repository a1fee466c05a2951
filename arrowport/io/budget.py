"""The global in-flight memory budget (``limits.max_inflight_bytes``).

What counts, per request, from before it is allocated until it is freed:

* a message body, from before it is allocated (the decoder announces it)
  until its batch is written (uncompressed: the batch's buffers are views of
  the body) or decoded (compressed: the body is dropped then);
* a compressed batch's decoded size, from before it is decompressed;
* what a backend expands null, run-end-encoded and dictionary columns to,
  from before the batch is queued for its writer until it is written;
* dictionaries, until the request ends.

Invariants:

* A request that would take the total over the budget waits; meanwhile its
  body is not read, so TCP or HTTP/2 flow control holds its client back.
* A request whose writer holds nothing of it ("nothing queued") may always
  take one more, even over the budget, so a batch larger than the budget
  still goes through; but only one request at a time may be over the budget
  (``MemoryBudget.over``), so N concurrent requests cannot each take a large
  batch: the total stays within the budget plus one request's message.
  Once the total is back within the budget, the next may go over.
* A request about to wait with batches queued first tells its writer to
  write them (the ingest pipeline's flush marker). So no request waits on
  memory that is itself waiting: writers need no budget to write, the
  request over the budget never waits on another's memory, and whoever is
  waiting holds only its current message (or dictionaries), which it may
  exceed the budget with once the one over it is back within.
* Everything a request took is given back when it ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..protocol.events import BatchAnnounced, BatchReceived, DictionaryReceived


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.over: Hold | None = None  # the one request allowed over the limit
        self._freed = trio.Event()

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    async def wait_freed(self) -> None:
        """Wait until something is given back."""
        await self._freed.wait()

    def release(self, nbytes: int) -> None:
        if nbytes:
            self.used -= nbytes
            if self.used <= self.limit:
                self.over = None
            self._freed.set()
            self._freed = trio.Event()


class Hold:
    """What one request holds of a ``MemoryBudget``.

    ``queued`` is the part its writer holds (it gives it back by writing);
    the rest (``held - queued``) is its current message and its dictionaries.
    """

    def __init__(self, budget: MemoryBudget | None) -> None:
        self.budget = budget
        self.held = 0
        self.queued = 0

    def would_wait(self, nbytes: int) -> bool:
        budget = self.budget
        if budget is None or budget.used + nbytes <= budget.limit:
            return False
        return self.queued > 0 or (budget.over is not None and budget.over is not self)

    def must_flush(self, nbytes: int) -> bool:
        """Waiting for ``nbytes`` needs the writer to write what it holds first."""
        return self.queued > 0 and self.would_wait(nbytes)

    async def acquire(self, nbytes: int) -> None:
        """Take ``nbytes``, waiting while the budget is short (see the invariants)."""
        budget = self.budget
        if budget is None or nbytes <= 0:
            return
        while self.would_wait(nbytes):  # ``queued`` drops as the writer writes
            await budget.wait_freed()
        if budget.used + nbytes > budget.limit:
            budget.over = self
        budget.used += nbytes
        self.held += nbytes

    def queue(self, nbytes: int) -> None:
        """``nbytes`` of what this request holds were handed to its writer."""
        self.queued += nbytes

    def release(self, nbytes: int) -> None:
        if self.budget is not None:
            nbytes = min(nbytes, self.held)
            self.held -= nbytes
            self.queued = max(0, self.queued - nbytes)
            self.budget.release(nbytes)

    def step_back(self) -> None:
        """This request is about to wait for its table holding what it took: if it is the
        one over the budget, it gives that turn up, so that the request it waits for (which
        needs no budget to write, but may to read on) is not stuck behind it."""
        if self.budget is not None and self.budget.over is self:
            self.budget.over = None
            self.budget.release(0)

    def release_all(self) -> None:
        self.release(self.held)
        if self.budget is not None and self.budget.over is self:
            self.budget.over = None
            self.budget.release(0)


Decode = Callable[[], Awaitable[BatchReceived]]


class MessageCosts:
    """Takes one request's messages from the budget as its decoder announces them.

    ``flush`` asks the request's writer to write what it holds (awaited before
    waiting with batches queued); ``decode`` runs the decoder's heavy step.
    """

    def __init__(self, hold: Hold, flush: Callable[[], Awaitable[None]]) -> None:
        self.hold = hold
        self._flush = flush
        self.current = 0  # held for the message being read, not yet queued

    async def take(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        if self.hold.must_flush(nbytes):
            await self._flush()
        await self.hold.acquire(nbytes)
        self.current += nbytes

    async def body(self, nbytes: int) -> None:
        """A message body is about to be allocated."""
        await self.take(nbytes)

    async def dictionary(self, event: DictionaryReceived) -> None:
        """A dictionary arrived: it stays until the request ends."""
        body, self.current = self.current, 0
        # compressed: it is decompressed with the next batch, beside its body
        await self.take(event.decoded_bytes if event.compressed else event.decoded_bytes - body)
        self.current = 0

    async def batch(self, event: BatchAnnounced, decode: Decode) -> BatchReceived:
        """Take the batch's decoded size, decode it, and keep what it costs the writer."""
        body = self.current
        # compressed: body and decompressed buffers are both alive while it is decompressed;
        # uncompressed: the batch's buffers are the body's bytes
        await self.take(event.decoded_bytes if event.compressed else event.decoded_bytes - body)
        received = await decode()
        cost = received.decoded_bytes
        if cost > self.current:  # dictionary values a backend expands
            await self.take(cost - self.current)
        elif cost < self.current:  # the compressed body, or a bound that was high
            self.hold.release(self.current - cost)
        self.current = 0
        self.hold.queue(cost)
        return received
