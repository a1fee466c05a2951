"""The Delta Lake backend: one request's write into one Delta table.

Invariants:

* The root is a local directory or ``s3://bucket/prefix`` (``DeltaLocation``:
  one ``pyarrow.fs`` filesystem for data files, the same ``storage_options``
  for delta-rs). Local behaviour is unchanged by the S3 support.
* Memory stays bounded: batches are written to Parquet data files in the
  table's directory as they arrive, rolling to a new file at about the
  stream's ``target_file_size``; delta-rs never sees a whole request
  (delta-rs #2968 may collect a RecordBatchReader into memory).
* Request mode makes exactly one Delta commit, in ``finish()``, adding every
  file the request wrote. Until then no file is in the log, so nothing is
  visible; ``rollback()`` deletes the files, leaving no commit and no data file.
  (One exception, documented: with ``schema_mode: merge`` new columns are
  added by a metadata commit just before the data commit.)
* A rollback whose deletes fail (the store is unavailable) logs a warning
  and leaves the remaining files as orphans: no commit references them, so
  they are invisible, and ``vacuum --full`` removes them. It never replaces
  the error that caused it. A commit that failed is looked up in the log;
  if the log cannot be read, the commit may have landed, so its files are
  kept (never deleted from under a commit) and the failure is reported.
* Batch mode commits the files of each ``insert`` at once.
* A table name is an identifier and its directory resolves under the root.
* Every data file is written with the table's Arrow schema: incoming columns
  are matched by name (case-insensitively), cast safely, and table columns the
  stream omits are filled with nulls. Partition columns live in the log
  (``partitionValues``), not in the files.
* Idempotency keys (request mode): the key is a Delta ``txn`` action
  (``appId = arrowport:<key>``) in the data commit, checked before the write
  and again before every commit attempt, so a retry of a committed request
  writes nothing and answers the original result (delta-rs #2580: delta-rs
  does not reject an app transaction repeated later; one committed
  concurrently is a conflict, retried, and then found by the check).
* Commit conflicts with other writers are retried with backoff. On S3,
  delta-rs commits a version with a conditional PUT (``If-None-Match``), so
  writers in other processes cannot overwrite each other's commits;
  ``DeltaLocation.check_options`` refuses options that would undo that, and
  each commit is looked up in the log afterwards (a commit that is not there
  was overwritten: an error, never an ack).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field, Schema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    Transaction,
    create_table_with_add_actions,
)

from ..config import DeltaOptions
from ..names import InvalidNameError, validate_idempotency_key, validate_name
from .delta_location import DeltaLocation, describe_error
from .errors import (
    SchemaMismatchError,
    StorageError,
    UnsupportedTypeError,
    WriteRejectedError,
    first_line,
)
from .schema import Column, check_subset, duplicate_names
from .table_write import WriteResult
from .tables import INTERNAL_PREFIX, TableInfo

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("arrowport.storage")

KEY_PREFIX = "arrowport:"  # txn appId of an idempotency key
META_KEY = "arrowport.idempotency_key"  # commitInfo: the key, rows and batches
META_ROWS = "arrowport.rows"
META_BATCHES = "arrowport.batches"
META_COMMIT = "arrowport.commit"  # commitInfo: a unique id, to find the version committed
META_READ = "arrowport.read_version"  # commitInfo: the version the writer read (-1: none)
MAX_OPEN_PARTITIONS = 64  # open Parquet writers per request; the oldest is closed first
HISTORY_SCAN = 10_000  # commits searched for the original result of a replayed key

# Delta primitive type -> the DuckDB name the shared widening rules use
_DUCKDB_NAMES = {
    "byte": "TINYINT",
    "short": "SMALLINT",
    "integer": "INTEGER",
    "long": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
}
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# config name -> pyarrow's: lz4 is the standard LZ4_RAW codec, not the legacy Hadoop framing
_PARQUET_CODECS: dict[str, str | None] = {"none": None, "lz4": "lz4_raw"}


def _delta_columns(schema: Schema) -> list[Column]:
    columns = []
    for f in schema.fields:
        kind = str(getattr(f.type, "type", f.type))
        columns.append(Column(f.name, _DUCKDB_NAMES.get(kind, kind.upper()), f.nullable))
    return columns


def _microseconds(t: pa.DataType) -> pa.DataType:
    """``t`` with every timestamp in microseconds, the unit Delta stores.

    (delta-rs would make ``timestamp[ns]`` a ``timestampNanos`` table that
    deltalake itself cannot read, and refuses ``timestamp[s]``.) Values are
    cast safely later, so sub-microsecond precision is refused, not cut.
    """
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", t.tz)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = t.value_field
        inner = item.with_type(_microseconds(item.type))
        return pa.list_(inner) if pa.types.is_list(t) else pa.large_list(inner)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_microseconds(f.type)) for f in t])
    return t


def _delta_schema(schema: pa.Schema) -> Schema:
    schema = pa.schema([f.with_type(_microseconds(f.type)) for f in schema])
    try:
        return Schema.from_arrow(schema)
    except Exception as exc:  # delta-rs raises several kinds here, with a backtrace
        bad = []
        for f in schema:
            try:
                Schema.from_arrow(pa.schema([f]))
            except Exception as field_exc:
                bad.append(f"{f.name} ({f.type}: {first_line(field_exc)})")
        if not bad:
            raise SchemaMismatchError(
                f"stream schema has no Delta equivalent: {first_line(exc)}"
            ) from None
        raise UnsupportedTypeError(
            "Delta cannot store these columns' Arrow types: " + "; ".join(bad)
        ) from None


def _partition_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):  # a categorical is stored as its values
        t = t.value_type
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_signed_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_date32(t)
    )


def _partition_string(value: Any) -> str | None:
    """A partition value as the Delta protocol writes it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # ints as decimals, dates as YYYY-MM-DD, strings as is


