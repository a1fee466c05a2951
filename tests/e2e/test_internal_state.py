"""Arrowport's own state is out of a client's reach, on a real server with all three backends.

Idempotency keys name a request to one table; ``_arrowport*`` names (the ledger) and Delta's
``_`` names are refused on every write and read route; the ledger distrusts rows and tables
made by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table
from lake_support import attach_lake
from support import ARROW, Server, ipc_bytes

CONFIG = """
delta_config: {table_path: ./delta}
ducklake: {catalog: ./meta.ducklake, data_path: ./lakedata}
streams:
  lk_a: {storage_backend: ducklake, target_table: a}
  lk_b: {storage_backend: ducklake, target_table: b}
  dl_a: {storage_backend: delta, target_table: a}
  dl_b: {storage_backend: delta, target_table: b}
limits: {max_schema_metadata_bytes: 64KiB}
"""


def _table(rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(rows), pa.int64())})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("internal")
    config = workdir / "arrowport.yaml"
    config.write_text(CONFIG)
    started = Server(workdir, config=config).start()
    yield started
    started.stop()


def _post(server: Server, path: str, rows: int, key: str | None = None) -> httpx.Response:
    headers = {"Content-Type": ARROW, **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{server.url}{path}", content=ipc_bytes(_table(rows)), headers=headers)


def _rows(server: Server, table: str, backend: str) -> int:
    ticket = fl.Ticket(json.dumps({"table": table, "backend": backend}).encode())
    return flight_client(server).do_get(ticket).read_all().num_rows


@pytest.mark.parametrize(
    ("backend", "path_a", "path_b"),
    [
        ("duckdb", "/ingest/k_a", "/ingest/k_b"),
        ("ducklake", "/ingest/lk_a", "/stream/lk_b"),
        ("delta", "/ingest/dl_a", "/delta/b"),
    ],
)
def test_a_key_used_for_one_table_is_a_new_request_for_another(
    server: Server, backend: str, path_a: str, path_b: str
) -> None:
    """The same key sent to table a, then b, writes both (b is not answered 'replayed'); a retry
    to either replays its own table's result and writes nothing."""
    key = f"shared-{backend}"
    first = _post(server, path_a, 3, key)
    assert first.status_code == 200, first.text
    assert first.json()["replayed"] is False
    other = _post(server, path_b, 5, key)
    assert other.status_code == 200, other.text
    assert (other.json()["replayed"], other.json()["rows"]) == (False, 5)
    again_a, again_b = _post(server, path_a, 9, key), _post(server, path_b, 9, key)
    assert (again_a.json()["replayed"], again_a.json()["rows"]) == (True, 3)
    assert (again_b.json()["replayed"], again_b.json()["rows"]) == (True, 5)
    table_a, table_b = ("k_a", "k_b") if backend == "duckdb" else ("a", "b")
    assert (_rows(server, table_a, backend), _rows(server, table_b, backend)) == (3, 5)


def test_a_flight_key_is_per_table_too(server: Server) -> None:
    """DoPut with a JSON cmd key: the key of stream f_a does not suppress f_b's write."""
    client = flight_client(server)
    for stream in ("f_a", "f_b", "f_a", "f_b"):  # the retries write nothing
        cmd = json.dumps({"stream": stream, "idempotency_key": "flight-k"}).encode()
        acks = put_table(client, fl.FlightDescriptor.for_command(cmd), _table(4))
        assert acks[-1]["committed_rows"] == 4, acks
    assert (_rows(server, "f_a", "duckdb"), _rows(server, "f_b", "duckdb")) == (4, 4)


RESERVED = ["_arrowport_keys", "_ARROWPORT_ledger", "_ArrowPort_ledger_20250101", "_arrowportx"]


@pytest.mark.parametrize("name", RESERVED)
@pytest.mark.parametrize("route", ["/ingest/", "/stream/", "/delta/"])
def test_reserved_names_are_refused_on_every_http_ingest_route(
    server: Server, route: str, name: str
) -> None:
    """POST of a stream or table named _arrowport* (any case): 400 invalid_name saying it is
    reserved."""
    response = _post(server, route + name, 2, "k")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_name" and "reserved" in body["detail"]


@pytest.mark.parametrize("name", ["_delta_log", "_hidden", "_"])
def test_delta_refuses_names_starting_with_an_underscore(server: Server, name: str) -> None:
    """POST /delta/_delta_log (and any _ name) is 400 saying why, and leaves no directory."""
    response = _post(server, "/delta/" + name, 2)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_name"
    assert "hidden" in response.json()["detail"]
    assert not (server.workdir / "delta" / name).exists()
    with pytest.raises(pa.ArrowInvalid, match="hidden"):
        _rows(server, name, "delta")


