"""Group commit on Delta (storage/delta_group.py): real Delta tables on disk, no server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from arrowport.config import DeltaOptions
from arrowport.protocol.errors import ArrowportError
from arrowport.storage import DeltaStore, SchemaMismatchError
from arrowport.storage.delta_write import META_KEYS, commit_info
from arrowport.storage.group_write import commit_group
from arrowport.storage.port import Outcome, Part
from arrowport.storage.table_write import WriteResult


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    s = DeltaStore(tmp_path / "lake")
    s.open()
    return s


def _batch(start: int, rows: int = 3, **extra: pa.Array) -> pa.RecordBatch:
    ids = pa.array(range(start, start + rows), pa.int64())
    return pa.record_batch({"a": ids, "b": pa.array([f"r{i}" for i in range(rows)]), **extra})


def _part(
    start: int,
    rows: int = 3,
    *,
    batches: int = 1,
    key: str | None = None,
    deadline: Callable[[], None] | None = None,
) -> Part:
    group = tuple(_batch(start + i * rows, rows) for i in range(batches))
    return Part(group[0].schema, group, key=key, deadline=deadline)


def _table(tmp_path: Path) -> DeltaTable:
    return DeltaTable(str(tmp_path / "lake" / "t"))


def _ids(tmp_path: Path) -> list[int]:
    return sorted(_table(tmp_path).to_pyarrow_table().column("a").to_pylist())


def _results(outcomes: list[Outcome]) -> list[WriteResult]:
    assert all(isinstance(o, WriteResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, WriteResult)]


def _no_orphans(tmp_path: Path) -> None:
    """Every data file on disk is in the log: nothing left out stays behind."""
    path = tmp_path / "lake" / "t"
    on_disk = sorted(p.name for p in path.rglob("*.parquet"))
    assert on_disk == sorted(Path(uri).name for uri in _table(tmp_path).file_uris())


def _seed(store: DeltaStore) -> None:
    """The table, at version 0, with ids 1000..1002."""
    assert isinstance(commit_group(store, "t", [_part(1000)])[0], WriteResult)


def test_a_group_is_one_version_with_every_row(store: DeltaStore, tmp_path: Path) -> None:
    _seed(store)
    parts = [_part(10 * i, 2, batches=i) for i in range(1, 6)]
    results = _results(commit_group(store, "t", parts))
    assert _table(tmp_path).version() == 1
    assert [(r.rows, r.batches, r.version, r.replayed) for r in results] == [
        (2 * i, i, 1, False) for i in range(1, 6)
    ]
    expected = [1000, 1001, 1002] + [10 * i + k for i in range(1, 6) for k in range(2 * i)]
    assert _ids(tmp_path) == sorted(expected)
    assert store.statistics()["commits"] == 2
    _no_orphans(tmp_path)


def test_a_group_creates_the_table_in_version_0(store: DeltaStore, tmp_path: Path) -> None:
    parts = [_part(0), _part(10, 4, key="k"), _part(20)]
    results = _results(commit_group(store, "t", parts))
    assert _table(tmp_path).version() == 0
    assert [(r.created, r.version) for r in results] == [(True, 0), (False, 0), (False, 0)]
    assert _ids(tmp_path) == [0, 1, 2, 10, 11, 12, 13, 20, 21, 22]
    replay = _results(commit_group(store, "t", [_part(50), _part(60, key="k")]))[1]
    assert (replay.rows, replay.batches, replay.version, replay.replayed) == (4, 1, 0, True)
    assert _table(tmp_path).version() == 1 and 60 not in _ids(tmp_path)


def test_keys_of_a_group_replay_with_their_own_counts(store: DeltaStore, tmp_path: Path) -> None:
    _seed(store)
    parts = [_part(0, 2, key="k1"), _part(10, 4, batches=2, key="k2"), _part(100)]
    results = _results(commit_group(store, "t", parts))
    assert [(r.rows, r.batches, r.version) for r in results] == [(2, 1, 1), (8, 2, 1), (3, 1, 1)]
    info = commit_info(store.location, str(tmp_path / "lake" / "t"), 1)
    assert info is not None
    assert json.loads(info[META_KEYS]) == {"k1": [2, 1], "k2": [8, 2]}
    dt = _table(tmp_path)
    assert [dt.transaction_version(f"arrowport:{k}") for k in ("k1", "k2")] == [1, 1]
    # a retry alone, and retries in a later group, answer the original results
    write = store.open_write("t", parts[1].schema, idempotency_key="k2")
    assert write.replayed
    replay = write.finish()
    assert (replay.rows, replay.batches, replay.version, replay.replayed) == (8, 2, 1, True)
    again = _results(commit_group(store, "t", [_part(500, key="k1"), _part(600, key="k2")]))
    assert [(r.rows, r.batches, r.version, r.replayed) for r in again] == [
        (2, 1, 1, True),
        (8, 2, 1, True),
    ]
    assert _table(tmp_path).version() == 1
    assert 500 not in _ids(tmp_path) and 600 not in _ids(tmp_path)


def test_a_key_committed_before_is_a_replay_and_the_rest_commit(
    store: DeltaStore, tmp_path: Path
) -> None:
    _seed(store)
    assert not _results(commit_group(store, "t", [_part(50, 5, key="old")]))[0].replayed
    results = _results(commit_group(store, "t", [_part(0), _part(60, key="old"), _part(10)]))
    assert [(r.rows, r.version, r.replayed) for r in results] == [
        (3, 2, False),
        (5, 1, True),
        (3, 2, False),
    ]
    assert _table(tmp_path).version() == 2
    assert 60 not in _ids(tmp_path)
    _no_orphans(tmp_path)


def test_a_key_twice_in_a_group_writes_the_first(store: DeltaStore, tmp_path: Path) -> None:
    _seed(store)
    parts = [_part(0, 2, key="k"), _part(10), _part(20, 4, key="k")]
    results = _results(commit_group(store, "t", parts))
    assert [(r.rows, r.version, r.replayed) for r in results] == [
        (2, 1, False),
        (3, 1, False),
        (2, 1, True),
    ]
    assert _table(tmp_path).version() == 1
    assert _ids(tmp_path) == [0, 1, 10, 11, 12, 1000, 1001, 1002]
    _no_orphans(tmp_path)


def test_a_part_whose_schema_conflicts_is_left_out(store: DeltaStore, tmp_path: Path) -> None:
    _seed(store)
    bad = pa.record_batch({"a": pa.array(["x"]), "b": pa.array(["y"])})
    parts = [_part(0), Part(bad.schema, (bad,), key="bad"), _part(10, key="good")]
    outcomes = commit_group(store, "t", parts)
    assert isinstance(outcomes[1], SchemaMismatchError)
    assert [(r.version, r.rows) for r in _results([outcomes[0], outcomes[2]])] == [(1, 3), (1, 3)]
    assert _table(tmp_path).version() == 1
    assert _ids(tmp_path) == [0, 1, 2, 10, 11, 12, 1000, 1001, 1002]
    assert _table(tmp_path).transaction_version("arrowport:bad") is None


def test_a_part_past_its_deadline_is_left_out(store: DeltaStore, tmp_path: Path) -> None:
    _seed(store)

    def expired() -> None:
        raise ArrowportError("the call's deadline passed")

    parts = [_part(0), _part(10, 5, key="late", deadline=expired), _part(20)]
    outcomes = commit_group(store, "t", parts)
    assert isinstance(outcomes[1], ArrowportError) and not isinstance(outcomes[1], WriteResult)
    assert [r.version for r in _results([outcomes[0], outcomes[2]])] == [1, 1]
    assert _ids(tmp_path) == [0, 1, 2, 20, 21, 22, 1000, 1001, 1002]
    assert _table(tmp_path).transaction_version("arrowport:late") is None
    _no_orphans(tmp_path)  # the late part's file was written, then deleted


def test_a_key_committed_meanwhile_is_taken_out_of_the_commit(
    store: DeltaStore, tmp_path: Path
) -> None:
    """Another writer commits a part's key after the group checked it: at the commit the
    part's files are left out and it is answered with the other writer's result."""
    _seed(store)
    other = DeltaStore(tmp_path / "lake")

    def meanwhile() -> None:  # runs just before the group's commit
        assert not _results(commit_group(other, "t", [_part(700, 7, key="k")]))[0].replayed

    parts = [_part(0, deadline=meanwhile), _part(10, key="k"), _part(20)]
    results = _results(commit_group(store, "t", parts))
    assert [(r.rows, r.version, r.replayed) for r in results] == [
        (3, 2, False),
        (7, 1, True),
        (3, 2, False),
    ]
    assert _table(tmp_path).version() == 2
    info = commit_info(store.location, str(tmp_path / "lake" / "t"), 2)
    assert info is not None and META_KEYS not in info  # no key left in the group's commit
    assert _ids(tmp_path) == [0, 1, 2, 20, 21, 22, *range(700, 707), 1000, 1001, 1002]
    _no_orphans(tmp_path)


def test_another_schema_is_written_alone_after_the_group(store: DeltaStore, tmp_path: Path) -> None:
    """schema_mode merge: a part with a new column does not share the others' commit."""
    _seed(store)
    wide = _batch(50, 2, c=pa.array([1.5, 2.5]))
    parts = [_part(0), Part(wide.schema, (wide,)), _part(10), _part(20)]
    results = _results(commit_group(store, "t", parts))
    assert [r.version for r in results] == [1, 3, 1, 1]  # 2: its new column (metadata)
    table = _table(tmp_path).to_pyarrow_table().sort_by("a")
    expected = [0, 1, 2, 10, 11, 12, 20, 21, 22, 50, 51, 1000, 1001, 1002]
    assert table.column("a").to_pylist() == expected
    assert table.column("c").to_pylist()[9:11] == [1.5, 2.5]


