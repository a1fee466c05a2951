"""Copying one table between the DuckDB file and the Delta root.

Invariants:

* Streamed: the source is read batch by batch, from one snapshot (DuckDB) or
  one version (Delta), and each batch (DuckDB: each group of a few row
  groups) is written before the next is read. Memory is bounded by that,
  never by the size of the table.
* One commit on the destination: every row or none. Any failure, including
  an interrupt, rolls the write back (DuckDB: the transaction; Delta: the
  data files written so far are deleted, the log is untouched).
* The source is only read. The destination table must not exist
  (``TableExistsError``) unless ``append`` is given; then the destination's
  schema policy applies as for ingest (DuckDB: the source's columns must be
  a subset, by name; Delta: the ``schema_mode`` of the stream configured
  for the table, ``merge`` by default, which adds new nullable columns),
  else ``SchemaMismatchError``. A new Delta table takes the
  ``delta_options`` (partitioning, file size, ...) of that stream.
* Both stores are opened here and closed before returning, so this runs
  offline, with no server; a server holding the DuckDB file's lock makes
  it fail with a ``StorageError``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from .config import Config
from .errors import ArrowportError
from .names import validate_name
from .storage import DeltaStore, DuckDBStore, StorageError, TableNotFoundError, delta_tables

Destination = Literal["delta", "duckdb"]


class TableExistsError(ArrowportError):
    """The destination table of a migration exists and ``append`` was not asked for: 409."""

    error = "table_exists"


def open_duckdb(config: Config) -> DuckDBStore:
    """The configured DuckDB store, opened (as the server opens it)."""
    store = DuckDBStore.from_config(config)
    try:
        store.open()
    except StorageError as exc:
        if "lock" in exc.detail.lower():
            raise StorageError(
                f"{exc.detail} (a running server holds the lock: stop it to migrate)"
            ) from None
        raise
    return store


def migrate(
    config: Config,
    table: str,
    *,
    to: Destination,
    target: str | None = None,
    append: bool = False,
) -> dict[str, Any]:
    """Copy ``table`` into the other store as ``target`` (default: the same name).

    ``to="delta"`` copies from the DuckDB file (``config.db_path``) into the
    Delta root (``config.delta_config.table_path``); ``to="duckdb"`` the other
    way, from the latest Delta version. Returns a JSON-safe summary: table,
    from, to, target, rows, batches, created, and for Delta the source
    version read or the destination version committed.
    """
    if to not in ("delta", "duckdb"):
        raise ValueError(f"to must be 'delta' or 'duckdb', not {to!r}")
    validate_name(table, "table")
    if target is not None:
        validate_name(target, "table")
    delta = DeltaStore.from_config(config)
    if to == "delta":
        if not os.path.exists(config.db_path):
            raise StorageError(f"DuckDB database {config.db_path!r} does not exist")
        duck = open_duckdb(config)
        try:
            return _to_delta(config, duck, delta, table, target, append)
        finally:
            duck.close(checkpoint=False)
    duck = open_duckdb(config)
    try:
        return _to_duckdb(delta, duck, table, target, append)
    finally:
        duck.close()


def _to_delta(
    config: Config,
    duck: DuckDBStore,
    delta: DeltaStore,
    table: str,
    target: str | None,
    append: bool,
) -> dict[str, Any]:
    source = duck.table_info(table).name
    name = _delta_destination(delta, target or source, append)
    delta.open()
    reader = duck.scan(source)
    try:
        # a configured stream writing this table lends its delta_options (partitions, ...)
        write = delta.open_write(
            name, reader.schema, options=config.table_route(name, "delta").delta
        )
        try:
            for batch in reader:
                write.insert([batch])  # the writer rolls its files by size
            result = write.finish()
        except BaseException:
            write.rollback()
            raise
    finally:
        reader.close()
    summary = _summary(source, "duckdb", "delta", name, result.rows, result.batches)
    return {**summary, "created": result.created, "version": result.version}


def _to_duckdb(
    delta: DeltaStore, duck: DuckDBStore, table: str, target: str | None, append: bool
) -> dict[str, Any]:
    source = delta_tables.resolve(delta, table)
    dt = delta.open_table(source)
    if dt is None:  # removed since it was resolved
        raise TableNotFoundError.named(source, delta_tables.table_names(delta))
    version = int(dt.version())
    name = _duckdb_destination(duck, target or source, append)
    reader = delta_tables.scan(delta, source, version=version)
    try:
        write = duck.open_write(name, reader.schema)
        try:
            for group in write.groups(reader):
                write.insert(group)
            result = write.finish()
        except BaseException:
            write.rollback()
            raise
    finally:
        reader.close()
    summary = _summary(source, "delta", "duckdb", name, result.rows, result.batches)
    return {**summary, "created": result.created, "source_version": version}


def _delta_destination(delta: DeltaStore, name: str, append: bool) -> str:
    """The Delta table to write: ``name``, or its stored spelling if it exists."""
    existing = [n for n in delta_tables.table_names(delta) if n.lower() == name.lower()]
    if not existing:
        return name
    if not append:
        raise _exists("Delta", existing[0])
    return existing[0]


def _duckdb_destination(duck: DuckDBStore, name: str, append: bool) -> str:
    """The DuckDB table to write: ``name``, or its stored spelling if it exists."""
    try:
        stored = duck.table_info(name).name
    except TableNotFoundError:
        return name
    if not append:
        raise _exists("DuckDB", stored)
    return stored


def _exists(store: str, name: str) -> TableExistsError:
    return TableExistsError(
        f"{store} table {name!r} already exists: pass append to add the rows to it, "
        "or choose another target name"
    )


def _summary(
    source: str, origin: str, destination: str, target: str, rows: int, batches: int
) -> dict[str, Any]:
    return {
        "table": source,
        "from": origin,
        "to": destination,
        "target": target,
        "rows": rows,
        "batches": batches,
    }
