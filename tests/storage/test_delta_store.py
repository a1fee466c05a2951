"""The Delta writer on its own: real Delta tables on disk, no server."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from arrowport.config import DeltaOptions
from arrowport.names import InvalidNameError
from arrowport.storage import DeltaStore, SchemaMismatchError


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    s = DeltaStore(tmp_path / "lake")
    s.open()
    return s


def _batches(n: int, rows: int = 10, start: int = 0) -> list[pa.RecordBatch]:
    return [
        pa.record_batch(
            {
                "a": pa.array(range(start + i * rows, start + (i + 1) * rows), pa.int64()),
                "b": pa.array([f"r{i}"] * rows),
            }
        )
        for i in range(n)
    ]


def _write(store: DeltaStore, table: str, batches: list[pa.RecordBatch], **kw: str) -> None:
    w = store.open_write(table, batches[0].schema, **kw)
    for batch in batches:
        w.insert([batch])
    w.finish()


def _log_files(dt: DeltaTable) -> list[str]:
    return sorted(Path(uri).name for uri in dt.file_uris())


def _data_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix == ".parquet")


def test_two_requests_read_back_exactly(store: DeltaStore, tmp_path: Path) -> None:
    """Two requests append exactly their rows, in one version each."""
    _write(store, "t", _batches(3))
    dt = DeltaTable(str(tmp_path / "lake" / "t"))
    assert dt.version() == 0
    _write(store, "t", _batches(2, start=100))
    dt = DeltaTable(str(tmp_path / "lake" / "t"))
    assert dt.version() == 1
    got = dt.to_pyarrow_table().sort_by("a")
    assert got.column("a").to_pylist() == [*range(30), *range(100, 120)]
    assert got.column("b").to_pylist()[:11] == ["r0"] * 10 + ["r1"]
    assert len(_log_files(dt)) == 2


def test_finish_reports_rows_and_creation(store: DeltaStore) -> None:
    """finish() returns the rows, batches and whether the table was new."""
    w = store.open_write("t", _batches(1)[0].schema)
    w.insert(_batches(4))
    result = w.finish()
    assert (result.table, result.rows, result.batches, result.created) == ("t", 40, 4, True)
    w2 = store.open_write("t", _batches(1)[0].schema)
    w2.insert(_batches(1))
    assert w2.finish().created is False


def test_rollback_leaves_no_version_and_no_files(store: DeltaStore, tmp_path: Path) -> None:
    """A rollback after inserts commits nothing and deletes the files it wrote."""
    path = tmp_path / "lake" / "t"
    _write(store, "t", _batches(1))
    before = _data_files(path)
    w = DeltaStore(tmp_path / "lake", defaults=DeltaOptions(target_file_size=1)).open_write(
        "t", _batches(1)[0].schema
    )
    for batch in _batches(3):
        w.insert([batch])
    assert len(_data_files(path)) == len(before) + 3  # the files really were written
    w.rollback()
    w.rollback()  # idempotent
    assert DeltaTable(str(path)).version() == 0
    assert _data_files(path) == before
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 10


def test_rollback_of_a_new_table_leaves_no_directory(store: DeltaStore, tmp_path: Path) -> None:
    """Rolling back the first write of a table leaves neither table nor directory."""
    w = store.open_write("fresh", _batches(1)[0].schema)
    w.insert(_batches(2))
    w.rollback()
    assert not (tmp_path / "lake" / "fresh").exists()


def test_rollback_after_finish_is_a_no_op(store: DeltaStore, tmp_path: Path) -> None:
    """rollback() after finish() keeps the committed rows and files."""
    w = store.open_write("t", _batches(1)[0].schema)
    w.insert(_batches(2))
    w.finish()
    w.rollback()
    dt = DeltaTable(str(tmp_path / "lake" / "t"))
    assert dt.to_pyarrow_table().num_rows == 20
    assert _data_files(tmp_path / "lake" / "t") == _log_files(dt)


def test_large_write_rolls_files_and_commits_once(tmp_path: Path) -> None:
    """Files roll at target_file_size and all land in one version."""
    store = DeltaStore(
        tmp_path / "lake", defaults=DeltaOptions(target_file_size=64 * 1024, compression="none")
    )
    store.open()
    batches = _batches(40, rows=5_000)
    _write(store, "big", batches)
    path = tmp_path / "lake" / "big"
    dt = DeltaTable(str(path))
    assert dt.version() == 0
    assert len(_log_files(dt)) >= 10
    sizes = [(path / f).stat().st_size for f in _log_files(dt)]
    assert max(sizes) < 64 * 1024 * 3  # each file closed soon after passing the target
    assert dt.to_pyarrow_table().num_rows == 200_000
    assert _data_files(path) == _log_files(dt)
    assert all(f.startswith("part-") and f.endswith(".none.parquet") for f in _log_files(dt))


def test_batch_mode_commits_each_insert(store: DeltaStore, tmp_path: Path) -> None:
    """Batch mode makes one version per insert, visible before finish."""
    w = store.open_write("t", _batches(1)[0].schema, commit="batch")
    path = str(tmp_path / "lake" / "t")
    for i, batch in enumerate(_batches(3)):
        w.insert([batch])
        assert DeltaTable(path).version() == i
        assert DeltaTable(path).to_pyarrow_table().num_rows == 10 * (i + 1)
    w.finish()
    assert DeltaTable(path).version() == 2


def test_batch_mode_rollback_keeps_committed_batches(store: DeltaStore, tmp_path: Path) -> None:
    """A rollback in batch mode keeps what was already committed."""
    w = store.open_write("t", _batches(1)[0].schema, commit="batch")
    w.insert(_batches(2))
    w.rollback()
    dt = DeltaTable(str(tmp_path / "lake" / "t"))
    assert (dt.version(), dt.to_pyarrow_table().num_rows) == (0, 20)


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", "%2e%2e", "", "1x", "a b"])
def test_bad_names_are_refused(store: DeltaStore, tmp_path: Path, name: str) -> None:
    """A name that is not an identifier under the root is refused before any write."""
    with pytest.raises(InvalidNameError):
        store.open_write(name, _batches(1)[0].schema)
    assert list((tmp_path / "lake").iterdir()) == []


def test_symlinked_table_leaving_the_root_is_refused(store: DeltaStore, tmp_path: Path) -> None:
    """A table directory that resolves outside the root is refused."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "lake" / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidNameError, match="outside"):
        store.open_write("evil", _batches(1)[0].schema)