def test_a_failed_shared_commit_falls_back_to_each_part_alone(
    store: DeltaStore, tmp_path: Path
) -> None:
    """The table is created meanwhile with other partition columns: the group's commit
    fails as a whole, nothing of it lands, and each part is then written alone."""
    other = DeltaStore(tmp_path / "lake")
    calls: list[int] = []

    def meanwhile() -> None:  # once (it is the deadline of the part alone, too)
        calls.append(1)
        if len(calls) > 1:
            return
        options = DeltaOptions(partition_by=("b",))
        b = _batch(900, 1)
        write = other.open_write("t", b.schema, options=options)
        write.insert([b])
        write.finish()

    parts = [_part(0, deadline=meanwhile), _part(10, key="k"), _part(20)]
    results = _results(commit_group(store, "t", parts))
    assert sorted(r.version for r in results if r.version is not None) == [1, 2, 3]
    assert _table(tmp_path).version() == 3
    assert _ids(tmp_path) == [0, 1, 2, 10, 11, 12, 20, 21, 22, 900]
    assert _table(tmp_path).transaction_version("arrowport:k") is not None
    assert _table(tmp_path).metadata().partition_columns == ["b"]
    assert len(calls) == 2
    assert store.statistics()["rollbacks"] == 1  # the group's files, deleted
    _no_orphans(tmp_path)


