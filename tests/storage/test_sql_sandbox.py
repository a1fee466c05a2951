"""Read-only SQL in its own process and sandbox, over real stores (DuckDB file, DuckLake,
Delta), no server."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from arrowport.errors import ArrowportError
from arrowport.io.status import grpc_status
from arrowport.protocol.errors import GrpcStatus
from arrowport.storage import DeltaStore, DuckDBStore, DuckLakeStore
from arrowport.storage.sql_process import QueryProcess, describe, run
from arrowport.storage.sql_sandbox import Sandbox, SandboxLimits

LIMITS = SandboxLimits(memory_limit=64 * 1024**2, threads=1, timeout=5.0)
SECRET = "arrowport-sandbox-secret-7d1f"
ROWS = 50


def _batch(rows: int = ROWS) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array(range(rows), pa.int64()),
            "name": pa.array([f"n{i}" for i in range(rows)]),
        }
    )


class Counting:
    """A real store, with the tables it was asked to scan written down."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.scanned: list[str] = []
        self.open_readers = 0

    def scan(self, table: str, **kwargs: Any) -> Any:
        self.scanned.append(table)
        reader = self.store.scan(table, **kwargs)
        self.open_readers += 1
        outer = self

        class Closing:
            schema = reader.schema

            def read_next_batch(self) -> pa.RecordBatch:
                return reader.read_next_batch()

            def close(self) -> None:
                if not getattr(self, "closed", False):
                    self.closed = True
                    outer.open_readers -= 1
                reader.close()

        return Closing()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, Counting]]:
    db = DuckDBStore(tmp_path / "s.duckdb")
    db.open()
    lake = DuckLakeStore(str(tmp_path / "meta.ducklake"), str(tmp_path / "lakedata"))
    lake.open()
    delta = DeltaStore(tmp_path / "delta")
    batch = _batch()
    for store, table in ((db, "t"), (db, "secret"), (lake, "l"), (delta, "e")):
        write = store.open_write(table, batch.schema)
        write.insert([batch])
        write.finish()
    (tmp_path / "secret.csv").write_text(f"a\n{SECRET}\n")
    yield {"duckdb": Counting(db), "ducklake": Counting(lake), "delta": Counting(delta)}
    db.close()
    lake.close()


def _allow(backend: str, table: str) -> None:
    return None


def rows(stores: dict[str, Counting], sql: str, params: pa.RecordBatch | None = None) -> pa.Table:
    """Run ``sql``; check that its described schema is the one it streams."""
    _, schema = describe(
        QueryProcess(LIMITS),
        sql,
        stores=stores.__getitem__,
        default_backend="duckdb",
        authorize=_allow,
        params=params,
    )
    reader = run(
        QueryProcess(LIMITS),
        sql,
        stores=stores.__getitem__,
        default_backend="duckdb",
        authorize=_allow,
        params=params,
    )
    try:
        table = pa.Table.from_batches(list(reader), schema=reader.schema)
    finally:
        reader.close()
    assert schema == table.schema
    assert all(s.open_readers == 0 for s in stores.values()), "a store scan was left open"
    return table


def refused(stores: dict[str, Counting], sql: str, **kwargs: Any) -> ArrowportError:
    """The error ``sql`` fails with (never INTERNAL), whether bound or run."""
    with pytest.raises(ArrowportError) as caught:
        rows(stores, sql, **kwargs)
    assert grpc_status(caught.value) not in (GrpcStatus.INTERNAL, GrpcStatus.UNKNOWN)
    assert all(s.open_readers == 0 for s in stores.values())
    return caught.value


