"""Arrow Flight against the Delta backend: a real server, a stock pyarrow FlightClient,
real Delta tables on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest
from deltalake import DeltaTable
from flight_helpers import assert_healthy, flight_client, get, ids, put_table
from support import Server

CONFIG = """
delta_config: {table_path: ./lake}
streams:
  events: {storage_backend: delta}
  plain: {}
  ticks: {commit: batch}
  lake_ticks: {storage_backend: delta, commit: batch}
"""


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    config = tmp_path / "arrowport.yaml"
    config.write_text(CONFIG)
    return server_factory(tmp_path, config=config).start()


def _cmd(spec: dict[str, object]) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_command(json.dumps(spec).encode())


def test_doput_to_a_delta_stream_commits_a_version_per_call(server: Server, tmp_path: Path) -> None:
    """DoPut to a stream routed to Delta: one Delta version per call, acked with that version."""
    client = flight_client(server)
    first = put_table(client, "events", ids(0, 1000), max_chunksize=250)
    second = put_table(client, "events", ids(1000, 500))
    assert first == [
        {
            "stream": "events",
            "table": "events",
            "committed_rows": 1000,
            "committed_batches": 4,
            "version": 0,
        }
    ]
    assert second[0]["version"] == 1 and second[0]["committed_rows"] == 500
    dt = DeltaTable(str(tmp_path / "lake" / "events"))
    assert dt.version() == 1
    got = dt.to_pyarrow_table().column("id").to_pylist()
    assert sorted(got) == list(range(1500))


def test_doput_idempotency_key_in_the_descriptor_cmd_writes_once(
    server: Server, tmp_path: Path
) -> None:
    """A retried DoPut with the same key is acked as a replay and writes nothing."""
    client = flight_client(server)
    target = _cmd({"stream": "events", "idempotency_key": "batch-0001"})
    first = put_table(client, target, ids(0, 300))
    again = put_table(client, target, ids(0, 300))
    assert "replayed" not in first[0] and first[0]["committed_rows"] == 300
    assert again[0]["replayed"] is True
    assert again[0]["committed_rows"] == 300 and again[0]["version"] == first[0]["version"]
    dt = DeltaTable(str(tmp_path / "lake" / "events"))
    assert dt.version() == 0
    assert dt.to_pyarrow_table().num_rows == 300
    assert dt.transaction_version("arrowport:batch-0001") == 1


def _put_keyed(client: fl.FlightClient, stream: str, table: pa.Table, key: str, alone: bool):  # type: ignore[no-untyped-def]
    """DoPut with the key as app_metadata: a message of its own, or on the first batch."""
    meta = pa.py_buffer(json.dumps({"idempotency_key": key}).encode())
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(stream), table.schema)
    batches = table.to_batches(max_chunksize=100)
    if alone:
        writer.write_metadata(meta)
        writer.write_batch(batches[0])
    else:
        writer.write_with_metadata(batches[0], meta)
    for batch in batches[1:]:
        writer.write_batch(batch)
    writer.done_writing()
    ack = reader.read()
    writer.close()  # raises the call's error, if any
    return json.loads(ack.to_pybytes())


@pytest.mark.parametrize("stream", ["events", "plain"])
@pytest.mark.parametrize("alone", [True, False], ids=["write_metadata", "first_batch"])
def test_doput_idempotency_key_in_app_metadata_writes_once(
    server: Server, tmp_path: Path, stream: str, alone: bool
) -> None:
    """For clients that cannot set a JSON cmd: the key as the app_metadata of the first
    FlightData after the schema. A retry is a replay on Delta and on DuckDB (the ledger)."""
    client = flight_client(server)
    first = _put_keyed(client, stream, ids(0, 300), "meta-key-1", alone)
    again = _put_keyed(client, stream, ids(0, 300), "meta-key-1", alone)
    other = _put_keyed(client, stream, ids(300, 5), "meta-key-2", alone)
    assert "replayed" not in first and first["committed_rows"] == 300
    assert again["replayed"] is True and again["committed_rows"] == 300
    assert "replayed" not in other and other["committed_rows"] == 5
    assert json.loads(first["app_metadata"][0]) == {"idempotency_key": "meta-key-1"}
    echo = {"seq": 1}  # app_metadata that is not a key stays the client's own
    plain = _put_keyed_echo(client, stream, ids(400, 3), echo)
    assert "replayed" not in plain and json.loads(plain["app_metadata"][0]) == echo
    got = sorted(
        get(client, {"table": stream, "backend": "delta" if stream == "events" else "duckdb"})
        .column("id")
        .to_pylist()
    )
    assert got == [*range(305), 400, 401, 402]


def _put_keyed_echo(client: fl.FlightClient, stream: str, table: pa.Table, meta: object):  # type: ignore[no-untyped-def]
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(stream), table.schema)
    writer.write_with_metadata(table.to_batches()[0], pa.py_buffer(json.dumps(meta).encode()))
    writer.done_writing()
    ack = reader.read()
    writer.close()  # raises the call's error, if any
    return json.loads(ack.to_pybytes())


def test_bad_idempotency_keys_are_refused_before_anything_is_written(
    server: Server, tmp_path: Path
) -> None:
    """A malformed key (INVALID_ARGUMENT) writes nothing; a key needs commit: request."""
    client = flight_client(server)
    with pytest.raises(pa.ArrowInvalid, match="idempotency key must be"):
        put_table(client, _cmd({"stream": "events", "idempotency_key": "has space"}), ids(0, 5))
    with pytest.raises(pa.ArrowInvalid, match="need commit: request"):
        put_table(client, _cmd({"stream": "ticks", "idempotency_key": "k"}), ids(0, 5))
    with pytest.raises(pa.ArrowInvalid, match="must be a string"):
        put_table(client, _cmd({"stream": "events", "idempotency_key": 7}), ids(0, 5))
    with pytest.raises(pa.ArrowInvalid, match="in app_metadata must be a string"):
        _put_keyed_echo(client, "events", ids(0, 5), {"idempotency_key": 7})
    with pytest.raises(pa.ArrowInvalid, match="idempotency key must be"):
        _put_keyed_echo(client, "events", ids(0, 5), {"idempotency_key": "has space"})
    with pytest.raises(pa.ArrowInvalid, match="need commit: request"):
        _put_keyed_echo(client, "lake_ticks", ids(0, 5), {"idempotency_key": "k"})
    assert not (tmp_path / "lake" / "events").exists()
    assert_healthy(client)


def test_doget_time_travel_and_listing(server: Server, tmp_path: Path) -> None:
    """ListFlights lists Delta tables with a ticket that reads them; version tickets time-travel."""
    client = flight_client(server)
    put_table(client, "events", ids(0, 100))
    put_table(client, "events", ids(100, 50))
    put_table(client, "plain", ids(0, 7))  # DuckDB
    infos = list(client.list_flights())
    delta = [i for i in infos if not i.descriptor.path]
    duck = [i for i in infos if i.descriptor.path]
    assert [i.descriptor.path[0].decode() for i in duck] == ["plain"]
    assert len(delta) == 1
    spec = json.loads(delta[0].descriptor.command)
    assert spec == {"table": "events", "backend": "delta"}
    assert delta[0].total_records == 150
    assert delta[0].schema.names == ["id"]
    latest = client.do_get(delta[0].endpoints[0].ticket).read_all()
    assert sorted(latest.column("id").to_pylist()) == list(range(150))

    v0 = get(client, {"table": "events", "version": 0})
    assert sorted(v0.column("id").to_pylist()) == list(range(100))
    limited = get(client, {"table": "events", "version": 1, "limit": 10, "columns": ["id"]})
    assert limited.num_rows == 10 and limited.schema.names == ["id"]

    info = client.get_flight_info(_cmd({"table": "events", "backend": "delta"}))
    assert info.total_records == 150
    schema = client.get_schema(_cmd({"table": "events", "backend": "delta"})).schema
    assert schema == pa.schema([("id", pa.int64())])
    # a stream name routed to Delta describes its Delta table
    assert client.get_flight_info(fl.FlightDescriptor.for_path("events")).total_records == 150


def test_doget_errors_for_delta_tickets(server: Server) -> None:
    """Bad Delta tickets get specific errors, and the server keeps serving."""
    client = flight_client(server)
    put_table(client, "events", ids(0, 10))
    with pytest.raises(pa.ArrowInvalid, match="version 5 of table 'events' does not exist"):
        get(client, {"table": "events", "version": 5})
    with pytest.raises(KeyError, match="does not exist"):
        get(client, {"table": "nothere", "backend": "delta"})
    with pytest.raises(pa.ArrowInvalid, match="Delta tables only"):
        get(client, {"table": "events", "backend": "duckdb", "version": 0})
    with pytest.raises(pa.ArrowInvalid, match='"backend" must be'):
        get(client, {"table": "events", "backend": "parquet"})
    with pytest.raises(pa.ArrowInvalid, match="non-negative integer"):
        get(client, {"table": "events", "version": -1})
    assert_healthy(client)


def test_doput_to_the_descriptor_listflights_gives_and_batch_acks_carry_versions(
    server: Server, tmp_path: Path
) -> None:
    """The JSON descriptor ListFlights returns for a Delta table takes a DoPut into that table;
    commit: batch acks on Delta name each batch's version."""
    client = flight_client(server)
    put_table(client, "events", ids(0, 10))
    (info,) = [i for i in client.list_flights() if not i.descriptor.path]
    acks = put_table(client, info.descriptor, ids(10, 5))
    assert (acks[0]["table"], acks[0]["committed_rows"], acks[0]["version"]) == ("events", 5, 1)
    ticks = put_table(client, "lake_ticks", ids(0, 20), max_chunksize=10)
    assert [(a["committed_rows"], a["version"]) for a in ticks] == [(10, 0), (20, 1)]
    assert DeltaTable(str(tmp_path / "lake" / "events")).count() == 15


