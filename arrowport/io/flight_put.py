"""Flight DoPut: FlightData into the ingest pipeline, acknowledged only after commit.

Invariants:

* DoPut feeds the request's DATA through a ``FlightDataDecoder`` into the same
  ingest pipeline as HTTP: the same routing, limits, schema policy and
  transactions. A ``PutResult`` is sent only after a commit; a client that
  disconnects or cancels before ending its stream gets a rollback.
* With a ``grpc-timeout``, the call is not cancelled (a commit in a worker
  thread cannot be): it is refused where it waits for data (``GrpcCall.chunks``)
  and where it would write or commit (``deadline.DeadlineStore``), so an answer
  never says DEADLINE_EXCEEDED for committed data.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

from ..names import validate_idempotency_key
from ..protocol import NEED_DATA, ArrowportError
from ..protocol.flight import DescriptorReceived, FlightDataDecoder
from ..protocol.flight_descriptors import (
    ack_json,
    bad_request,
    descriptor_backend,
    descriptor_target,
    metadata_idempotency_key,
)
from ..protocol.flight_pb import FlightDescriptor
from ..protocol.flight_sql import unpack_command
from . import flight_sql
from .auth import authorize_table, authorize_write
from .grpc import GrpcCall
from .put_stream import put_into, refused_reason

log = logging.getLogger("arrowport.flight")


async def do_put(call: GrpcCall, service: Any) -> None:
    """Serve one DoPut; ``service`` is the ``FlightService`` (its state and stores)."""
    started = time.monotonic()
    config = service.state.config  # one snapshot for the whole request
    decoder = FlightDataDecoder(**config.limits.decoder_kwargs(), validate=False)
    chunks = call.chunks()
    stats = service.state.stats
    try:
        with trio.fail_after(config.limits.body_idle_timeout or math.inf):
            descriptor = await _first_descriptor(decoder, chunks)
        command = unpack_command(descriptor.cmd)
        if command is None:
            name, key = descriptor_target(descriptor)
            table, backend = descriptor_backend(descriptor)
            if table is not None:  # {"table", "backend"}: as ListFlights describes tables
                route = config.table_route(table, backend or config.storage_backend)
                authorize_table(call.token, config, route.table, route.backend)
            else:
                route = config.route(name)
                authorize_write(call.token, route.stream)
            if key is not None:
                validate_idempotency_key(key)
    except trio.TooSlowError:
        stats.refused("bad_input")
        raise ArrowportError(
            f"no FlightData for {config.limits.body_idle_timeout:g} s; the DoPut was abandoned",
            error="body_timeout",
        ) from None
    except ArrowportError as exc:
        stats.refused(refused_reason(exc))
        raise
    if command is not None:  # Flight SQL (CommandStatementIngest)
        await flight_sql.do_put(call, service, command, decoder, chunks)
        return
    try:
        store = service.store(route.backend, None if table is not None else route.stream)
    except ArrowportError:
        stats.refused("bad_input")
        raise
    await put_into(
        call,
        service,
        config,
        route,
        store,
        decoder,
        chunks,
        started=started,
        answer=lambda commit: ack_json(route, commit),
        key=key,
        key_from_metadata=metadata_idempotency_key if key is None else None,
    )


async def _first_descriptor(decoder: FlightDataDecoder, chunks: Any) -> FlightDescriptor:
    """Read until DoPut's first event, which must be its descriptor."""
    iterator = aiter(chunks)
    while True:
        event = decoder.next_event()
        if isinstance(event, DescriptorReceived):
            return event.descriptor
        if event is not NEED_DATA:
            raise bad_request(
                "DoPut's first FlightData must carry a FlightDescriptor naming the stream"
            )
        decoder.receive_data(await anext(iterator, b""))