def _commit_info(location: DeltaLocation, table: str, version: int) -> dict[str, Any] | None:
    """The ``commitInfo`` of ``version`` read from its log file, or None if there is none.

    Read from the file, not ``DeltaTable.history()``: deltalake 1.6.6 labels
    commits newer than the loaded version with wrong version numbers.
    """
    found = location.read_log(table, version)
    if found is None:
        return None
    for line in found[0].splitlines():
        if '"commitInfo"' in line:
            info = json.loads(line).get("commitInfo")
            return info if isinstance(info, dict) else {}
    return {}


def _latest_version(location: DeltaLocation, table: str, known: int) -> int:
    """The newest version in the log, at least ``known``."""
    version = known
    while location.exists(location.fs_path(table, "_delta_log", f"{version + 1:020d}.json")):
        version += 1
    return version


def _partition_dir(column: str, value: str | None) -> str:
    """A directory name for a partition value (readers use the log, not the path)."""
    if value is None:
        return f"{column}={NULL_PARTITION}"
    if _SAFE_VALUE.match(value):
        return f"{column}={value}"
    return f"{column}=h{hashlib.sha256(value.encode()).hexdigest()[:16]}"


@dataclass(slots=True)
class _Replay:
    """The original result of an idempotency key already committed."""

    rows: int
    batches: int
    version: int | None