def test_each_backend_reads_exactly(stores: dict[str, Counting]) -> None:
    """A query reads DuckDB, DuckLake and Delta tables, alone and joined, exactly."""
    assert rows(stores, "SELECT count(*) AS n, sum(id) AS s FROM t").to_pylist() == [
        {"n": ROWS, "s": sum(range(ROWS))}
    ]
    assert rows(stores, "SELECT name FROM ducklake.l WHERE id = 7").to_pylist() == [{"name": "n7"}]
    assert rows(stores, "SELECT id FROM delta.main.e ORDER BY id DESC LIMIT 2").to_pylist() == [
        {"id": ROWS - 1},
        {"id": ROWS - 2},
    ]
    joined = "SELECT count(*) AS n FROM t JOIN ducklake.l USING (id) JOIN delta.e USING (id)"
    assert rows(stores, joined).to_pylist() == [{"n": ROWS}]


def test_a_table_scanned_twice_is_read_twice(stores: dict[str, Counting]) -> None:
    """A self-join and a CTE used twice see all rows each time (a stream is opened per scan)."""
    assert rows(stores, "SELECT count(*) AS n FROM t a, t b").to_pylist() == [{"n": ROWS * ROWS}]
    cte = "WITH x AS (SELECT * FROM delta.e) SELECT count(*) AS n FROM x a JOIN x b USING (id)"
    assert rows(stores, cte).to_pylist() == [{"n": ROWS}]


def test_names_resolve_as_backend_catalogs(stores: dict[str, Counting]) -> None:
    """t, main.t, duckdb.t and duckdb.main.t are one table; other prefixes are refused."""
    for name in ("t", "main.t", "duckdb.t", "duckdb.main.t", 'DuckDB.Main."T"'):
        assert rows(stores, f"SELECT count(*) AS n FROM {name}").to_pylist() == [{"n": ROWS}]
    for name in ("system.main.t", "memory.t", "temp.t", "duckdb.other.t", "information_schema.t"):
        error = refused(stores, f"SELECT * FROM {name}")
        assert grpc_status(error) is GrpcStatus.NOT_FOUND and "<backend>.t" in error.detail
    error = refused(stores, "SELECT * FROM nope")
    assert grpc_status(error) is GrpcStatus.NOT_FOUND
    assert "'nope'" in error.detail and "duckdb backend" in error.detail


def test_a_cte_is_not_a_table(stores: dict[str, Counting]) -> None:
    """A CTE shadows a table of its name: the store is not asked about it."""
    out = rows(stores, "WITH t AS (SELECT 42 AS x) SELECT * FROM t")
    assert out.to_pylist() == [{"x": 42}]
    assert "t" not in stores["duckdb"].scanned


def test_authorization_comes_before_the_store(stores: dict[str, Counting]) -> None:
    """A table the caller may not read is refused before its store is asked about it."""

    def only_t(backend: str, table: str) -> None:
        if table.lower() != "t":
            raise ArrowportError(f"not {table}", error="forbidden")

    for sql in (
        "SELECT * FROM secret",
        "SELECT * FROM t WHERE id IN (SELECT id FROM secret)",
        "SELECT * FROM t, (WITH s AS (SELECT * FROM secret) SELECT * FROM s) x",
    ):
        with pytest.raises(ArrowportError) as caught:
            describe(
                QueryProcess(LIMITS),
                sql,
                stores=stores.__getitem__,
                default_backend="duckdb",
                authorize=only_t,
            )
        assert grpc_status(caught.value) is GrpcStatus.PERMISSION_DENIED
    assert "secret" not in stores["duckdb"].scanned


