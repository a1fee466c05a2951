"""The DuckDB read side on its own: real database files, no server."""

from __future__ import annotations

import datetime
import decimal
import gc
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from arrowport.io.status import grpc_status, http_status
from arrowport.names import InvalidNameError
from arrowport.protocol.errors import GrpcStatus
from arrowport.storage import (
    ColumnNotFoundError,
    DuckDBStore,
    InvalidReadError,
    TableInfo,
    TableNotFoundError,
    UnsupportedTypeError,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "r.duckdb")
    s.open()
    yield s
    s.close()


def _ints(n: int, start: int = 0) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "Name": pa.array([f"n{i}" for i in range(start, start + n)]),
        }
    )


def _put(store: DuckDBStore, table: str, batch: pa.RecordBatch) -> None:
    store.write(table, batch.schema, [batch])


def _sql(store: DuckDBStore, sql: str) -> None:
    with store._cursor() as cur:
        cur.execute(sql)


def _database_free(path: Path) -> bool:
    """Whether another process can open ``path`` (DuckDB holds a file lock while it is open)."""
    code = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    if result.returncode and "lock" not in result.stderr:
        raise AssertionError(result.stderr)
    return result.returncode == 0


# -- listing and describing ----------------------------------------------------


def test_list_tables_sorted_with_exact_rows_and_schema(store: DuckDBStore) -> None:
    """User tables are listed by name (ignoring case) with exact rows and the scan's schema."""
    _put(store, "zeta", _ints(3))
    _put(store, "Alpha", _ints(2))
    _put(store, "beta", _ints(0))
    infos = store.list_tables()
    assert [(i.name, i.rows) for i in infos] == [("Alpha", 2), ("beta", 0), ("zeta", 3)]
    for info in infos:
        assert info.schema == store.scan(info.name).schema
    assert infos[0].schema == pa.schema([("id", pa.int64()), ("Name", pa.string())])


def test_list_tables_hides_internal_other_schemas_and_attached(
    store: DuckDBStore, tmp_path: Path
) -> None:
    """Only schema main of the store's own file is listed, without _arrowport*, views or temps."""
    _put(store, "visible", _ints(1))
    _sql(store, "CREATE TABLE _arrowport_scratch (x INT)")  # (the ledger exists already)
    _sql(store, "CREATE TABLE _ARROWPORT_other (x INT)")
    _sql(store, "CREATE SCHEMA side")
    _sql(store, "CREATE TABLE side.hidden (x INT)")
    _sql(store, "CREATE VIEW a_view AS SELECT 1 AS x")
    _sql(store, 'CREATE TABLE "not an identifier" (x INT)')
    _sql(store, f"ATTACH '{tmp_path / 'other.duckdb'}' AS other")
    _sql(store, "CREATE TABLE other.main.elsewhere (x INT)")
    with store._cursor() as cur:  # a temp table lives on (and is visible to) its own connection
        cur.execute("CREATE TEMP TABLE scratch (x INT)")
        assert [i.name for i in store.list_tables()] == ["visible"]


def test_bytes_estimates_the_arrow_size(store: DuckDBStore) -> None:
    """bytes is close to the Arrow size of the whole table for fixed widths, and 0 when empty."""
    batch = pa.record_batch(
        {"a": pa.array(range(100_000), pa.int64()), "b": pa.array(range(100_000), pa.float64())}
    )
    _put(store, "fixed", batch)
    _put(store, "empty", _ints(0))
    info = store.table_info("fixed")
    actual = store.scan("fixed").read_all().nbytes
    assert 0.9 * actual <= info.bytes <= 1.1 * actual
    assert store.table_info("empty").bytes == 0


def test_table_info_ignores_case_and_returns_the_stored_name(store: DuckDBStore) -> None:
    """table_info resolves a name as DuckDB does (ignoring case) and reports the stored spelling."""
    _put(store, "Events", _ints(4))
    info = store.table_info("eVENTS")
    assert isinstance(info, TableInfo)
    assert (info.name, info.rows) == ("Events", 4)
    with pytest.raises(AttributeError):
        info.rows = 5  # type: ignore[misc]


def test_missing_table_is_not_found_with_did_you_mean(store: DuckDBStore) -> None:
    """An unknown table is a 404 / NOT_FOUND that names it and suggests close matches."""
    _put(store, "events", _ints(1))
    _put(store, "metrics", _ints(1))
    with pytest.raises(TableNotFoundError) as info:
        store.table_info("evnts")
    err = info.value
    assert (err.error, http_status(err), grpc_status(err)) == (
        "table_not_found",
        404,
        GrpcStatus.NOT_FOUND,
    )
    assert err.detail == "table 'evnts' does not exist; did you mean 'events'?"
    assert err.to_json()["did_you_mean"] == ["events"]
    with pytest.raises(TableNotFoundError) as info:
        store.table_info("zzz")
    assert info.value.detail == "table 'zzz' does not exist"


