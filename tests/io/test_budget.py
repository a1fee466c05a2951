"""The in-flight memory budget's rules, driven directly under trio (no server needed)."""

from __future__ import annotations

import trio
import trio.testing

from arrowport.io.budget import Hold, MemoryBudget


async def test_only_one_request_goes_over_the_budget_at_a_time() -> None:
    """Two requests holding nothing each want more than the budget: one goes over, the
    other waits until the first has given its memory back, then goes over in turn."""
    budget = MemoryBudget(100)
    first, second = Hold(budget), Hold(budget)
    await first.acquire(150)
    assert budget.used == 150 and budget.over is first
    taken = trio.Event()

    async def take_second() -> None:
        await second.acquire(150)
        taken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_second)
        await trio.testing.wait_all_tasks_blocked()
        assert not taken.is_set()
        assert second.would_wait(150)
        first.release_all()
        await taken.wait()
    assert budget.used == 150 and budget.over is second
    second.release_all()
    assert budget.used == 0 and budget.over is None


async def test_a_request_with_queued_batches_must_flush_before_it_waits() -> None:
    """A request whose writer holds batches is told to flush; once they are written it may
    take its next message even over the budget."""
    budget = MemoryBudget(100)
    hold = Hold(budget)
    await hold.acquire(80)
    hold.queue(80)
    assert hold.must_flush(40)
    done = trio.Event()

    async def take() -> None:
        await hold.acquire(140)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        hold.release(80)  # the writer wrote the group
        await done.wait()
    assert budget.used == 140 and hold.queued == 0


async def test_within_the_budget_nobody_waits_and_everything_comes_back() -> None:
    """Acquisitions that fit never wait; release_all returns all, whatever was queued."""
    budget = MemoryBudget(100)
    a, b = Hold(budget), Hold(budget)
    await a.acquire(40)
    a.queue(30)
    await b.acquire(60)
    assert budget.used == 100 and budget.over is None
    assert a.would_wait(1) and a.must_flush(1)
    a.release_all()
    b.release_all()
    assert budget.used == 0 and a.held == b.held == a.queued == 0
