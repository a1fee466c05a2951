"""HTTP ingest end to end: a real server process, real clients, a real DuckDB file."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from support import ARROW, Server, ipc_bytes, sample_table


def test_curl_upload_lands_every_row_with_types_kept(server: Server, tmp_path: Path) -> None:
    """curl --data-binary of an .arrows file commits every row, with Arrow types kept."""
    table = sample_table(5000).append_column("tag", pa.array(["a", "b"] * 2500).dictionary_encode())
    path = tmp_path / "trips.arrows"
    path.write_bytes(ipc_bytes(table, max_chunksize=1000))
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--data-binary",
            f"@{path}",
            "-H",
            f"Content-Type: {ARROW}",
            f"{server.url}/ingest/trips",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    body = httpx.Response(200, content=out.stdout).json()
    assert body["stream"] == "trips" and body["table"] == "trips" and body["backend"] == "duckdb"
    assert body["rows"] == 5000 and body["batches"] == 5
    assert body["bytes"] == path.stat().st_size
    assert body["duration_ms"] > 0
    types = dict(
        server.query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='trips'"
        )
    )
    assert types == {
        "id": "BIGINT",
        "name": "VARCHAR",
        "score": "DOUBLE",
        "day": "DATE",
        "ts": "TIMESTAMP",
        "tag": "VARCHAR",
    }
    assert server.query("SELECT count(*), sum(id), count(DISTINCT tag) FROM trips") == [
        (5000, sum(range(5000)), 2)
    ]


def test_chunked_streaming_upload_with_httpx(server: Server) -> None:
    """A chunked (no Content-Length) upload from a generator commits every row."""
    data = ipc_bytes(sample_table(20_000), max_chunksize=4096)

    def chunks():  # uneven chunk sizes across message boundaries
        for i in range(0, len(data), 7777):
            yield data[i : i + 7777]

    response = httpx.post(
        f"{server.url}/stream/chunked",
        content=chunks(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 20_000
    assert server.query("SELECT count(*) FROM chunked") == [(20_000,)]


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "lz4"},
        {"compression": "zstd"},
        {"use_legacy_format": True},
    ],
)
def test_compressed_and_legacy_streams(server: Server, options: dict[str, object]) -> None:
    """LZ4, ZSTD and pre-0.15 framed streams are all accepted."""
    response = server.post("formats", ipc_bytes(sample_table(3000), max_chunksize=1000, **options))
    assert response.status_code == 200, response.text
    assert server.query("SELECT count(*), sum(id) FROM formats") == [(3000, sum(range(3000)))]


def test_stream_without_eos_marker_is_refused_as_truncated(
    server: Server, server_factory: type[Server], tmp_path: Path
) -> None:
    """A body that ends on a message boundary without the EOS marker looks like a producer
    that died mid-stream (a pipe into curl): 400, nothing written. With
    limits.require_eos_marker: false it commits."""
    data = ipc_bytes(sample_table(100), max_chunksize=25)
    assert data.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    response = server.post("noeos", data[:-8])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "missing_eos_marker"
    assert "nothing was committed" in response.json()["detail"]
    chunked = httpx.post(
        f"{server.url}/ingest/noeos",
        content=iter([data[:-8]]),  # chunked, as from a pipe
        headers={"Content-Type": ARROW},
        timeout=30,
    )
    assert chunked.status_code == 400 and chunked.json()["error"] == "missing_eos_marker"
    assert "noeos" not in server.tables()

    config = tmp_path / "lenient.yaml"
    config.write_text("limits: {require_eos_marker: false}\n")
    lenient = server_factory(tmp_path, config=config, db=tmp_path / "lenient.duckdb").start()
    assert lenient.post("noeos", data[:-8]).status_code == 200
    assert lenient.query("SELECT count(*) FROM noeos") == [(100,)]


def test_schema_only_stream_creates_empty_table(server: Server) -> None:
    """A schema-only stream creates the table with no rows."""
    response = server.post("empty_t", ipc_bytes(sample_table(0)))
    assert response.status_code == 200 and response.json()["rows"] == 0
    assert server.query("SELECT count(*) FROM empty_t") == [(0,)]


def test_insert_by_name_and_subset(server: Server) -> None:
    """Columns are matched by name (any order) and a subset of columns is accepted."""
    assert server.post("byname", ipc_bytes(sample_table(10))).status_code == 200
    reordered = sample_table(5, offset=100).select(["ts", "name", "id"])
    response = server.post("byname", ipc_bytes(reordered))
    assert response.status_code == 200, response.text
    rows = server.query("SELECT id, name, score FROM byname WHERE id >= 100 ORDER BY id")
    assert rows == [(100 + i, f"n{i % 7}", None) for i in range(5)]


# -- bad input: refused with the right status, nothing written, still serving -----------------


def _ok_table(server: Server, stream: str = "t") -> None:
    assert server.post(stream, ipc_bytes(sample_table(10))).status_code == 200


BAD_BODIES = {
    "empty": (b"", 400, "empty_stream"),
    "garbage": (b"this is not arrow at all" * 10, 400, None),
    "cut_mid_message": (
        ipc_bytes(sample_table(1000), max_chunksize=100)[:3000],
        400,
        "truncated_stream",
    ),
    "huge_metadata_length": (
        b"\xff\xff\xff\xff" + struct.pack("<i", 2**31 - 1),
        413,
        "limit_exceeded",
    ),
    "trailing_bytes": (ipc_bytes(sample_table(10)) + b"junk", 400, "trailing_data"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_bodies_refused_nothing_written(server: Server, name: str) -> None:
    """Each bad body gets its status and JSON error; the table is untouched; serving continues."""
    _ok_table(server)
    body, status, error = BAD_BODIES[name]
    response = server.post("t", body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["detail"]
    if error:
        assert payload["error"] == error
    server.assert_serving()
    assert server.query("SELECT count(*) FROM t") == [(10,)]


def test_bad_body_into_new_table_leaves_no_table(server: Server) -> None:
    """A stream cut mid-message aimed at a new table does not create that table."""
    data = ipc_bytes(sample_table(1000), max_chunksize=100)
    assert server.post("fresh", data[: len(data) // 2]).status_code == 400
    server.assert_serving()
    assert "fresh" not in server.tables()


def test_schema_conflict_names_the_columns(server: Server) -> None:
    """A stream with a column the table lacks is refused with 422 naming that column."""
    _ok_table(server)
    extra = sample_table(5).append_column("surprise", pa.array([1] * 5))
    response = server.post("t", ipc_bytes(extra))
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"] == "schema_mismatch"
    assert "surprise" in payload["detail"] and payload["extra_columns"] == ["surprise"]
    server.assert_serving()
    assert server.query("SELECT count(*) FROM t") == [(10,)]


def test_column_type_conflict_names_the_column(server: Server) -> None:
    """A column whose type conflicts with the table is refused with 422 naming both types."""
    _ok_table(server)
    wrong = pa.table({"id": pa.array(["not-a-number"]), "name": pa.array(["x"])})
    response = server.post("t", ipc_bytes(wrong))
    assert response.status_code == 422
    payload = response.json()
    assert payload["mistyped_columns"] == [
        {"column": "id", "table_type": "BIGINT", "stream_type": "VARCHAR"}
    ]
    server.assert_serving()
    assert server.query("SELECT count(*) FROM t") == [(10,)]


def test_lossless_widening_is_accepted(server: Server) -> None:
    """An int32 column may be written into a BIGINT column."""
    _ok_table(server)
    narrow = pa.table({"id": pa.array([7, 8], pa.int32())})
    assert server.post("t", ipc_bytes(narrow)).status_code == 200
    assert server.query("SELECT count(*) FROM t WHERE id IN (7, 8)") == [(4,)]


@pytest.mark.parametrize(
    "stream",
    [
        'x"; DROP TABLE t; --',
        "1abc",
        "a-b",
        "a" * 129,
        "t%00",
        "ta ble",
        "caf%C3%A9",
    ],
)
def test_invalid_stream_names_are_400(server: Server, stream: str) -> None:
    """Invalid or injection-like names get 400 and never reach SQL."""
    _ok_table(server)
    response = httpx.post(
        f"{server.url}/ingest/{stream}",
        content=ipc_bytes(sample_table(3)),
        headers={"Content-Type": ARROW},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_name"
    server.assert_serving()
    assert server.tables() == {"t"}
    assert server.query("SELECT count(*) FROM t") == [(10,)]


def test_injection_name_is_400_with_json(server: Server) -> None:
    """The classic injection name is refused with a 400 JSON error naming the rule."""
    response = server.post('x"; DROP TABLE t; --', ipc_bytes(sample_table(3)))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_name"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ],
)
def test_wrong_content_type_is_415(server: Server, content_type: str | None) -> None:
    """Only Arrow stream and octet-stream bodies are accepted."""
    response = server.post("ct", ipc_bytes(sample_table(3)), content_type=content_type)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    server.assert_serving()
    assert "ct" not in server.tables()


def test_content_encoding_is_415(server: Server) -> None:
    """HTTP content codings are refused; IPC body compression is the supported route."""
    response = server.post("ce", ipc_bytes(sample_table(3)), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415
    server.assert_serving()


def _raw_upload_then_drop(url: str, path: str, body: bytes, total: int | None) -> None:
    """Send headers and part of a body over a raw socket, then drop the connection."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    with socket.create_connection((host, port)) as sock:
        if total is None:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ARROW}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            sock.sendall(head + f"{len(body):x}\r\n".encode() + body + b"\r\n")
        else:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ARROW}\r\n"
                f"Content-Length: {total}\r\n\r\n"
            ).encode()
            sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


