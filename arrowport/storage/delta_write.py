"""One request's write into one Delta table: Parquet files as batches
arrive, then one commit (each ``insert``'s, in batch mode).

The invariants are in ``delta.py``; this module holds the write, its commit
with conflict retries, and the commit metadata idempotency keys are found by.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    Transaction,
    create_table_with_add_actions,
)

from ..config import DeltaOptions
from .delta_location import DeltaLocation, describe_error
from .delta_schema import delta_columns, partition_string, without_metadata
from .errors import (
    SchemaMismatchError,
    StorageError,
    TableExistsError,
    TableNotFoundError,
    first_line,
)
from .modes import APPEND, CREATE, CREATE_APPEND, REPLACE
from .schema import check_subset
from .table_write import WriteResult

if TYPE_CHECKING:
    from .delta import DeltaStore
    from .typemap import TypePlan

log = logging.getLogger("arrowport.storage")

KEY_PREFIX = "arrowport:"  # txn appId of an idempotency key
META_KEY = "arrowport.idempotency_key"  # commitInfo: the key, rows and batches
META_ROWS = "arrowport.rows"
META_BATCHES = "arrowport.batches"
META_KEYS = "arrowport.keys"  # commitInfo of a group: JSON {key: [rows, batches]}
META_COMMIT = "arrowport.commit"  # commitInfo: a unique id, to find the version committed
META_READ = "arrowport.read_version"  # commitInfo: the version the writer read (-1: none)
MAX_OPEN_PARTITIONS = 64  # open Parquet writers per request; the oldest is closed first
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# config name -> pyarrow's: lz4 is the standard LZ4_RAW codec, not the legacy Hadoop framing
_PARQUET_CODECS: dict[str, str | None] = {"none": None, "lz4": "lz4_raw"}


def commit_info(location: DeltaLocation, table: str, version: int) -> dict[str, Any] | None:
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


def _partition_dir(column: str, value: str | None) -> str:
    """A directory name for a partition value (readers use the log, not the path)."""
    if value is None:
        return f"{column}={NULL_PARTITION}"
    if _SAFE_VALUE.match(value):
        return f"{column}={value}"
    return f"{column}=h{hashlib.sha256(value.encode()).hexdigest()[:16]}"


@dataclass(slots=True)
class Replay:
    """The original result of an idempotency key already committed."""

    rows: int
    batches: int
    version: int | None


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
        replay: Replay | None = None,
        plan: TypePlan | None = None,
        table_mode: str = CREATE_APPEND,
    ) -> None:
        self.store, self.table, self.path, self.mode = store, table, path, mode
        self.table_mode = table_mode  # what to do with the table (``modes.py``)
        self.location = store.location
        self.options = options
        self.delta_schema = target
        # what the Parquet files hold: without the metadata a table made before
        # metadata was stripped may still have in its schema (see without_metadata)
        self.arrow_schema = without_metadata(pa.schema(target.to_arrow()))
        self.partition_by = partition_by
        parts = {p.lower() for p in partition_by}
        self.data_schema = pa.schema([f for f in self.arrow_schema if f.name.lower() not in parts])
        self.created = created
        self.key = key
        self.replay = replay
        self.replayed = replay is not None
        self.plan = plan  # the stream's columns in the types stored
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
        if self.plan is not None and not self.plan.identity:
            group = [self.plan.convert(batch) for batch in group]
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
            or self.table_mode == REPLACE  # the table is replaced, rows or none
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
            values = tuple(partition_string(row[name]) for name in self.partition_by)
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

    def _replayed(self, existing: DeltaTable) -> bool:
        """Whether the key is committed by now (then nothing is committed)."""
        if self.key is not None:
            self.replay = self.store.find_replay(existing, self.key)
        return self.replay is not None

    def _committed_version(self, read_version: int, commit_id: str) -> int | None:
        """The version our commit landed at (later than read + 1 if others won races)."""
        version = read_version + 1
        while (info := commit_info(self.location, self.path, version)) is not None:
            if info.get(META_COMMIT) == commit_id:
                return version
            version += 1
        return None

    def _commit_once(self, batches: int, rows: int) -> None:
        commit_id = uuid.uuid4().hex
        existing = self.store.open_table(self.table)
        lost_creation = False
        if existing is None and self.table_mode == APPEND:  # dropped since the write began
            from . import delta_tables

            raise TableNotFoundError.named(self.table, delta_tables.table_names(self.store))
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
                lost_creation = True
        if self._replayed(existing):
            return
        if lost_creation and self.table_mode == CREATE:
            raise TableExistsError.named(self.table, self.store.backend)
        if self.table_mode == REPLACE:
            self._overwrite(existing, commit_id, batches, rows)
            return
        self.created = False  # appending: another writer created the table first
        schema = self._table_schema(existing)
        read_version = existing.version()
        kept = [c.lower() for c in existing.metadata().partition_columns]
        if kept != [c.lower() for c in self.partition_by]:
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
        self._check_landed(read_version, commit_id)

    def _overwrite(self, existing: DeltaTable, commit_id: str, batches: int, rows: int) -> None:
        """Replace: one commit that removes every file of the table and adds this write's,
        with the stream's schema (its partition columns are the table's: see open_write)."""
        read_version = existing.version()
        kept = [c.lower() for c in existing.metadata().partition_columns]
        if kept != [c.lower() for c in self.partition_by]:
            raise SchemaMismatchError(
                f"table {self.table!r} was created concurrently with other partition columns"
            )
        self._attempt = (commit_id, read_version)
        existing.create_write_transaction(
            list(self._files.pending),
            mode="overwrite",
            schema=self.delta_schema,
            partition_by=list(self.partition_by) or None,
            commit_properties=self._properties(batches, rows, commit_id, read_version=read_version),
        )
        self.created = True  # the table as it is now was made by this write
        self._check_landed(read_version, commit_id)

    def _check_landed(self, read_version: int, commit_id: str) -> None:
        """Find the version our commit landed at (``StorageError`` if it is not in the log)."""
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
            [c for c in delta_columns(self.delta_schema) if c.name.lower() in have],
            delta_columns(schema),
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
