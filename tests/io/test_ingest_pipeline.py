"""The ingest pipeline in-process: real decoder, real DuckDB file, trio cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest
import trio
from support import ipc_bytes

from arrowport.config import GroupCommitSettings, Limits, Route
from arrowport.io.budget import MemoryBudget
from arrowport.io.group_commit import GroupCommitter
from arrowport.io.ingest import Pipeline, ingest
from arrowport.io.ingest_results import TableLocks
from arrowport.stats import Stats
from arrowport.storage import DuckDBStore


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = DuckDBStore(tmp_path / "p.duckdb", insert_group_rows=10_000_000)
    s.open()
    yield s
    s.close()


def _big_body() -> bytes:
    table = pa.table({f"c{i}": pa.array(range(3_000_000), pa.int64()) for i in range(6)})
    return ipc_bytes(table, max_chunksize=500_000)


async def test_cancel_after_body_before_commit_rolls_back(store: DuckDBStore) -> None:
    """Cancelling the request once the whole body is in, while DuckDB inserts, commits nothing."""
    body = _big_body()
    body_done = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]
        body_done.set()

    route = Route("late", "late", "duckdb", "request", configured=False)
    stats = Stats()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_inserting() -> None:
                await body_done.wait()
                await trio.sleep(0.05)  # the 3M-row INSERT takes far longer than this
                scope.cancel()

            nursery.start_soon(cancel_when_inserting)
            await ingest(
                chunks(), route=route, store=store, limits=Limits(), pipeline=Pipeline(stats=stats)
            )
            pytest.fail("ingest finished before it was cancelled; make the body bigger")
    assert scope.cancelled_caught
    assert store.commits == 0 and store.rollbacks == 1
    with store._cursor() as cur:
        assert store.table_columns(cur, "late") is None
    assert stats.stream("late")["rows"] == 0


async def test_uncancelled_pipeline_commits(store: DuckDBStore) -> None:
    """The same body, left alone, commits every row (the test above can tell the difference)."""
    body = _big_body()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    route = Route("late", "late", "duckdb", "request", configured=False)
    result = await ingest(chunks(), route=route, store=store, limits=Limits(), pipeline=Pipeline())
    assert result.rows == 3_000_000 and store.count_rows("late") == 3_000_000


def _stream(batches: int, rows: int) -> bytes:
    batch = pa.record_batch({"x": pa.array(range(rows), pa.int64())})
    return ipc_bytes(pa.Table.from_batches([batch] * batches))


async def test_a_held_request_short_of_budget_streams_and_completes(store: DuckDBStore) -> None:
    """Held (group commit) with the memory budget short: it streams what it holds and
    goes on, rather than wait for memory that only its own writer could free."""
    locks = TableLocks()
    pipeline = Pipeline(locks, budget=MemoryBudget(100_000), groups=GroupCommitter(locks))
    settings = GroupCommitSettings(max_request_bytes=10_000_000)
    body = _stream(3, 5000)  # three batches of 40 kB decoded: the third waits for budget

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    route = Route("held", "held", "duckdb", "request", configured=False)
    with trio.fail_after(20):
        result = await ingest(
            chunks(),
            route=route,
            store=store,
            limits=Limits(),
            pipeline=pipeline,
            group_settings=settings,
        )
    assert result.rows == 15_000 and store.count_rows("held") == 15_000
    assert pipeline.budget is not None and pipeline.budget.used == 0


async def test_a_held_request_over_budget_does_not_block_the_writer_it_waits_for(
    store: DuckDBStore,
) -> None:
    """B streams into the table (holding it); A's first batch is larger than the whole
    budget, so A is the one request over it, then grows past the group bound and waits for
    the table. B must still be able to read on, or neither ends."""
    locks = TableLocks()
    pipeline = Pipeline(locks, budget=MemoryBudget(100_000), groups=GroupCommitter(locks))
    settings = GroupCommitSettings(max_request_bytes=10_000)
    b_body, a_body = _stream(2, 7000), _stream(1, 15_000)  # 56 kB batches; one of 120 kB
    cut = len(b_body) // 2 + 200
    route = Route("both", "both", "duckdb", "request", configured=False)
    results = {}

    async def trickle() -> AsyncIterator[bytes]:
        yield b_body[:cut]
        await trio.sleep(0.5)
        yield b_body[cut:]

    async def whole() -> AsyncIterator[bytes]:
        yield a_body

    async def run(name: str, chunks: AsyncIterator[bytes]) -> None:
        results[name] = await ingest(
            chunks,
            route=route,
            store=store,
            limits=Limits(),
            pipeline=pipeline,
            group_settings=settings,
        )

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "B", trickle())
            await trio.sleep(0.1)
            nursery.start_soon(run, "A", whole())
    assert results["B"].rows == 14_000 and results["A"].rows == 15_000
    assert store.count_rows("both") == 29_000
