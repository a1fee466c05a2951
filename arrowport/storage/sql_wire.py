"""The messages between the server and a query's process, over a Unix stream socket.

Each message is a kind (one ASCII letter), a big-endian uint32 length and the
payload. Arrow data travels as complete IPC streams (a schema, then at most
one batch), so dictionaries need no state across messages.

The query process asks, the server answers:

* ``R`` refs (JSON list of tables) → ``S`` schema (one per table, in order) or ``E``;
* ``O`` open a scan of table #n (JSON) → ``o`` scan id (JSON) or ``E``;
* ``N`` next batch of a scan (JSON id) → ``B`` batch, ``Z`` its end, or ``E``;
* ``C`` close a scan (JSON id): no answer.

The server sends the request first (``Q``, JSON; then ``P``, the parameter
values, if any), and the query process ends with ``D`` (describe: JSON) and
``S`` (the result's schema) or ``s`` (none yet), or with ``H`` (run: the
result's schema), ``B``… and ``Z``; or with ``E`` (JSON ``{error, detail}``)
at any point.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import pyarrow as pa

_HEAD = struct.Struct(">cI")
MAX_MESSAGE = 2**32 - 1


class Gone(Exception):
    """The other end closed the socket (or died)."""


def send(sock: socket.socket, kind: bytes, payload: bytes | memoryview = b"") -> None:
    sock.sendall(_HEAD.pack(kind, len(payload)))
    if len(payload):
        sock.sendall(payload)


def send_json(sock: socket.socket, kind: bytes, value: Any) -> None:
    send(sock, kind, json.dumps(value).encode())


def _exactly(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise Gone("the other end closed the connection")
        got += n
    return buf


def recv(sock: socket.socket) -> tuple[bytes, bytearray]:
    """The next message: (kind, payload)."""
    try:
        kind, size = _HEAD.unpack(_exactly(sock, _HEAD.size))
        return kind, _exactly(sock, size) if size else bytearray()
    except OSError as exc:
        raise Gone(str(exc)) from None


def ipc(schema: pa.Schema, batch: pa.RecordBatch | None = None) -> bytes:
    """``schema`` (and ``batch``) as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        if batch is not None:
            writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def read_ipc(payload: bytes | bytearray) -> tuple[pa.Schema, pa.RecordBatch | None]:
    """What ``ipc`` wrote: the schema, and the batch if there is one."""
    reader = pa.ipc.open_stream(pa.py_buffer(payload))
    try:
        return reader.schema, reader.read_next_batch()
    except StopIteration:
        return reader.schema, None
