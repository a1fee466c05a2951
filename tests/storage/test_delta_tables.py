"""Reading and maintaining Delta tables: real tables on disk, no server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from arrowport.config import DeltaOptions
from arrowport.io.status import http_status
from arrowport.names import InvalidNameError
from arrowport.storage import (
    ColumnNotFoundError,
    DeltaStore,
    InvalidReadError,
    StorageError,
    TableNotFoundError,
)
from arrowport.storage import delta_maintenance as dtm
from arrowport.storage import delta_tables as dtb

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])


def _batch(start: int, rows: int) -> pa.RecordBatch:
    ids = list(range(start, start + rows))
    return pa.record_batch(
        [
            pa.array(ids, pa.int64()),
            pa.array([f"n{i}" for i in ids]),
            pa.array([i / 2 for i in ids]),
        ],
        schema=SCHEMA,
    )


def _append(store: DeltaStore, table: str, start: int, rows: int) -> None:
    """One request through Arrowport's writer: add actions in one commit."""
    write = store.open_write(table, SCHEMA)
    write.insert([_batch(start, rows)])
    write.finish()


def _files_on_disk(path: Path) -> set[str]:
    return {p.name for p in path.rglob("*.parquet") if "_delta_log" not in p.parts}


def _ids(reader: pa.RecordBatchReader) -> list[int]:
    return sorted(reader.read_all().column("id").to_pylist())


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    s = DeltaStore(tmp_path / "lake")
    s.open()
    return s


@pytest.fixture
def three(store: DeltaStore) -> DeltaStore:
    """Table ``events``: versions 0, 1, 2 with 10, 5 and 3 new rows."""
    _append(store, "events", 0, 10)
    _append(store, "events", 100, 5)
    _append(store, "events", 200, 3)
    return store


# -- listing and describing ---------------------------------------------------


def test_list_tables_only_valid_delta_tables_sorted(three: DeltaStore) -> None:
    """Only Delta tables with valid, non-internal names are listed, sorted ignoring case."""
    _append(three, "Alpha", 0, 2)
    root = three.root
    (root / "not_delta").mkdir()
    (root / "_arrowport_tmp" / "_delta_log").mkdir(parents=True)
    write_deltalake(str(root / "bad-name"), pa.table({"x": [1]}))
    write_deltalake(str(root / "_arrowport_x"), pa.table({"x": [1]}))
    infos = dtb.list_tables(three)
    assert [i.name for i in infos] == ["Alpha", "events"]
    events = infos[1]
    assert events.rows == 18
    assert events.schema == SCHEMA
    on_disk = sum((root / "events" / f).stat().st_size for f in _files_on_disk(root / "events"))
    assert events.bytes == on_disk


def test_list_tables_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    """A root that does not exist yet has no tables (and is not created)."""
    store = DeltaStore(tmp_path / "nowhere")
    assert dtb.list_tables(store) == []
    assert not (tmp_path / "nowhere").exists()


def test_table_info_resolves_names_ignoring_case(three: DeltaStore) -> None:
    """A name in another case finds the table under its stored spelling."""
    info = dtb.table_info(three, "EVENTS")
    assert (info.name, info.rows) == ("events", 18)


def test_table_info_counts_rows_without_stats(store: DeltaStore) -> None:
    """Files without numRecords stats are counted from the Parquet footers."""
    write_deltalake(str(store.root / "nostats"), pa.table({"x": list(range(7))}))
    dt = DeltaTable(str(store.root / "nostats"))
    assert dtb.table_info(store, "nostats").rows == 7 == dt.count()


def test_missing_table_suggests_close_names(three: DeltaStore) -> None:
    """An unknown table is a 404 naming the close match."""
    with pytest.raises(TableNotFoundError) as info:
        dtb.table_info(three, "event")
    assert http_status(info.value) == 404
    assert info.value.suggestions == ("events",)
    assert "did you mean 'events'" in info.value.detail


def test_invalid_and_escaping_names_are_refused(three: DeltaStore) -> None:
    """Names that are not identifiers never touch the file system."""
    for bad in ("../events", "a/b", "", "x y"):
        with pytest.raises(InvalidNameError):
            dtb.describe(three, bad)