class DeltaStore:
    """Delta tables, one directory each under ``root`` (a directory or ``s3://`` URI).

    ``open_write`` returns a ``DeltaWrite`` (the same session protocol as
    ``TableWrite``). Methods are synchronous and meant for worker threads.
    Tables due for compaction (``compact_every`` commits since the last) are
    listed in ``compactions_due`` for the server to run in the background.
    """

    backend = "delta"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        version_retention_hours: float = 168.0,
        checkpoint_interval: int = 100,
        enable_cdc: bool = False,
        compact_every: int = 0,
        commit_retries: int = 8,
        defaults: DeltaOptions | None = None,
        storage_options: Any = None,
    ) -> None:
        self.location = DeltaLocation(root, storage_options)
        self.version_retention_hours = version_retention_hours
        self.checkpoint_interval = checkpoint_interval
        self.enable_cdc = enable_cdc
        self.compact_every = compact_every
        self.commit_retries = commit_retries
        self.defaults = defaults or DeltaOptions()
        self.commits = 0
        self.rollbacks = 0
        self.files_written = 0
        self.conflicts_retried = 0
        self.commits_raced = 0  # commits that landed after losing a version to another writer
        self.replays = 0
        self._since_compaction: dict[str, int] = {}
        self.compactions_due: dict[str, DeltaOptions] = {}

    @classmethod
    def from_config(cls, config: Config) -> DeltaStore:
        delta = config.delta_config
        return cls(
            delta.table_path,
            version_retention_hours=delta.version_retention_hours,
            checkpoint_interval=delta.checkpoint_interval,
            enable_cdc=delta.enable_cdc,
            compact_every=delta.compact_every,
            storage_options=delta.storage_options,
        )

    @property
    def uri(self) -> str:
        """The root as a user wrote it: a directory, or ``s3://bucket/prefix``."""
        return self.location.uri

    @property
    def root(self) -> Path:
        """The local root directory (``StorageError`` for an object-store root)."""
        if self.location.local is None:
            raise StorageError(f"the Delta root {self.uri} is not a local directory")
        return self.location.local

    @property
    def storage_options(self) -> dict[str, str] | None:
        return self.location.storage_options

    def open(self) -> None:
        """Create a local root; check an object-store root's options (no network)."""
        if self.location.local is None:
            self.location.check_concurrency()
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create Delta root {str(self.root)!r}: {exc}") from None

    def close(self) -> None:
        """Nothing is held open between writes."""

    def statistics(self) -> dict[str, int]:
        return {
            "commits": self.commits,
            "rollbacks": self.rollbacks,
            "files": self.files_written,
            "conflicts_retried": self.conflicts_retried,
            "commits_raced": self.commits_raced,
            "replays": self.replays,
        }

    def table_path(self, table: str) -> str:
        """The directory (or URI) of ``table``; refuses names that would leave the root.

        Names are case-insensitive, as in DuckDB: an existing directory
        spelled differently is the table's.
        """
        validate_name(table, "table")
        if table.lower().startswith(INTERNAL_PREFIX):
            raise InvalidNameError(f"table names starting with {INTERNAL_PREFIX!r} are reserved")
        location = self.location
        if location.local is None:
            uri = location.table_uri(table)
            try:
                if location.exists(location.fs_path(uri)):
                    return uri
            except (OSError, pa.ArrowException) as exc:
                raise StorageError(describe_error(exc, f"cannot look up table {table!r}")) from None
            key = table.lower()
            found = next((d for d in location.list_dirs() if d.lower() == key), table)
            return location.table_uri(found)
        root = location.local
        path = root / table
        if not path.exists() and root.is_dir():
            key = table.lower()
            path = next((p for p in root.iterdir() if p.name.lower() == key), path)
        path = path.resolve()
        if path.parent != root:
            raise InvalidNameError(f"table name {table!r} resolves outside the Delta root")
        return str(path)

    def open_table(self, table: str) -> DeltaTable | None:
        path = self.table_path(table)
        options = self.storage_options
        try:
            if not DeltaTable.is_deltatable(path, storage_options=options):
                return None
            return DeltaTable(path, storage_options=options)
        except (DeltaError, OSError) as exc:
            raise StorageError(self.describe(exc, f"cannot open Delta table {table!r}")) from None

    def describe(self, exc: BaseException, where: str) -> str:
        """``where: <cause>``: the first line locally, the object-store cause on S3."""
        if self.location.local is not None:
            return f"{where}: {first_line(exc)}"
        return describe_error(exc, where)

    # -- the read side, as DuckDBStore's (Flight): see ``delta_tables``

    def list_tables(self) -> list[TableInfo]:
        from . import delta_tables

        return delta_tables.list_tables(self)

    def table_info(self, name: str) -> TableInfo:
        from . import delta_tables

        return delta_tables.table_info(self, name)

    def scan(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        batch_rows: int = 122_880,
        version: int | None = None,
    ) -> pa.RecordBatchReader:
        from . import delta_tables

        return delta_tables.scan(
            self, table, version=version, columns=columns, limit=limit, batch_rows=batch_rows
        )

    def table_properties(self, partition_by: tuple[str, ...] = ()) -> dict[str, str]:
        """The configuration a new table is created with."""
        hours = f"interval {self.version_retention_hours:g} hours"
        props = {
            "delta.checkpointInterval": str(self.checkpoint_interval),
            "delta.logRetentionDuration": hours,
            "delta.deletedFileRetentionDuration": hours,
        }
        if self.enable_cdc:
            props["delta.enableChangeDataFeed"] = "true"
        return props

    def open_write(
        self,
        table: str,
        schema: pa.Schema,
        *,
        commit: str = "request",
        options: DeltaOptions | None = None,
        idempotency_key: str | None = None,
    ) -> DeltaWrite:
        """Start one request's write into ``table`` (request or batch commit mode).

        Checks the schema against an existing table (422 on a mismatch) and
        the idempotency key against its log before any data is read. The
        returned ``DeltaWrite`` must end with ``finish()`` or ``rollback()``.
        """
        if commit not in ("request", "batch"):
            raise ValueError(f"unknown commit mode {commit!r}")
        options = options or self.defaults
        self.location.check_concurrency()
        path = self.table_path(table)
        if idempotency_key is not None:
            validate_idempotency_key(idempotency_key)
            if commit != "request":
                raise WriteRejectedError(
                    "idempotency keys need commit: request; in batch mode each commit is "
                    "acknowledged as it happens, so resend only unacknowledged batches",
                    error="idempotency_unsupported",
                    http_status=400,
                )
        dupes = duplicate_names(schema.names)
        if dupes:
            raise SchemaMismatchError(
                f"stream has duplicate column names (case-insensitive): {', '.join(dupes)}"
            )
        incoming = _delta_schema(schema)
        existing = self.open_table(table)
        replay = None
        if existing is None:
            target, partition_by = incoming, _check_partitions(table, schema, options)
        else:
            target = _evolve(table, incoming, existing.schema(), options.schema_mode)
            partition_by = tuple(existing.metadata().partition_columns)
            if idempotency_key is not None:
                replay = self.find_replay(existing, idempotency_key)
        return DeltaWrite(
            self,
            table,
            path,
            target,
            commit,
            options,
            partition_by,
            created=existing is None,
            key=idempotency_key,
            replay=replay,
        )

    def find_replay(self, dt: DeltaTable, key: str) -> _Replay | None:
        """The original result if ``key`` is committed in ``dt``, else None."""
        if dt.transaction_version(KEY_PREFIX + key) is None:
            return None
        uri = str(dt.table_uri).rstrip("/")
        path = uri if uri.startswith("s3://") else str(Path(unquote(urlparse(uri).path)))
        latest = _latest_version(self.location, path, dt.version())
        for version in range(latest, max(latest - HISTORY_SCAN, -1), -1):
            info = _commit_info(self.location, path, version)
            if info is None:
                break  # removed by log cleanup
            if info.get(META_KEY) == key:
                return _Replay(int(info.get(META_ROWS, 0)), int(info.get(META_BATCHES, 0)), version)
        return _Replay(0, 0, None)  # committed, but its commit info is gone (log cleanup)

    def committed(self, table: str, options: DeltaOptions) -> None:
        """Count a commit towards background compaction."""
        self.commits += 1
        if self.compact_every <= 0:
            return
        key = table.lower()
        count = self._since_compaction.get(key, 0) + 1
        if count >= self.compact_every:
            self.compactions_due[key] = options  # names are case-insensitive
            count = 0
        self._since_compaction[key] = count

    def compact(self, table: str, options: DeltaOptions) -> dict[str, Any]:
        """Compact small files (z-order where configured): one optimize commit.

        Runs beside ingest: the optimize commit only removes and re-adds
        files, so appends committed meanwhile do not conflict with it.
        """
        dt = self.open_table(table)
        if dt is None:
            return {}
        try:
            if options.z_order_by:
                metrics = dt.optimize.z_order(
                    list(options.z_order_by), target_size=options.target_file_size
                )
            else:
                metrics = dt.optimize.compact(target_size=options.target_file_size)
        except DeltaError as exc:
            raise StorageError(f"compaction of {table!r} failed: {exc}") from None
        return dict(metrics)

    def translate(self, exc: BaseException) -> BaseException:
        """Map a delta-rs, Arrow or OS exception to the error a client is shown."""
        if isinstance(exc, pa.ArrowInvalid | pa.ArrowNotImplementedError):
            return WriteRejectedError(f"Delta write refused the rows: {first_line(exc)}")
        if isinstance(exc, DeltaError | OSError | pa.ArrowException):
            return StorageError(self.describe(exc, "Delta write failed"))
        return exc


