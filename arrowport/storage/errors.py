"""Errors raised by storage writers (part of the one error tree)."""

from __future__ import annotations

from ..protocol.errors import ArrowportError, GrpcStatus


class SchemaMismatchError(ArrowportError):
    """The incoming schema does not fit the target table: 422."""

    error = "schema_mismatch"
    http_status = 422
    grpc_status = GrpcStatus.INVALID_ARGUMENT

    def __init__(
        self,
        detail: str,
        *,
        extra: tuple[str, ...] = (),
        missing: tuple[str, ...] = (),
        mistyped: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        super().__init__(detail)
        self.extra = extra
        self.missing = missing
        self.mistyped = mistyped

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        body["extra_columns"] = list(self.extra)
        body["missing_columns"] = list(self.missing)
        body["mistyped_columns"] = [
            {"column": c, "table_type": t, "stream_type": s} for c, t, s in self.mistyped
        ]
        return body


class UnsupportedTypeError(ArrowportError):
    """A column's Arrow type has no DuckDB equivalent: 422."""

    error = "unsupported_type"
    http_status = 422
    grpc_status = GrpcStatus.INVALID_ARGUMENT


class WriteRejectedError(ArrowportError):
    """The database refused the rows (constraint, conversion): 422."""

    error = "write_rejected"
    http_status = 422
    grpc_status = GrpcStatus.INVALID_ARGUMENT


class StorageError(ArrowportError):
    """The storage layer failed (I/O, disk full, lock): 503."""

    error = "storage_error"
    http_status = 503
    grpc_status = GrpcStatus.UNAVAILABLE


class IngestAborted(ArrowportError):
    """The request ended before its stream completed; nothing was committed."""

    error = "aborted"
    http_status = 400
    grpc_status = GrpcStatus.CANCELLED
