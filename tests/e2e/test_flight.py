"""Arrow Flight end to end: a real server process, a stock pyarrow FlightClient, real DuckDB.

DuckDB normalises some Arrow types when it stores them, so round trips compare
against the input cast to what DuckDB gives back (see
tests/storage/test_duckdb_read.py): dictionary -> its value type,
large_string/large_binary -> string/binary, large_list -> list, list children
are named "l", timestamps with a zone -> timestamp[us, tz=UTC] (same instants).
"""

from __future__ import annotations

import datetime
import decimal
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import (
    ABANDONING_PRODUCER,
    action,
    action_json,
    assert_healthy,
    flight_client,
    get,
    ids,
    put,
    put_table,
    read_acks,
    stream_counters,
    streams,
    table_counts,
    wait_until,
)
from support import Server, ipc_bytes, sample_table


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arrowport.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def client(server: Server) -> fl.FlightClient:
    return flight_client(server)


# -- round trips ---------------------------------------------------------------------------------

BERLIN = datetime.timezone(datetime.timedelta(hours=1))
ROUND_TRIPS: dict[str, tuple[pa.Array, pa.DataType]] = {
    # dictionary -> its value type: DuckDB stores the values (VARCHAR), not the encoding
    "dictionary": (pa.array(["x", "y", None, "x", "zz", "y"]).dictionary_encode(), pa.string()),
    "list": (
        pa.array([[1, 2], [], None, [None], [3], [4, 5, 6]], pa.list_(pa.int32())),
        pa.list_(pa.field("l", pa.int32())),  # DuckDB names list children "l"
    ),
    "large_list": (
        pa.array([[1], [2, 3], None, [], [None, 7], [8]], pa.large_list(pa.int64())),
        pa.list_(pa.field("l", pa.int64())),  # large_list -> list
    ),
    "struct": (
        pa.array(
            [
                {"k": 1, "v": "a", "tags": [1]},
                None,
                {"k": None, "v": "c", "tags": []},
                {"k": 4, "v": None, "tags": None},
                {"k": 5, "v": "e", "tags": [2, 3]},
                {"k": 6, "v": "", "tags": [None]},
            ],
            pa.struct([("k", pa.int64()), ("v", pa.string()), ("tags", pa.list_(pa.int64()))]),
        ),
        pa.struct(
            [("k", pa.int64()), ("v", pa.string()), ("tags", pa.list_(pa.field("l", pa.int64())))]
        ),
    ),
    "map": (
        pa.array(
            [[("a", 1), ("b", 2)], [], None, [("c", None)], [("d", 4)], [("e", 5), ("f", 6)]],
            pa.map_(pa.string(), pa.int64()),
        ),
        pa.map_(pa.string(), pa.int64()),
    ),
    "decimal": (
        pa.array(
            [decimal.Decimal("1.234"), None, decimal.Decimal("-9.999"), 0, 1, 2],
            pa.decimal128(12, 3),
        ),
        pa.decimal128(12, 3),
    ),
    "decimal38": (
        pa.array(
            [
                decimal.Decimal("9" * 28 + "." + "9" * 10),
                decimal.Decimal("-" + "9" * 28 + "." + "9" * 10),
                decimal.Decimal("12345678901234567890.0123456789"),
                None,
                decimal.Decimal("0.0000000001"),
                0,
            ],
            pa.decimal128(38, 10),
        ),
        pa.decimal128(38, 10),
    ),
    "timestamp_tz": (  # a zone -> tz=UTC: the same instants, the writer's zone is not kept
        pa.array(
            [
                datetime.datetime(2024, 3, 31, 1, 59, 59, 999_999, tzinfo=BERLIN),
                None,
                datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC),
                datetime.datetime(1969, 12, 31, 23, 0, tzinfo=datetime.UTC),
                datetime.datetime(2262, 1, 1, tzinfo=BERLIN),
                datetime.datetime(1900, 6, 1, 12, 30, tzinfo=BERLIN),
            ],
            pa.timestamp("us", tz="Europe/Berlin"),
        ),
        pa.timestamp("us", tz="UTC"),
    ),
    "timestamp_ms_tz": (  # ms with a zone -> TIMESTAMPTZ (us): exact, since ms fit in us
        pa.array([0, 1, None, -1, 1_700_000_000_123, 2**40], pa.timestamp("ms", tz="+05:30")),
        pa.timestamp("us", tz="UTC"),
    ),
    "large_string": (  # large_string -> string
        pa.array(["a", "", None, "é" * 3, "x" * 10_000, "\u2603"], pa.large_string()),
        pa.string(),
    ),
    "large_binary": (  # large_binary -> binary
        pa.array([b"\x00", b"", None, b"z", b"\xff" * 100, b"q"], pa.large_binary()),
        pa.binary(),
    ),
}


