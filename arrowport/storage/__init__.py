"""Storage writers: plain synchronous code run in trio worker threads."""

from typing import TYPE_CHECKING, Any

from .delta import DeltaStore
from .duckdb import DuckDBStore
from .ducklake import DuckLakeStore
from .errors import (
    ColumnNotFoundError,
    IngestAborted,
    InvalidReadError,
    SchemaMismatchError,
    StorageError,
    TableNotFoundError,
    UnrepresentableValueError,
    UnsupportedTypeError,
    WriteRejectedError,
)
from .table_write import ReplayWrite, TableWrite, WriteResult
from .tables import TableInfo

if TYPE_CHECKING:
    from .delta_write import DeltaWrite


def __getattr__(name: str) -> Any:
    """``DeltaWrite`` on first use: it imports deltalake (see ``delta``)."""
    if name == "DeltaWrite":
        from .delta_write import DeltaWrite

        return DeltaWrite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ColumnNotFoundError",
    "DeltaStore",
    "DeltaWrite",
    "DuckDBStore",
    "DuckLakeStore",
    "IngestAborted",
    "InvalidReadError",
    "ReplayWrite",
    "SchemaMismatchError",
    "StorageError",
    "TableInfo",
    "TableNotFoundError",
    "TableWrite",
    "UnrepresentableValueError",
    "UnsupportedTypeError",
    "WriteRejectedError",
    "WriteResult",
]
