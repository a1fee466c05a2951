"""Flight SQL statement and prepared-statement handles: stateless, signed, expiring, owned.

A handle carries what the server needs to check and run its query again: the
SQL text, and the parameter values bound to it (one row, as Arrow IPC).
Nothing is kept per statement, so a client that never calls DoGet or
ClosePreparedStatement costs nothing, and open statements need no bound.

Invariants:

* A handle is signed (HMAC-SHA256, with a key made when the process starts):
  a client can neither forge one nor change its query or values. A handle
  from before a restart, or from another server, is refused: prepare again.
* It names the token that made it (a digest; zeros with auth off), and is
  refused to any other token (PERMISSION_DENIED).
* It carries the time it was made and is refused once older than
  ``flight_sql.prepared_statement_ttl``.
* A handle only saves the client from resending its text: every call that
  uses one checks its query again (kind, tables, the caller's scope).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import ArrowportError
from .auth import ForbiddenError

MAGIC = b"APQ1"
MAX_QUERY_BYTES = 1024**2  # a query's text, in UTF-8
MAX_PARAMETER_BYTES = 1024**2  # one row of parameter values, as Arrow IPC
_KEY = secrets.token_bytes(32)
_DIGEST = 32
_OWNER = 16
_HEAD = struct.Struct(">dI")  # issued (Unix time), query length


@dataclass(frozen=True, slots=True)
class Handle:
    query: str
    params: pa.RecordBatch | None
    issued: float


def _owner(token: Any) -> bytes:
    if token is None:
        return bytes(_OWNER)
    return hashlib.sha256(b"arrowport query owner\0" + token.token.encode()).digest()[:_OWNER]


def _sign(body: bytes) -> bytes:
    return hmac.new(_KEY, MAGIC + body, hashlib.sha256).digest()


def make(query: str, params: pa.RecordBatch | None, token: Any, now: float | None = None) -> bytes:
    """A handle for ``query`` (with the values ``params`` bound), owned by ``token``."""
    text = query.encode("utf-8", "surrogateescape")
    if len(text) > MAX_QUERY_BYTES:
        raise ArrowportError(
            f"the query is {len(text)} bytes long; this server takes queries of at most "
            f"{MAX_QUERY_BYTES} bytes",
            error="limit_exceeded",
        )
    values = b""
    if params is not None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, params.schema) as writer:
            writer.write_batch(params)
        values = sink.getvalue().to_pybytes()
        if len(values) > MAX_PARAMETER_BYTES:
            raise ArrowportError(
                f"the parameter values are {len(values)} bytes as Arrow IPC; at most "
                f"{MAX_PARAMETER_BYTES} are taken",
                error="limit_exceeded",
            )
    issued = time.time() if now is None else now
    body = _HEAD.pack(issued, len(text)) + _owner(token) + text + values
    return MAGIC + _sign(body) + body


def _verified(raw: bytes, token: Any) -> tuple[float, bytes]:
    """(issued, the rest after the owner) of a genuine handle owned by ``token``."""
    head = len(MAGIC) + _DIGEST
    body = raw[head:]
    if (
        not raw.startswith(MAGIC)
        or len(body) < _HEAD.size + _OWNER
        or not hmac.compare_digest(raw[len(MAGIC) : head], _sign(body))
    ):
        raise ArrowportError(
            "the statement handle was not made by this server, or not since it last "
            "started; prepare the statement again",
            error="invalid_request",
        )
    issued, _ = _HEAD.unpack_from(body)
    if not hmac.compare_digest(body[_HEAD.size : _HEAD.size + _OWNER], _owner(token)):
        raise ForbiddenError("the statement handle belongs to another token")
    return issued, body


def read(raw: bytes, token: Any, ttl: float, now: float | None = None) -> Handle:
    """The handle ``raw``, if it is genuine, owned by ``token`` and younger than ``ttl``."""
    issued, body = _verified(raw, token)
    age = (time.time() if now is None else now) - issued
    if age > ttl:
        raise ArrowportError(
            f"the statement handle expired: it is {age:.0f} s old, and handles are valid "
            f"for flight_sql.prepared_statement_ttl ({ttl:g} s); prepare the statement again",
            error="invalid_request",
        )
    _, length = _HEAD.unpack_from(body)
    start = _HEAD.size + _OWNER
    query = body[start : start + length].decode("utf-8", "surrogateescape")
    values = body[start + length :]
    params = pa.ipc.open_stream(values).read_next_batch() if values else None
    return Handle(query=query, params=params, issued=issued)


def check_owner(raw: bytes, token: Any) -> None:
    """Raise unless ``raw`` is a genuine handle owned by ``token`` (expired or not)."""
    _verified(raw, token)
