"""GroupCommitter in-process, on a real DuckDB file: who leads, what a group takes, cancellation.

The table's lock is held by the test while requests queue, so every group is deterministic:
when the lock is released, the leader takes what is queued, up to the bounds.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import trio

from arrowport.config import GroupCommitSettings
from arrowport.io.group_commit import GroupCommitted, GroupCommitter
from arrowport.io.ingest_results import TableLocks
from arrowport.storage import DuckDBStore
from arrowport.storage.errors import SchemaMismatchError
from arrowport.storage.port import Part
from arrowport.storage.table_write import WriteResult


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = DuckDBStore(tmp_path / "g.duckdb")
    s.open()
    s.write("t", _part(0).schema, _part(0).batches)  # the table exists: groups append
    yield s
    s.close()


def _part(start: int, n: int = 1, key: str | None = None) -> Part:
    batch = pa.record_batch({"id": pa.array(range(start, start + n), pa.int64())})
    return Part(batch.schema, (batch,), key)


def _ids(store: DuckDBStore) -> list[int]:
    with store._cursor() as cur:
        return [r[0] for r in cur.execute("SELECT id FROM t ORDER BY id").fetchall()]


async def _queue_then_release(
    committer: GroupCommitter,
    store: DuckDBStore,
    locks: TableLocks,
    parts: list[Part],
    settings: GroupCommitSettings,
) -> list[WriteResult | BaseException]:
    """Queue ``parts`` (in order) while the test holds the table, then let them commit."""
    results: list[WriteResult | BaseException] = [RuntimeError("no answer")] * len(parts)

    async def one(i: int) -> None:
        try:
            results[i] = await committer.commit(store, "t", parts[i], 8, settings)
        except Exception as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        await locks("t").acquire()
        for i in range(len(parts)):
            nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
        locks("t").release()
    return results


async def test_queued_requests_commit_in_one_group(store: DuckDBStore) -> None:
    locks, groups = TableLocks(), []
    committer = GroupCommitter(locks, on_group=groups.append)
    parts = [_part(i) for i in range(1, 11)]
    results = await _queue_then_release(committer, store, locks, parts, GroupCommitSettings())
    assert all(isinstance(r, WriteResult) and r.rows == 1 for r in results)
    assert [g.requests for g in groups] == [10]
    assert store.commits == 2  # the table's creation, then the one group
    assert _ids(store) == list(range(11))


async def test_bounds_split_the_queue_into_groups(store: DuckDBStore) -> None:
    locks, groups = TableLocks(), []
    committer = GroupCommitter(locks, on_group=groups.append)
    parts = [_part(10 * i, 5) for i in range(1, 9)]  # 8 requests of 5 rows
    settings = GroupCommitSettings(max_group_requests=3, max_group_rows=1000)
    await _queue_then_release(committer, store, locks, parts, settings)
    assert [g.requests for g in groups] == [3, 3, 2]
    groups.clear()
    settings = GroupCommitSettings(max_group_rows=12)  # two requests of 5 fit, not three
    more = [_part(1000 + 10 * i, 5) for i in range(5)]
    await _queue_then_release(committer, store, locks, more, settings)
    assert [g.requests for g in groups] == [2, 2, 1]
    assert [g.rows for g in groups] == [10, 10, 5]
    assert len(_ids(store)) == 1 + 40 + 25


async def test_a_bad_part_fails_alone_and_keys_replay(store: DuckDBStore) -> None:
    locks, groups = TableLocks(), []
    committer = GroupCommitter(locks, on_group=groups.append)
    wrong = pa.record_batch({"id": pa.array(["x"])})
    parts = [
        _part(1, key="a"),
        Part(wrong.schema, (wrong,)),
        _part(1, key="a"),  # the same key in the same group: a replay of the first
        _part(2, 2, key="b"),
    ]
    results = await _queue_then_release(committer, store, locks, parts, GroupCommitSettings())
    assert isinstance(results[1], SchemaMismatchError)
    first, twice, other = results[0], results[2], results[3]
    assert isinstance(first, WriteResult) and not first.replayed and first.rows == 1
    assert isinstance(twice, WriteResult) and twice.replayed and twice.rows == 1
    assert isinstance(other, WriteResult) and not other.replayed and other.rows == 2
    assert [g.requests for g in groups] == [4]
    again = await committer.commit(store, "t", _part(2, 2, key="b"), 8, GroupCommitSettings())
    assert again.replayed and again.rows == 2
    assert _ids(store) == [0, 1, 2, 3]


async def test_a_cancelled_request_is_not_written_and_the_lead_moves_on(
    store: DuckDBStore,
) -> None:
    """A queued request and the leader itself are cancelled before their group is taken:
    neither is written; the others commit, one of them leading instead."""
    locks, groups = TableLocks(), []
    committer = GroupCommitter(locks, on_group=groups.append)
    settings = GroupCommitSettings()
    answers: dict[int, object] = {}
    scopes = {i: trio.CancelScope() for i in range(4)}

    async def one(i: int) -> None:
        with scopes[i]:
            answers[i] = await committer.commit(store, "t", _part(100 + i), 8, settings)

    async with trio.open_nursery() as nursery:
        await locks("t").acquire()
        for i in range(4):
            nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
        scopes[0].cancel()  # the leader, waiting for the table
        scopes[2].cancel()  # a queued request
        await trio.testing.wait_all_tasks_blocked()
        locks("t").release()
    assert sorted(answers) == [1, 3]
    assert [g.requests for g in groups] == [2]
    assert _ids(store) == [0, 101, 103]


async def test_a_failing_store_answers_every_request(store: DuckDBStore) -> None:
    locks = TableLocks()
    committer = GroupCommitter(locks)
    store.close()  # every write now fails
    results = await _queue_then_release(
        committer, store, locks, [_part(1), _part(2)], GroupCommitSettings()
    )
    assert all(isinstance(r, Exception) for r in results)
    store.open()  # for the fixture's close


def test_group_committed_is_frozen() -> None:
    event = GroupCommitted(3, 10, 0.01)
    with pytest.raises(AttributeError):
        event.requests = 4  # type: ignore[misc]


async def test_a_request_cancelled_in_a_taken_group_is_committed_and_cancelled(
    store: DuckDBStore,
) -> None:
    """Cancelled once its group is taken: its rows commit with the group (the commit runs
    in a thread), and it ends Cancelled only once the group is done, not with an error."""
    locks, groups = TableLocks(), []
    committer = GroupCommitter(locks, on_group=groups.append)
    settings = GroupCommitSettings()
    scopes = {i: trio.CancelScope() for i in range(2)}
    ended: dict[int, str] = {}

    async def one(i: int) -> None:
        with scopes[i]:
            try:
                await committer.commit(store, "t", _part(200 + i), 8, settings)
                ended[i] = "answered"
            except trio.Cancelled:
                ended[i] = "cancelled"
                raise
            except Exception as exc:
                ended[i] = repr(exc)

    async with trio.open_nursery() as nursery:
        await locks("t").acquire()
        for i in range(2):
            nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
        locks("t").release()
        await trio.testing.wait_all_tasks_blocked()  # the group is taken; its thread runs
        scopes[1].cancel()
    assert ended == {0: "answered", 1: "cancelled"}
    assert [g.requests for g in groups] == [2]
    assert _ids(store) == [0, 200, 201]
