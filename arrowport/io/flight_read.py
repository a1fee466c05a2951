"""Flight DoGet: stored batches as FlightData messages of at most ``flight.max_message_size``.

Invariants:

* gRPC clients refuse a message over their receive limit (4 MiB by default
  in grpc-go, grpc-java, grpcio and tonic). A stored batch whose FlightData
  would be larger is sent as row slices that each fit (zero-copy slices; the
  IPC serialization writes only each slice's part of the buffers). A single
  row that does not fit ends the call with RESOURCE_EXHAUSTED naming the
  limit, rather than send a message the client would refuse.
* Memory per DoGet is bounded by bytes, whatever the rows are like or the
  window the client advertises: the scan yields small batches
  (``SCAN_ROWS``), gathered in a worker thread into one of at most
  ``min(max_message_size, GATHER_BYTES)`` bytes (a copy only when several are
  gathered; one scan batch can be larger). It is encoded there
  (``protocol/flight_encoder``: the serialized messages are one more copy),
  about that many bytes of messages at a time, each lot sent before the next
  is encoded and the next batch read. A reader that never opens its window
  holds one such batch and one lot of messages until the stream's idle
  deadline resets it.
* Dictionary batches are sent as pyarrow's IPC stream writer makes them,
  unsliced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import trio

from ..protocol.flight_descriptors import parse_ticket
from ..protocol.flight_encoder import EncodedFlightData, FlightDataEncoder
from .flight_messages import send_encoded
from .grpc import GrpcCall
from .read_http import next_batch

# The scan's batches (DuckDB's vector size), gathered into messages of at most
# GATHER_BYTES or DOGET_BATCH_ROWS rows: a wide row makes fewer rows, not more bytes.
SCAN_ROWS = 4_096
GATHER_BYTES = 4 * 1024 * 1024
DOGET_BATCH_ROWS = 65_536


class Gatherer:
    """The scan's batches, gathered up to a byte bound and encoded (``next`` in a thread)."""

    def __init__(self, reader: pa.RecordBatchReader, limit: int) -> None:
        self.reader = reader
        self.limit = limit
        self.target = min(limit, GATHER_BYTES)
        self.encoder = FlightDataEncoder(reader.schema, max_message_size=limit)
        self.exhausted = False  # a DuckDB reader raises if read again after its end
        self._pending: Iterator[EncodedFlightData] | None = None  # the batch being encoded

    def next(self) -> list[EncodedFlightData] | None:
        """The next messages, about ``target`` bytes of them at most; None at the end.

        A gathered batch is encoded message by message across calls; the
        next one is read only once all of its messages have been returned.
        """
        out: list[EncodedFlightData] = []
        size = 0
        while size < self.target:
            if self._pending is None:
                if out:
                    break  # send these before reading on
                gathered = self._gather()
                if gathered is None:
                    break
                self._pending = self.encoder.iterencode(gathered)
            message = next(self._pending, None)
            if message is None:
                self._pending = None
                continue
            out.append(message)
            size += message.size
        return out or None

    def _gather(self) -> pa.RecordBatch | None:
        batches: list[pa.RecordBatch] = []
        size = rows = 0
        while not self.exhausted and size < self.target and rows < DOGET_BATCH_ROWS:
            batch = next_batch(self.reader)
            if batch is None:
                self.exhausted = True
                break
            batches.append(batch)
            size += batch.nbytes
            rows += batch.num_rows
        if not batches:
            return None
        return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


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

    Reads and encodes in a worker thread, one lot of messages at a time (see
    the invariants above); with no rows, the schema alone is sent.
    """
    try:
        gatherer = Gatherer(reader, limit)
        while True:
            messages = await trio.to_thread.run_sync(gatherer.next)
            if messages is None:
                break
            for message in messages:
                await send_encoded(call, message)
            del messages
        for message in gatherer.encoder.finish():  # no rows: the schema alone
            await send_encoded(call, message)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reader.close)
