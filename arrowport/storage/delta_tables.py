"""Reading the Delta tables of a ``DeltaStore``.

Invariants:

* Plain synchronous functions for worker threads (and the CLI); each takes
  the store first, opens the table afresh (no state is cached between
  calls), and reads one version of it.
* The root is a local directory or ``s3://bucket/prefix`` (the store's
  ``location``); delta-rs gets the store's ``storage_options`` everywhere.
* A table is a directory under the store's root whose name is a valid
  Arrowport identifier and which holds a Delta log. Names resolve like
  DuckDB's: the exact spelling first, then ignoring case; ``_arrowport*``
  directories are Arrowport's own and do not exist for readers.
* Every argument is checked before any row is read:
  ``InvalidNameError``/``InvalidReadError``/``ColumnNotFoundError`` (400),
  ``TableNotFoundError`` (404). A delta-rs, Arrow or OS failure is a
  ``StorageError`` naming the table and the operation.
* Readers (``scan``, ``changes``) stream: memory is bounded by the scanner's
  read-ahead, never by the size of the table.
* Results meant for humans or JSON (``describe``, ``history``) hold only
  JSON types.
* The helpers that open tables, check arguments and shape errors and JSON
  (``open_table``, ``load_table``, ``check_version``, ``match_columns``,
  ``storage_error``, ``json_safe``, ...) are shared with
  ``delta_maintenance``, which imports them from here (never the reverse).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound

from ..names import InvalidNameError, validate_delta_table
from .delta_location import describe_error
from .errors import (
    ColumnNotFoundError,
    InvalidReadError,
    StorageError,
    TableNotFoundError,
    first_line,
)
from .tables import TableInfo, is_internal, valid_table_name

if TYPE_CHECKING:
    from .delta import DeltaStore

log = logging.getLogger("arrowport.storage")

CDF_PROPERTY = "delta.enableChangeDataFeed"
CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
# Scanner read-ahead: what bounds a scan's memory (files x batches in flight).
FRAGMENT_READAHEAD = 2
BATCH_READAHEAD = 4

# -- names -------------------------------------------------------------------


def _is_table(store: DeltaStore, path: str) -> bool:
    """Whether ``path`` holds a Delta log; ``StorageError`` if it cannot be read.

    deltalake raises ``OSError`` for a log directory it cannot walk
    (unreadable, a symlink loop); ``Path.is_dir`` for an unreadable parent.
    """
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        if store.location.local is None:
            return bool(DeltaTable.is_deltatable(path, storage_options=store.storage_options))
        local = Path(path)
        return (local / "_delta_log").is_dir() and DeltaTable.is_deltatable(str(local))
    except OSError as exc:
        raise storage_error(name, "reading the log", exc) from None


def _names_from(store: DeltaStore, entries: list[str]) -> list[str]:
    names = []
    for entry in entries:
        try:
            if is_internal(entry):
                continue
            validate_delta_table(entry)  # _delta_log, other _ names: refused, so not listed
            if _is_table(store, store.location.table_uri(entry)):
                names.append(entry)
        except InvalidNameError:
            continue
        except (StorageError, OSError) as exc:  # one unreadable table hides only itself
            detail = exc.detail if isinstance(exc, StorageError) else first_line(exc)
            log.warning("skipping Delta table %s: %s", entry, detail)
    return sorted(names, key=lambda name: (name.lower(), name))


def table_names(store: DeltaStore) -> list[str]:
    """The Delta tables under the root, sorted by name ignoring case."""
    if store.location.local is None:
        return _names_from(store, store.location.list_dirs())
    try:
        entries = list(os.scandir(store.root))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(
            f"cannot list the Delta root {str(store.root)!r}: {first_line(exc)}"
        ) from None
    dirs = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
        except OSError as exc:
            log.warning("skipping Delta table %s: %s", entry.name, first_line(exc))
    return _names_from(store, dirs)


def resolve(store: DeltaStore, name: str) -> str:
    """The stored spelling of table ``name``; ``TableNotFoundError`` if none."""
    table = valid_table_name(name)
    if not is_internal(table):
        path = _table_path(store, table)  # may already match another case
        if _is_table(store, path):
            return path.rstrip("/").rsplit("/", 1)[-1] if "://" in path else Path(path).name
        for found in table_names(store):
            if found.lower() == table.lower():
                return found
    raise TableNotFoundError.named(table, table_names(store))


def load_table(store: DeltaStore, table: str, version: int | None = None) -> DeltaTable:
    """The Delta table ``table`` (already resolved), at ``version`` or the latest."""
    path = _table_path(store, table)
    try:
        return DeltaTable(path, version=version, storage_options=store.storage_options)
    except DeltaTableNotFound:
        raise TableNotFoundError.named(table, table_names(store)) from None
    except (DeltaError, OSError) as exc:
        if version is not None:
            raise InvalidReadError(
                f"version {version} of table {table!r} cannot be loaded "
                f"(its log entries may have expired): {first_line(exc)}"
            ) from None
        raise storage_error(table, "loading", exc) from None


def _table_path(store: DeltaStore, table: str) -> str:
    """``store.table_path(table)``; an OS error looking at the root is a ``StorageError``."""
    try:
        return store.table_path(table)
    except OSError as exc:
        raise storage_error(table, "locating the table", exc) from None


def open_table(store: DeltaStore, name: str) -> tuple[str, DeltaTable]:
    """(the stored spelling of ``name``, the latest version of that table)."""
    table = resolve(store, name)
    return table, load_table(store, table)


# -- errors and JSON -----------------------------------------------------------


def storage_error(table: str, action: str, exc: BaseException) -> StorageError:
    """``StorageError`` naming the table and action, with ``exc``'s first line only
    (delta-rs appends Rust backtraces and ANSI-coloured causes)."""
    where = f"Delta table {table!r}: {action} failed"
    if "S3 error" in str(exc) or "object store" in str(exc).lower():
        return StorageError(describe_error(exc, where))
    return StorageError(f"{where}: {first_line(exc)}")


def _iso(millis: object) -> str | None:
    if isinstance(millis, bool) or not isinstance(millis, int | float):
        return None
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat()


def json_safe(value: Any) -> Any:
    """``value`` with nested JSON text (as in optimize metrics) decoded."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, str) and value[:1] in "{[":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def latest_version(dt: DeltaTable) -> int:
    return int(dt.version())


def check_version(table: str, version: object, latest: int, *, what: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidReadError(f"{what} must be an integer, not {version!r}")
    if version < 0 or version > latest:
        raise InvalidReadError(
            f"{what} {version} of table {table!r} does not exist; "
            f"versions run from 0 to {latest} (the latest)"
        )
    return version


def _check_limit(limit: object, what: str = "limit") -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidReadError(f"{what} must be a non-negative integer, not {limit!r}")
    return limit


def match_columns(table: str, existing: Sequence[str], columns: Sequence[str] | None) -> list[str]:
    """The stored spelling of ``columns`` (all of them for ``None``), matched ignoring case."""
    if columns is None:
        return list(existing)
    if isinstance(columns, str):
        raise InvalidReadError("columns must be a sequence of column names, not a string")
    if not columns:
        raise InvalidReadError("columns is empty: name at least one column, or omit it")
    by_lower: dict[str, str] = {}
    for name in existing:
        by_lower.setdefault(name.lower(), name)
    missing = [name for name in columns if name.lower() not in by_lower]
    if missing:
        raise ColumnNotFoundError.named(table, missing, list(existing))
    chosen = [by_lower[name.lower()] for name in columns]
    if len(set(chosen)) != len(chosen):
        raise InvalidReadError("a column is requested more than once")
    return chosen


# -- describing --------------------------------------------------------------


def arrow_schema(dt: DeltaTable) -> pa.Schema:
    """The schema a ``scan`` returns (the pyarrow dataset's, not the view types)."""
    return dt.to_pyarrow_dataset().schema


def _file_stats(dt: DeltaTable) -> tuple[int, int | None, int]:
    """(files, rows from ``numRecords`` stats or None if a file lacks them, bytes)."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    files = actions.num_rows
    size = int(pc.sum(actions.column("size_bytes")).as_py() or 0) if files else 0
    rows: int | None = 0
    if files:
        if "num_records" not in actions.column_names:
            return files, None, size
        counts = actions.column("num_records")
        rows = None if counts.null_count else int(pc.sum(counts).as_py() or 0)
    return files, rows, size


def _info(table: str, dt: DeltaTable) -> tuple[TableInfo, int]:
    files, rows, size = _file_stats(dt)
    dataset = dt.to_pyarrow_dataset()
    if rows is None:  # a file without stats: Parquet footers have exact counts
        rows = dataset.count_rows()
    return TableInfo(name=table, schema=dataset.schema, rows=rows, bytes=size), files


def table_info(store: DeltaStore, name: str) -> TableInfo:
    """``TableInfo`` of the latest version of ``name``.

    ``rows`` is exact: the sum of the ``numRecords`` statistics of the data
    files (Parquet footers when a file has none). ``bytes`` is the size of
    the data files on disk (compressed Parquet), not the Arrow size a scan
    yields: Delta keeps the former, and estimating the latter means reading.
    """
    table, dt = open_table(store, name)
    try:
        return _info(table, dt)[0]
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise storage_error(table, "reading the file list", exc) from None


def table_stats(store: DeltaStore, name: str) -> tuple[int, int, int]:
    """(latest version, data files, their bytes on disk) of ``name``, from its log alone."""
    table, dt = open_table(store, name)
    try:
        files, _, size = _file_stats(dt)
        return latest_version(dt), files, size
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise storage_error(table, "reading the file list", exc) from None


def list_tables(store: DeltaStore) -> list[TableInfo]:
    """``TableInfo`` of every Delta table under the root, sorted by name.

    A table that cannot be read (removed meanwhile, or a broken log) is
    left out with a warning rather than failing the whole listing.
    """
    infos = []
    for name in table_names(store):
        try:
            infos.append(table_info(store, name))
        except (TableNotFoundError, StorageError) as exc:
            log.warning("not listing Delta table %s: %s", name, exc.detail)
    return infos


def _delta_type(kind: Any) -> Any:
    primitive = getattr(kind, "type", None)
    if isinstance(primitive, str) and type(kind).__name__ == "PrimitiveType":
        return primitive
    with contextlib.suppress(Exception):
        return json.loads(kind.to_json())
    return str(kind)


def cdc_enabled(dt: DeltaTable) -> bool:
    """Whether the table's latest metadata turns on the change data feed."""
    value = dt.metadata().configuration.get(CDF_PROPERTY)
    return str(value).lower() == "true"


def describe(store: DeltaStore, name: str) -> dict[str, Any]:
    """A JSON-safe description of the latest version of ``name``.

    Keys: table, path, version, files, size_bytes, rows, schema (name, type
    as Arrow, delta_type, nullable), partition_by, properties, created,
    last_modified (ISO 8601, UTC), cdc_enabled, protocol.
    """
    table, dt = open_table(store, name)
    path = _table_path(store, table)
    try:
        info, files = _info(table, dt)
        metadata = dt.metadata()
        protocol = dt.protocol()
        fields = {f.name: f for f in dt.schema().fields}
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise storage_error(table, "describing", exc) from None
    last = _commits(store, table, path, dt, 1)
    return {
        "table": table,
        "path": str(path),
        "version": latest_version(dt),
        "files": files,
        "size_bytes": info.bytes,
        "rows": info.rows,
        "schema": [
            {
                "name": field.name,
                "type": str(field.type),
                "delta_type": _delta_type(fields[field.name].type)
                if field.name in fields
                else None,
                "nullable": field.nullable,
            }
            for field in info.schema
        ],
        "partition_by": list(metadata.partition_columns),
        "properties": {str(k): json_safe(v) for k, v in metadata.configuration.items()},
        "created": _iso(metadata.created_time),
        "last_modified": last[0]["timestamp"] if last else None,
        "cdc_enabled": cdc_enabled(dt),
        "protocol": {
            "min_reader_version": protocol.min_reader_version,
            "min_writer_version": protocol.min_writer_version,
            "reader_features": list(protocol.reader_features or []),
            "writer_features": list(protocol.writer_features or []),
        },
    }


# -- reading rows ------------------------------------------------------------


def _local_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme else uri
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return uri
    return None


def _check_files(table: str, dt: DeltaTable) -> None:
    """``StorageError`` if a data file of this version is gone (vacuumed)."""
    missing = []
    for uri in dt.file_uris():
        path = _local_path(uri)
        if path is not None and not os.path.exists(path):
            missing.append(os.path.basename(path))
    if missing:
        raise StorageError(
            f"version {dt.version()} of Delta table {table!r} can no longer be read: "
            f"{len(missing)} of its data files are gone (removed by vacuum?), "
            f"e.g. {missing[0]}"
        )


def _limited(
    table: str, batches: Iterator[pa.RecordBatch], limit: int | None
) -> Iterator[pa.RecordBatch]:
    """``batches`` up to ``limit`` rows; Arrow and OS errors become ``StorageError``."""
    left = limit
    try:
        for batch in batches:
            if left is not None:
                if left <= 0:
                    return
                if batch.num_rows > left:
                    batch = batch.slice(0, left)
                left -= batch.num_rows
            yield batch
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise storage_error(table, "reading", exc) from None


def scan(
    store: DeltaStore,
    name: str,
    *,
    version: int | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    batch_rows: int = 122_880,
) -> pa.RecordBatchReader:
    """Stream ``name`` at ``version`` (default: the latest), some ``columns`` of it.

    The reader pulls batches of up to ``batch_rows`` rows from the Parquet
    files as it is read (memory bounded by the scanner's read-ahead) and stops
    after ``limit`` rows. It reads the one version resolved here, whatever is
    committed meanwhile. Every argument error is raised before any row is read,
    as is a ``StorageError`` if the version's files were vacuumed.
    """
    limit = _check_limit(limit)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InvalidReadError(f"batch_rows must be a positive integer, not {batch_rows!r}")
    table, dt = open_table(store, name)
    if version is not None:
        check_version(table, version, latest_version(dt))
        dt = load_table(store, table, version)
    try:
        dataset = dt.to_pyarrow_dataset()
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise storage_error(table, "opening a scan", exc) from None
    selected = match_columns(table, dataset.schema.names, columns)
    _check_files(table, dt)
    scanner = dataset.scanner(
        columns=selected,
        batch_size=batch_rows,
        batch_readahead=BATCH_READAHEAD,
        fragment_readahead=FRAGMENT_READAHEAD,
    )
    schema = scanner.projected_schema
    if limit == 0:
        return pa.RecordBatchReader.from_batches(schema, iter(()))
    return pa.RecordBatchReader.from_batches(schema, _limited(table, _lazy(scanner), limit))


def _lazy(scanner: ds.Scanner) -> Iterator[pa.RecordBatch]:
    """The scanner's batches, starting the scan only when the first is asked for."""
    yield from scanner.to_batches()


_VIEW_TYPES = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}


def _feed_schema(raw: pa.Schema, names: Sequence[str]) -> pa.Schema:
    """``raw``'s fields ``names`` in that order, view types made plain."""
    fields = [raw.field(name) for name in names]
    return pa.schema([f.with_type(_VIEW_TYPES.get(f.type, f.type)) for f in fields])


def _conformed(
    table: str, reader: pa.RecordBatchReader, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    for batch in _limited(table, iter(reader), None):
        batch = batch.select(schema.names)
        yield batch if batch.schema == schema else batch.cast(schema)


def changes(
    store: DeltaStore,
    name: str,
    *,
    from_version: int = 0,
    to_version: int | None = None,
    columns: Sequence[str] | None = None,
) -> pa.RecordBatchReader:
    """The change data feed of ``name`` for versions ``from_version..to_version``.

    Each row carries ``_change_type`` (``insert``, ``delete``,
    ``update_preimage``, ``update_postimage``), ``_commit_version`` and
    ``_commit_timestamp``; those three are always included, after
    ``columns``. Appends (add actions only, as Arrowport commits) read as
    ``insert`` rows, and a restore's removals as ``delete`` rows. Rows are
    not ordered by version. Columns come in the table's order (delta-rs puts
    partition columns last) and view types (``string_view``) as their plain
    equivalents. ``InvalidReadError`` (400) if the table does not
    have ``delta.enableChangeDataFeed=true`` or a version is out of range.
    """
    table, dt = open_table(store, name)
    latest = latest_version(dt)
    if not cdc_enabled(dt):
        raise InvalidReadError(
            f"table {table!r} has no change data feed: its property "
            f"{CDF_PROPERTY} is not true (set delta_config.enable_cdc before writing)"
        )
    start = check_version(table, from_version, latest, what="from_version")
    end = (
        latest
        if to_version is None
        else check_version(table, to_version, latest, what="to_version")
    )
    if start > end:
        raise InvalidReadError(f"from_version {start} is after to_version {end}")
    existing = [n for n in arrow_schema(dt).names if n not in CDF_COLUMNS]
    names = [*match_columns(table, existing, columns), *CDF_COLUMNS]
    selected = None if columns is None else names
    try:
        raw = pa.RecordBatchReader.from_stream(
            dt.load_cdf(starting_version=start, ending_version=end, columns=selected)
        )
    except (DeltaError, OSError) as exc:
        if isinstance(exc, DeltaError) and "change data" in str(exc):  # CDF turned on later
            raise InvalidReadError(
                f"table {table!r} has no change data for some of versions {start}..{end}: "
                f"{first_line(exc)}"
            ) from None
        raise storage_error(table, "reading changes", exc) from None
    schema = _feed_schema(raw.schema, names)
    return pa.RecordBatchReader.from_batches(schema, _conformed(table, raw, schema))


def history(store: DeltaStore, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The commits of ``name``, newest first (at most ``limit``), JSON-safe.

    Each entry: version, timestamp (ISO 8601, UTC), operation, parameters,
    metrics, read_version, engine, and ``metadata``: the commit's custom
    metadata (any other commitInfo keys), if any.
    """
    limit = _check_limit(limit)
    table, dt = open_table(store, name)
    return _commits(store, table, _table_path(store, table), dt, limit)


def _commits(
    store: DeltaStore, table: str, path: str, dt: DeltaTable, limit: int | None
) -> list[dict[str, Any]]:
    """``history`` of the version ``dt`` has loaded: its commits from the log files.

    Read from ``path``'s log, version by version down from ``dt.version()``
    (stopping at a file removed by log cleanup), not with ``dt.history()``:
    deltalake 1.6.6 lists commits newer than the loaded version too, numbered
    counting down from the loaded version, so a commit landing between
    loading the table and reading its history shifts every number.
    """
    entries: list[dict[str, Any]] = []
    version = latest_version(dt)
    try:
        while version >= 0 and (limit is None or len(entries) < limit):
            info = _commit_info(store, path, version)
            if info is None:
                break
            entries.append(_commit_entry({**info, "version": version}))
            version -= 1
    except (OSError, ValueError) as exc:
        raise storage_error(table, "reading the history", exc) from None
    return entries


def _commit_info(store: DeltaStore, path: str, version: int) -> dict[str, Any] | None:
    """The ``commitInfo`` of ``version`` in its log file; None if that file is gone.

    Without a ``timestamp`` in it (some writers omit commitInfo), the file's
    modification time stands in, as in Delta's own history.
    """
    try:
        read = store.location.read_log(path, version)
    except pa.ArrowException as exc:
        raise OSError(describe_error(exc)) from None
    if read is None:
        return None
    text, mtime = read
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if '"commitInfo"' in line:
            action = json.loads(line)
            found = action.get("commitInfo") if isinstance(action, dict) else None
            if isinstance(found, dict):
                info = found
                break
    if not isinstance(info.get("timestamp"), int | float):
        info = {**info, "timestamp": mtime}
    return info


_KNOWN_COMMIT_KEYS = {
    "version",
    "timestamp",
    "operation",
    "operationParameters",
    "operationMetrics",
    "readVersion",
    "engineInfo",
    "clientVersion",
    "isBlindAppend",
    "isolationLevel",
}


def _commit_entry(commit: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "version": commit.get("version"),
        "timestamp": _iso(commit.get("timestamp")),
        "operation": commit.get("operation"),
        "parameters": json_safe(commit.get("operationParameters") or {}),
        "metrics": json_safe(commit.get("operationMetrics") or {}),
        "read_version": commit.get("readVersion"),
        "engine": commit.get("engineInfo") or commit.get("clientVersion"),
    }
    custom = {k: json_safe(v) for k, v in commit.items() if k not in _KNOWN_COMMIT_KEYS}
    if custom:
        entry["metadata"] = custom
    return entry