def test_describe_reports_the_latest_version(three: DeltaStore) -> None:
    """describe() has the version, files, rows, schema, properties and times."""
    info = dtb.describe(three, "Events")
    assert info["table"] == "events"
    assert info["path"] == str(three.root / "events")
    assert (info["version"], info["files"], info["rows"]) == (2, 3, 18)
    assert info["size_bytes"] == sum(
        (three.root / "events" / f).stat().st_size for f in _files_on_disk(three.root / "events")
    )
    assert info["schema"] == [
        {"name": "id", "type": "int64", "delta_type": "long", "nullable": True},
        {"name": "name", "type": "string", "delta_type": "string", "nullable": True},
        {"name": "score", "type": "double", "delta_type": "double", "nullable": True},
    ]
    assert info["partition_by"] == []
    assert info["cdc_enabled"] is False
    assert info["properties"]["delta.checkpointInterval"] == "100"
    created = datetime.fromisoformat(info["created"])
    modified = datetime.fromisoformat(info["last_modified"])
    assert created <= modified


def test_describe_partitioned_table_with_cdc(store: DeltaStore) -> None:
    """Partition columns and the change data feed setting are reported."""
    write_deltalake(
        str(store.root / "parts"),
        pa.table({"day": ["a", "b"], "v": [1, 2], "nested": [[1], [2, 3]]}),
        partition_by=["day"],
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    info = dtb.describe(store, "parts")
    assert info["partition_by"] == ["day"]
    assert info["cdc_enabled"] is True
    nested = next(c for c in info["schema"] if c["name"] == "nested")
    assert nested["delta_type"]["type"] == "array"


# -- scans and time travel ---------------------------------------------------


def test_scan_time_travel_after_several_commits(three: DeltaStore) -> None:
    """Each version reads exactly the rows committed up to it."""
    assert _ids(dtb.scan(three, "events", version=0)) == list(range(10))
    assert _ids(dtb.scan(three, "events", version=1)) == [*range(10), *range(100, 105)]
    latest = _ids(dtb.scan(three, "events"))
    assert latest == _ids(dtb.scan(three, "events", version=2))
    assert latest == [*range(10), *range(100, 105), *range(200, 203)]


def test_scan_columns_limit_and_batch_size(three: DeltaStore) -> None:
    """Columns match ignoring case, batches are at most batch_rows, limit stops early."""
    reader = dtb.scan(three, "events", columns=["SCORE", "Id"], limit=7, batch_rows=2)
    assert reader.schema.names == ["score", "id"]
    batches = list(reader)
    assert all(b.num_rows <= 2 for b in batches)
    assert sum(b.num_rows for b in batches) == 7
    assert dtb.scan(three, "events", limit=0).read_all().num_rows == 0
    assert dtb.scan(three, "events", limit=1000).read_all().num_rows == 18


@pytest.mark.parametrize("version", [-1, 3, 99])
def test_scan_of_a_missing_version_names_the_latest(three: DeltaStore, version: int) -> None:
    """A version out of range is a 400 that names the latest version."""
    with pytest.raises(InvalidReadError) as info:
        dtb.scan(three, "events", version=version)
    assert http_status(info.value) == 400
    assert "0 to 2" in info.value.detail


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"limit": -1}, "limit"),
        ({"batch_rows": 0}, "batch_rows"),
        ({"columns": []}, "columns is empty"),
        ({"columns": "id"}, "not a string"),
        ({"columns": ["id", "ID"]}, "more than once"),
        ({"version": True}, "integer"),
    ],
)
def test_scan_argument_errors(three: DeltaStore, kwargs: dict[str, object], fragment: str) -> None:
    """Bad arguments are 400s raised before any row is read."""
    with pytest.raises(InvalidReadError, match=fragment):
        dtb.scan(three, "events", **kwargs)  # type: ignore[arg-type]


def test_scan_of_unknown_columns(three: DeltaStore) -> None:
    """Unknown columns are named, with the table's columns and close matches."""
    with pytest.raises(ColumnNotFoundError) as info:
        dtb.scan(three, "events", columns=["id", "scor"])
    assert info.value.missing == ("scor",)
    assert info.value.columns == ("id", "name", "score")
    assert "did you mean 'score'" in info.value.detail


def test_scan_of_a_vacuumed_version_is_a_storage_error(three: DeltaStore) -> None:
    """After a restore and a vacuum, the old version fails up front, naming vacuum."""
    dtm.restore(three, "events", 0)
    assert len(dtm.vacuum(three, "events", retention_hours=0, dry_run=False)) == 2
    with pytest.raises(StorageError, match="removed by vacuum"):
        dtb.scan(three, "events", version=2)
    assert _ids(dtb.scan(three, "events", version=0)) == list(range(10))