def test_schema_conflict_names_the_column(store: DeltaStore, tmp_path: Path) -> None:
    """strict: an extra or retyped column is refused, named, and nothing is committed."""
    _write(store, "t", _batches(1))
    extra = pa.schema([("a", pa.int64()), ("zz", pa.string())])
    with pytest.raises(SchemaMismatchError, match=r"zz.*schema_mode: strict") as info:
        store.open_write("t", extra, options=DeltaOptions(schema_mode="strict"))
    assert info.value.extra == ("zz",)
    retyped = pa.schema([("a", pa.string())])
    with pytest.raises(SchemaMismatchError, match="a"):
        store.open_write("t", retyped)
    path = tmp_path / "lake" / "t"
    assert DeltaTable(str(path)).version() == 0
    assert len(_data_files(path)) == 1


def test_subset_and_widening_are_accepted(store: DeltaStore, tmp_path: Path) -> None:
    """A stream may omit nullable columns and widen int32 into a long column."""
    _write(store, "t", _batches(1))
    narrow = pa.record_batch({"a": pa.array([7], pa.int32())})
    _write(store, "t", [narrow])
    got = DeltaTable(str(tmp_path / "lake" / "t")).to_pyarrow_table().sort_by("a")
    assert got.column("a").to_pylist() == [0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9]
    assert got.column("b").null_count == 1


def test_a_lossy_cast_is_rejected_and_rolled_back(store: DeltaStore, tmp_path: Path) -> None:
    """A value that does not fit the table's type fails the write and leaves no files:
    uint32 is stored as int64, which an int32 column cannot take, so it is refused up front."""
    _write(store, "t", [pa.record_batch({"a": pa.array([1], pa.int32())})])
    with pytest.raises(SchemaMismatchError, match="table INTEGER, stream BIGINT"):
        store.open_write("t", pa.schema([("a", pa.uint32())]))
    path = tmp_path / "lake" / "t"
    assert DeltaTable(str(path)).version() == 0
    assert len(_data_files(path)) == 1