def _check_partitions(table: str, schema: pa.Schema, options: DeltaOptions) -> tuple[str, ...]:
    """The partition columns of a new table, as the stream spells them."""
    by_name = {f.name.lower(): f for f in schema}
    columns = []
    for name in options.partition_by:
        f = by_name.get(name.lower())
        if f is None:
            raise SchemaMismatchError(
                f"table {table!r} is partitioned by {name!r}, which the stream does not have",
                missing=(name,),
            )
        if not _partition_type_ok(f.type):
            raise SchemaMismatchError(
                f"partition column {f.name!r} has type {f.type}; partition by a string, "
                "integer, boolean or date column"
            )
        columns.append(f.name)
    if columns and len(columns) == len(schema):
        raise SchemaMismatchError(
            f"table {table!r}: every column is a partition column; keep at least one data column"
        )
    return tuple(columns)


def _evolve(table: str, incoming: Schema, existing: Schema, mode: str) -> Schema:
    """The table schema after this stream: the same, or with new nullable columns."""
    have = {f.name.lower() for f in existing.fields}
    new = [f for f in incoming.fields if f.name.lower() not in have]
    if mode == "strict" or not new:
        try:
            check_subset(table, _delta_columns(incoming), _delta_columns(existing))
        except SchemaMismatchError as exc:
            if mode == "strict" and exc.extra:
                exc.detail += " (schema_mode: strict; merge would add them)"
                exc.args = (exc.detail,)
            raise
        return existing
    known = Schema([f for f in incoming.fields if f.name.lower() in have])
    check_subset(table, _delta_columns(known), _delta_columns(existing))
    added = [Field(f.name, f.type, nullable=True) for f in new]
    return Schema([*existing.fields, *added])


