"""Storage writers: plain synchronous code run in trio worker threads."""

from .duckdb import DuckDBStore
from .errors import (
    IngestAborted,
    SchemaMismatchError,
    StorageError,
    UnsupportedTypeError,
    WriteRejectedError,
)
from .table_write import TableWrite, WriteResult

__all__ = [
    "DuckDBStore",
    "IngestAborted",
    "SchemaMismatchError",
    "StorageError",
    "TableWrite",
    "UnsupportedTypeError",
    "WriteRejectedError",
    "WriteResult",
]