def _batch_boundaries(data: bytes) -> list[int]:
    """Offsets in ``data`` just after each complete IPC message."""
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from("<i", data, pos + 4)[0]
        if length == 0:
            break
        meta = data[pos + 8 : pos + 8 + length]
        message = pa.ipc.read_message(pa.py_buffer(data[pos:]))
        pos += 8 + length + message.body.size
        del meta
        out.append(pos)
    return out


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_drop_at_batch_boundary_commits_nothing(server: Server, framing: str) -> None:
    """A body cut by the client at a batch boundary (connection dropped) leaves nothing behind."""
    _ok_table(server)
    data = ipc_bytes(sample_table(5000, offset=10), max_chunksize=500)
    cut = _batch_boundaries(data)[4]  # schema + 4 complete batches
    total = len(data) if framing == "content-length" else None
    _raw_upload_then_drop(server.url, "/ingest/t", data[:cut], total)
    server.assert_serving()
    assert server.post("t", ipc_bytes(sample_table(1, offset=99_999))).status_code == 200
    assert server.query("SELECT count(*) FROM t") == [(11,)]


def test_body_over_configured_limit_is_413(server_factory: type[Server], tmp_path: Path) -> None:
    """A message body over limits.max_body_size is refused with 413 and nothing is written."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("limits:\n  max_body_size: 64KiB\n")
    server = server_factory(tmp_path, config=config).start()
    response = server.post("big", ipc_bytes(sample_table(20_000)))
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    server.assert_serving()
    assert "big" not in server.tables()


def test_readme_flow_with_duckdb_cli(server_factory: type[Server], tmp_path: Path) -> None:
    """serve on the default ./arrowport.duckdb, curl an .arrows file, count with the duckdb CLI."""
    if shutil.which("duckdb") is None:
        pytest.skip("duckdb CLI not installed")
    (tmp_path / "trips.arrows").write_bytes(ipc_bytes(sample_table(1234)))
    server = server_factory(tmp_path, db=Path("arrowport.duckdb"))
    server.start()
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--data-binary",
            "@trips.arrows",
            "-H",
            f"Content-Type: {ARROW}",
            f"{server.url}/ingest/trips",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    server.stop()
    out = subprocess.run(
        ["duckdb", "arrowport.duckdb", "-csv", "-noheader", "select count(*) from trips"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1234"


def _invalid_utf8_stream(good_rows: int) -> bytes:
    """An IPC stream: one valid batch of ``good_rows``, then a batch with invalid UTF-8."""
    schema = pa.schema([("s", pa.string())])
    good = pa.record_batch([pa.array([f"ok{i}" for i in range(good_rows)])], schema=schema)
    offsets = pa.py_buffer(struct.pack("<ii", 0, 2))
    bad_values = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(b"\xff\xfe")])
    bad = pa.record_batch([bad_values], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(good)
        writer.write_batch(bad)
    return sink.getvalue().to_pybytes()


def test_invalid_utf8_batch_is_refused_and_nothing_written(server: Server) -> None:
    """A batch failing full validation (invalid UTF-8) is 400 invalid_batch; no table appears."""
    response = server.post("utf", _invalid_utf8_stream(5))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_batch"
    assert "utf" in response.json()["detail"].lower()
    server.assert_serving()
    assert "utf" not in server.tables()


def test_invalid_batch_in_batch_mode_keeps_the_batches_before_it(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """In batch mode the valid batch before an invalid one stays committed; the error says so."""
    config = tmp_path / "arrowport.yaml"
    config.write_text("streams:\n  utfb:\n    commit: batch\n")
    server = server_factory(tmp_path, config=config).start()
    response = server.post("utfb", _invalid_utf8_stream(7))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_batch"
    assert response.json()["committed_rows"] == 7
    assert server.query("SELECT count(*) FROM utfb") == [(7,)]