@dataclass(slots=True)
class _OpenFile:
    path: str  # in the location's filesystem
    relative: str
    partition: dict[str, str | None]
    sink: pa.NativeFile
    writer: pq.ParquetWriter
    rows: int = 0


@dataclass(slots=True)
class _Files:
    """The data files of one write: open ones, and closed ones not yet committed."""

    open: OrderedDict[tuple[str | None, ...], _OpenFile] = field(default_factory=OrderedDict)
    pending: list[AddAction] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # every file made and not committed


class DeltaWrite:
    """One request's write into one Delta table: Parquet files, then a commit.

    ``rows`` and ``batches`` count what ``insert`` has written (committed, in
    batch mode). Methods are never called concurrently.
    """

    def __init__(
        self,
        store: DeltaStore,
        table: str,
        path: str,
        target: Schema,
        mode: str,
        options: DeltaOptions,
        partition_by: tuple[str, ...],
        *,
        created: bool,
        key: str | None = None,
        replay: _Replay | None = None,
    ) -> None:
        self.store, self.table, self.path, self.mode = store, table, path, mode
        self.location = store.location
        self.options = options
        self.delta_schema = target
        self.arrow_schema = pa.schema(target.to_arrow())
        self.partition_by = partition_by
        parts = {p.lower() for p in partition_by}
        self.data_schema = pa.schema([f for f in self.arrow_schema if f.name.lower() not in parts])
        self.created = created
        self.key = key
        self.replay = replay
        self.replayed = replay is not None
        self.version: int | None = None
        self._attempt: tuple[str, int] | None = None  # the commit being tried: (id, read version)
        self._unread = ""  # why the log could not be read after a failed commit
        self.rows = 0
        self.batches = 0
        self._files = _Files()
        self._made_dirs: list[Path] = []
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
        rows = sum(batch.num_rows for batch in group)
        if self.replay is None:  # a replayed key writes nothing
            self._write_group(group)
            if self.mode == "batch":
                self._close_all()
                self._commit(len(group), rows)
        self.rows += rows
        self.batches += len(group)

    def finish(self) -> WriteResult:
        """Commit every file of the request in one Delta commit."""
        if self._done:
            raise RuntimeError("this write has already ended")
        self._run(self._finish)
        if self.replay is not None:
            self.store.replays += 1
            return WriteResult(
                self.table,
                self.replay.rows,
                self.replay.batches,
                False,
                version=self.replay.version,
                replayed=True,
            )
        return WriteResult(self.table, self.rows, self.batches, self.created, version=self.version)

    def _finish(self) -> None:
        self._close_all()
        if self.replay is None and (
            self._files.pending
            or (self.key is not None and self.mode == "request")  # the key is recorded
            or self.store.open_table(self.table) is None  # a new table appears with no rows
        ):
            self._commit(self.batches, self.rows)
        self._done = True
        if self.replay is not None:
            self._discard()

    def rollback(self) -> None:
        """Delete the files not yet committed (safe at any time, and twice)."""
        if self._done:
            return
        self._done = True
        if self._discard():
            self.store.rollbacks += 1

    def _discard(self) -> bool:
        for f in self._files.open.values():
            for closeable in (f.writer, f.sink):
                with contextlib.suppress(Exception):
                    closeable.close()
        self._files.open.clear()
        made = self._files.made
        for done, file in enumerate(made):
            try:
                self.location.delete(file)
            except Exception as exc:  # store unavailable: the rest stay, as orphans
                self._orphaned(made[done:], exc)
                break
        self._files.made = []
        self._files.pending.clear()
        for directory in reversed(self._made_dirs):  # only if still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        return bool(made)

    def _orphaned(self, files: list[str], exc: BaseException) -> None:
        """Log the uncommitted ``files`` a rollback leaves behind (and why).

        Stops at the first failure: in an outage every delete would fail,
        each after the S3 client's retries, and the request waits for them.
        """
        names = ", ".join(f.rsplit("/", 1)[-1] for f in files[:3])
        more = f" and {len(files) - 3} more" if len(files) > 3 else ""
        log.warning(
            "rollback of a write to %s could not delete %d uncommitted data file(s) in %s "
            "(%s%s); they stay as orphans: no commit references them, so readers never see "
            "them, and `arrowport delta vacuum %s --full --no-dry-run` removes them once they "
            "are older than the retention. Cause: %s",
            self.table,
            len(files),
            self.path,
            names,
            more,
            self.table,
            self._reason(exc),
        )

    def _reason(self, exc: BaseException) -> str:
        """``exc`` as one line (the object-store cause named on S3)."""
        return first_line(exc) if self.location.local is not None else describe_error(exc)

    # ---- data files -------------------------------------------------------

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` in the table's column order and types (nulls for omitted columns)."""
        by_name = {name.lower(): i for i, name in enumerate(batch.schema.names)}
        arrays = []
        for f in self.arrow_schema:
            i = by_name.get(f.name.lower())
            if i is None:
                arrays.append(pa.nulls(batch.num_rows, f.type))
            else:
                arrays.append(batch.column(i).cast(f.type, safe=True))
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)

    def _write_group(self, group: list[pa.RecordBatch]) -> None:
        """Write ``group`` as one row group per file it goes to (per partition).

        delta-rs writes row groups of about a million rows; one per incoming
        batch would make files larger and slower to write and read.
        """
        batches = [self._conform(batch) for batch in group if batch.num_rows]
        if not batches:
            return
        data = pa.Table.from_batches(batches, schema=self.arrow_schema)
        if not self.partition_by:
            self._write_part((), {}, data)
            return
        for values, part in self._split(data):
            partition = dict(zip(self.partition_by, values, strict=True))
            self._write_part(values, partition, part)

    def _split(self, data: pa.Table) -> list[tuple[tuple[str | None, ...], pa.Table]]:
        """``data`` cut by partition values (each part without the partition columns)."""
        keys = data.select(list(self.partition_by))
        distinct = keys.group_by(list(self.partition_by)).aggregate([])
        rows = data.select(self.data_schema.names)
        parts = []
        for row in distinct.to_pylist():
            mask = None
            for name in self.partition_by:
                column, value = keys.column(name), row[name]
                test = (
                    pc.is_null(column)
                    if value is None
                    else pc.equal(column, pa.scalar(value, column.type))
                )
                mask = test if mask is None else pc.and_(mask, test)
            values = tuple(_partition_string(row[name]) for name in self.partition_by)
            parts.append((values, rows.filter(mask)))
        return parts

    def _write_part(
        self, key: tuple[str | None, ...], partition: dict[str, str | None], data: pa.Table
    ) -> None:
        files = self._files
        f = files.open.get(key)
        if f is None:
            if len(files.open) >= MAX_OPEN_PARTITIONS:
                self._close(next(iter(files.open)))
            f = files.open[key] = self._open_file(partition)
        else:
            files.open.move_to_end(key)
        f.writer.write_table(data, row_group_size=max(data.num_rows, 1))
        f.rows += data.num_rows
        if f.sink.tell() >= self.options.target_file_size:
            self._close(key)

    def _open_file(self, partition: dict[str, str | None]) -> _OpenFile:
        parts = [_partition_dir(c, v) for c, v in partition.items()]
        codec = self.options.compression
        name = f"part-{uuid.uuid4()}.{codec}.parquet"
        file = self.location.fs_path(self.path, *parts, name)
        self._files.made.append(file)  # before creating it, so rollback finds it
        if self.location.local is None:  # S3: no directories; the upload streams in parts
            sink = self.location.fs.open_output_stream(file)
        for attempt in range(3 if self.location.local is not None else 0):
            self._make_dirs(parts)
            try:
                sink = pa.OSFile(file, "wb")
                break
            except FileNotFoundError:  # another writer's rollback removed an empty directory
                if attempt == 2:
                    raise
        writer = pq.ParquetWriter(
            sink,
            self.data_schema,
            compression=_PARQUET_CODECS.get(codec, codec),
            compression_level=self.options.compression_level,
            store_decimal_as_integer=True,  # as delta-rs and Spark write decimals
        )
        self.store.files_written += 1
        relative = "/".join([*parts, name])
        return _OpenFile(file, relative, partition, sink, writer)

    def _make_dirs(self, parts: list[str]) -> None:
        """Create the table's and partitions' directories; concurrent writers may too."""
        directory = Path(self.path)
        for part in ["", *parts]:
            directory = directory / part if part else directory
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            except FileNotFoundError:  # the root went missing: recreate it
                directory.mkdir(parents=True, exist_ok=True)
            self._made_dirs.append(directory)

    def _close(self, key: tuple[str | None, ...]) -> None:
        f = self._files.open.pop(key)
        f.writer.close()
        size = f.sink.tell() if self.location.local is None else 0
        f.sink.close()
        if self.location.local is not None:
            size = Path(f.path).stat().st_size
        self._files.pending.append(
            AddAction(
                path=f.relative,
                size=size,
                partition_values=f.partition,
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps({"numRecords": f.rows}),
            )
        )

    def _close_all(self) -> None:
        while self._files.open:
            self._close(next(iter(self._files.open)))

    # ---- commits ----------------------------------------------------------

    def _commit(self, batches: int, rows: int) -> None:
        """Add the pending files to the log in one commit, retrying conflicts.

        If anything fails once the commit may have reached the log (delta-rs
        runs checkpoints and log cleanup after committing), the log is
        asked: a commit that landed keeps its files, whatever went wrong.
        """
        attempt = 0
        while True:
            self._attempt = None
            try:
                self._commit_once(batches, rows)
                break
            except CommitFailedError as exc:
                attempt += 1
                if attempt > self.store.commit_retries:
                    raise StorageError(
                        f"Delta commit to {self.table!r} still conflicted after "
                        f"{attempt} attempts: {first_line(exc)}"
                    ) from None
                self.store.conflicts_retried += 1
                delay = min(0.05 * 2**attempt, 2.0)
                time.sleep(delay * (0.5 + random.random()))
            except BaseException as exc:
                landed = self._landed()
                if landed is None:  # it may have landed: keep the files it adds
                    self._keep_files(exc)
                    raise
                if not landed:
                    raise
                self._committed()
                if not isinstance(exc, Exception):  # KeyboardInterrupt: the data stays
                    raise
                log.warning(
                    "commit %s of %s landed, but a step after it failed: %s",
                    self.version,
                    self.table,
                    self._reason(exc),
                )
                return
        if self.replay is not None:  # another request with our key committed first
            return
        self._committed()
        self._checkpoint()

    def _landed(self) -> bool | None:
        """Whether the commit being attempted is in the log (then ``version`` is set);
        None if the log cannot be read (the store is unavailable), so it may have."""
        if self._attempt is None:
            return False
        commit_id, read_version = self._attempt
        try:
            self.version = self._committed_version(read_version, commit_id)
        except Exception as exc:
            self._unread = self._reason(exc)
            return None
        return self.version is not None

    def _keep_files(self, exc: BaseException) -> None:
        """The commit failed, and whether it landed cannot be read: keep its files."""
        files = self._files.made
        log.warning(
            "commit to %s failed and the log cannot be read to tell whether it landed, so "
            "its %d data file(s) in %s are kept; if it did not land, no commit references "
            "them and `arrowport delta vacuum %s --full --no-dry-run` removes them. "
            "Commit: %s. Log: %s",
            self.table,
            len(files),
            self.path,
            self.table,
            self._reason(exc),
            self._unread,
        )
        self._attempt = None  # reported once: a later look reads "not landed"
        self._files.made = []
        self._files.pending = []
        self._made_dirs = []

    def _committed(self) -> None:
        self.store.committed(self.table, self.options)
        self._files.made = []  # every file is in the log now
        self._files.pending = []
        self._made_dirs = []

    def _properties(
        self,
        batches: int,
        rows: int,
        commit_id: str,
        *,
        retries: int | None = None,
        read_version: int = -1,
    ) -> CommitProperties:
        meta: dict[str, Any] = {
            META_COMMIT: commit_id,
            META_ROWS: rows,
            META_BATCHES: batches,
            META_READ: read_version,
        }
        if self.key is None:
            return CommitProperties(custom_metadata=meta, max_commit_retries=retries)
        return CommitProperties(
            custom_metadata={**meta, META_KEY: self.key},
            app_transactions=[Transaction(KEY_PREFIX + self.key, 1)],
            max_commit_retries=retries,
        )

    def _committed_version(self, read_version: int, commit_id: str) -> int | None:
        """The version our commit landed at (later than read + 1 if others won races)."""
        version = read_version + 1
        while (info := _commit_info(self.location, self.path, version)) is not None:
            if info.get(META_COMMIT) == commit_id:
                return version
            version += 1
        return None

    def _commit_once(self, batches: int, rows: int) -> None:
        commit_id = uuid.uuid4().hex
        existing = self.store.open_table(self.table)
        if existing is None:
            self._attempt = (commit_id, -1)
            try:
                # no retries: delta-rs would retry a lost creation race as a second
                # CREATE TABLE at version 1; the loser appends instead (below)
                create_table_with_add_actions(
                    self.path,
                    self.delta_schema,
                    list(self._files.pending),
                    mode="error",
                    partition_by=list(self.partition_by) or None,
                    configuration=self.store.table_properties(self.partition_by),
                    storage_options=self.store.storage_options,
                    commit_properties=self._properties(batches, rows, commit_id, retries=0),
                )
                self.version = 0
                return
            except DeltaError as exc:
                landed = self._landed()
                if landed is None:  # it may have been created: keep the files, never retry
                    self._keep_files(exc)
                    raise self.store.translate(exc) from None
                if landed:  # created, but a step after the commit failed
                    raise
                existing = self.store.open_table(self.table)
                if existing is None:
                    raise
                # another writer created it first: append instead, if schemas agree
        self.created = False  # appending: another writer created the table first
        if self.key is not None:
            self.replay = self.store.find_replay(existing, self.key)
            if self.replay is not None:
                return
        schema = self._table_schema(existing)
        read_version = existing.version()
        if list(existing.metadata().partition_columns) != list(self.partition_by):
            raise SchemaMismatchError(
                f"table {self.table!r} was created concurrently with other partition columns"
            )
        self._attempt = (commit_id, read_version)
        existing.create_write_transaction(
            list(self._files.pending),
            mode="append",
            schema=schema,
            partition_by=list(self.partition_by) or None,
            commit_properties=self._properties(batches, rows, commit_id, read_version=read_version),
        )
        self.version = self._committed_version(read_version, commit_id)
        if self.version is None:
            raise StorageError(
                f"Delta commit to {self.table!r} was overwritten by another writer after "
                "it landed: the object store does not honour conditional puts "
                "(If-None-Match), so concurrent commits are not safe on it"
            )
        if self.version > read_version + 1:  # lost a race for read + 1: delta-rs retried
            self.store.commits_raced += 1

    def _table_schema(self, existing: DeltaTable) -> Schema:
        """The table's schema, with this write's new columns added first (merge mode)."""
        schema = existing.schema()
        have = {f.name.lower() for f in schema.fields}
        new = [f for f in self.delta_schema.fields if f.name.lower() not in have]
        check_subset(
            self.table,
            [c for c in _delta_columns(self.delta_schema) if c.name.lower() in have],
            _delta_columns(schema),
        )
        if new:
            if self.options.schema_mode == "strict":
                raise SchemaMismatchError(
                    f"table {self.table!r} no longer has columns "
                    f"{', '.join(f.name for f in new)} (it changed while this request was "
                    "written; schema_mode: strict)"
                )
            existing.alter.add_columns(new)
            existing.update_incremental()
            schema = existing.schema()
        return schema

    def _checkpoint(self) -> None:
        """A checkpoint every ``checkpoint_interval`` versions, for tables whose
        own ``delta.checkpointInterval`` (which delta-rs obeys) differs."""
        interval = self.store.checkpoint_interval
        version = self.version
        if version is None or version == 0 or version % interval:
            return
        dt = self.store.open_table(self.table)
        if dt is None or dt.metadata().configuration.get("delta.checkpointInterval") == str(
            interval
        ):
            return
        try:
            dt.create_checkpoint()
        except DeltaError as exc:  # the commit stands; a later checkpoint covers it
            log.warning(
                "checkpoint of %s at version %d failed: %s", self.table, version, self._reason(exc)
            )

    def _run(self, fn: Any, *args: Any) -> None:
        if self._done:
            raise RuntimeError("this write has already ended")
        try:
            fn(*args)
        except BaseException as exc:
            self.rollback()
            raise self.store.translate(exc) from None
