"""DoGet of dictionary-encoded columns (DuckDB ENUMs, plain and nested) through the FlightData
encoder, sliced to a small flight.max_message_size, against a real server."""

from __future__ import annotations

import struct
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from h2_client import SERVICE, H2Client, do_get_request
from support import Server

from arrowport.protocol._flatbuf import HeaderType, parse_message
from arrowport.protocol.flight_pb import FLIGHT_DATA_BODY, FLIGHT_DATA_HEADER, iter_fields

ROWS = 200_000
LIMIT = 64 * 1024
MOODS = "['sad', 'ok', 'happy']"
TABLE_SQL = f"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE feelings AS SELECT
    i AS id,
    ({MOODS})[i % 3 + 1]::mood AS m,
    {{'m': ({MOODS})[(i + 1) % 3 + 1]::mood, 'n': i}} AS s,
    [({MOODS})[i % 3 + 1]::mood, 'ok'::mood] AS l
FROM range({ROWS}) t(i);
"""


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    db = tmp_path / "test.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(TABLE_SQL)
    config = tmp_path / "arrowport.yaml"
    config.write_text(f"flight:\n  max_message_size: {LIMIT}\n")
    return server_factory(tmp_path, config=config, db=db).start()


def expected_rows(db: Path) -> list[dict[str, object]]:
    with duckdb.connect(str(db), read_only=True) as con:
        table = con.execute("SELECT * FROM feelings ORDER BY id").to_arrow_table()
    return list(table.to_pylist())


def test_pyarrow_reads_enum_columns_whole_and_in_order(server: Server) -> None:
    """ENUM, STRUCT(ENUM) and LIST(ENUM) columns arrive as dictionaries with every value right."""
    client = fl.FlightClient(server.url.replace("http://", "grpc://"))
    table = client.do_get(fl.Ticket(b"feelings")).read_all()
    client.close()
    assert pa.types.is_dictionary(table.schema.field("m").type)
    assert pa.types.is_dictionary(table.schema.field("s").type.field("m").type)
    assert pa.types.is_dictionary(table.schema.field("l").type.value_type)
    server.stop()
    assert table.sort_by("id").to_pylist() == expected_rows(server.db)


def _messages(data: bytes) -> list[tuple[int, int, int]]:
    """(gRPC message length, IPC header type, rows) of each FlightData in a DoGet answer."""
    out, at = [], 0
    while at < len(data):
        flag, length = struct.unpack_from(">BI", data, at)
        assert flag == 0
        fields = {n: bytes(v) for n, _, v in iter_fields(data[at + 5 : at + 5 + length])}
        at += 5 + length
        header = parse_message(fields[FLIGHT_DATA_HEADER])
        assert header.body_length == len(fields.get(FLIGHT_DATA_BODY, b""))
        rows = header.batch.length if header.batch is not None else 0
        out.append((length, header.header_type, rows))
    return out


def test_messages_fit_and_each_dictionary_is_sent_once(server: Server) -> None:
    """Every record batch message is within the limit; the three dictionaries go once, first."""
    raw = H2Client(server.url)
    try:
        sid = raw.request(SERVICE + "DoGet")
        raw.send(sid, do_get_request("feelings"), end_stream=True)
        response = raw.finish(sid, timeout=60)
    finally:
        raw.close()
    assert response.final_headers[b"grpc-status"] == b"0"
    messages = _messages(bytes(response.data))
    kinds = [kind for _, kind, _ in messages]
    assert kinds[:4] == [HeaderType.SCHEMA, *[HeaderType.DICTIONARY_BATCH] * 3]
    assert kinds.count(HeaderType.DICTIONARY_BATCH) == 3  # ENUM dictionaries never change
    batches = [m for m in messages if m[1] == HeaderType.RECORD_BATCH]
    assert len(batches) > 20 and max(length for length, _, _ in batches) <= LIMIT
    assert sum(rows for _, _, rows in batches) == ROWS
