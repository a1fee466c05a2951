"""Storage writers: plain synchronous code run in trio worker threads."""

from .duckdb import DuckDBStore, WriteResult
from .errors import IngestAborted, SchemaMismatchError, StorageError, WriteRejectedError

__all__ = [
    "DuckDBStore",
    "IngestAborted",
    "SchemaMismatchError",
    "StorageError",
    "WriteRejectedError",
    "WriteResult",
]
