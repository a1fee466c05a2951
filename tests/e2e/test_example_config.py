"""The design's own example config starts a server as written, and ``arrowport config
check`` fails on whatever ``arrowport serve`` would fail on, with the same message."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable
from support import Server, ipc_bytes, sample_table

# verbatim from the design document (issue 16, item 5)
EXAMPLE = """\
db_path: ./warehouse.duckdb
storage_backend: duckdb
delta_config: {table_path: ./delta_tables, version_retention_hours: 168, checkpoint_interval: 10, enable_cdc: false}
compression: {algorithm: zstd, level: 3}
streams:
  lineitem: {target_table: lineitem, storage_backend: delta, chunk_size: 122880}
  sensors: {target_table: sensor_readings, compression: {algorithm: lz4}}
  events:
    storage_backend: delta
    target_table: events
    delta_options: {partition_by: ["date"], z_order_by: ["user_id"], target_file_size: 134217728, compression: snappy}
duckdb_extensions: [httpfs, parquet, arrow]
"""  # noqa: E501


def check(workdir: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowport", "config", "check", str(config)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_example_config_checks_and_serves_every_stream(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """config check passes, serve starts, and a POST to each stream of the example commits."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(EXAMPLE)
    checked = check(tmp_path, config)
    assert checked.returncode == 0, checked.stderr
    assert "# extension arrow: built in" in checked.stdout
    assert not (tmp_path / "warehouse.duckdb").exists()  # the check wrote nothing
    assert not (tmp_path / "delta_tables").exists()

    # --db as the config says (Server always passes one): ./warehouse.duckdb in the workdir
    server = server_factory(tmp_path, config=config, db=tmp_path / "warehouse.duckdb").start()
    assert any("'arrow': nothing to load" in line for line in server.log)
    lineitem = pa.table({"l_orderkey": pa.array(range(100), pa.int64()), "qty": [1.5] * 100})
    assert server.post("lineitem", ipc_bytes(lineitem)).status_code == 200
    days = [datetime.date(2026, 1, 1 + i % 3) for i in range(30)]
    events = pa.table({"user_id": list(range(30)), "date": days, "kind": ["click"] * 30})
    response = server.post("events", ipc_bytes(events))
    assert response.status_code == 200, response.text
    assert server.post("sensors", ipc_bytes(sample_table(20))).status_code == 200
    assert server.get("/health/ready").status_code == 200

    assert DeltaTable(tmp_path / "delta_tables" / "lineitem").to_pyarrow_table().num_rows == 100
    events_table = DeltaTable(tmp_path / "delta_tables" / "events")
    assert events_table.metadata().partition_columns == ["date"]
    assert events_table.to_pyarrow_table().num_rows == 30
    assert server.query("SELECT count(*) FROM sensor_readings") == [(20,)]


def test_an_unavailable_extension_fails_check_and_serve_alike(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """An extension not installed: config check and serve both exit 1 with the same message."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("duckdb_extensions: [httpfs, no_such_extension]\n")
    checked = check(tmp_path, config)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    message = checked.stderr.strip()
    assert message.startswith("arrowport: DuckDB extension 'no_such_extension' is not available")
    assert "\n" not in message

    served = subprocess.run(
        [sys.executable, "-m", "arrowport", "serve", "--port", "0", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 1
    assert message in served.stderr.splitlines()
    assert not (tmp_path / "arrowport.duckdb").exists()  # refused before anything was opened
