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

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa

from ..config import DeltaOptions
from ..names import InvalidNameError, validate_delta_table
from . import typemap
from .delta_location import DeltaLocation, describe_error
from .errors import (
    SchemaMismatchError,
    StorageError,
    TableExistsError,
    TableNotFoundError,
    WriteRejectedError,
    first_line,
)
from .modes import APPEND, CREATE, CREATE_APPEND, REPLACE, check_mode
from .schema import check_key, duplicate_names
from .tables import TableInfo

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from ..config import Config
    from .delta_write import DeltaWrite, Replay

# deltalake (and pyarrow.dataset with it, ~40 MB of RSS) is imported on the first Delta
# request, not at start: a server with no Delta traffic never loads it.

HISTORY_SCAN = 10_000  # commits searched for the original result of a replayed key


log = logging.getLogger("arrowport.storage")


def _latest_version(location: DeltaLocation, table: str, known: int) -> int:
    """The newest version in the log, at least ``known``."""
    version = known
    while location.exists(location.fs_path(table, "_delta_log", f"{version + 1:020d}.json")):
        version += 1
    return version


def _group_keys(info: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """The keys a group commit recorded: ``{key: (rows, batches)}`` (none if not a group's)."""
    from .delta_write import META_KEYS  # deltalake is imported on first use

    raw = info.get(META_KEYS)
    if raw is None:
        return {}
    try:
        found = json.loads(raw) if isinstance(raw, str) else raw
        return {str(k): (int(v[0]), int(v[1])) for k, v in found.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return {}  # not written by Arrowport


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
        validate_delta_table(table)
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
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

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
        mode: str = CREATE_APPEND,
    ) -> DeltaWrite:
        """Start one request's write into ``table`` (request or batch commit mode).

        Checks the schema against an existing table (422 on a mismatch) and
        the idempotency key against its log before any data is read. The
        returned ``DeltaWrite`` must end with ``finish()`` or ``rollback()``.
        ``mode`` (``modes.py``): create a missing table and append (the
        default), create (``TableExistsError``), append (``TableNotFoundError``),
        or replace: one overwrite commit with the stream's schema (a replace
        keeps the table's partition columns: delta-rs cannot change them).
        """
        from .delta_schema import evolve_schema, to_delta_schema
        from .delta_write import DeltaWrite

        if commit not in ("request", "batch"):
            raise ValueError(f"unknown commit mode {commit!r}")
        check_mode(mode, commit)
        options = options or self.defaults
        self.location.check_concurrency()
        path = self.table_path(table)
        types = self.check_stream(schema, commit, idempotency_key)
        schema = types.target
        incoming = to_delta_schema(schema)
        existing = self.open_table(table)
        replay = None
        partition_by: tuple[str, ...]
        if existing is not None and idempotency_key is not None:
            replay = self.find_replay(existing, idempotency_key)
        if replay is None:
            self._check_mode(table, mode, existing)
        if replay is not None and mode != CREATE_APPEND:  # nothing is written
            target, partition_by = incoming, ()
        elif existing is None or mode == REPLACE:
            target = incoming
            partition_by = self._new_partitions(table, schema, options, existing)
        else:
            target = evolve_schema(table, incoming, existing.schema(), options.schema_mode)
            partition_by = tuple(existing.metadata().partition_columns)
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
            plan=types,
            table_mode=mode,
        )

    def _check_mode(self, table: str, mode: str, existing: DeltaTable | None) -> None:
        """Refuse a ``create`` of an existing table and an ``append`` to a missing one."""
        if mode == CREATE and existing is not None:
            raise TableExistsError.named(table, self.backend)
        if mode == APPEND and existing is None:
            from . import delta_tables

            raise TableNotFoundError.named(table, delta_tables.table_names(self))

    def _new_partitions(
        self,
        table: str,
        schema: pa.Schema,
        options: DeltaOptions,
        existing: DeltaTable | None,
    ) -> tuple[str, ...]:
        """The partition columns of a table this write creates, or replaces: a replace
        keeps the table's own (delta-rs cannot change them in an overwrite)."""
        from .delta_schema import check_partitions

        if existing is None:
            return check_partitions(table, schema, options)
        kept = tuple(existing.metadata().partition_columns)
        try:
            return check_partitions(table, schema, replace(options, partition_by=kept))
        except SchemaMismatchError as exc:
            exc.detail += f" (a replace keeps a Delta table's partition columns: {', '.join(kept)})"
            exc.args = (exc.detail,)
            raise

    def check_stream(
        self, schema: pa.Schema, commit: str = "request", idempotency_key: str | None = None
    ) -> typemap.TypePlan:
        """What needs no table: the key, the column names, and the stored types."""
        check_key(idempotency_key, commit)
        dupes = duplicate_names(schema.names)
        if dupes:
            raise SchemaMismatchError(
                f"stream has duplicate column names (case-insensitive): {', '.join(dupes)}"
            )
        return typemap.plan(schema, "delta")

    def find_replay(self, dt: DeltaTable, key: str) -> Replay | None:
        """The original result if ``key`` is committed in ``dt``, else None."""
        from .delta_write import KEY_PREFIX, META_BATCHES, META_KEY, META_ROWS, Replay, commit_info

        if dt.transaction_version(KEY_PREFIX + key) is None:
            return None
        uri = str(dt.table_uri).rstrip("/")
        path = uri if uri.startswith("s3://") else str(Path(unquote(urlparse(uri).path)))
        latest = _latest_version(self.location, path, dt.version())
        for version in range(latest, max(latest - HISTORY_SCAN, -1), -1):
            info = commit_info(self.location, path, version)
            if info is None:
                break  # removed by log cleanup
            if info.get(META_KEY) == key:
                return Replay(int(info.get(META_ROWS, 0)), int(info.get(META_BATCHES, 0)), version)
            counts = _group_keys(info).get(key)
            if counts is not None:  # committed in a group (delta_group.py)
                return Replay(counts[0], counts[1], version)
        return Replay(0, 0, None)  # committed, but its commit info is gone (log cleanup)

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
        from deltalake.exceptions import DeltaError

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
        from deltalake.exceptions import DeltaError

        if isinstance(exc, pa.ArrowInvalid | pa.ArrowNotImplementedError):
            return WriteRejectedError(f"Delta write refused the rows: {first_line(exc)}")
        if isinstance(exc, DeltaError | OSError | pa.ArrowException):
            return StorageError(self.describe(exc, "Delta write failed"))
        return exc
