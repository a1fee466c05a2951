"""``arrowport delta …`` and ``arrowport migrate``: offline tools on real tables."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from arrowport import cli
from arrowport.config import ENV_CONFIG_PATH, ENV_OVERRIDES, Config, load_config
from arrowport.migrate import TableExistsError, migrate
from arrowport.storage import DeltaStore, DuckDBStore, TableNotFoundError
from arrowport.storage import delta_tables as dtb

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [*ENV_OVERRIDES, ENV_CONFIG_PATH]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(
        None,
        env={},
        overrides={
            "db_path": str(tmp_path / "w.duckdb"),
            "delta_config.table_path": str(tmp_path / "lake"),
        },
    )


def _duckdb_table(path: str, rows: int = 1000) -> None:
    con = duckdb.connect(path)
    con.execute(
        "CREATE TABLE sales AS SELECT i::BIGINT AS id, 'item' || i AS item, i * 0.5 AS price, "
        "(i % 2 = 0) AS even, DATE '2024-01-01' + (i % 30)::INTEGER AS day, "
        "TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(i) AS at "
        f"FROM range({rows}) t(i)"
    )
    con.close()


def _delta(root: Path, table: str, *commits: range) -> DeltaStore:
    store = DeltaStore(root)
    store.open()
    schema = pa.schema([("id", pa.int64()), ("v", pa.float64())])
    for ids in commits:
        write = store.open_write(table, schema)
        write.insert(
            [
                pa.record_batch(
                    [pa.array(ids, pa.int64()), pa.array([i * 1.5 for i in ids])], schema=schema
                )
            ]
        )
        write.finish()
    return store


def _invoke(*args: str) -> Any:
    return runner.invoke(cli.app, list(args))


# -- migrate ---------------------------------------------------------------------


def test_migrate_duckdb_to_delta_and_duckdb_reads_it_back(config: Config) -> None:
    """Every row arrives in one Delta commit, and DuckDB can query the Delta table."""
    _duckdb_table(config.db_path, rows=300_000)
    result = migrate(config, "SALES", to="delta")
    assert (result["table"], result["target"], result["rows"]) == ("sales", "sales", 300_000)
    assert result["created"] is True and result["version"] == 0
    path = Path(config.delta_config.table_path) / "sales"
    dt = DeltaTable(str(path))
    assert dt.version() == 0  # one commit
    con = duckdb.connect(config.db_path, read_only=True)
    con.register("delta_sales", dt.to_pyarrow_dataset())
    got = con.execute(
        "SELECT count(*), sum(id), sum(price), count(*) FILTER (even) FROM delta_sales"
    ).fetchone()
    want = con.execute(
        "SELECT count(*), sum(id), sum(price), count(*) FILTER (even) FROM sales"
    ).fetchone()
    assert got == want == (300_000, 299_999 * 300_000 // 2, 299_999 * 300_000 / 4, 150_000)
    diff = con.execute(
        "SELECT count(*) FROM (SELECT * FROM sales EXCEPT ALL SELECT * FROM delta_sales)"
    ).fetchone()
    assert diff == (0,)
    con.close()


def test_migrate_delta_to_duckdb_copies_the_latest_version(config: Config) -> None:
    """Delta to DuckDB copies exactly the rows of the latest version."""
    root = Path(config.delta_config.table_path)
    _delta(root, "metrics", range(0, 50), range(50, 80))
    result = migrate(config, "metrics", to="duckdb", target="metrics_copy")
    assert (result["rows"], result["source_version"], result["created"]) == (80, 1, True)
    con = duckdb.connect(config.db_path, read_only=True)
    rows = con.execute("SELECT id, v FROM metrics_copy ORDER BY id").fetchall()
    con.close()
    assert rows == [(i, i * 1.5) for i in range(80)]


def test_migrate_to_delta_uses_the_configured_delta_options(tmp_path: Path) -> None:
    """A stream configured for the target table lends its partitioning to the new table."""
    conf = tmp_path / "arrowport.yaml"
    conf.write_text(
        "streams:\n  regions:\n    storage_backend: delta\n"
        "    delta_options:\n      partition_by: [region]\n"
    )
    config = load_config(
        conf,
        env={},
        overrides={
            "db_path": str(tmp_path / "w.duckdb"),
            "delta_config.table_path": str(tmp_path / "lake"),
        },
    )
    con = duckdb.connect(config.db_path)
    con.execute(
        "CREATE TABLE regions AS "
        "SELECT i AS n, ['eu', 'us'][i % 2 + 1] AS region FROM range(10) t(i)"
    )
    con.close()
    assert migrate(config, "regions", to="delta")["rows"] == 10
    dt = DeltaTable(str(tmp_path / "lake" / "regions"))
    assert dt.metadata().partition_columns == ["region"]
    assert sorted(p.name for p in (tmp_path / "lake" / "regions").iterdir()) == [
        "_delta_log",
        "region=eu",
        "region=us",
    ]


def test_migrate_round_trip_appends(config: Config) -> None:
    """append adds to an existing table; without it the copy is refused and nothing changes."""
    root = Path(config.delta_config.table_path)
    _delta(root, "m", range(5))
    migrate(config, "m", to="duckdb")
    with pytest.raises(TableExistsError, match="already exists"):
        migrate(config, "m", to="duckdb")
    with pytest.raises(TableExistsError, match="already exists"):
        migrate(config, "m", to="delta")
    assert migrate(config, "m", to="delta", append=True)["version"] == 1
    assert DeltaTable(str(root / "m")).count() == 10
    migrate(config, "M", to="duckdb", append=True)
    con = duckdb.connect(config.db_path, read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM m").fetchone() == (15, 5)
    con.close()


def _failing_after(reader: pa.RecordBatchReader, batches: int) -> pa.RecordBatchReader:
    """``reader``, failing (as a lost disk would) after ``batches`` batches."""

    def gen() -> Any:
        for i, batch in enumerate(reader):
            if i == batches:
                raise OSError("source went away")
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, gen())


def test_migrate_to_delta_failing_midway_leaves_nothing(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy into Delta that fails after some batches commits nothing, leaves no files."""
    _duckdb_table(config.db_path, rows=50_000)
    root = Path(config.delta_config.table_path)
    _delta(root, "sales", range(3))  # appending evolves it (schema_mode merge)
    scan = DuckDBStore.scan
    monkeypatch.setattr(
        DuckDBStore,
        "scan",
        lambda self, *a, **kw: _failing_after(scan(self, *a, batch_rows=2048), 3),
    )
    with pytest.raises(OSError, match="source went away"):
        migrate(config, "sales", to="delta", append=True)
    dt = DeltaTable(str(root / "sales"))
    data = {p.name for p in (root / "sales").glob("*.parquet")}
    assert data == {Path(uri).name for uri in dt.file_uris()}  # the partial files are gone
    assert dt.count() == 3
    assert dt.version() == 0  # not even the schema evolution was committed
    with pytest.raises(OSError):
        migrate(config, "sales", to="delta", target="fresh")
    assert not (root / "fresh").exists()