DESCRIPTORS = [
    fl.FlightDescriptor.for_path("_arrowport_keys"),
    fl.FlightDescriptor.for_command(b"_Arrowport_ledger"),
    fl.FlightDescriptor.for_command(json.dumps({"stream": "_arrowport_x"}).encode()),
    fl.FlightDescriptor.for_command(json.dumps({"table": "_arrowport_keys"}).encode()),
    fl.FlightDescriptor.for_command(
        json.dumps({"table": "_arrowport_ledger_20250101", "backend": "ducklake"}).encode()
    ),
    fl.FlightDescriptor.for_command(
        json.dumps({"table": "_delta_log", "backend": "delta"}).encode()
    ),
]


@pytest.mark.parametrize("target", DESCRIPTORS, ids=lambda d: str(d.path or d.command)[:40])
def test_reserved_names_are_refused_in_every_flight_descriptor(
    server: Server, target: fl.FlightDescriptor
) -> None:
    """DoPut to a reserved name by path, text cmd or JSON cmd: INVALID_ARGUMENT, nothing written."""
    with pytest.raises(pa.ArrowInvalid, match="invalid argument") as info:  # INVALID_ARGUMENT
        put_table(flight_client(server), target, _table(2))
    assert "reserved" in str(info.value) or "hidden" in str(info.value)


def test_reserved_names_are_hidden_from_every_listing_and_read(server: Server) -> None:
    """After keyed writes on all backends (ledgers exist): /streams, ListFlights and no read
    route shows or opens an _arrowport* table; reads of one answer 400."""
    for path in ("/ingest/h_t", "/ingest/lk_a", "/ingest/dl_a"):
        assert _post(server, path, 1, f"hide-{path}").status_code == 200
    names = [s["name"] for s in server.get("/streams").json()["streams"]]
    assert not [n for n in names if n.lower().startswith("_arrowport")]
    listed = [info.descriptor for info in flight_client(server).list_flights()]
    shown = repr([(d.path, d.command) for d in listed])
    assert "_arrowport" not in shown.lower() and "_delta_log" not in shown
    day = "_arrowport_ledger_" + time.strftime("%Y%m%d", time.gmtime())
    for path in (
        f"/ducklake/{day}",
        f"/ducklake/{day}/snapshots",
        f"/ducklake/{day}/version/1",
        "/delta/_arrowport_keys",
        "/delta/_delta_log",
        "/delta/_delta_log/history",
    ):
        response = server.get(path)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"] == "invalid_name"
    client = flight_client(server)
    for ticket in (b"_arrowport_keys", json.dumps({"table": day, "backend": "ducklake"}).encode()):
        with pytest.raises(pa.ArrowInvalid, match="reserved"):
            client.do_get(fl.Ticket(ticket)).read_all()
    with pytest.raises(pa.ArrowInvalid, match="reserved"):
        client.get_flight_info(fl.FlightDescriptor.for_path("_arrowport_keys"))


