"""Type plans end to end: a real server stores what DuckDB itself reads from the stream."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from support import Server

DATA = Path(
    os.environ.get("ARROW_TEST_DATA", Path(__file__).parents[3] / "shared/arrow-testing/data")
)
INTERVALS = DATA / "arrow-ipc-stream" / "integration" / "cpp-21.0.0" / "generated_interval.stream"


def _months_only() -> bytes:
    """The gold interval file's year-month column alone (pyarrow 26 cannot build one)."""
    if not INTERVALS.exists():
        pytest.skip(
            f"no Arrow test data at {DATA} (set ARROW_TEST_DATA to apache/arrow-testing/data)"
        )
    reader = pa.ipc.open_stream(INTERVALS.read_bytes())
    batches = [batch.select(["f5"]) for batch in reader]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_year_month_intervals_are_stored_as_duckdb_reads_them(server: Server) -> None:
    """A month_interval-only stream (refused before) is stored, each value as DuckDB reads
    the stream itself; the database stays writable."""
    body = _months_only()
    response = server.post("months", body)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] > 0
    server.assert_serving()
    server.stop()
    with duckdb.connect() as con:
        con.register("sent", pa.ipc.open_stream(body))
        sent = con.execute("SELECT f5::VARCHAR FROM sent").fetchall()
    with duckdb.connect(str(server.db), read_only=True) as con:
        stored = con.execute("SELECT f5::VARCHAR FROM months").fetchall()
        assert con.execute("SELECT typeof(f5) FROM months LIMIT 1").fetchone() == ("INTERVAL",)
    assert stored == sent
