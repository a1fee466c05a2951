"""Helpers for the Flight end-to-end tests: a stock pyarrow FlightClient against a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.flight as fl
from support import Server


def flight_client(server: Server) -> fl.FlightClient:
    """A stock pyarrow client on the server's one port (gRPC over h2c)."""
    port = httpx.URL(server.url).port
    return fl.FlightClient(f"grpc://127.0.0.1:{port}")


def descriptor(target: str | fl.FlightDescriptor) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_path(target) if isinstance(target, str) else target


def put(
    client: fl.FlightClient,
    target: str | fl.FlightDescriptor,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    *,
    metadata: Sequence[bytes | None] | None = None,
    options: fl.FlightCallOptions | None = None,
) -> list[dict[str, Any]]:
    """DoPut ``batches`` (with per-batch ``metadata``), end the stream, return the acks as JSON."""
    writer, reader = client.do_put(descriptor(target), schema, options=options)
    try:
        for i, batch in enumerate(batches):
            meta = metadata[i] if metadata is not None else None
            if meta is None:
                writer.write_batch(batch)
            else:
                writer.write_with_metadata(batch, pa.py_buffer(meta))
        writer.done_writing()
        acks = read_acks(reader)
    finally:
        writer.close()
    return acks


def put_table(
    client: fl.FlightClient,
    target: str | fl.FlightDescriptor,
    table: pa.Table,
    *,
    max_chunksize: int | None = None,
    options: fl.FlightCallOptions | None = None,
) -> list[dict[str, Any]]:
    return put(
        client, target, table.to_batches(max_chunksize=max_chunksize), table.schema, options=options
    )


def read_acks(reader: fl.FlightMetadataReader) -> list[dict[str, Any]]:
    """Every PutResult until the server ends the call, decoded from JSON."""
    acks = []
    while (buf := reader.read()) is not None:
        acks.append(json.loads(buf.to_pybytes()))
    return acks


def get(client: fl.FlightClient, ticket: bytes | str | dict[str, Any]) -> pa.Table:
    """DoGet a table name or a JSON ticket."""
    if isinstance(ticket, dict):
        raw = json.dumps(ticket).encode()
    elif isinstance(ticket, str):
        raw = ticket.encode()
    else:
        raw = ticket
    return client.do_get(fl.Ticket(raw)).read_all()


def action(client: fl.FlightClient, name: str, body: bytes = b"") -> list[bytes]:
    return [r.body.to_pybytes() for r in client.do_action(fl.Action(name, body))]


def action_json(client: fl.FlightClient, name: str, body: bytes = b"") -> Any:
    results = action(client, name, body)
    assert len(results) == 1, results
    return json.loads(results[0])


def streams(client: fl.FlightClient) -> dict[str, Any]:
    """The ``streams`` action's report (``streams`` keyed by name)."""
    report: dict[str, Any] = action_json(client, "streams")
    report["by_name"] = {s["name"]: s for s in report["streams"]}
    return report


def stream_counters(client: fl.FlightClient, name: str) -> dict[str, Any]:
    entry = streams(client)["by_name"].get(name)
    empty = {"rows": 0, "batches": 0, "requests": 0, "failed_requests": 0}
    return {k: entry[k] for k in empty} if entry else empty


def assert_healthy(client: fl.FlightClient) -> None:
    """The server still answers a Flight call."""
    assert action_json(client, "health")["status"] == "ok"


def table_counts(client: fl.FlightClient) -> dict[str, int]:
    """Every listed table and its row count, from ListFlights."""
    return {info.descriptor.path[0].decode(): info.total_records for info in client.list_flights()}


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ids(start: int, rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + rows), pa.int64())})


# A producer in its own process: it sends ``batches`` batches of 100 rows on a DoPut
# and never ends the stream. In batch mode it first waits for every batch's ack.
ABANDONING_PRODUCER = """
import sys, time
import pyarrow as pa, pyarrow.flight as fl
port, stream, batches, wait_acks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
client = fl.FlightClient(f"grpc://127.0.0.1:{port}")
table = pa.table({"id": pa.array(range(1000, 1000 + 100 * batches), pa.int64())})
writer, reader = client.do_put(fl.FlightDescriptor.for_path(stream), table.schema)
for batch in table.to_batches(max_chunksize=100):
    writer.write_batch(batch)
if wait_acks:
    for _ in range(batches):
        print(reader.read().to_pybytes().decode(), flush=True)
print("sent", flush=True)
time.sleep(120)
"""