def _keyed(server: Server, stream: str, key: str, rows: int) -> dict[str, object]:
    response = _post(server, f"/ingest/{stream}", rows, key)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_duckdb_old_ledger_moves_and_forged_rows_are_not_trusted(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A file from before per-table keys (_arrowport_ledger, key PRIMARY KEY) keeps protecting
    its table; rows forged with NULL or negative counts are ignored, never a 5xx."""
    now = time.time()
    with duckdb.connect(str(tmp_path / "test.duckdb")) as con:
        con.execute("CREATE TABLE t (id BIGINT)")
        con.execute(
            'CREATE TABLE "_arrowport_ledger" (key VARCHAR PRIMARY KEY, table_name VARCHAR, '
            "rows BIGINT, batches BIGINT, committed_at DOUBLE)"
        )
        con.executemany(
            'INSERT INTO "_arrowport_ledger" VALUES (?, ?, ?, ?, ?)',
            [("old", "t", 7, 1, now), ("nulls", "t", None, None, now), ("neg", "t", -1, 1, now)],
        )
    server = server_factory(tmp_path).start()
    assert _keyed(server, "t", "old", 2)["rows"] == 7  # replayed from the old ledger
    assert _keyed(server, "u", "old", 2)["replayed"] is False  # another table
    for key in ("nulls", "neg"):
        assert _keyed(server, "t", key, 2)["replayed"] is False
        assert _keyed(server, "t", key, 2)["replayed"] is True
    assert server.query("SELECT count(*) FROM t") == [(4,)]


def test_a_hand_made_ledger_with_other_columns_stops_the_server_clearly(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A DuckDB file whose _arrowport_keys was made by hand with other columns: serve exits
    saying which table and what to do, rather than failing every keyed write."""
    with duckdb.connect(str(tmp_path / "test.duckdb")) as con:
        con.execute('CREATE TABLE "_arrowport_keys" (key VARCHAR, junk INT)')
    with pytest.raises(RuntimeError, match="_arrowport_keys has unexpected columns"):
        server_factory(tmp_path).start()


def test_ducklake_keyed_writes_survive_a_malformed_day_table_and_forged_rows(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """Today's DuckLake ledger table made by hand with a junk column, yesterday's with forged
    NULL/negative rows: keyed writes to every table commit and replay; nothing is 5xx."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        f"storage_backend: ducklake\nducklake: {{catalog: {tmp_path / 'meta.ducklake'}, "
        f"data_path: {tmp_path / 'lakedata'}}}\n"
    )
    now = time.time()
    today = "_arrowport_ledger_" + time.strftime("%Y%m%d", time.gmtime(now))
    yesterday = "_arrowport_ledger_" + time.strftime("%Y%m%d", time.gmtime(now - 86400))
    with duckdb.connect() as con:
        attach_lake(con, tmp_path / "meta.ducklake", tmp_path / "lakedata", read_only=False)
        con.execute(f'CREATE TABLE lake."{today}" (key VARCHAR, junk INT)')
        con.execute(f"INSERT INTO lake.\"{today}\" VALUES ('k', 1)")
        con.execute(
            f'CREATE TABLE lake."{yesterday}" (key VARCHAR, table_name VARCHAR, rows BIGINT, '
            "batches BIGINT, committed_at DOUBLE)"
        )
        con.execute(
            f"INSERT INTO lake.\"{yesterday}\" VALUES ('n', 't', NULL, 1, {now}), "
            f"('m', 'u', -3, 1, {now})"
        )
    server = server_factory(tmp_path, config=config).start()
    for stream, key in (("t", "k"), ("t", "n"), ("u", "m"), ("u", "k")):
        assert _keyed(server, stream, key, 2)["replayed"] is False
        assert _keyed(server, stream, key, 2)["replayed"] is True
    assert _rows(server, "t", "ducklake") == 4 and _rows(server, "u", "ducklake") == 4
    server.wait_for("its columns (key VARCHAR, junk INTEGER) are not Arrowport's")


def _with_metadata(size: int, rows: int = 1) -> pa.Table:
    """``rows`` rows whose schema carries ``size`` bytes of metadata on a nested field."""
    leaf = pa.field("v", pa.int64(), metadata={b"note": b"m" * (size - 4)})
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("s", pa.struct([leaf]))])
    return pa.table({"id": list(range(rows)), "s": [{"v": i} for i in range(rows)]}, schema)


def test_schema_metadata_over_the_configured_limit_is_413_and_resource_exhausted(
    server: Server,
) -> None:
    """A nested field with more metadata than limits.max_schema_metadata_bytes (64 KiB here):
    HTTP 413 limit_exceeded and Flight RESOURCE_EXHAUSTED, both naming the limit; nothing is
    written; just under it is stored."""
    headers = {"Content-Type": ARROW}
    big = ipc_bytes(_with_metadata(64 * 1024 + 1))
    response = httpx.post(f"{server.url}/ingest/meta_big", content=big, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "limit_exceeded"
    assert "limits.max_schema_metadata_bytes (65536 bytes)" in response.json()["detail"]
    with pytest.raises(pa.ArrowInvalid, match=r"resource exhausted.*max_schema_metadata_bytes"):
        put_table(flight_client(server), "meta_big", _with_metadata(64 * 1024 + 1))
    names = [s["name"] for s in server.get("/streams").json()["streams"]]
    assert "meta_big" not in names
    ok = ipc_bytes(_with_metadata(60 * 1024))
    assert httpx.post(f"{server.url}/ingest/meta_ok", content=ok, headers=headers).is_success


def test_delta_commits_do_not_copy_schema_metadata(server: Server) -> None:
    """A Delta table created by a stream with 60 KB of field metadata: neither its log nor
    its data files carry it, so later 1-row commits stay small (each file under 4 KB)."""
    for _ in range(4):
        response = httpx.post(
            f"{server.url}/delta/meta_delta",
            content=ipc_bytes(_with_metadata(60 * 1024)),
            headers={"Content-Type": ARROW},
        )
        assert response.status_code == 200, response.text
    root = server.workdir / "delta" / "meta_delta"
    logs = sorted((root / "_delta_log").glob("*.json"))
    data = sorted(root.rglob("*.parquet"))
    assert len(logs) == 4 and len(data) == 4
    sizes = {p.name: p.stat().st_size for p in logs + data}
    assert max(sizes.values()) < 4096, sizes
    assert _rows(server, "meta_delta", "delta") == 4
