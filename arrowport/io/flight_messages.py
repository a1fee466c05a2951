"""Flight I/O: FlightData sent on a call, and the answer to HTTP/2 that is not gRPC.

What a Flight request means (descriptors, tickets, action bodies, acks) is
parsed in ``protocol/flight_descriptors``.
"""

from __future__ import annotations

import json

import pyarrow as pa

from ..protocol.flight_pb import encode_flight_data_prefix
from ..protocol.sink import IpcSink
from .grpc import GrpcCall
from .h2conn import H2Stream


async def send_flight_data(call: GrpcCall, header: pa.Buffer, body: pa.Buffer | None) -> None:
    body_length = body.size if body is not None else 0
    head = encode_flight_data_prefix(memoryview(header), None, body_length)
    payload = memoryview(body) if body is not None else b""
    await call.send_parts(head, payload, len(head) + body_length)


class MessageSink(IpcSink):
    """A file pyarrow's IPC writer writes into; yields the messages written."""

    def messages(self) -> list[tuple[pa.Buffer, pa.Buffer | None]]:
        written = self.take()
        if not written:
            return []
        data = pa.py_buffer(written)
        reader = pa.ipc.MessageReader.open_stream(data)
        out = []
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            if message is None:
                break
            out.append((message.metadata, message.body))
        return out


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
