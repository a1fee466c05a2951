"""Flight DoGet: stored batches as FlightData messages of at most ``flight.max_message_size``.

Invariants:

* gRPC clients refuse a message over their receive limit (4 MiB by default
  in grpc-go, grpc-java, grpcio and tonic). A stored batch whose FlightData
  would be larger is sent as row slices that each fit (zero-copy slices; the
  IPC writer writes only each slice's part of the buffers). A single row that
  does not fit ends the call with RESOURCE_EXHAUSTED naming the limit, rather
  than send a message the client would refuse.
* Memory per DoGet is bounded by bytes, whatever the rows are like or the
  window the client advertises: the scan yields small batches
  (``SCAN_ROWS``), gathered in a worker thread into one of at most
  ``min(max_message_size, GATHER_BYTES)`` bytes (a copy only when several are
  gathered), which is sliced and sent before the next is read. A reader that
  never opens its window holds one such batch and its message until the
  stream's idle deadline resets it.
* Dictionary batches are sent as the IPC writer makes them, unsliced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import trio

from ..protocol.errors import limit_exceeded
from ..protocol.flight_descriptors import parse_ticket
from .flight_messages import MessageSink, send_flight_data
from .grpc import GrpcCall
from .read_http import next_batch

# The scan's batches (DuckDB's vector size), gathered into messages of at most
# GATHER_BYTES or DOGET_BATCH_ROWS rows: a wide row makes fewer rows, not more bytes.
SCAN_ROWS = 4_096
GATHER_BYTES = 4 * 1024 * 1024
DOGET_BATCH_ROWS = 65_536
# FlightData's protobuf tags and lengths around the IPC header and body, with room to spare
FLIGHT_DATA_OVERHEAD = 64


def fitting_slices(batch: pa.RecordBatch, limit: int) -> Iterator[pa.RecordBatch]:
    """``batch`` as consecutive row slices whose FlightData is at most ``limit`` bytes.

    Raises ``ArrowportError`` (RESOURCE_EXHAUSTED) if one row alone is larger.
    """
    budget = limit - FLIGHT_DATA_OVERHEAD
    size = pa.ipc.get_record_batch_size(batch)
    if size <= budget:
        yield batch
        return
    if batch.num_rows <= 1:
        raise limit_exceeded(
            f"a row of this table is {size} bytes as a FlightData message, over "
            f"flight.max_message_size ({limit} bytes): gRPC clients refuse such a message; "
            "raise the limit (and the client's receive limit) or read the table over HTTP"
        )
    rows = max(1, batch.num_rows * budget // size)
    for start in range(0, batch.num_rows, rows):
        yield from fitting_slices(batch.slice(start, rows), limit)


class Gatherer:
    """The scan's batches, gathered up to a byte bound and sliced to fit (``next`` in a thread)."""

    def __init__(self, reader: pa.RecordBatchReader, limit: int) -> None:
        self.reader = reader
        self.limit = limit
        self.exhausted = False  # a DuckDB reader raises if read again after its end

    def next(self) -> list[pa.RecordBatch] | None:
        target = min(self.limit, GATHER_BYTES)
        batches: list[pa.RecordBatch] = []
        size = rows = 0
        while not self.exhausted and size < target and rows < DOGET_BATCH_ROWS:
            batch = next_batch(self.reader)
            if batch is None:
                self.exhausted = True
                break
            batches.append(batch)
            size += batch.nbytes
            rows += batch.num_rows
        if not batches:
            return None
        gathered = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        return list(fitting_slices(gathered, self.limit))


async def do_get(call: GrpcCall, service: Any, ticket: bytes) -> None:
    """Serve one DoGet of a table; ``service`` is the ``FlightService`` (its stores and config)."""
    spec = parse_ticket(ticket)
    limit = service.state.config.flight.max_message_size
    backend = spec.backend
    extra = {}
    if spec.version is not None:
        extra["version"] = spec.version
        if backend is None:  # time travel on the default backend, if it has versions
            default = service.state.config.storage_backend
            backend = default if default in ("ducklake", "delta") else "delta"
    reader = await service._thread(
        service.store(backend).scan,
        spec.table,
        columns=spec.columns,
        limit=spec.limit,
        batch_rows=SCAN_ROWS,
        **extra,
    )
    await stream_reader(call, reader, limit)


async def stream_reader(call: GrpcCall, reader: pa.RecordBatchReader, limit: int) -> None:
    """Send ``reader``'s batches as FlightData of at most ``limit`` bytes; close it at the end.

    Reads one gathered batch at a time in a worker thread (see the invariants
    above); with no rows, the schema alone is sent.
    """
    sink = MessageSink()
    try:
        writer = pa.ipc.new_stream(sink, reader.schema)
        gatherer = Gatherer(reader, limit)
        while True:
            slices = await trio.to_thread.run_sync(gatherer.next)
            if slices is None:
                break
            for piece in slices:
                writer.write_batch(piece)
                for header, body in sink.messages():
                    await send_flight_data(call, header, body)
            del slices
        if call.messages_sent == 0:  # no rows: the schema alone
            writer.close()
            for header, body in sink.messages():
                await send_flight_data(call, header, body)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reader.close)
