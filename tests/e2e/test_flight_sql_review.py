"""Review findings on Flight SQL (issue 19): real servers, the real ADBC driver and
pyarrow Flight clients."""

from __future__ import annotations

import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from adbc_driver_manager import Error as AdbcError
from support import Server, sample_table

from arrowport.protocol.flight_sql import AnyMessage, CommandStatementQuery, pack
from arrowport.protocol.protobuf import encode_varint

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

BIG = "SELECT range, repeat('x', 1000) AS pad FROM range(100000000)"


def _client(server: Server) -> fl.FlightClient:
    return fl.FlightClient(f"grpc://127.0.0.1:{httpx.URL(server.url).port}")


def _info(client: fl.FlightClient, sql: str) -> fl.FlightInfo:
    return client.get_flight_info(
        fl.FlightDescriptor.for_command(pack(CommandStatementQuery(query=sql)))
    )


@pytest.fixture
def one_slot(server_factory: type[Server], tmp_path: Path) -> Server:
    config = tmp_path / "arrowport.yaml"
    config.write_text("flight_sql: {query_timeout: 2, max_concurrent_queries: 1}\n")
    return server_factory(tmp_path, config=config).start()


def test_a_doget_whose_client_stops_reading_frees_its_slot_at_query_timeout(
    one_slot: Server,
) -> None:
    """A DoGet whose client stops reading holds its query slot no longer than
    flight_sql.query_timeout: the next query runs, not RESOURCE_EXHAUSTED."""
    stalled = _client(one_slot)
    try:
        reader = stalled.do_get(_info(stalled, BIG).endpoints[0].ticket)
        reader.read_chunk()  # then read nothing more: the server's sends block on the window
        time.sleep(3)  # past query_timeout (2 s), far below stream_idle_timeout (90 s)
        client = _client(one_slot)
        try:
            info = _info(client, "SELECT 42 AS x")
            assert client.do_get(info.endpoints[0].ticket).read_all().to_pylist() == [{"x": 42}]
        finally:
            client.close()
        with pytest.raises(fl.FlightError, match="query_timeout"):
            reader.read_all()
    finally:
        stalled.close()
    one_slot.assert_serving()


@pytest.fixture
def limited(server_factory: type[Server], tmp_path: Path) -> Server:
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        f"delta_config: {{table_path: {tmp_path / 'lake'}}}\n"
        f"ducklake: {{catalog: {tmp_path / 'meta.ducklake'}, data_path: {tmp_path / 'lakedata'}}}\n"
        "limits: {max_request_size: 3000000}\n"
        "streams:\n"
        "  lake_events: {storage_backend: ducklake}\n"
    )
    return server_factory(tmp_path, config=config).start()


@pytest.mark.parametrize("backend", ["duckdb", "ducklake", "delta"])
def test_a_replace_failing_midway_leaves_each_backends_old_table(
    limited: Server, backend: str
) -> None:
    """A replace of a DuckLake or Delta table (catalog named) that breaks a limit after
    sending batches leaves that table's schema and rows as they were."""
    port = httpx.URL(limited.url).port
    big = pa.table({"blob": [b"x" * 50_000] * 120})  # ~6 MB in 40 batches, over the limit
    with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("t", sample_table(100), mode="create", catalog_name=backend) == 100
        with pytest.raises(AdbcError, match="ResourceExhausted"):
            cur.adbc_ingest(
                "t", big.to_reader(max_chunksize=3), mode="replace", catalog_name=backend
            )
        cur.execute(f"SELECT * FROM {backend}.t")
        table = cur.fetch_arrow_table()
    assert table.schema.names == sample_table(1).schema.names
    assert sorted(table.column(0).to_pylist()) == sorted(sample_table(100).column(0).to_pylist())


def test_a_command_of_millions_of_packed_ids_is_refused_at_once(server: Server) -> None:
    """A 4 MiB CommandGetSqlInfo of one-byte ids is INVALID_ARGUMENT within a second or two
    (it took the event loop 12 s and 500 MB), and the server keeps serving."""
    body = b"\x01" * (4 * 1024 * 1024 - 128)
    value = b"\x0a" + encode_varint(len(body)) + body
    url = "type.googleapis.com/arrow.flight.protocol.sql.CommandGetSqlInfo"
    command = AnyMessage(type_url=url, value=value).encode()
    client = _client(server)
    try:
        started = time.monotonic()
        with pytest.raises(pa.ArrowInvalid, match="more than 10000 fields"):
            client.get_flight_info(fl.FlightDescriptor.for_command(command))
        assert time.monotonic() - started < 4
    finally:
        client.close()
    server.assert_serving()