def test_a_failure_after_the_commit_landed_keeps_the_commit_and_its_files(
    tmp_path: Path,
) -> None:
    """delta-rs checkpoints after committing; if that step fails, the commit is in the log, so
    the write reports success with its version and deletes none of the files it references."""
    store = DeltaStore(tmp_path / "lake", checkpoint_interval=2)
    for i in range(3):  # versions 0-2; delta-rs checkpoints at version 1
        _write(store, "t", _batches(1, start=100 * i))
    log = tmp_path / "lake" / "t" / "_delta_log"
    (log / f"{3:020d}.checkpoint.parquet").mkdir()  # the checkpoint at version 3 must fail
    w = store.open_write("t", _batches(1)[0].schema)
    w.insert(_batches(2, start=1000))
    result = w.finish()
    assert (result.version, result.rows, result.replayed) == (3, 20, False)
    dt = DeltaTable(str(tmp_path / "lake" / "t"))
    assert dt.version() == 3
    ids = sorted(dt.to_pyarrow_table().column("a").to_pylist())  # every file still exists
    assert ids == [*range(10), *range(100, 110), *range(200, 210), *range(1000, 1020)]
    assert store.rollbacks == 0


def test_internal_table_names_are_reserved(store: DeltaStore) -> None:
    """_arrowport* names are Arrowport's own: refused for writes (readers never list them)."""
    with pytest.raises(InvalidNameError, match="reserved"):
        store.open_write("_arrowport_ledger", _batches(1)[0].schema)
    with pytest.raises(InvalidNameError, match="reserved"):
        store.open_write("_ArrowPort_x", _batches(1)[0].schema)


def test_same_key_committed_concurrently_is_a_conflict_retried_into_a_replay(
    store: DeltaStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes commit one key at once: the loser's commit (from a snapshot without the
    key) conflicts in delta-rs; Arrowport backs off, retries, finds the key and replays.
    The race is made deterministic by handing the loser's first attempt a stale snapshot."""
    _write(store, "t", _batches(1))  # version 0
    stale = store.open_table("t")
    schema = _batches(1)[0].schema
    first = store.open_write("t", schema, idempotency_key="k")
    second = store.open_write("t", schema, idempotency_key="k")
    first.insert(_batches(2, start=100))
    assert first.finish().version == 1
    second.insert(_batches(2, start=100))
    real = store.open_table
    snapshots = iter([stale])
    monkeypatch.setattr(store, "open_table", lambda table: next(snapshots, None) or real(table))
    result = second.finish()
    assert (result.replayed, result.version, result.rows) == (True, 1, 20)
    assert store.conflicts_retried == 1
    dt = DeltaTable(str(tmp_path / "lake" / "t"))
    assert dt.version() == 1
    assert dt.to_pyarrow_table().num_rows == 30
    assert len(_data_files(tmp_path / "lake" / "t")) == 2  # the loser's files were deleted


@pytest.mark.parametrize(
    "column",
    [
        pa.array([{"A": 2}]),  # a field renamed (by case): pyarrow's cast made it null
        pa.array([{"a": 3, "z": 9}]),  # an extra field: the cast dropped it
        pa.array([[{"b": 1}]]),  # the same inside a list
        pa.array([[("k", {"b": 1})]], pa.map_(pa.string(), pa.struct([("b", pa.int64())]))),
    ],
)
def test_nested_fields_must_match_the_table(
    store: DeltaStore, tmp_path: Path, column: pa.Array
) -> None:
    """A struct, list or map whose fields differ from the table's is refused 422, not cast
    into nulls and dropped fields; a stricter nullability still appends."""
    first = pa.array([{"a": 1}]) if pa.types.is_struct(column.type) else None
    if first is None:
        first = (
            pa.array([[{"a": 1}]])
            if pa.types.is_list(column.type)
            else pa.array([[("k", {"a": 1})]], pa.map_(pa.string(), pa.struct([("a", pa.int64())])))
        )
    _write(store, "t", [pa.record_batch({"x": first})])
    with pytest.raises(SchemaMismatchError, match="conflicting types: x"):
        store.open_write("t", pa.schema([("x", column.type)]))
    strict = pa.struct([pa.field("a", pa.int64(), nullable=False)])
    if pa.types.is_struct(column.type):
        _write(store, "t", [pa.record_batch({"x": pa.array([{"a": 4}], strict)})])
    rows = DeltaTable(str(tmp_path / "lake" / "t")).to_pyarrow_table().column("x").to_pylist()
    assert first.to_pylist()[0] in rows and None not in rows