@pytest.mark.parametrize("name", ["", "bad name", "1abc", "x;DROP TABLE t", "a" * 129])
def test_invalid_names_are_invalid_argument(store: DuckDBStore, name: str) -> None:
    """A name that is not an identifier is refused with 400 / INVALID_ARGUMENT by every call."""
    calls = [store.table_info, store.scan, store.drop_table]
    for call in calls:
        with pytest.raises(InvalidNameError) as info:
            call(name)
        assert (http_status(info.value), grpc_status(info.value)) == (
            400,
            GrpcStatus.INVALID_ARGUMENT,
        )


def test_internal_tables_cannot_be_read_or_dropped(store: DuckDBStore) -> None:
    """_arrowport* names (any case) are refused 400 by table_info, scan and drop_table; the
    ledger survives a drop."""
    # the real ledger exists from open(); it is empty
    for call in (store.table_info, store.scan, store.drop_table):
        for name in ("_arrowport_keys", "_ARROWPORT_keys", "_arrowport_nothing"):
            with pytest.raises(InvalidNameError, match="reserved") as info:
                call(name)
            assert http_status(info.value) == 400
    assert store.count_rows("_arrowport_keys") == 0


def test_unexportable_column_is_named_and_table_not_listed(tmp_path: Path) -> None:
    """A column DuckDB cannot export as Arrow is named (422); listing skips only that table."""
    path = tmp_path / "v.duckdb"
    duckdb.connect(str(path), config={"storage_compatibility_version": "v1.5.0"}).close()
    s = DuckDBStore(path)
    s.open()
    try:
        _sql(s, "CREATE TABLE a_variant (x INT, v VARIANT)")
        _put(s, "b_plain", _ints(2))
        assert [i.name for i in s.list_tables()] == ["b_plain"]
        with pytest.raises(UnsupportedTypeError, match=r"'a_variant'.*: v \(") as info:
            s.table_info("a_variant")
        assert http_status(info.value) == 422
        assert s.scan("a_variant", columns=["x"]).read_all().num_rows == 0
    finally:
        s.close()


# -- scanning ------------------------------------------------------------------


def test_scan_columns_in_requested_order_ignoring_case_and_limit(store: DuckDBStore) -> None:
    """scan returns the requested columns in order, under their stored names, up to limit rows."""
    _put(store, "t", _ints(100))
    table = store.scan("T", columns=["name", "ID"], limit=7).read_all()
    assert table.schema.names == ["Name", "id"]
    assert table.column("id").to_pylist() == list(range(7))
    empty = store.scan("t", limit=0)
    assert empty.schema.names == ["id", "Name"]
    assert empty.read_all().num_rows == 0


def test_scan_unknown_column_names_it_and_lists_columns(store: DuckDBStore) -> None:
    """An unknown column is a 400 / INVALID_ARGUMENT naming it, a close match and every column."""
    _put(store, "t", _ints(1))
    with pytest.raises(ColumnNotFoundError) as info:
        store.scan("t", columns=["id", "nam", "zzz"])
    err = info.value
    assert (err.error, http_status(err), grpc_status(err)) == (
        "column_not_found",
        400,
        GrpcStatus.INVALID_ARGUMENT,
    )
    assert err.detail == (
        "table 't' has no columns 'nam', 'zzz' (did you mean 'Name'?); its columns are: id, Name"
    )
    assert err.to_json()["missing_columns"] == ["nam", "zzz"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": -1},
        {"batch_rows": 0},
        {"columns": []},
        {"columns": ["id", "ID"]},
    ],
)
def test_scan_refuses_bad_arguments(store: DuckDBStore, kwargs: dict[str, object]) -> None:
    """A negative limit, a zero batch size, no columns or a repeated column is a 400."""
    _put(store, "t", _ints(1))
    with pytest.raises(InvalidReadError) as info:
        store.scan("t", **kwargs)  # type: ignore[arg-type]
    assert (http_status(info.value), grpc_status(info.value)) == (400, GrpcStatus.INVALID_ARGUMENT)


def test_scan_missing_table_is_not_found(store: DuckDBStore) -> None:
    """Scanning a table that does not exist raises TableNotFoundError before reading."""
    with pytest.raises(TableNotFoundError):
        store.scan("nope")


