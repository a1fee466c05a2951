"""The one table from error codes to HTTP and gRPC statuses.

Errors carry codes, not statuses (``arrowport/errors.py``); every adapter (HTTP
ingest and reads, Flight, the CLI) answers an ``ArrowportError`` with the
statuses found here, so one code means one answer everywhere. The exception is
a ``ProtocolError``: its own ``http_status``/``grpc_status`` hints win, as
h11's ``error_status_hint`` does, because the sans-IO layer knows which framing
found the fault.

A code missing from the table is a bug: it is answered 500/INTERNAL and
logged. ``tests/io/test_status.py`` checks that every code raised anywhere in
``arrowport/`` has an entry.
"""

from __future__ import annotations

import logging

from ..errors import ArrowportError
from ..protocol.errors import GrpcStatus, ProtocolError

log = logging.getLogger("arrowport.errors")

_INVALID = GrpcStatus.INVALID_ARGUMENT
_EXHAUSTED = GrpcStatus.RESOURCE_EXHAUSTED
_UNIMPLEMENTED = GrpcStatus.UNIMPLEMENTED
_DEADLINE = GrpcStatus.DEADLINE_EXCEEDED

UNKNOWN = (500, GrpcStatus.INTERNAL)

STATUSES: dict[str, tuple[int, GrpcStatus]] = {
    # -- the root's default, and the server's own configuration -------------------------
    "error": UNKNOWN,
    "invalid_config": UNKNOWN,
    # -- names and request parameters ---------------------------------------------------
    "invalid_name": (400, _INVALID),
    "invalid_idempotency_key": (400, _INVALID),
    "invalid_request": (400, _INVALID),
    "invalid_read": (400, _INVALID),
    "column_not_found": (400, _INVALID),
    "table_not_found": (404, GrpcStatus.NOT_FOUND),
    "table_exists": (409, GrpcStatus.ALREADY_EXISTS),
    "backend_unavailable": (400, GrpcStatus.FAILED_PRECONDITION),
    "idempotency_unsupported": (400, _INVALID),
    # -- what the stream holds, refused by storage --------------------------------------
    "schema_mismatch": (422, _INVALID),
    "unsupported_type": (422, _INVALID),
    "unrepresentable_value": (422, _INVALID),
    "write_rejected": (422, _INVALID),
    # -- storage failing, requests ending early ------------------------------------------
    "storage_error": (503, GrpcStatus.UNAVAILABLE),
    "storage_unavailable": (503, GrpcStatus.UNAVAILABLE),  # reopening: with Retry-After
    "aborted": (400, GrpcStatus.CANCELLED),
    "body_timeout": (408, _DEADLINE),
    "deadline_exceeded": (408, _DEADLINE),  # a gRPC call past its grpc-timeout
    "invalid_grpc_timeout": (400, _INVALID),
    "body_too_slow": (408, _DEADLINE),
    "ack_timeout": (408, _DEADLINE),
    # -- access and load -----------------------------------------------------------------
    "unauthenticated": (401, GrpcStatus.UNAUTHENTICATED),
    "forbidden": (403, GrpcStatus.PERMISSION_DENIED),
    "action_disabled": (403, GrpcStatus.PERMISSION_DENIED),
    "too_many_requests": (429, _EXHAUSTED),
    # -- gRPC calls the server does not serve --------------------------------------------
    "method_not_allowed": (405, _UNIMPLEMENTED),
    "unimplemented": (501, _UNIMPLEMENTED),
    "unknown_action": (501, _UNIMPLEMENTED),
    # -- protocol errors: their hints win; these are the usual ones ----------------------
    "invalid_stream": (400, _INVALID),
    "limit_exceeded": (413, _EXHAUSTED),
    "empty_stream": (400, _INVALID),
    "truncated_stream": (400, _INVALID),
    "trailing_data": (400, _INVALID),
    "missing_eos_marker": (400, _INVALID),
    "invalid_ipc_framing": (400, _INVALID),
    "invalid_ipc_metadata": (400, _INVALID),
    "unsupported_ipc_version": (400, _INVALID),
    "unsupported_message": (400, _INVALID),
    "invalid_schema": (400, _INVALID),
    "invalid_batch": (400, _INVALID),
    "invalid_compression": (400, _INVALID),
    "unsupported_compression": (400, _INVALID),
    "invalid_grpc_framing": (400, _INVALID),
    "unsupported_encoding": (400, _UNIMPLEMENTED),
    "invalid_protobuf": (400, _INVALID),
}


def statuses(exc: ArrowportError) -> tuple[int, GrpcStatus]:
    """The HTTP status and gRPC status ``exc`` is answered with."""
    if isinstance(exc, ProtocolError):
        return exc.http_status, exc.grpc_status
    found = STATUSES.get(exc.error)
    if found is None:
        log.error("error code %r has no entry in io/status.py: answered 500 (a bug)", exc.error)
        return UNKNOWN
    return found


def http_status(exc: ArrowportError) -> int:
    """The HTTP status ``exc`` is answered with."""
    return statuses(exc)[0]


def grpc_status(exc: ArrowportError) -> GrpcStatus:
    """The gRPC status ``exc`` ends a call with."""
    return statuses(exc)[1]