def test_scan_pins_its_version(three: DeltaStore) -> None:
    """A reader opened before a commit does not see that commit's rows."""
    reader = dtb.scan(three, "events", batch_rows=1)
    _append(three, "events", 300, 4)
    assert reader.read_all().num_rows == 18
    assert dtb.scan(three, "events").read_all().num_rows == 22


# -- history and changes -----------------------------------------------------


def test_history_newest_first_with_custom_metadata(three: DeltaStore) -> None:
    """history() lists commits newest first, limited, with ISO times and metadata."""
    commits = dtb.history(three, "events")
    assert [c["version"] for c in commits] == [2, 1, 0]
    assert commits[-1]["operation"] == "CREATE TABLE"
    assert commits[0]["metadata"]["arrowport.rows"] == 3
    assert commits[1]["metadata"]["arrowport.rows"] == 5
    assert datetime.fromisoformat(commits[0]["timestamp"]).tzinfo is not None
    assert [c["version"] for c in dtb.history(three, "events", limit=2)] == [2, 1]
    assert dtb.history(three, "events", limit=0) == []
    with pytest.raises(InvalidReadError):
        dtb.history(three, "events", limit=-3)


def _commit_time(path: Path, version: int) -> str:
    """The ISO time of ``version``'s commitInfo, read straight from its log file."""
    with open(path / "_delta_log" / f"{version:020d}.json", encoding="utf-8") as log_file:
        for line in log_file:
            action = json.loads(line)
            if "commitInfo" in action:
                millis = action["commitInfo"]["timestamp"]
                return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat()
    raise AssertionError(f"version {version} has no commitInfo")


