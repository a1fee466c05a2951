"""Maintaining the Delta tables of a ``DeltaStore``: vacuum, restore, optimize, checkpoint.

Invariants:

* Plain synchronous functions for worker threads (and the CLI); each takes
  the store first, resolves the name and opens the table afresh as
  ``delta_tables`` does (the helpers are imported from there), and acts on
  its latest version.
* Every argument is checked before anything is changed:
  ``InvalidNameError``/``InvalidReadError``/``ColumnNotFoundError`` (400),
  ``TableNotFoundError`` (404). A delta-rs, Arrow or OS failure is a
  ``StorageError`` naming the table and the operation.
* Results meant for humans or JSON (``restore``, ``optimize``) hold only
  JSON types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from deltalake.exceptions import DeltaError

from .delta_tables import (
    arrow_schema,
    check_version,
    json_safe,
    latest_version,
    load_table,
    match_columns,
    open_table,
    storage_error,
)
from .errors import InvalidReadError, StorageError, first_line

if TYPE_CHECKING:
    from .delta import DeltaStore


def _retention(store: DeltaStore, retention_hours: float | None) -> tuple[int, bool]:
    """(whole hours to keep, whether delta-rs should enforce the table's minimum)."""
    explicit = retention_hours is not None
    hours = store.version_retention_hours if retention_hours is None else retention_hours
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not math.isfinite(hours):
        raise InvalidReadError(f"retention_hours must be a number of hours, not {hours!r}")
    if hours < 0:
        raise InvalidReadError(f"retention_hours must not be negative, got {hours!r}")
    return math.ceil(hours), not explicit


def vacuum(
    store: DeltaStore,
    name: str,
    *,
    retention_hours: float | None = None,
    dry_run: bool = True,
    full: bool = False,
) -> list[str]:
    """Data files of ``name`` no longer in any version younger than the retention.

    Dry run (the default) only lists them; otherwise they are deleted and
    returned, and then the log entries older than the table's
    ``delta.logRetentionDuration`` (default 30 days) are expired as well
    (``cleanup_metadata``: delta-rs does the same after each checkpoint).
    Versions whose files are deleted can no longer be read or restored.

    The retention defaults to the store's ``version_retention_hours`` and
    must then respect the table's ``delta.deletedFileRetentionDuration``
    (default 168 hours), else ``InvalidReadError``. A ``retention_hours``
    given explicitly is the caller's decision and is not checked against that
    minimum (``enforce_retention_duration=False``): 0 removes every file the
    latest version does not use. Fractions of an hour round up (delta-rs
    takes whole hours), so at least the asked-for time is kept. A real
    vacuum adds two commits (VACUUM START and VACUUM END).

    By default only files the log marks removed are candidates (deltalake's
    "lite" vacuum). ``full=True`` also takes data files no version ever
    referenced (e.g. written by a request whose server was killed before it
    committed) once their modification time is older than the retention: the
    uncommitted files of requests still running are safe as long as the
    retention is longer than the longest request.
    """
    hours, enforce = _retention(store, retention_hours)
    table, dt = open_table(store, name)
    try:
        removed = dt.vacuum(
            retention_hours=hours,
            dry_run=dry_run,
            enforce_retention_duration=enforce,
            full=full,
        )
        if not dry_run:
            load_table(store, table).cleanup_metadata()
    except DeltaError as exc:
        if "retention period" in str(exc):
            raise InvalidReadError(
                f"table {table!r}: {first_line(exc)}; pass retention_hours explicitly "
                "to vacuum with a shorter retention"
            ) from None
        raise storage_error(table, "vacuum", exc) from None
    except OSError as exc:
        raise storage_error(table, "vacuum", exc) from None
    return sorted(str(path) for path in removed)


def restore(store: DeltaStore, name: str, version: int) -> dict[str, Any]:
    """Make ``version`` of ``name`` the latest again, in a new commit.

    Returns ``{table, restored_version, version (the new one), metrics}``.
    Versions before the latest only (``InvalidReadError`` otherwise); a
    version whose files were vacuumed cannot be restored (``StorageError``).
    """
    table, dt = open_table(store, name)
    latest = latest_version(dt)
    check_version(table, version, latest)
    if version == latest:
        raise InvalidReadError(f"table {table!r} is already at version {latest}")
    try:
        metrics = dt.restore(version)
    except DeltaError as exc:
        if "missing file" in str(exc).lower():
            raise StorageError(
                f"cannot restore table {table!r} to version {version}: its data files "
                f"were removed by vacuum ({first_line(exc)})"
            ) from None
        raise storage_error(table, "restore", exc) from None
    except OSError as exc:
        raise storage_error(table, "restore", exc) from None
    return {
        "table": table,
        "restored_version": version,
        "version": latest_version(load_table(store, table)),
        "metrics": json_safe(metrics),
    }


def optimize(
    store: DeltaStore,
    name: str,
    *,
    z_order: Sequence[str] | None = None,
    target_size: int | None = None,
) -> dict[str, Any]:
    """Compact the small files of ``name``, or z-order it by ``z_order`` columns.

    Rewrites files in one commit that changes no data (``dataChange=false``:
    the change data feed shows nothing). Returns ``{table, mode, version,
    metrics}``; without anything to compact no commit is made. Columns are
    matched ignoring case (``ColumnNotFoundError``); partition columns cannot
    be z-ordered. ``target_size`` is in bytes (delta-rs default: the table's
    ``delta.targetFileSize`` or 100 MiB).
    """
    if target_size is not None and (
        isinstance(target_size, bool) or not isinstance(target_size, int) or target_size < 1
    ):
        raise InvalidReadError(
            f"target_size must be a positive number of bytes, not {target_size!r}"
        )
    table, dt = open_table(store, name)
    columns: list[str] = []
    if z_order is not None:
        columns = match_columns(table, arrow_schema(dt).names, z_order)
        partitions = {c.lower() for c in dt.metadata().partition_columns}
        clash = [c for c in columns if c.lower() in partitions]
        if clash:
            raise InvalidReadError(
                f"table {table!r} is partitioned by {', '.join(clash)}: "
                "z-order orders data within partitions, so name other columns"
            )
    try:
        if columns:
            metrics = dt.optimize.z_order(columns, target_size=target_size)
        else:
            metrics = dt.optimize.compact(target_size=target_size)
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise storage_error(table, "optimize", exc) from None
    return {
        "table": table,
        "mode": "z_order" if columns else "compact",
        "z_order": columns,
        "version": latest_version(load_table(store, table)),
        "metrics": json_safe(metrics),
    }


def checkpoint(store: DeltaStore, name: str) -> int:
    """Write a checkpoint of the latest version of ``name``; returns that version.

    Readers then load the table from the checkpoint instead of replaying
    every JSON commit (delta-rs also writes one every ``checkpoint_interval``
    commits on its own).
    """
    table, dt = open_table(store, name)
    try:
        dt.create_checkpoint()
    except (DeltaError, OSError) as exc:
        raise storage_error(table, "checkpoint", exc) from None
    return latest_version(dt)