REFUSED = [
    ("CREATE TABLE x (a INT)", "CREATE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE"),
    ("DROP TABLE t", "DROP"),
    ("ALTER TABLE t ADD COLUMN z INT", "ALTER"),
    ("INSERT INTO t VALUES (1, 'x')", "INSERT"),
    ("UPDATE t SET name = 'x'", "UPDATE"),
    ("DELETE FROM t", "DELETE"),
    ("TRUNCATE t", "DELETE"),
    ("SET threads = 8", "SET"),
    ("RESET threads", "SET"),
    ("PRAGMA threads = 8", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("ATTACH '{tmp}/new.duckdb' AS n", "ATTACH"),
    ("DETACH memory", "DETACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("COPY t TO '{tmp}/out.csv'", "COPY"),
    ("COPY (SELECT 1) TO '{tmp}/out.parquet'", "COPY"),
    ("EXPORT DATABASE '{tmp}/exported'", "EXPORT"),
    ("CALL pragma_version()", "CALL"),
    ("CHECKPOINT", "CALL"),
    ("VACUUM", "VACUUM"),
    ("BEGIN TRANSACTION", "TRANSACTION"),
    ("USE memory", "SET"),
    ("PREPARE p AS SELECT 1", "PREPARE"),
    ("CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')", "CREATE"),
    ("SELECT 1; DROP TABLE t", "2 (SELECT, DROP)"),
    ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN DELETE"),
    ("PIVOT t ON name USING count(*)", "CREATE"),  # two statements: an ENUM, then the query
]


@pytest.mark.parametrize(("sql", "kind"), REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_statements_that_are_not_queries_are_refused(
    stores: dict[str, Counting], tmp_path: Path, sql: str, kind: str
) -> None:
    """DDL, DML, settings, ATTACH, extensions, COPY, EXPORT, CALL, several statements: refused
    by kind (INVALID_ARGUMENT), before anything runs; no file is made, no table changes."""
    before = sorted(p.name for p in tmp_path.iterdir())
    error = refused(stores, sql.format(tmp=tmp_path))
    assert grpc_status(error) is GrpcStatus.INVALID_ARGUMENT, error.detail
    assert kind in error.detail
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert stores["duckdb"].scanned == []
    assert rows(stores, "SELECT count(*) AS n FROM t").to_pylist() == [{"n": ROWS}]


def test_import_is_refused_without_reading_the_files(
    stores: dict[str, Counting], tmp_path: Path
) -> None:
    """IMPORT DATABASE (which DuckDB's parser reads files for) is refused in the sandbox."""
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "schema.sql").write_text(f"CREATE TABLE {SECRET.replace('-', '_')} (a INT);")
    (exported / "load.sql").write_text("")
    error = refused(stores, f"IMPORT DATABASE '{exported}'")
    assert grpc_status(error) in (GrpcStatus.PERMISSION_DENIED, GrpcStatus.INVALID_ARGUMENT)
    assert SECRET.replace("-", "_") not in error.detail


FILE_READS = [
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM read_parquet('{secret}')",
    "SELECT * FROM sniff_csv('{secret}')",
    "SELECT * FROM parquet_metadata('{secret}')",
    "SELECT * FROM glob('{tmp}/*')",
    "SELECT * FROM '{secret}'",
    "FROM '{secret}'",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SELECT * FROM read_csv('data:,a')",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')",
    "SELECT * FROM query_table('{secret}')",
    "SELECT * FROM query('SELECT * FROM secret')",
    "SELECT * FROM query_table('secret')",
    "SELECT * FROM delta_scan('{tmp}/delta/e')",
    "SELECT * FROM iceberg_scan('{tmp}')",
    "SELECT * FROM t AT (VERSION => 1)",
]


@pytest.mark.parametrize("sql", FILE_READS)
def test_files_the_network_and_unnamed_tables_are_out_of_reach(
    stores: dict[str, Counting], tmp_path: Path, sql: str
) -> None:
    """Reading a file or URL, an environment variable, or a table the query does not name
    fails cleanly (4xx-like status), revealing nothing."""
    error = refused(stores, sql.format(secret=tmp_path / "secret.csv", tmp=tmp_path))
    assert SECRET not in error.detail
    assert "secret" not in stores["duckdb"].scanned  # named only inside a string
    assert Path.home() == Path("/") or str(Path.home()) not in error.detail


def test_settings_show_no_server_path(stores: dict[str, Counting], tmp_path: Path) -> None:
    """Nothing a query can read of the instance names a path of the server."""
    settings = rows(stores, "SELECT name, value FROM duckdb_settings()").to_pylist()
    databases = rows(stores, "SELECT * FROM duckdb_databases()").to_pylist()
    homes = rows(stores, "SELECT current_setting('home_directory') AS h").to_pylist()
    text = repr(settings) + repr(databases) + repr(homes)
    for path in {str(tmp_path), os.getcwd(), str(Path.home())} - {"/"}:
        assert path not in text
    values = {row["name"]: row["value"] for row in settings}
    assert values["enable_external_access"] == "false"
    assert values["lock_configuration"] == "true"
    assert values["autoinstall_known_extensions"] == "false"
    assert values["python_enable_replacements"] == "false"
    assert values["temp_directory"] == ""


def test_python_variables_are_no_tables(stores: dict[str, Counting]) -> None:
    """DuckDB's replacement scans of Python variables are off: a local table is not found."""
    local_table = pa.table({"x": [SECRET]})  # noqa: F841  (what a replacement scan would find)
    sandbox = Sandbox(LIMITS)
    sandbox.open()
    try:
        sandbox.lock()
        for sql in ("SELECT * FROM local_table", "SELECT * FROM query_table('local_table')"):
            with pytest.raises(duckdb.CatalogException):
                sandbox.connection().execute(sql).fetchall()
    finally:
        sandbox.close()
    error = refused(stores, "SELECT * FROM query('SELECT * FROM local_table')")
    assert SECRET not in error.detail


def test_parameters_bind_by_position_and_name(stores: dict[str, Counting]) -> None:
    """?, $n and $name take one row of values; a wrong count, rows or name is refused."""
    one = pa.record_batch({"a": [3], "b": ["n3"]})
    sql = "SELECT id, name FROM t WHERE id = ? AND name = ?"
    assert rows(stores, sql, one).to_pylist() == [{"id": 3, "name": "n3"}]
    assert rows(stores, "SELECT $2 AS y, $1::INT + 1 AS x", one).to_pylist() == [
        {"y": "n3", "x": 4}
    ]
    named = pa.record_batch({"who": ["n5"]})
    assert rows(stores, "SELECT id FROM t WHERE name = $who", named).to_pylist() == [{"id": 5}]
    assert "parameter" in refused(stores, sql).detail  # no values
    assert "2 parameter" in refused(stores, sql, params=pa.record_batch({"a": [1]})).detail
    two_rows = pa.record_batch({"a": [1, 2], "b": ["x", "y"]})
    assert "one row" in refused(stores, sql, params=two_rows).detail
    assert "$who" in refused(stores, "SELECT $who", params=pa.record_batch({"x": [1]})).detail
    assert "no parameters" in refused(stores, "SELECT 1", params=one).detail


def test_a_query_over_its_memory_limit_fails_cleanly(stores: dict[str, Counting]) -> None:
    """A query that needs more than its memory_limit fails RESOURCE_EXHAUSTED, naming the key."""
    error = refused(
        stores, "SELECT count(*) FROM (SELECT * FROM range(20000000) ORDER BY random())"
    )
    assert grpc_status(error) is GrpcStatus.RESOURCE_EXHAUSTED
    assert "flight_sql.query_memory_limit" in error.detail


def test_interrupt_stops_a_running_query(stores: dict[str, Counting]) -> None:
    """An interrupt from another thread ends a long query at once, as a timeout: while it
    starts (a blocking aggregate runs in execute) and while its rows are read."""
    for sql in (
        "SELECT count(*) FROM range(1000000000000)",
        "SELECT * FROM range(1000000000000) WHERE range % 1000000007 = 1",
    ):
        sandbox = QueryProcess(LIMITS)
        timer = threading.Timer(0.5, lambda s=sandbox: s.interrupt(timed_out=True))
        started = time.monotonic()
        timer.start()
        try:
            with pytest.raises(ArrowportError) as caught:
                reader = run(
                    sandbox,
                    sql,
                    stores=stores.__getitem__,
                    default_backend="duckdb",
                    authorize=_allow,
                )
                try:
                    list(reader)
                finally:
                    reader.close()
        finally:
            timer.cancel()
            sandbox.close()
        assert time.monotonic() - started < 10
        assert grpc_status(caught.value) is GrpcStatus.DEADLINE_EXCEEDED
        assert "flight_sql.query_timeout" in caught.value.detail


def test_an_interrupt_before_open_stops_the_query(stores: dict[str, Counting]) -> None:
    """A query process interrupted before it started runs nothing."""
    sandbox = QueryProcess(LIMITS)
    sandbox.interrupt()
    with pytest.raises(ArrowportError) as caught:
        run(
            sandbox,
            "SELECT 1",
            stores=stores.__getitem__,
            default_backend="duckdb",
            authorize=_allow,
        )
    assert grpc_status(caught.value) is GrpcStatus.DEADLINE_EXCEEDED


def test_a_reader_closed_early_closes_the_store_scans(stores: dict[str, Counting]) -> None:
    """A result read in part and closed closes every store scan the query opened."""
    big = _batch(200_000)
    for backend, table in (("duckdb", "big"), ("delta", "big")):
        write = stores[backend].store.open_write(table, big.schema)
        write.insert([big])
        write.finish()
    reader = run(
        QueryProcess(LIMITS),
        "SELECT * FROM big UNION ALL SELECT * FROM delta.big",
        stores=stores.__getitem__,
        default_backend="duckdb",
        authorize=_allow,
    )
    reader.read_next_batch()
    assert stores["duckdb"].open_readers + stores["delta"].open_readers > 0
    reader.close()
    assert stores["duckdb"].open_readers == stores["delta"].open_readers == 0


BOMBS = [
    "SELECT length(repeat('x', 3000000000)) AS n",
    "SELECT repeat('x', 2000000000) AS s",
    "SELECT len([x FOR x IN range(200000000)]) AS n",
    "SELECT range(400000000) AS l",
]


@pytest.mark.parametrize("sql", BOMBS)
def test_allocations_outside_duckdbs_pool_stay_in_the_query_process(
    stores: dict[str, Counting], sql: str
) -> None:
    """Values DuckDB builds outside its memory_limit (a huge string or list, even folded as a
    constant while planning) fail RESOURCE_EXHAUSTED in the query's process; this one does
    not grow."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    error = refused(stores, sql)
    assert grpc_status(error) is GrpcStatus.RESOURCE_EXHAUSTED, error.detail
    assert "flight_sql.query_memory_limit" in error.detail
    assert time.monotonic() - started < 60
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"this process grew {grown_mb:.0f} MB"


def test_a_query_process_that_dies_is_a_clean_error(stores: dict[str, Counting]) -> None:
    """A query process killed from outside (as by the OOM killer) ends its query with
    RESOURCE_EXHAUSTED, not INTERNAL, and the next query runs."""
    process = QueryProcess(LIMITS)

    def kill_it() -> None:
        spawned = process._spawned
        assert spawned is not None
        os.kill(spawned.pid, 9)

    timer = threading.Timer(1.0, kill_it)
    timer.start()
    try:
        with pytest.raises(ArrowportError) as caught:
            reader = run(
                process,
                "SELECT count(*) FROM range(1000000000000)",
                stores=stores.__getitem__,
                default_backend="duckdb",
                authorize=_allow,
            )
            reader.close()
    finally:
        timer.cancel()
        process.close()
    assert grpc_status(caught.value) is GrpcStatus.RESOURCE_EXHAUSTED
    assert "engine stopped" in caught.value.detail
    assert rows(stores, "SELECT 1 AS x").to_pylist() == [{"x": 1}]


def test_a_dead_zygote_is_started_again(stores: dict[str, Counting]) -> None:
    """If the query processes' parent dies, the next query starts a new one and runs."""
    from arrowport.storage.sql_zygote import ZYGOTE

    assert rows(stores, "SELECT 1 AS x").to_pylist() == [{"x": 1}]
    assert ZYGOTE._proc is not None
    ZYGOTE._proc.kill()
    ZYGOTE._proc.wait(10)
    assert rows(stores, "SELECT 2 AS x").to_pylist() == [{"x": 2}]
