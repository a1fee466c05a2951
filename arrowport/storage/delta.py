"""The Delta Lake backend: one request's write into one Delta table.

Invariants:

* Memory stays bounded: batches are written to Parquet data files in the
  table's directory as they arrive (``part-<uuid>.<codec>.parquet``), rolling
  to a new file at about ``target_file_size``; delta-rs never sees a whole
  request (delta-rs #2968 may collect a RecordBatchReader into memory).
* Request mode makes exactly one Delta commit, in ``finish()``, adding every
  file the request wrote. Until then no file is in the log, so nothing is
  visible; ``rollback()`` deletes the files, leaving no commit and no file.
* Batch mode commits the files of each ``insert`` at once.
* A table name is an identifier and its directory resolves under the root.
* Every data file is written with the table's Arrow schema: incoming columns
  are matched by name (case-insensitively), cast safely, and table columns the
  stream omits are filled with nulls. A stream with columns the table lacks is
  refused with ``SchemaMismatchError``; evolving the table with new nullable
  columns (``schema_mode="merge"``) is left for later.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, create_table_with_add_actions

from ..names import InvalidNameError, validate_name
from .errors import SchemaMismatchError, StorageError, WriteRejectedError
from .schema import Column, check_subset, duplicate_names
from .table_write import WriteResult

COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "none")

# Delta primitive type -> the DuckDB name the shared widening rules use
_DUCKDB_NAMES = {
    "byte": "TINYINT",
    "short": "SMALLINT",
    "integer": "INTEGER",
    "long": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
}


def _delta_columns(schema: Schema) -> list[Column]:
    columns = []
    for field in schema.fields:
        kind = str(getattr(field.type, "type", field.type))
        columns.append(Column(field.name, _DUCKDB_NAMES.get(kind, kind.upper()), field.nullable))
    return columns


def _delta_schema(schema: pa.Schema) -> Schema:
    try:
        return Schema.from_arrow(schema)
    except Exception as exc:  # delta-rs raises several kinds here
        raise SchemaMismatchError(f"stream schema has no Delta equivalent: {exc}") from None


class DeltaStore:
    """Delta tables, one directory each under ``root``.

    ``open_write`` returns a ``DeltaWrite`` (the same session protocol as
    ``TableWrite``). Methods are synchronous and meant for worker threads.
    """

    backend = "delta"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        target_file_size: int = 128 * 1024 * 1024,
        compression: str = "zstd",
        commit_retries: int = 5,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
        if target_file_size <= 0:
            raise ValueError("target_file_size must be positive")
        self.root = Path(root).resolve()
        self.target_file_size = target_file_size
        self.compression = compression
        self.commit_retries = commit_retries
        self.commits = 0
        self.rollbacks = 0
        self.files_written = 0

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create Delta root {str(self.root)!r}: {exc}") from None

    def close(self) -> None:
        """Nothing is held open between writes."""

    def statistics(self) -> dict[str, int]:
        return {"commits": self.commits, "rollbacks": self.rollbacks, "files": self.files_written}

    def table_path(self, table: str) -> Path:
        """The directory of ``table``; refuses names that would leave the root."""
        validate_name(table, "table")
        path = (self.root / table).resolve()
        if path.parent != self.root:
            raise InvalidNameError(f"table name {table!r} resolves outside the Delta root")
        return path

    def open_table(self, table: str) -> DeltaTable | None:
        path = self.table_path(table)
        if not DeltaTable.is_deltatable(str(path)):
            return None
        return DeltaTable(str(path))

    def open_write(self, table: str, schema: pa.Schema, *, commit: str = "request") -> DeltaWrite:
        """Start one request's write into ``table`` (request or batch commit mode).

        Checks the schema against an existing table (422 on a mismatch)
        before any data is read. The returned ``DeltaWrite`` must end with
        ``finish()`` or ``rollback()``.
        """
        if commit not in ("request", "batch"):
            raise ValueError(f"unknown commit mode {commit!r}")
        path = self.table_path(table)
        dupes = duplicate_names(schema.names)
        if dupes:
            raise SchemaMismatchError(
                f"stream has duplicate column names (case-insensitive): {', '.join(dupes)}"
            )
        incoming = _delta_schema(schema)
        existing = self.open_table(table)
        target = incoming if existing is None else existing.schema()
        if existing is not None:
            check_subset(table, _delta_columns(incoming), _delta_columns(target))
        return DeltaWrite(self, table, path, schema, target, commit, created=existing is None)

    @staticmethod
    def translate(exc: BaseException) -> BaseException:
        """Map a delta-rs, Arrow or OS exception to the error a client is shown."""
        if isinstance(exc, pa.ArrowInvalid | pa.ArrowNotImplementedError):
            return WriteRejectedError(f"Delta write refused the rows: {exc}")
        if isinstance(exc, DeltaError | OSError | pa.ArrowException):
            return StorageError(f"Delta write failed: {exc}")
        return exc


class DeltaWrite:
    """One request's write into one Delta table: Parquet files, then a commit.

    ``rows`` and ``batches`` count what ``insert`` has written (committed, in
    batch mode). Methods are never called concurrently.
    """

    def __init__(
        self,
        store: DeltaStore,
        table: str,
        path: Path,
        schema: pa.Schema,
        target: Schema,
        mode: str,
        *,
        created: bool,
    ) -> None:
        self.store, self.table, self.path, self.mode = store, table, path, mode
        self.stream_schema = schema
        self.delta_schema = target
        self.arrow_schema = pa.schema(target.to_arrow())
        self.created = created
        self.rows = 0
        self.batches = 0
        self._pending: list[AddAction] = []  # written, not yet committed
        self._files: list[Path] = []  # every file this write made and has not committed
        self._made_dir = False
        self._sink: pa.NativeFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._file: Path | None = None
        self._file_rows = 0
        self._done = False

    def group_full(self, rows: int, size: int, count: int) -> bool:
        # files roll by size on their own, so groups only bound the queue
        if self.mode == "batch":
            return count >= 1
        return count >= 16 or size >= 64 * 1024 * 1024

    def insert(self, group: list[pa.RecordBatch]) -> None:
        """Write ``group`` to data files (batch mode: and commit them)."""
        self._run(self._insert, group)

    def _insert(self, group: list[pa.RecordBatch]) -> None:
        rows = 0
        for batch in group:
            self._write_batch(self._conform(batch))
            rows += batch.num_rows
        if self.mode == "batch":
            self._close_file()
            self._commit()
        self.rows += rows
        self.batches += len(group)

    def finish(self) -> WriteResult:
        """Commit every file of the request in one Delta commit."""
        if self._done:
            raise RuntimeError("this write has already ended")
        self._run(self._finish)
        return WriteResult(self.table, self.rows, self.batches, self.created)

    def _finish(self) -> None:
        self._close_file()
        if self._pending or self.store.open_table(self.table) is None:
            self._commit()  # a new table appears even with no rows
        self._done = True

    def rollback(self) -> None:
        """Delete the files not yet committed (safe at any time, and twice)."""
        if self._done:
            return
        self._done = True
        self._abort_file()
        for file in self._files:
            file.unlink(missing_ok=True)
        if self._files:
            self.store.rollbacks += 1
        self._files.clear()
        self._pending.clear()
        if self._made_dir:
            with contextlib.suppress(OSError):  # only if still empty
                self.path.rmdir()

    # ---- data files -------------------------------------------------------

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` in the table's column order and types (nulls for omitted columns)."""
        by_name = {name.lower(): i for i, name in enumerate(batch.schema.names)}
        arrays = []
        for field in self.arrow_schema:
            i = by_name.get(field.name.lower())
            if i is None:
                arrays.append(pa.nulls(batch.num_rows, field.type))
            else:
                arrays.append(batch.column(i).cast(field.type, safe=True))
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._open_file()
        assert self._writer is not None and self._sink is not None
        self._writer.write_batch(batch)
        self._file_rows += batch.num_rows
        if self._sink.tell() >= self.store.target_file_size:
            self._close_file()

    def _open_file(self) -> None:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._made_dir = True
        codec = self.store.compression
        file = self.path / f"part-{uuid.uuid4()}.{codec}.parquet"
        self._files.append(file)  # before creating it, so rollback finds it
        self._sink = pa.OSFile(str(file), "wb")
        self._file = file
        self._file_rows = 0
        self._writer = pq.ParquetWriter(
            self._sink,
            self.arrow_schema,
            compression=None if codec == "none" else codec,
        )
        self.store.files_written += 1

    def _close_file(self) -> None:
        writer, sink, file = self._writer, self._sink, self._file
        if writer is None or sink is None or file is None:
            return
        self._writer = self._sink = self._file = None
        writer.close()
        sink.close()
        self._pending.append(
            AddAction(
                path=file.name,
                size=file.stat().st_size,
                partition_values={},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps({"numRecords": self._file_rows}),
            )
        )

    def _abort_file(self) -> None:
        writer, sink = self._writer, self._sink
        self._writer = self._sink = self._file = None
        for closeable in (writer, sink):
            if closeable is not None:
                with contextlib.suppress(Exception):
                    closeable.close()

    # ---- commits ----------------------------------------------------------

    def _commit(self) -> None:
        """Add the pending files to the log in one commit, retrying conflicts."""
        attempt = 0
        while True:
            try:
                self._commit_once()
                break
            except CommitFailedError:
                attempt += 1
                if attempt > self.store.commit_retries:
                    raise
                time.sleep(min(0.05 * 2**attempt, 1.0))
        self.store.commits += 1
        committed = {self.path / action.path for action in self._pending}
        self._files = [f for f in self._files if f not in committed]
        self._pending = []

    def _commit_once(self) -> None:
        existing = self.store.open_table(self.table)
        if existing is None:
            try:
                create_table_with_add_actions(
                    str(self.path), self.delta_schema, list(self._pending), mode="error"
                )
                return
            except DeltaError:
                existing = self.store.open_table(self.table)
                if existing is None:
                    raise
                # another writer created it first: append instead, if schemas agree
        schema = existing.schema()
        incoming = _delta_columns(self.delta_schema)
        check_subset(self.table, incoming, _delta_columns(schema))
        if _delta_columns(schema) != incoming:  # another writer made it first
            raise SchemaMismatchError(
                f"table {self.table!r} was created concurrently with another schema"
            )
        existing.create_write_transaction(list(self._pending), mode="append", schema=schema)

    def _run(self, fn: Any, *args: Any) -> None:
        if self._done:
            raise RuntimeError("this write has already ended")
        try:
            fn(*args)
        except BaseException as exc:
            self.rollback()
            raise self.store.translate(exc) from None
