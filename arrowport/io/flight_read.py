"""Flight DoGet: stored batches as FlightData messages of at most ``flight.max_message_size``.

Invariants:

* gRPC clients refuse a message over their receive limit (4 MiB by default
  in grpc-go, grpc-java, grpcio and tonic). A stored batch whose FlightData
  would be larger is sent as row slices that each fit (zero-copy slices; the
  IPC writer writes only each slice's part of the buffers). A single row that
  does not fit ends the call with RESOURCE_EXHAUSTED naming the limit, rather
  than send a message the client would refuse.
* One batch is read (and sliced) at a time in a worker thread and sent before
  the next is read, so a slow reader holds the server's memory flat.
* Dictionary batches are sent as the IPC writer makes them, unsliced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import trio

from ..protocol.errors import limit_exceeded
from ..protocol.flight_pb import Ticket
from .flight_messages import MessageSink, parse_ticket, send_flight_data
from .grpc import GrpcCall
from .read_http import next_batch

# DoGet reads batches of this many rows: small enough that the one batch in
# flight per reader (plus h2's copies of it) stays a few MB.
DOGET_BATCH_ROWS = 32_768
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


def _next_slices(reader: pa.RecordBatchReader, limit: int) -> list[pa.RecordBatch] | None:
    batch = next_batch(reader)
    return None if batch is None else list(fitting_slices(batch, limit))


async def do_get(call: GrpcCall, service: Any) -> None:
    """Serve one DoGet; ``service`` is the ``FlightService`` (its stores and config)."""
    spec = parse_ticket(Ticket.decode(await call.unary_request("Ticket")).ticket)
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
        batch_rows=DOGET_BATCH_ROWS,
        **extra,
    )
    sink = MessageSink()
    try:
        writer = pa.ipc.new_stream(sink, reader.schema)
        while True:
            slices = await trio.to_thread.run_sync(_next_slices, reader, limit)
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