def test_a_group_into_a_partitioned_table(store: DeltaStore, tmp_path: Path) -> None:
    options = DeltaOptions(partition_by=("b",))
    parts = [Part(p.schema, p.batches, key=p.key, options=options) for p in (_part(0), _part(10))]
    results = _results(commit_group(store, "t", parts))
    assert [r.version for r in results] == [0, 0]
    dt = _table(tmp_path)
    assert dt.metadata().partition_columns == ["b"]
    assert len(dt.file_uris()) == 6  # each part's file per partition value
    got = dt.to_pyarrow_table().sort_by("a")
    assert got.column("a").to_pylist() == [0, 1, 2, 10, 11, 12]
    assert got.column("b").to_pylist() == ["r0", "r1", "r2"] * 2
    _no_orphans(tmp_path)


def test_groups_committing_at_once_each_land_in_one_version(
    store: DeltaStore, tmp_path: Path
) -> None:
    """Two groups from two stores (processes) conflict; each retries and lands whole."""
    _seed(store)
    other = DeltaStore(tmp_path / "lake")
    got: dict[int, list[Outcome]] = {}
    start = threading.Barrier(2)

    def run(n: int, s: DeltaStore) -> None:
        start.wait()
        got[n] = commit_group(s, "t", [_part(100 * n + 10 * i, key=f"{n}.{i}") for i in range(4)])

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in ((1, store), (2, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = ({r.version for r in _results(got[n])} for n in (1, 2))
    assert len(first) == len(second) == 1 and first | second == {1, 2}
    assert _table(tmp_path).version() == 2
    expected = [100 * n + 10 * i + k for n in (1, 2) for i in range(4) for k in range(3)]
    assert _ids(tmp_path) == sorted([*expected, 1000, 1001, 1002])
    _no_orphans(tmp_path)