def test_scan_batches_are_bounded_by_batch_rows(store: DuckDBStore) -> None:
    """Batches hold at most batch_rows rows and together hold every row once, in order."""
    store.write("t", _ints(1).schema, [_ints(5000, i * 5000) for i in range(4)])
    batches = list(store.scan("t", batch_rows=1000))
    assert max(b.num_rows for b in batches) == 1000
    ids = [i for b in batches for i in b.column(0).to_pylist()]
    assert ids == list(range(20_000))


def test_scan_reader_outlives_its_cursor_and_moves_threads(store: DuckDBStore) -> None:
    """The reader keeps its query alive on its own and can be read from another thread."""
    _put(store, "t", _ints(10_000))
    reader = store.scan("t", batch_rows=1000)
    gc.collect()
    first = reader.read_next_batch().num_rows
    counted: list[int] = []
    worker = threading.Thread(target=lambda: counted.append(sum(b.num_rows for b in reader)))
    worker.start()
    worker.join(30)
    assert first + counted[0] == 10_000


def test_scan_sees_a_snapshot_and_does_not_block_writes(store: DuckDBStore) -> None:
    """A write committed mid-scan is not blocked and not seen by that scan, only by later ones."""
    store.write("t", _ints(1).schema, [_ints(1000, i * 1000) for i in range(10)])
    reader = store.scan("t", batch_rows=1000)
    seen = reader.read_next_batch().num_rows
    results: list[object] = []

    def write() -> None:
        results.append(store.write("t", _ints(1).schema, [_ints(500, 10_000)]))

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(30)
    assert not writer.is_alive(), "the write waited for the scan"
    assert len(results) == 1 and store.count_rows("t") == 10_500
    seen += sum(b.num_rows for b in reader)
    assert seen == 10_000
    assert store.scan("t").read_all().num_rows == 10_500


def test_scan_survives_a_concurrent_drop(store: DuckDBStore) -> None:
    """A scan started before drop_table finishes on its snapshot; the drop is not blocked."""
    _put(store, "t", _ints(10_000))
    reader = store.scan("t", batch_rows=1000)
    rows = reader.read_next_batch().num_rows
    store.drop_table("t")
    rows += sum(b.num_rows for b in reader)
    assert rows == 10_000
    with pytest.raises(TableNotFoundError):
        store.table_info("t")


def test_scan_releases_the_database_when_closed_or_exhausted(tmp_path: Path) -> None:
    """An open scan holds the database; closing or exhausting the reader releases it."""
    path = tmp_path / "lock.duckdb"
    s = DuckDBStore(path)
    s.open()
    _put(s, "t", _ints(10_000))
    closed = s.scan("t", batch_rows=1000)
    closed.read_next_batch()
    exhausted = s.scan("t", batch_rows=1000)
    s.close()
    assert not _database_free(path)  # both scans still hold it
    closed.close()
    assert not _database_free(path)  # the unread one still does
    assert sum(b.num_rows for b in exhausted) == 10_000
    assert _database_free(path)


_MEMORY_PROBE = """
import json, sys
from arrowport.storage import DuckDBStore

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

store = DuckDBStore(sys.argv[1])
store.open()
base = rss()
reader = store.scan("big")
first = reader.read_next_batch()
streamed = rss() - base
reader.close()
whole = store.scan("big").read_all()
print(json.dumps({"first_rows": first.num_rows, "streamed": streamed,
                  "materialised": rss() - base, "table_bytes": whole.nbytes}))
"""


def test_scan_streams_without_materialising_the_table(tmp_path: Path) -> None:
    """Reading the first batch of a 4M-row scan grows RSS by far less than the table's size."""
    path = tmp_path / "big.duckdb"
    s = DuckDBStore(path)
    s.open()
    _sql(
        s,
        "CREATE TABLE big AS SELECT range AS id, 'row-' || range || repeat('x', 40) AS s, "
        "random() AS f FROM range(4000000)",
    )
    s.close()
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    probe = json.loads(result.stdout)
    assert probe["first_rows"] == 122_880
    assert probe["table_bytes"] > 200_000_000
    # the probe can tell: reading everything does show up in RSS
    assert probe["materialised"] > probe["table_bytes"] / 2
    assert probe["streamed"] < probe["table_bytes"] / 5, probe


# -- dropping ------------------------------------------------------------------


def test_drop_table_removes_it_and_missing_is_not_found(store: DuckDBStore) -> None:
    """drop_table drops the named table (ignoring case) only, and a missing one is a 404."""
    _put(store, "Gone", _ints(3))
    _put(store, "kept", _ints(3))
    store.drop_table("gONE")
    assert [i.name for i in store.list_tables()] == ["kept"]
    with pytest.raises(TableNotFoundError, match="'gone' does not exist"):
        store.drop_table("gone")


