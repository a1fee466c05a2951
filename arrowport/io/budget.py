"""The global in-flight memory budget (``limits.max_inflight_bytes``).

Decoded batches count from when they are queued for a writer until the
writer has written them. Invariants:

* A request that would take the total over the budget waits; meanwhile its
  body is not read, so TCP or HTTP/2 flow control holds its client back.
* A request that holds nothing may always take one more batch, so a batch
  larger than the budget still goes through. A request about to wait first
  tells its writer to write what it holds (the ingest pipeline's flush
  marker), so no request waits on memory that is itself waiting: every
  writer drains what its request holds (it needs no budget to write), and
  then its request may go on.
* Everything a request took is given back when it ends, however it ends.
"""

from __future__ import annotations

import trio


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = trio.Event()

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def would_wait(self, nbytes: int, held: int) -> bool:
        return bool(held) and self.used + nbytes > self.limit

    async def wait_freed(self) -> None:
        """Wait until something is given back."""
        await self._freed.wait()

    def release(self, nbytes: int) -> None:
        if nbytes:
            self.used -= nbytes
            self._freed.set()
            self._freed = trio.Event()


class Hold:
    """What one request holds of a ``MemoryBudget``."""

    def __init__(self, budget: MemoryBudget | None) -> None:
        self.budget = budget
        self.held = 0

    def would_wait(self, nbytes: int) -> bool:
        return self.budget is not None and self.budget.would_wait(nbytes, self.held)

    async def acquire(self, nbytes: int) -> None:
        """Take ``nbytes``, waiting while the budget is short (and this request holds some)."""
        budget = self.budget
        if budget is None:
            return
        while budget.would_wait(nbytes, self.held):  # ``held`` drops as the writer writes
            await budget.wait_freed()
        budget.used += nbytes
        self.held += nbytes

    def release(self, nbytes: int) -> None:
        if self.budget is not None:
            nbytes = min(nbytes, self.held)
            self.held -= nbytes
            self.budget.release(nbytes)

    def release_all(self) -> None:
        self.release(self.held)