def test_do_put_then_do_get_round_trips(client: fl.FlightClient) -> None:
    """A column of each type comes back from do_get equal to what do_put sent (in DuckDB's type)."""
    failures: dict[str, object] = {}
    for name, (array, stored_type) in ROUND_TRIPS.items():
        table = pa.table({"id": pa.array(range(len(array)), pa.int64()), name: array})
        acks = put_table(client, f"rt_{name}", table, max_chunksize=2)
        assert [(a["committed_rows"], a["committed_batches"]) for a in acks] == [(6, 3)], name
        back = get(client, f"rt_{name}").sort_by("id")
        expected = pa.table({"id": table.column("id"), name: array.cast(stored_type)})
        described = client.get_schema(fl.FlightDescriptor.for_path(f"rt_{name}")).schema
        if not (back.equals(expected) and described == expected.schema):
            failures[name] = (back.schema, described, back.to_pylist(), expected.to_pylist())
    assert failures == {}


def test_dictionary_replacements_and_deltas_round_trip(client: fl.FlightClient) -> None:
    """Dictionaries replaced between batches, and dictionary deltas, decode to the right values."""
    batches = [
        pa.record_batch({"k": pa.array(["a", "b", "a"]).dictionary_encode()}),
        pa.record_batch({"k": pa.array(["c", None, "d", "c"]).dictionary_encode()}),
        pa.record_batch(
            {"k": pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int32()), ["q", "r"])}
        ),
    ]
    put(client, "replaced", batches, batches[0].schema)
    # with deltas, the writer sends only the new dictionary entries for later batches
    base = pa.array(["a", "b", "c", "d"])
    delta_batches = [
        pa.record_batch(
            {"k": pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), base[:2])}
        ),
        pa.record_batch(
            {"k": pa.DictionaryArray.from_arrays(pa.array([2, 3, None, 1], pa.int32()), base)}
        ),
    ]
    options = fl.FlightCallOptions(
        write_options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
    )
    put(client, "deltas", delta_batches, delta_batches[0].schema, options=options)
    assert get(client, "replaced").column("k").to_pylist() == [
        "a", "b", "a", "c", None, "d", "c", "r", "q"
    ]  # fmt: skip
    assert get(client, "deltas").column("k").to_pylist() == ["a", "b", "a", "c", "d", None, "b"]


def test_empty_batches_inside_a_stream(client: fl.FlightClient) -> None:
    """Empty batches between full ones are accepted and counted; every row lands once."""
    table = sample_table(30)
    full = table.to_batches(max_chunksize=10)
    empty = table.slice(0, 0).combine_chunks().to_batches()
    empty_batch = empty[0] if empty else pa.RecordBatch.from_pylist([], schema=table.schema)
    sent = [empty_batch, full[0], empty_batch, full[1], empty_batch, empty_batch, full[2]]
    acks = put(client, "holes", sent, table.schema)
    assert [(a["committed_rows"], a["committed_batches"]) for a in acks] == [(30, 7)]
    assert get(client, "holes").sort_by("id").equals(table)


def test_schema_only_do_put_creates_an_empty_table(server: Server, client: fl.FlightClient) -> None:
    """A DoPut of a schema and no batches creates the table with that schema and no rows."""
    schema = sample_table(1).schema  # (sample_table(0)'s "name" column has Arrow type null)
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("shape"), schema)
    writer.done_writing()
    acks = read_acks(reader)
    writer.close()
    assert [(a["committed_rows"], a["committed_batches"]) for a in acks] == [(0, 0)]
    info = client.get_flight_info(fl.FlightDescriptor.for_path("shape"))
    assert info.total_records == 0 and info.schema == schema
    back = get(client, "shape")
    assert back.num_rows == 0 and back.schema == schema
    assert table_counts(client) == {"shape": 0}
    assert server.query("SELECT count(*) FROM shape") == [(0,)]


