"""Real producers: Polars and PyArrow write the bodies, as users' code does."""

from __future__ import annotations

import datetime
import io

import httpx
import polars as pl
import pyarrow as pa
import pytest
from support import ARROW, Server


def _polars_frame(offset: int) -> pl.DataFrame:
    n = 5000
    return pl.DataFrame(
        {
            "id": list(range(offset, offset + n)),
            "city": [f"city{i % 13}" for i in range(n)],
            "kind": pl.Series([("a", "b", "c")[i % 3] for i in range(n)], dtype=pl.Categorical),
            "at": [datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=i) for i in range(n)],
            "tags": [[i, i + 1] for i in range(n)],
            "fare": [i / 4 for i in range(n)],
        }
    )


@pytest.mark.parametrize("compression", ["uncompressed", "lz4", "zstd"])
def test_polars_write_ipc_stream_round_trips(server: Server, compression: str) -> None:
    """Polars' IPC streams (string views, categoricals, lists, compression) land exactly."""
    frames = [_polars_frame(0), _polars_frame(5000)]
    for frame in frames:
        buf = io.BytesIO()
        frame.write_ipc_stream(buf, compression=compression)
        response = httpx.post(
            f"{server.url}/ingest/rides",
            content=buf.getvalue(),
            headers={"Content-Type": ARROW},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == 5000
    rows = server.query('SELECT id, city, kind, "at", tags, fare FROM rides ORDER BY id')
    expected = pl.concat(frames).with_columns(pl.col("kind").cast(pl.String)).rows()
    assert rows == expected


def test_pyarrow_writer_streaming_as_it_writes(server: Server) -> None:
    """A pyarrow stream writer feeding a chunked upload batch by batch lands every row."""
    schema = pa.schema([("id", pa.int64()), ("v", pa.large_string())])
    response = httpx.post(
        f"{server.url}/ingest/live",
        content=_incremental(schema),
        headers={"Content-Type": ARROW},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["batches"] == 20
    assert server.query("SELECT count(*), sum(id) FROM live") == [(2000, sum(range(2000)))]


def _incremental(schema: pa.Schema):  # type: ignore[no-untyped-def]
    """Yield the IPC stream in pieces as a pyarrow writer produces them."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[no-untyped-def]
            self.parts.append(bytes(b))
            return len(b)

    pipe = Pipe()
    writer = pa.ipc.new_stream(pipe, schema)
    for i in range(20):
        writer.write_batch(
            pa.record_batch(
                [pa.array(range(i * 100, i * 100 + 100)), pa.array(["x"] * 100)], schema=schema
            )
        )
        yield b"".join(pipe.parts)
        pipe.parts.clear()
    writer.close()
    yield b"".join(pipe.parts)