def test_history_and_describe_report_the_loaded_version_when_a_commit_lands_meanwhile(
    three: DeltaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between loading the table and reading its history shifts no version number.

    deltalake 1.6.6's ``DeltaTable.history()`` numbers commits newer than the
    loaded version counting down from it ([(2, WRITE), (1, WRITE), (0, WRITE),
    (-1, CREATE TABLE)] here): the load is made to race deterministically by
    committing version 3 right after each load.
    """
    path = three.root / "events"
    load = dtb.load_table
    extra = iter(range(1000, 10_000, 10))

    def load_then_commit(store: DeltaStore, table: str, version: int | None = None) -> DeltaTable:
        dt = load(store, table, version)
        time.sleep(0.01)  # the extra commit gets a later millisecond timestamp
        _append(three, "events", next(extra), 1)  # another writer commits meanwhile
        return dt

    monkeypatch.setattr(dtb, "load_table", load_then_commit)

    commits = dtb.history(three, "events")
    assert [(c["version"], c["operation"]) for c in commits] == [
        (2, "WRITE"),
        (1, "WRITE"),
        (0, "CREATE TABLE"),
    ]
    assert [c["metadata"]["arrowport.rows"] for c in commits[:2]] == [3, 5]
    assert [c["timestamp"] for c in commits] == [_commit_time(path, v) for v in (2, 1, 0)]
    assert [c["version"] for c in dtb.history(three, "events", limit=2)] == [3, 2]

    info = dtb.describe(three, "events")
    version = info["version"]
    assert DeltaTable(str(path)).version() == version + 1  # the racing commit landed
    assert info["last_modified"] == _commit_time(path, version)
    assert info["last_modified"] != _commit_time(path, version + 1)


def test_history_stops_at_log_entries_removed_by_cleanup(three: DeltaStore) -> None:
    """After log cleanup (a checkpoint, older JSON commits gone) history lists what is left."""
    dtm.checkpoint(three, "events")
    (three.root / "events" / "_delta_log" / f"{0:020d}.json").unlink()
    assert [c["version"] for c in dtb.history(three, "events")] == [2, 1]
    assert dtb.describe(three, "events")["last_modified"] == _commit_time(three.root / "events", 2)


def test_changes_of_add_only_commits_are_inserts(tmp_path: Path) -> None:
    """Appends committed by Arrowport's writer (add actions only) read as inserts."""
    store = DeltaStore(tmp_path / "lake", enable_cdc=True)
    store.open()
    _append(store, "feed", 0, 3)
    _append(store, "feed", 10, 2)
    _append(store, "feed", 20, 1)
    rows = dtb.changes(store, "feed").read_all()
    assert rows.schema.names == ["id", "name", "score", *dtb.CDF_COLUMNS]
    assert rows.schema.field("_change_type").type == pa.string()
    got = sorted(zip(rows["_commit_version"].to_pylist(), rows["id"].to_pylist(), strict=True))
    assert got == [(0, 0), (0, 1), (0, 2), (1, 10), (1, 11), (2, 20)]
    assert set(rows["_change_type"].to_pylist()) == {"insert"}
    middle = dtb.changes(store, "feed", from_version=1, to_version=1, columns=["ID"]).read_all()
    assert middle.schema.names == ["id", *dtb.CDF_COLUMNS]
    assert sorted(middle["id"].to_pylist()) == [10, 11]


def test_changes_show_a_restore_as_deletes(tmp_path: Path) -> None:
    """Restoring to an earlier version reads as deletes of the later rows."""
    store = DeltaStore(tmp_path / "lake", enable_cdc=True)
    store.open()
    _append(store, "feed", 0, 2)
    _append(store, "feed", 10, 2)
    dtm.restore(store, "feed", 0)
    rows = dtb.changes(store, "feed", from_version=2).read_all()
    assert sorted(zip(rows["_change_type"].to_pylist(), rows["id"].to_pylist(), strict=True)) == [
        ("delete", 10),
        ("delete", 11),
    ]


def test_changes_need_the_change_data_feed(three: DeltaStore) -> None:
    """A table without delta.enableChangeDataFeed=true is a clear 400."""
    with pytest.raises(InvalidReadError, match="enableChangeDataFeed"):
        dtb.changes(three, "events")


def test_changes_of_a_partitioned_table_keep_the_table_order(tmp_path: Path) -> None:
    """Partition columns stay where the table has them (delta-rs moves them last)."""
    store = DeltaStore(tmp_path / "lake", enable_cdc=True)
    store.open()
    schema = pa.schema([("day", pa.string()), ("v", pa.int64())])
    for i in range(2):
        write = store.open_write("p", schema, options=DeltaOptions(partition_by=("day",)))
        write.insert([pa.record_batch({"day": ["a", "b"], "v": [i, i + 10]}, schema=schema)])
        write.finish()
    rows = dtb.changes(store, "p").read_all()
    assert rows.schema.names == ["day", "v", *dtb.CDF_COLUMNS]
    assert sorted(
        zip(
            rows["_commit_version"].to_pylist(),
            rows["day"].to_pylist(),
            rows["v"].to_pylist(),
            strict=True,
        )
    ) == [
        (0, "a", 0),
        (0, "b", 10),
        (1, "a", 1),
        (1, "b", 11),
    ]


@pytest.mark.parametrize(
    ("start", "end", "fragment"),
    [
        (-1, None, "from_version -1"),
        (0, 5, "to_version 5"),
        (3, None, "from_version 3"),
        (2, 1, "after"),
    ],
)
def test_changes_version_range(tmp_path: Path, start: int, end: int | None, fragment: str) -> None:
    """Versions outside 0..latest, or reversed, are 400s."""
    store = DeltaStore(tmp_path / "lake", enable_cdc=True)
    store.open()
    for i in range(3):
        _append(store, "feed", i * 10, 1)
    with pytest.raises(InvalidReadError, match=fragment):
        dtb.changes(store, "feed", from_version=start, to_version=end)


# -- maintenance ---------------------------------------------------------------


def test_restore_then_history(three: DeltaStore) -> None:
    """A restore is a new version with the old rows, recorded in the history."""
    result = dtm.restore(three, "events", 1)
    assert (result["restored_version"], result["version"]) == (1, 3)
    assert result["metrics"]["numRemovedFile"] == 1
    assert _ids(dtb.scan(three, "events")) == [*range(10), *range(100, 105)]
    last = dtb.history(three, "events", limit=1)[0]
    assert (last["version"], last["operation"]) == (3, "RESTORE")
    assert last["parameters"]["version"] == "1"


@pytest.mark.parametrize("version", [2, 3, -1])
def test_restore_to_the_latest_or_a_missing_version(three: DeltaStore, version: int) -> None:
    """Only versions before the latest can be restored."""
    with pytest.raises(InvalidReadError):
        dtm.restore(three, "events", version)
    assert DeltaTable(str(three.root / "events")).version() == 2


def test_vacuum_dry_run_lists_and_real_run_deletes(three: DeltaStore) -> None:
    """Files dropped by a restore are listed by a dry run and deleted by a real one."""
    path = three.root / "events"
    before = _files_on_disk(path)
    dtm.restore(three, "events", 0)
    kept = {Path(uri).name for uri in DeltaTable(str(path)).file_uris()}
    assert dtm.vacuum(three, "events") == []  # within the default 168 hours
    listed = dtm.vacuum(three, "events", retention_hours=0)
    assert set(listed) == before - kept and len(listed) == 2
    assert _files_on_disk(path) == before  # a dry run deletes nothing
    deleted = dtm.vacuum(three, "events", retention_hours=0, dry_run=False)
    assert deleted == listed
    assert _files_on_disk(path) == kept
    assert _ids(dtb.scan(three, "events")) == list(range(10))
    with pytest.raises(StorageError, match="removed by vacuum"):
        dtm.restore(three, "events", 2)


def test_vacuum_default_retention_respects_the_table_minimum(three: DeltaStore) -> None:
    """A store default below the table's minimum retention is refused, not forced."""
    short = DeltaStore(three.root, version_retention_hours=1)
    with pytest.raises(InvalidReadError, match="retention"):
        dtm.vacuum(short, "events")
    with pytest.raises(InvalidReadError, match="negative"):
        dtm.vacuum(three, "events", retention_hours=-1)


def _orphans(path: Path, names: list[str], age_days: float) -> None:
    """Untracked Parquet files, as a killed server leaves them, ``age_days`` old."""
    old = time.time() - age_days * 86400
    for name in names:
        pq.write_table(pa.table({"id": [999]}), path / name)
        os.utime(path / name, (old, old))


def test_vacuum_full_removes_old_untracked_files(three: DeltaStore) -> None:
    """Only a full vacuum removes data files no version referenced, and only old ones."""
    path = three.root / "events"
    tracked = _files_on_disk(path)
    old = ["part-00000-orphan-a.parquet", "part-00000-orphan-b.parquet"]
    _orphans(path, old, age_days=30)
    _orphans(path, ["part-00000-orphan-new.parquet"], age_days=0)  # a running request's

    assert dtm.vacuum(three, "events", retention_hours=24) == []
    assert dtm.vacuum(three, "events", retention_hours=24, dry_run=False) == []
    assert _files_on_disk(path) == tracked | {*old, "part-00000-orphan-new.parquet"}

    listed = dtm.vacuum(three, "events", retention_hours=24, full=True)
    assert listed == sorted(old)
    assert _files_on_disk(path) == tracked | {*old, "part-00000-orphan-new.parquet"}
    deleted = dtm.vacuum(three, "events", full=True, dry_run=False, retention_hours=24)
    assert deleted == sorted(old)
    assert _files_on_disk(path) == tracked | {"part-00000-orphan-new.parquet"}
    assert _ids(dtb.scan(three, "events")) == [*range(10), *range(100, 105), *range(200, 203)]
    assert dtb.table_info(three, "events").rows == 18


def test_optimize_compacts_files(three: DeltaStore) -> None:
    """Compaction leaves one file with the same rows, in a new version."""
    path = str(three.root / "events")
    assert len(DeltaTable(path).file_uris()) == 3
    result = dtm.optimize(three, "events")
    assert result["mode"] == "compact"
    assert (result["metrics"]["numFilesRemoved"], result["metrics"]["numFilesAdded"]) == (3, 1)
    assert result["metrics"]["filesAdded"]["totalFiles"] == 1  # decoded from delta-rs's JSON
    assert result["version"] == 3
    assert len(DeltaTable(path).file_uris()) == 1
    assert dtb.table_info(three, "events").rows == 18


def test_optimize_z_order(three: DeltaStore) -> None:
    """Z-ordering rewrites the data ordered by the given columns (matched ignoring case)."""
    result = dtm.optimize(three, "events", z_order=["SCORE"], target_size=1024**2)
    assert (result["mode"], result["z_order"]) == ("z_order", ["score"])
    assert result["metrics"]["numFilesAdded"] == 1
    assert _ids(dtb.scan(three, "events")) == _ids(dtb.scan(three, "events", version=2))
    last = dtb.history(three, "events", limit=1)[0]
    assert last["operation"] == "OPTIMIZE"


def test_optimize_argument_errors(three: DeltaStore, store: DeltaStore) -> None:
    """Unknown or partition columns and a bad target size are 400s."""
    with pytest.raises(ColumnNotFoundError, match="nope"):
        dtm.optimize(three, "events", z_order=["nope"])
    with pytest.raises(InvalidReadError, match="target_size"):
        dtm.optimize(three, "events", target_size=0)
    write_deltalake(
        str(store.root / "parts"), pa.table({"day": ["a"], "v": [1]}), partition_by=["day"]
    )
    with pytest.raises(InvalidReadError, match="partitioned by day"):
        dtm.optimize(store, "parts", z_order=["day"])


def test_checkpoint_writes_a_checkpoint_file(three: DeltaStore) -> None:
    """checkpoint() writes <version>.checkpoint.parquet and returns the version."""
    assert dtm.checkpoint(three, "events") == 2
    log = os.listdir(three.root / "events" / "_delta_log")
    assert "00000000000000000002.checkpoint.parquet" in log
    assert "_last_checkpoint" in log
    assert _ids(dtb.scan(three, "events", version=1)) == [*range(10), *range(100, 105)]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: dtb.history(s, "nope"),
        lambda s: dtb.scan(s, "nope"),
        lambda s: dtb.changes(s, "nope"),
        lambda s: dtm.vacuum(s, "nope"),
        lambda s: dtm.restore(s, "nope", 0),
        lambda s: dtm.optimize(s, "nope"),
        lambda s: dtm.checkpoint(s, "nope"),
        lambda s: dtb.describe(s, "nope"),
    ],
)
def test_every_function_reports_a_missing_table(three: DeltaStore, call: object) -> None:
    """Every function raises TableNotFoundError (404) for a missing table."""
    with pytest.raises(TableNotFoundError, match="'nope' does not exist"):
        call(three)  # type: ignore[operator]