def test_migrate_to_duckdb_failing_midway_leaves_nothing(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy into DuckDB that fails after some batches leaves no table."""
    root = Path(config.delta_config.table_path)
    _delta(root, "m", range(1000))
    scan = dtb.scan
    monkeypatch.setattr(
        dtb, "scan", lambda *a, **kw: _failing_after(scan(*a, **{**kw, "batch_rows": 100}), 4)
    )
    with pytest.raises(OSError, match="source went away"):
        migrate(config, "m", to="duckdb")
    con = duckdb.connect(config.db_path, read_only=True)
    assert con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'm'"
    ).fetchone() == (0,)
    con.close()


def test_migrate_of_a_missing_table(config: Config) -> None:
    """A missing source table is a TableNotFoundError in both directions."""
    _duckdb_table(config.db_path, rows=1)
    with pytest.raises(TableNotFoundError):
        migrate(config, "nope", to="delta")
    with pytest.raises(TableNotFoundError):
        migrate(config, "nope", to="duckdb")


# -- the delta sub-commands --------------------------------------------------------


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    _delta(root, "events", range(0, 10), range(10, 15), range(15, 18))
    return root


def test_delta_list_human_and_json(lake: Path) -> None:
    """list prints a table, or JSON with rows and bytes."""
    result = _invoke("delta", "list", "--path", str(lake))
    assert result.exit_code == 0, result.output
    assert "events" in result.stdout and "18" in result.stdout
    result = _invoke("delta", "list", "--path", str(lake), "--json")
    assert result.exit_code == 0
    [entry] = json.loads(result.stdout)
    assert (entry["name"], entry["rows"], entry["columns"]) == ("events", 18, ["id", "v"])
    assert entry["bytes"] > 0


def test_delta_path_from_config_file(lake: Path, tmp_path: Path) -> None:
    """Without --path the root comes from delta_config.table_path in --config."""
    conf = tmp_path / "arrowport.yaml"
    conf.write_text(f"delta_config:\n  table_path: {lake}\n")
    result = _invoke("delta", "info", "events", "-c", str(conf), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["version"], info["rows"], info["files"]) == (2, 18, 3)
    human = _invoke("delta", "info", "EVENTS", "-c", str(conf))
    assert human.exit_code == 0
    assert "delta.checkpointInterval" in human.stdout and "long" in human.stdout


def test_delta_history_limit(lake: Path) -> None:
    """history shows the newest commits first, at most --limit."""
    result = _invoke("delta", "history", "events", "--path", str(lake), "--limit", "2", "--json")
    assert result.exit_code == 0
    assert [c["version"] for c in json.loads(result.stdout)] == [2, 1]
    human = _invoke("delta", "history", "events", "--path", str(lake))
    assert "CREATE TABLE" in human.stdout and "WRITE" in human.stdout


def test_delta_restore_vacuum_cycle(lake: Path) -> None:
    """restore, then vacuum: a dry run by default, deleting only with --no-dry-run."""
    result = _invoke("delta", "restore", "events", "0", "--path", str(lake), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == 3
    files = {p.name for p in (lake / "events").glob("*.parquet")}
    dry = _invoke("delta", "vacuum", "events", "--path", str(lake), "--retention-hours", "0")
    assert dry.exit_code == 0
    assert "would delete 2 files" in dry.stdout and "--no-dry-run" in dry.stdout
    assert {p.name for p in (lake / "events").glob("*.parquet")} == files
    real = _invoke(
        "delta",
        "vacuum",
        "events",
        "--path",
        str(lake),
        "--retention-hours",
        "0",
        "--no-dry-run",
        "--json",
    )
    assert real.exit_code == 0
    deleted = json.loads(real.stdout)["files"]
    assert len(deleted) == 2
    assert {p.name for p in (lake / "events").glob("*.parquet")} == files - set(deleted)
    assert DeltaTable(str(lake / "events")).count() == 10


def test_delta_vacuum_help_says_dry_run_is_the_default() -> None:
    """The help of vacuum says it only lists files unless --no-dry-run is given."""
    result = _invoke("delta", "vacuum", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "A dry run by default: it only lists the files" in text
    assert "pass --no-dry-run to delete them" in text


def test_delta_vacuum_full_removes_orphan_files(lake: Path) -> None:
    """--full also deletes untracked data files older than the retention (a killed server's)."""
    table = lake / "events"
    tracked = {p.name for p in table.glob("*.parquet")}
    old = time.time() - 30 * 86400
    orphans = {"part-00000-orphan-1.parquet", "part-00000-orphan-2.parquet"}
    for name in orphans:
        pq.write_table(pa.table({"id": [1]}), table / name)
        os.utime(table / name, (old, old))
    args = ("delta", "vacuum", "events", "--path", str(lake), "--retention-hours", "24")
    lite = _invoke(*args, "--no-dry-run")
    assert lite.exit_code == 0, lite.output
    assert "deleted 0 files" in lite.stdout
    assert {p.name for p in table.glob("*.parquet")} == tracked | orphans
    dry = _invoke(*args, "--full")
    assert dry.exit_code == 0, dry.output
    assert "full) would delete 2 files" in dry.stdout
    real = _invoke(*args, "--full", "--no-dry-run", "--json")
    assert real.exit_code == 0, real.output
    result = json.loads(real.stdout)
    assert (result["full"], result["dry_run"], set(result["files"])) == (True, False, orphans)
    assert {p.name for p in table.glob("*.parquet")} == tracked
    assert DeltaTable(str(table)).count() == 18


def test_delta_vacuum_help_explains_full() -> None:
    """The help of --full says what it removes and when running requests are safe."""
    result = _invoke("delta", "vacuum", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "--full" in text
    assert "Also remove data files no version ever referenced, e.g. left by a killed" in text
    assert "shorter than your longest request" in text


def test_delta_unreadable_log_is_one_line_without_ansi(lake: Path) -> None:
    """A log deltalake cannot read is exit 1 with one clean line, not its multi-line error."""
    commit = lake / "events" / "_delta_log" / f"{0:020d}.json"
    for extra in (1, 2):
        (lake / "events" / "_delta_log" / f"{extra:020d}.json").unlink()
    commit.unlink()
    os.symlink(commit.name, commit)  # a symlink loop
    result = _invoke("delta", "info", "events", "--path", str(lake))
    assert result.exit_code == 1
    assert result.stderr.startswith("arrowport: Delta table 'events': reading the log failed")
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_delta_optimize_and_checkpoint(lake: Path) -> None:
    """optimize compacts 3 files into 1 (or z-orders); checkpoint writes its file."""
    result = _invoke("delta", "optimize", "events", "--path", str(lake), "--target-size", "8MiB")
    assert result.exit_code == 0, result.output
    assert "3 files removed, 1 added" in result.stdout
    assert len(DeltaTable(str(lake / "events")).file_uris()) == 1
    _delta(lake, "events", range(100, 103))
    result = _invoke(
        "delta", "optimize", "events", "--path", str(lake), "--z-order", "v,ID", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["z_order"] == ["v", "id"]
    result = _invoke("delta", "checkpoint", "events", "--path", str(lake))
    assert result.exit_code == 0
    version = DeltaTable(str(lake / "events")).version()
    assert f"at version {version}" in result.stdout
    assert (lake / "events" / "_delta_log" / f"{version:020}.checkpoint.parquet").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["delta", "info", "evnts"], 1, "table 'evnts' does not exist; did you mean 'events'?"),
        (["delta", "restore", "events", "7"], 2, "0 to 2"),
        (["delta", "optimize", "events", "--z-order", "nope"], 2, "has no column 'nope'"),
        (
            ["delta", "optimize", "events", "--target-size", "lots"],
            2,
            "config error: --target-size",
        ),
        (["delta", "history", "../etc"], 2, "invalid table name"),
    ],
)
def test_delta_errors_are_one_line_with_exit_codes(
    lake: Path, args: list[str], code: int, message: str
) -> None:
    """Errors print one line on stderr: exit 2 for usage, 1 for missing tables."""
    result = _invoke(*args, "--path", str(lake))
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.startswith("arrowport: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_delta_bad_config_exits_2(tmp_path: Path) -> None:
    """A broken config file is a config error (exit 2)."""
    conf = tmp_path / "bad.yaml"
    conf.write_text("delta_config:\n  nope: 1\n")
    result = _invoke("delta", "list", "-c", str(conf))
    assert result.exit_code == 2
    assert "config error: delta_config.nope" in result.stderr


# -- migrate and serve on the command line ------------------------------------------------


def test_cli_migrate_both_ways(tmp_path: Path) -> None:
    """migrate --to delta and back copies the rows; a second copy is refused (exit 1)."""
    db, lake = tmp_path / "w.duckdb", tmp_path / "lake"
    _duckdb_table(str(db), rows=500)
    common = ["--db", str(db), "--delta-path", str(lake)]
    result = _invoke("migrate", "sales", "--to", "delta", *common)
    assert result.exit_code == 0, result.output
    assert "copied 500 rows of duckdb table sales into delta table sales" in result.stdout
    result = _invoke("migrate", "sales", "--to", "duckdb", "--target", "back", "--json", *common)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 500
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT count(*) FROM (SELECT * FROM sales EXCEPT ALL SELECT * FROM back)"
    ).fetchone() == (0,)
    con.close()
    again = _invoke("migrate", "sales", "--to", "delta", *common)
    assert again.exit_code == 1
    assert "already exists" in again.stderr and "append" in again.stderr
    bad = _invoke("migrate", "sales", "--to", "parquet", *common)
    assert bad.exit_code == 2


def test_serve_accepts_the_delta_backend(tmp_path: Path) -> None:
    """A real `serve --backend delta --delta-path DIR` writes /ingest streams into Delta there."""
    from support import Server, ipc_bytes, sample_table

    lake = tmp_path / "elsewhere"
    server = Server(tmp_path, args=("--backend", "delta", "--delta-path", str(lake))).start()
    try:
        response = server.post("trips", ipc_bytes(sample_table(10)))
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert (response.json()["backend"], response.json()["version"]) == ("delta", 0)
    assert DeltaTable(str(lake / "trips")).count() == 10
    helptext = " ".join(_invoke("serve", "--help").stdout.replace("│", " ").split())  # unwrapped
    assert "ducklake (see the ducklake: config section) or delta" in helptext
    assert "--delta-path" in helptext and "--ducklake-catalog" in helptext
    assert "Delta Lake" in _invoke("--help").stdout