def test_doput_descriptor_naming_duckdb_writes_duckdb_on_a_delta_server(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """With Delta the default, a DoPut to {"table", "backend": "duckdb"} writes that DuckDB
    table, not the stream of that name's route, as ListFlights describes it."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(
        "storage_backend: delta\ndelta_config: {table_path: ./lake}\n"
        "streams:\n  dk: {target_table: elsewhere, commit: batch}\n"
    )
    server = server_factory(tmp_path, config=config).start()
    client = flight_client(server)
    acks = put_table(client, _cmd({"table": "dk", "backend": "duckdb"}), ids(0, 30))
    assert [(a["stream"], a["table"], a["committed_rows"]) for a in acks] == [("dk", "dk", 30)]
    assert "version" not in acks[0]  # DuckDB has no versions; a request-mode commit
    (listed,) = [i for i in client.list_flights() if not i.descriptor.path]
    assert json.loads(listed.descriptor.command) == {"table": "dk", "backend": "duckdb"}
    assert listed.total_records == 30
    put_table(client, listed.descriptor, ids(30, 5))  # the descriptor ListFlights gives
    got = get(client, {"table": "dk", "backend": "duckdb"}).column("id").to_pylist()
    assert sorted(got) == list(range(35))
    assert client.get_flight_info(listed.descriptor).total_records == 35
    client.close()
    assert list((tmp_path / "lake").iterdir()) == []  # nothing written to Delta
    assert server.query("SELECT count(*), min(id), max(id) FROM dk") == [(35, 0, 34)]
    assert server.tables() == {"dk"}