def test_drop_makes_an_open_write_fail_at_commit(store: DuckDBStore) -> None:
    """A write open while its table is dropped fails at commit; the drop stands."""
    _put(store, "t", _ints(3))
    write = store.open_write("t", _ints(1).schema)
    write.insert([_ints(2)])
    store.drop_table("t")
    with pytest.raises(Exception, match="dropped"):
        write.finish()
    with pytest.raises(TableNotFoundError):
        store.table_info("t")


# -- types ---------------------------------------------------------------------


def test_written_types_read_back_as_sensible_arrow(store: DuckDBStore) -> None:
    """What store.write stores scans back equal to the input, in DuckDB's Arrow types.

    DuckDB normalises: dictionary -> its value type; large_string/large_binary ->
    string/binary; large_list -> list; list children are named "l"; timestamps
    with a zone -> timestamp[us, tz=UTC] (the same instants; the writer's zone is
    not kept). Decimals, structs, maps, fixed-size lists, unsigned integers and
    timestamp[ns] without a zone keep their types.
    """
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    columns = {
        "dict": (pa.array(["x", "y", None, "x"]).dictionary_encode(), pa.string()),
        "large_str": (pa.array(["a", "", None, "é" * 3], pa.large_string()), pa.string()),
        "large_bin": (pa.array([b"\x00", b"", None, b"z"], pa.large_binary()), pa.binary()),
        "list": (
            pa.array([[1, 2], [], None, [None]], pa.list_(pa.int32())),
            pa.list_(pa.field("l", pa.int32())),
        ),
        "large_list": (
            pa.array([[1], [2, 3], None, []], pa.large_list(pa.int64())),
            pa.list_(pa.field("l", pa.int64())),
        ),
        "fixed_list": (
            pa.array([[1, 2], [3, 4], None, [5, None]], pa.list_(pa.int16(), 2)),
            pa.list_(pa.field("l", pa.int16()), 2),
        ),
        "struct": (
            pa.array(
                [{"k": 1, "v": "a"}, None, {"k": None, "v": "c"}, {"k": 4, "v": None}],
                pa.struct([("k", pa.int64()), ("v", pa.string())]),
            ),
            pa.struct([("k", pa.int64()), ("v", pa.string())]),
        ),
        "map": (
            pa.array(
                [[("a", 1), ("b", 2)], [], None, [("c", None)]], pa.map_(pa.string(), pa.int64())
            ),
            pa.map_(pa.string(), pa.int64()),
        ),
        "dec": (
            pa.array(
                [decimal.Decimal("1.234"), None, decimal.Decimal("-9.999"), 0],
                pa.decimal128(12, 3),
            ),
            pa.decimal128(12, 3),
        ),
        "dec38": (
            pa.array(
                [decimal.Decimal("12345678901234567890.0123456789"), None, 0, 1],
                pa.decimal128(38, 10),
            ),
            pa.decimal128(38, 10),
        ),
        "tz": (
            pa.array(
                [datetime.datetime(2024, 3, 31, 1, 59, 59, 999_999, tzinfo=berlin), None]
                + [datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)] * 2,
                pa.timestamp("us", tz="Europe/Berlin"),
            ),
            pa.timestamp("us", tz="UTC"),
        ),
        "ts_ns": (pa.array([1, None, 2**62, -5], pa.timestamp("ns")), pa.timestamp("ns")),
        "u64": (pa.array([0, None, 2**64 - 1, 7], pa.uint64()), pa.uint64()),
    }
    batch = pa.record_batch({name: array for name, (array, _) in columns.items()})
    store.write("rt", batch.schema, [batch])
    scanned = store.scan("rt").read_all()
    assert store.table_info("rt").schema == scanned.schema
    assert scanned.schema == pa.schema([(name, typ) for name, (_, typ) in columns.items()])
    for name, (array, typ) in columns.items():
        assert scanned.column(name).combine_chunks().equals(array.cast(typ)), name


def test_timestamptz_is_exported_as_utc_whatever_the_server_zone(tmp_path: Path) -> None:
    """TIMESTAMPTZ columns come back labelled UTC, not with the server's local zone."""
    path = tmp_path / "tz.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE z AS SELECT TIMESTAMPTZ '2024-01-01 12:00:00+00' AS t")
    con.close()
    probe = (
        "import sys\n"
        "from arrowport.storage import DuckDBStore\n"
        "s = DuckDBStore(sys.argv[1]); s.open()\n"
        "print(s.table_info('z').schema.field('t').type)\n"
        "print(s.scan('z').read_all().column('t')[0].as_py().isoformat())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "TZ": "America/New_York"},
    )
    assert result.stdout.split() == ["timestamp[us,", "tz=UTC]", "2024-01-01T12:00:00+00:00"]
