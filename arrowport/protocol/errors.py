"""Protocol errors: the sans-IO layer's branch of the one error tree.

The root, :class:`ArrowportError`, lives in ``arrowport/errors.py`` and knows
only codes (``arrowport/io/status.py`` maps them to statuses). A
:class:`ProtocolError` also carries status hints, as h11's carry
``error_status_hint``: an HTTP status and a gRPC status code, which the
adapters use in place of the table's entry for its code.

As in h11, code inside the protocol core raises :class:`LocalProtocolError`;
``next_event()`` re-raises it as :class:`RemoteProtocolError`, because by then
it is a fact about what the peer sent.
"""

from __future__ import annotations

import enum

from ..errors import ArrowportError

__all__ = [
    "ArrowportError",
    "GrpcStatus",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "invalid",
    "limit_exceeded",
]


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (the subset Arrowport uses, numbered as on the wire)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class ProtocolError(ArrowportError):
    """The bytes received do not form an acceptable stream.

    ``http_status`` and ``grpc_status`` are hints: the statuses this error is
    answered with, whatever the status table says about its code.
    """

    error = "invalid_stream"
    http_status: int = 400
    grpc_status: GrpcStatus = GrpcStatus.INVALID_ARGUMENT

    def __init__(
        self,
        detail: str,
        *,
        error: str | None = None,
        http_status: int | None = None,
        grpc_status: GrpcStatus | None = None,
    ) -> None:
        super().__init__(detail, error=error)
        if http_status is not None:
            self.http_status = http_status
        if grpc_status is not None:
            self.grpc_status = grpc_status


class LocalProtocolError(ProtocolError):
    """Raised inside the core; never seen by adapters."""

    def _reraise_as_remote_protocol_error(self) -> RemoteProtocolError:
        remote = RemoteProtocolError(
            self.detail,
            error=self.error,
            http_status=self.http_status,
            grpc_status=self.grpc_status,
        )
        return remote


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid. Adapters map this to a status."""


def limit_exceeded(detail: str) -> LocalProtocolError:
    """A configured limit was exceeded: HTTP 413, RESOURCE_EXHAUSTED."""
    return LocalProtocolError(
        detail,
        error="limit_exceeded",
        http_status=413,
        grpc_status=GrpcStatus.RESOURCE_EXHAUSTED,
    )


def invalid(detail: str, error: str = "invalid_stream") -> LocalProtocolError:
    """The stream is malformed or unsupported: HTTP 400, INVALID_ARGUMENT."""
    return LocalProtocolError(detail, error=error)
