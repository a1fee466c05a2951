"""Flight I/O: sending ``FlightData`` on a call, and the answer to HTTP/2 that is not gRPC.

What a Flight request means (descriptors, tickets, action bodies, acks) is
parsed in ``protocol/flight_descriptors``; FlightData is encoded in
``protocol/flight_encoder``.
"""

from __future__ import annotations

import json

from ..protocol.flight_encoder import EncodedFlightData
from .grpc import GrpcCall
from .h2conn import H2Stream


async def send_encoded(call: GrpcCall, message: EncodedFlightData) -> None:
    """Send one FlightData the encoder made: its prefix, then its body uncopied."""
    body = memoryview(message.body) if message.body is not None else b""
    await call.send_parts(message.prefix, body, message.size)


async def not_grpc(stream: H2Stream) -> None:
    body = json.dumps(
        {
            "error": "unsupported_protocol",
            "detail": "HTTP/2 on this port carries Arrow Flight (gRPC) only; send HTTP "
            "requests such as POST /ingest/{stream} over HTTP/1.1",
        }
    ).encode()
    await stream.send_headers(
        [
            (b":status", b"505"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    )
    await stream.send_data(body, end_stream=True)