def test_ipc_body_compression(client: fl.FlightClient) -> None:
    """LZ4_FRAME and ZSTD compressed FlightData decode exactly; the wire really was compressed."""
    n = 50_000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "s": pa.array(["abcdefgh"] * n),
            "d": pa.array([1.5] * n, pa.float64()),
        }
    )
    for compression in (None, "lz4", "zstd"):
        name = f"packed_{compression}"
        write_options = pa.ipc.IpcWriteOptions(compression=compression)
        options = fl.FlightCallOptions(write_options=write_options)
        acks = put_table(client, name, table, max_chunksize=10_000, options=options)
        assert [(a["committed_rows"], a["committed_batches"]) for a in acks] == [(n, 5)]
        assert get(client, name).sort_by("id").equals(table), name
        counters = streams(client)["by_name"][name]
        if compression is None:
            assert counters["bytes"] >= counters["decoded_bytes"], counters
        else:  # these columns compress well: the bytes on the wire are a fraction of the data
            assert counters["bytes"] < counters["decoded_bytes"] / 2, (name, counters)


# -- acknowledgements ----------------------------------------------------------------------------


def test_request_mode_one_ack_after_done_writing(client: fl.FlightClient) -> None:
    """Request mode sends exactly one PutResult, only after done_writing, echoing the metadata."""
    table = sample_table(250)
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("acked"), table.schema)
    acks: list[dict[str, Any]] = []
    reading = threading.Thread(target=lambda: acks.extend(read_acks(reader)))
    reading.start()
    batches = table.to_batches(max_chunksize=100)
    for i, batch in enumerate(batches):
        writer.write_with_metadata(batch, pa.py_buffer(f"batch-{i}".encode()))
    writer.write_metadata(pa.py_buffer(b"trailer"))
    time.sleep(0.5)
    assert acks == [] and reading.is_alive(), "acked before the stream ended"
    assert table_counts(client) == {}, "committed before the stream ended"
    writer.done_writing()
    reading.join(30)
    writer.close()
    assert acks == [
        {
            "stream": "acked",
            "table": "acked",
            "committed_rows": 250,
            "committed_batches": 3,
            "app_metadata": ["batch-0", "batch-1", "batch-2", "trailer"],
        }
    ]
    assert table_counts(client) == {"acked": 250}  # visible as soon as acked


def test_ack_echoes_binary_metadata_as_base64(client: fl.FlightClient) -> None:
    """app_metadata that is not UTF-8 is echoed as base64; batches without metadata are skipped."""
    table = ids(0, 30)
    acks = put(
        client,
        "binmeta",
        table.to_batches(max_chunksize=10),
        table.schema,
        metadata=[b"\xff\x00\xfe", None, "é".encode()],
    )
    assert acks[0]["app_metadata"] == [{"base64": "/wD+"}, "é"]


def test_batch_mode_acks_each_batch_cumulatively(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """commit: batch acks every batch with cumulative counts and that batch's own metadata."""
    config = _config(tmp_path, "streams:\n  ticks:\n    commit: batch\n")
    client = flight_client(server_factory(tmp_path, config=config).start())
    table = ids(0, 45)
    batches = table.to_batches(max_chunksize=10)
    acks = put(
        client, "ticks", batches, table.schema, metadata=[f"m{i}".encode() for i in range(5)]
    )
    assert acks == [
        {
            "stream": "ticks",
            "table": "ticks",
            "committed_rows": rows,
            "committed_batches": i + 1,
            "app_metadata": [f"m{i}"],
        }
        for i, rows in enumerate([10, 20, 30, 40, 45])
    ]
    assert get(client, "ticks").sort_by("id").equals(table)


def test_batch_mode_each_ack_means_committed(server_factory: type[Server], tmp_path: Path) -> None:
    """In batch mode the rows an ack reports are readable before the stream ends."""
    config = _config(tmp_path, "streams:\n  ticks:\n    commit: batch\n")
    client = flight_client(server_factory(tmp_path, config=config).start())
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("ticks"), ids(0, 1).schema)
    for i in range(3):
        writer.write_batch(ids(i * 10, 10).to_batches()[0])
        ack = json.loads(reader.read().to_pybytes())
        assert ack["committed_rows"] == (i + 1) * 10
        assert table_counts(client) == {"ticks": (i + 1) * 10}
    writer.done_writing()
    assert read_acks(reader) == []
    writer.close()


