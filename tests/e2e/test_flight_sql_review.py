"""Review findings on Flight SQL (issue 19): real servers, the real ADBC driver and
pyarrow Flight clients."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pyarrow.flight as fl
import pytest
from support import Server

from arrowport.protocol.flight_sql import CommandStatementQuery, pack

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