# -- unreadable tables and error messages -------------------------------------


def test_unreadable_log_is_a_one_line_storage_error(three: DeltaStore) -> None:
    """A log deltalake cannot walk (OSError) is a StorageError without backtrace or ANSI.

    A commit file that is a symlink loop makes ``DeltaTable.is_deltatable``
    raise OSError with a multi-line, ANSI-coloured message (as an unreadable
    log directory does for a user other than root).
    """
    _append(three, "broken", 0, 2)
    commit = three.root / "broken" / "_delta_log" / f"{0:020d}.json"
    commit.unlink()
    os.symlink(commit.name, commit)
    with pytest.raises(OSError, match="Too many levels") as raw:
        DeltaTable.is_deltatable(str(three.root / "broken"))
    assert "\n" in str(raw.value).strip() and "\x1b" in str(raw.value)  # what is not shown
    calls: list[Callable[[], object]] = [
        lambda: dtb.describe(three, "broken"),
        lambda: dtb.history(three, "broken"),
        lambda: dtb.scan(three, "broken"),
        lambda: dtm.vacuum(three, "broken"),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        detail = info.value.detail
        assert http_status(info.value) == 503
        assert detail.startswith("Delta table 'broken': reading the log failed: ")
        assert "\n" not in detail and "\x1b" not in detail, detail
    assert [i.name for i in dtb.list_tables(three)] == ["events"]  # the others still list
    with pytest.raises(TableNotFoundError, match="did you mean 'events'"):
        dtb.describe(three, "event")


def test_regular_file_where_a_table_would_be_is_not_a_table(three: DeltaStore) -> None:
    """A regular file in the root (or as a table's _delta_log) is no table: 404, not a crash."""
    (three.root / "afile").write_text("not a table")
    (three.root / "nolog").mkdir()
    (three.root / "nolog" / "_delta_log").write_text("not a log")
    for name in ("afile", "nolog"):
        with pytest.raises(TableNotFoundError):
            dtb.describe(three, name)
    assert [i.name for i in dtb.list_tables(three)] == ["events"]


def test_root_that_is_a_file_is_a_one_line_storage_error(tmp_path: Path) -> None:
    """A Delta root that is a regular file is a StorageError naming it, in one line."""
    (tmp_path / "lake").write_text("oops")
    store = DeltaStore(tmp_path / "lake")
    with pytest.raises(StorageError, match="cannot list the Delta root") as info:
        dtb.list_tables(store)
    assert "\n" not in info.value.detail
