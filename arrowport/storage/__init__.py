"""Storage writers: plain synchronous code run in trio worker threads."""

from .delta import DeltaStore
from .delta_write import DeltaWrite
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
