"""The ingest pipeline in-process: real decoder, real DuckDB file, trio cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest
import trio
from support import ipc_bytes

from arrowport.config import Limits, Route
from arrowport.io.ingest import Pipeline, ingest
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