def test_descriptor_names_the_stream(client: fl.FlightClient) -> None:
    """A stream may be named by the descriptor's path, its cmd, or a JSON cmd {"stream": ...}."""
    targets = [
        fl.FlightDescriptor.for_path("named"),
        fl.FlightDescriptor.for_command(b"named"),
        fl.FlightDescriptor.for_command(b'{"stream": "named"}'),
        fl.FlightDescriptor.for_command(b'  {"stream": "named", "note": 1}'),
    ]
    for i, target in enumerate(targets):
        acks = put_table(client, target, ids(i * 10, 7))
        assert (acks[0]["stream"], acks[0]["committed_rows"]) == ("named", 7), target
    assert table_counts(client) == {"named": 28}
    assert sorted(get(client, "named").column("id").to_pylist()) == [
        i * 10 + j for i in range(4) for j in range(7)
    ]


def test_configured_target_table_routes_the_stream(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A stream with target_table lands in that table, and its info is found by stream name."""
    config = _config(tmp_path, "streams:\n  clicks:\n    target_table: landing\n")
    server = server_factory(tmp_path, config=config).start()
    client = flight_client(server)
    acks = put_table(client, fl.FlightDescriptor.for_command(b'{"stream":"clicks"}'), ids(0, 12))
    assert (acks[0]["stream"], acks[0]["table"], acks[0]["committed_rows"]) == (
        "clicks",
        "landing",
        12,
    )
    put_table(client, "CLICKS", ids(12, 3))  # stream names ignore case, like table names
    assert table_counts(client) == {"landing": 15}
    info = client.get_flight_info(fl.FlightDescriptor.for_path("clicks"))
    assert info.descriptor.path == [b"landing"] and info.total_records == 15
    assert server.query("SELECT count(*), sum(id) FROM landing") == [(15, sum(range(15)))]


# -- metadata, reads and actions -----------------------------------------------------------------


def test_list_flights_and_flight_info(client: fl.FlightClient) -> None:
    """ListFlights lists every table with exact counts; FlightInfo's ticket works with do_get."""
    put_table(client, "beta", sample_table(40), max_chunksize=15)
    put_table(client, "Alpha", ids(0, 5))
    listed = list(client.list_flights())
    assert [(i.descriptor.path, i.total_records) for i in listed] == [
        ([b"Alpha"], 5),
        ([b"beta"], 40),
    ]
    info = client.get_flight_info(fl.FlightDescriptor.for_path("beta"))
    assert info.schema == sample_table(1).schema
    assert info.total_records == 40 and info.total_bytes > 0
    assert len(info.endpoints) == 1
    assert client.do_get(info.endpoints[0].ticket).read_all().sort_by("id").equals(sample_table(40))
    schema = client.get_schema(fl.FlightDescriptor.for_command(b"ALPHA")).schema
    assert schema == ids(0, 0).schema


def test_do_get_json_ticket_columns_and_limit(client: fl.FlightClient) -> None:
    """A JSON ticket selects columns in the asked order and caps the rows at the limit."""
    table = sample_table(100)
    put_table(client, "wide", table, max_chunksize=30)
    got = get(client, {"table": "wide", "columns": ["score", "id"], "limit": 7})
    assert got.equals(table.select(["score", "id"]).slice(0, 7))
    assert get(client, {"table": "WIDE", "limit": 0}).num_rows == 0
    assert get(client, {"table": "wide"}).num_rows == 100


def test_streams_action_counters_move_by_what_was_ingested(client: fl.FlightClient) -> None:
    """The streams action's counters grow by exactly the rows, batches and requests ingested."""
    assert stream_counters(client, "counted") == {
        "rows": 0,
        "batches": 0,
        "requests": 0,
        "failed_requests": 0,
    }
    put_table(client, "counted", ids(0, 25), max_chunksize=10)
    assert stream_counters(client, "counted") == {
        "rows": 25,
        "batches": 3,
        "requests": 1,
        "failed_requests": 0,
    }
    put_table(client, "counted", ids(25, 4))
    with pytest.raises(pa.ArrowInvalid):
        put_table(client, "counted", pa.table({"other": [1]}).append_column("id", pa.array([1])))
    assert stream_counters(client, "counted") == {
        "rows": 29,
        "batches": 4,
        "requests": 3,
        "failed_requests": 1,
    }
    report = streams(client)
    assert report["in_flight"] == 0 and report["refusals"] == {"schema_mismatch": 1}


def test_table_drop_refused_by_default(server: Server, client: fl.FlightClient) -> None:
    """By default table.drop is not listed and is PERMISSION_DENIED; nothing is dropped."""
    listed = [a.type for a in client.list_actions()]
    assert listed[:2] == ["health", "streams"] and "table.drop" not in listed
    health = action_json(client, "health")
    assert health["status"] == "ok" and health["version"]
    put_table(client, "keep", ids(0, 3))
    with pytest.raises(fl.FlightUnauthorizedError, match=r"flight\.allow_table_drop: true"):
        action(client, "table.drop", b"keep")
    assert_healthy(client)
    assert server.query("SELECT count(*) FROM keep") == [(3,)]


def test_table_drop_when_allowed(server_factory: type[Server], tmp_path: Path) -> None:
    """With flight.allow_table_drop the action is listed and drops exactly the named table."""
    config = _config(tmp_path, "flight:\n  allow_table_drop: true\n")
    server = server_factory(tmp_path, config=config).start()
    client = flight_client(server)
    for name in ("gone", "also_gone", "kept"):
        put_table(client, name, ids(0, 3))
    assert "table.drop" in [a.type for a in client.list_actions()]
    assert action_json(client, "table.drop", b"GONE") == {"dropped": "gone"}
    assert action_json(client, "table.drop", b'{"table": "also_gone"}') == {"dropped": "also_gone"}
    with pytest.raises(KeyError, match="gone"):
        action(client, "table.drop", b"gone")
    with pytest.raises(KeyError, match="'gone'"):
        get(client, "gone")
    assert table_counts(client) == {"kept": 3}
    put_table(client, "gone", ids(10, 2))  # the name is free again, with a fresh table
    assert get(client, "gone").column("id").to_pylist() == [10, 11]
    assert server.tables() == {"gone", "kept"}


def test_table_drop_past_its_deadline_drops_nothing(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A table.drop whose grpc-timeout passes while it waits for the table (a DoPut holds it)
    is DEADLINE_EXCEEDED and drops nothing; with time enough it drops and says so."""
    config = _config(tmp_path, "flight:\n  allow_table_drop: true\n")
    server = server_factory(tmp_path, config=config).start()
    client = flight_client(server)
    put_table(client, "busy", ids(0, 3))
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("busy"), ids(0, 1).schema)
    # 1.6 MB, past group_commit.max_request_bytes: the DoPut streams, holding the table's
    # lock until it commits
    writer.write_table(ids(3, 200_000), max_chunksize=20_000)
    time.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(fl.FlightTimedOutError):
        list(client.do_action(fl.Action("table.drop", b"busy"), fl.FlightCallOptions(timeout=0.5)))
    assert time.monotonic() - started < 3
    writer.done_writing()
    reader.read()
    writer.close()
    assert table_counts(client) == {"busy": 200_003}  # not dropped
    results = list(
        client.do_action(fl.Action("table.drop", b"busy"), fl.FlightCallOptions(timeout=10))
    )
    assert [json.loads(r.body.to_pybytes()) for r in results] == [{"dropped": "busy"}]
    assert "busy" not in server.tables()


# -- errors --------------------------------------------------------------------------------------


def test_bad_stream_name_is_invalid_argument(client: fl.FlightClient) -> None:
    """An invalid stream name is ArrowInvalid naming it; nothing is written; serving continues."""
    put_table(client, "t", ids(0, 3))
    for target, text in [
        (fl.FlightDescriptor.for_path("bad name!"), "invalid stream name 'bad name!'"),
        (fl.FlightDescriptor.for_command(b'x"; DROP TABLE t; --'), "invalid stream name"),
        (fl.FlightDescriptor.for_command(b'{"stream": 5}'), "invalid stream name '5'"),
        (fl.FlightDescriptor.for_path("a", "b"), "has 2 elements"),
        (fl.FlightDescriptor.for_command(b"{not json"), "descriptor cmd is not valid JSON"),
    ]:
        with pytest.raises(pa.ArrowInvalid, match="invalid argument") as caught:
            put_table(client, target, ids(0, 3))
        assert text in str(caught.value)
        assert_healthy(client)
    assert table_counts(client) == {"t": 3}


def test_schema_conflict_names_the_columns(server: Server, client: fl.FlightClient) -> None:
    """A batch with columns the table lacks is ArrowInvalid naming them; the table is untouched."""
    put_table(client, "t", sample_table(10))
    extra = sample_table(5).append_column("surprise", pa.array([1] * 5))
    with pytest.raises(pa.ArrowInvalid, match="columns not in the table: surprise"):
        put_table(client, "t", extra)
    wrong = pa.table({"id": pa.array(["not-a-number"])})
    with pytest.raises(pa.ArrowInvalid, match="id") as caught:
        put_table(client, "t", wrong)
    assert "BIGINT" in str(caught.value) and "VARCHAR" in str(caught.value)
    assert_healthy(client)
    assert table_counts(client) == {"t": 10}
    assert server.query("SELECT count(*) FROM t") == [(10,)]


def test_unknown_table_is_not_found(client: fl.FlightClient) -> None:
    """Reads of a missing table raise KeyError (NOT_FOUND) naming it, with a did-you-mean."""
    put_table(client, "orders", ids(0, 2))
    calls: dict[str, Callable[[], object]] = {
        "do_get": lambda: get(client, "order"),
        "json_ticket": lambda: get(client, {"table": "order", "columns": ["id"]}),
        "get_flight_info": lambda: client.get_flight_info(fl.FlightDescriptor.for_path("order")),
        "get_schema": lambda: client.get_schema(fl.FlightDescriptor.for_command(b"order")),
    }
    for call, run in calls.items():
        with pytest.raises(KeyError, match="not found") as caught:
            run()
        assert "table 'order' does not exist; did you mean 'orders'?" in str(caught.value), call
        assert_healthy(client)


BAD_TICKETS = {
    b'{"table": ': "the ticket is not valid JSON",
    b'{"table": 5}': 'a JSON ticket needs "table": a table name',
    b'{"table": "t", "rows": 1}': "unknown ticket keys ['rows']",
    b'{"table": "t", "limit": -1}': 'ticket "limit" must be a non-negative integer',
    b'{"table": "t", "limit": true}': 'ticket "limit" must be a non-negative integer',
    b'{"table": "t", "columns": "id"}': 'ticket "columns" must be a list of column names',
    b'{"table": "t", "columns": []}': "columns is empty",
    b'{"table": "t", "columns": ["idd"]}': "table 't' has no column 'idd' (did you mean 'id'?)",
    b"bad name!": "invalid table name 'bad name!'",
    b"\xff": "the ticket is not UTF-8 text",
}


def test_bad_ticket_is_invalid_argument(client: fl.FlightClient) -> None:
    """A malformed DoGet ticket is ArrowInvalid with the server's explanation."""
    put_table(client, "t", ids(0, 2))
    for ticket, text in BAD_TICKETS.items():
        with pytest.raises(pa.ArrowInvalid, match="invalid argument") as caught:
            get(client, ticket)
        assert text in str(caught.value), ticket
        assert_healthy(client)
    assert get(client, "t").num_rows == 2


def test_unknown_action_is_not_implemented(client: fl.FlightClient) -> None:
    """An unknown action is NotImplementedError (UNIMPLEMENTED) listing the available ones."""
    with pytest.raises(NotImplementedError, match="unknown action 'vacuum'; available: health"):
        action(client, "vacuum")
    assert_healthy(client)


def test_message_over_limit_is_resource_exhausted(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A batch over limits.max_body_size is RESOURCE_EXHAUSTED (ArrowInvalid); nothing is kept."""
    config = _config(tmp_path, "limits:\n  max_body_size: 64KiB\n")
    server = server_factory(tmp_path, config=config).start()
    client = flight_client(server)
    put_table(client, "capped", ids(0, 10))
    small, big = ids(100, 10).to_batches()[0], ids(200, 20_000).combine_chunks().to_batches()[0]
    with pytest.raises(pa.ArrowInvalid, match="resource exhausted") as caught:
        put(client, "capped", [small, big], small.schema)
    assert "exceeds the limit of 65536 bytes" in str(caught.value)
    with pytest.raises(pa.ArrowInvalid, match="resource exhausted"):
        put(client, "fresh", [small, big], small.schema)
    assert_healthy(client)
    assert table_counts(client) == {"capped": 10}
    assert streams(client)["refusals"] == {"limit": 2}
    assert server.tables() == {"capped"}


def test_batch_mode_refusal_keeps_exactly_the_acked_batches(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """commit: batch, refused mid-stream: the acks received say exactly what the table keeps."""
    config = _config(
        tmp_path, "limits:\n  max_body_size: 64KiB\nstreams:\n  feed:\n    commit: batch\n"
    )
    client = flight_client(server_factory(tmp_path, config=config).start())
    big = ids(100, 20_000).combine_chunks().to_batches()[0]
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("feed"), big.schema)
    acks: list[dict[str, Any]] = []
    with pytest.raises(pa.ArrowInvalid, match="resource exhausted"):
        for batch in [ids(0, 10).to_batches()[0], ids(10, 10).to_batches()[0]]:
            writer.write_batch(batch)
            acks.append(json.loads(reader.read().to_pybytes()))
        writer.write_batch(big)
        writer.done_writing()
        acks.extend(read_acks(reader))
        writer.close()
    assert [a["committed_rows"] for a in acks] == [10, 20]
    assert get(client, "feed").column("id").to_pylist() == list(range(20))
    assert streams(client)["refusals"] == {"limit": 1}


def test_request_size_limit_is_resource_exhausted(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A DoPut over limits.max_request_size is refused as RESOURCE_EXHAUSTED; nothing is written."""
    config = _config(tmp_path, "limits:\n  max_request_size: 20KiB\n")
    client = flight_client(server_factory(tmp_path, config=config).start())
    with pytest.raises(pa.ArrowInvalid, match="resource exhausted"):
        put_table(client, "many", ids(0, 10_000), max_chunksize=500)
    assert_healthy(client)
    assert table_counts(client) == {}
    assert streams(client)["refusals"] == {"limit": 1}


# -- producers that go away ----------------------------------------------------------------------


def _abandon(server: Server, stream: str, batches: int, wait_acks: bool) -> list[str]:
    """Run a producer that DoPuts ``batches`` batches and never ends; SIGKILL it.

    Returns what the producer printed before "sent" (its acks, in batch mode).
    """
    port = str(httpx.URL(server.url).port)
    args = [stream, str(batches), str(int(wait_acks))]
    proc = subprocess.Popen(
        [sys.executable, "-c", ABANDONING_PRODUCER, port, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    client = flight_client(server)
    printed = []
    try:
        while (line := lines.get(timeout=30)) != "sent":
            printed.append(line)
        wait_until(lambda: streams(client)["in_flight"] == 1, what="the DoPut to be in flight")
        time.sleep(0.3)  # the last batches reach the server
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wait_until(lambda: streams(client)["in_flight"] == 0, what="the server to notice")
    return printed


def test_killed_producer_commits_nothing(server: Server, client: fl.FlightClient) -> None:
    """A producer killed (SIGKILL) mid-DoPut leaves nothing; the table is free for the next one."""
    put_table(client, "victim", ids(0, 10))
    _abandon(server, "victim", batches=5, wait_acks=False)
    assert table_counts(client) == {"victim": 10}
    assert streams(client)["refusals"] == {"disconnected": 1}
    assert stream_counters(client, "victim")["failed_requests"] == 1
    put_table(client, "victim", ids(10, 5))  # the table's writer lock was released
    _abandon(server, "brand_new", batches=3, wait_acks=False)
    assert table_counts(client) == {"victim": 15}
    assert server.tables() == {"victim"}
    assert server.query("SELECT count(*), sum(id) FROM victim") == [(15, sum(range(15)))]


def test_killed_batch_mode_producer_keeps_acked_batches(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """In batch mode, a killed producer's acked batches stay committed, exactly as acked."""
    config = _config(tmp_path, "streams:\n  feed:\n    commit: batch\n")
    server = server_factory(tmp_path, config=config).start()
    acks = [json.loads(line) for line in _abandon(server, "feed", batches=4, wait_acks=True)]
    assert [a["committed_rows"] for a in acks] == [100, 200, 300, 400]
    client = flight_client(server)
    assert get(client, "feed").column("id").to_pylist() == list(range(1000, 1400))
    put_table(client, "feed", ids(0, 1))
    assert table_counts(client) == {"feed": 401}


def test_cancelled_do_put_commits_nothing(client: fl.FlightClient) -> None:
    """A DoPut cancelled by its client-side deadline before done_writing commits nothing."""
    table = ids(0, 300)
    options = fl.FlightCallOptions(timeout=0.5)
    writer, _ = client.do_put(fl.FlightDescriptor.for_path("late"), table.schema, options=options)
    with pytest.raises(fl.FlightTimedOutError):
        writer.write_table(table, max_chunksize=100)
        time.sleep(0.8)  # past the deadline: the client cancels the call (RST_STREAM)
        writer.done_writing()
        writer.close()
    wait_until(lambda: streams(client)["in_flight"] == 0, what="the server to notice")
    assert table_counts(client) == {}
    assert streams(client)["refusals"] == {"disconnected": 1}
    put_table(client, "late", ids(0, 2))
    assert table_counts(client) == {"late": 2}


def test_do_get_cancelled_mid_stream_leaves_the_server_serving(client: fl.FlightClient) -> None:
    """A DoGet cancelled after its first batch does not disturb the server or later reads."""
    put_table(client, "many", ids(0, 300_000), max_chunksize=50_000)
    reader = client.do_get(fl.Ticket(b"many"))
    first = reader.read_chunk().data
    assert first.num_rows > 0 and first.column(0)[0].as_py() == 0
    reader.cancel()
    assert_healthy(client)
    again = get(client, {"table": "many", "columns": ["id"]})
    assert again.num_rows == 300_000
    assert again.column("id").to_pylist() == list(range(300_000))


# -- concurrency and sharing the port ------------------------------------------------------------


def test_sixteen_concurrent_do_puts_land_exact_rows(
    server: Server, client: fl.FlightClient
) -> None:
    """16 concurrent DoPuts (8 to one table on one connection, 8 to own tables) land exactly."""
    errors: list[BaseException] = []
    acks: dict[int, list[dict[str, Any]]] = {}

    def produce(i: int) -> None:
        try:
            own = i >= 8
            target = f"own_{i}" if own else "shared"
            producer = flight_client(server) if own else client
            acks[i] = put_table(producer, target, ids(i * 1000, 600), max_chunksize=100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert all(
        a == [{**a[0], "committed_rows": 600, "committed_batches": 6}] for a in acks.values()
    )
    assert len(acks) == 16
    expected = {"shared": 8 * 600} | {f"own_{i}": 600 for i in range(8, 16)}
    assert table_counts(client) == expected
    shared = sorted(get(client, "shared").column("id").to_pylist())
    assert shared == [i * 1000 + j for i in range(8) for j in range(600)]
    for i in range(8, 16):
        assert sorted(get(client, f"own_{i}").column("id").to_pylist()) == list(
            range(i * 1000, i * 1000 + 600)
        )


def test_http_ingest_works_while_flight_is_open(server: Server, client: fl.FlightClient) -> None:
    """HTTP/1.1 POSTs on the same port work during an open DoPut; both land in the table."""
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("mixed"), ids(0, 1).schema)
    writer.write_table(ids(0, 50), max_chunksize=10)
    other = httpx.post(
        f"{server.url}/ingest/other",
        content=ipc_bytes(ids(0, 20)),
        headers={"Content-Type": "application/vnd.apache.arrow.stream"},
        timeout=10,
    )
    assert other.status_code == 200 and other.json()["rows"] == 20
    answers: list[httpx.Response] = []
    same = threading.Thread(
        target=lambda: answers.append(server.post("mixed", ipc_bytes(ids(50, 30))))
    )
    same.start()  # waits for the table: the open DoPut holds its writer
    time.sleep(0.2)
    writer.write_table(ids(80, 20))
    writer.done_writing()
    assert read_acks(reader)[0]["committed_rows"] == 70
    writer.close()
    same.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["rows"] == 30
    assert sorted(get(client, "mixed").column("id").to_pylist()) == list(range(100))
    assert server.query("SELECT count(*), sum(id) FROM mixed") == [(100, sum(range(100)))]
    assert server.tables() == {"mixed", "other"}


def test_batch_mode_echoes_metadata_sent_after_the_last_batch(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """commit: batch: app_metadata sent after the last batch comes back in a final ack."""
    config = _config(tmp_path, "streams:\n  ticks:\n    commit: batch\n")
    client = flight_client(server_factory(tmp_path, config=config).start())
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("ticks"), ids(0, 1).schema)
    writer.write_batch(ids(0, 10).to_batches()[0])
    writer.write_metadata(pa.py_buffer(b"done"))
    writer.done_writing()
    acks = read_acks(reader)
    writer.close()
    assert [a["committed_rows"] for a in acks] == [10, 10]
    assert [a.get("app_metadata") for a in acks] == [None, ["done"]]


def test_byte_counters_agree_between_commit_modes(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """The same stream counts the same bytes in /streams whether it commits per batch or not."""
    config = _config(tmp_path, "streams:\n  batchmode:\n    commit: batch\n")
    client = flight_client(server_factory(tmp_path, config=config).start())
    table = ids(0, 50)
    for name in ("batchmode", "reqstmode"):  # same length: descriptors count too
        put(client, name, table.to_batches(max_chunksize=10), table.schema)
    by_name = streams(client)["by_name"]
    batch, request = by_name["batchmode"], by_name["reqstmode"]
    assert batch["rows"] == request["rows"] == 50
    assert batch["bytes"] == request["bytes"] > 0
