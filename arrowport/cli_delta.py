"""``arrowport delta …`` and ``arrowport migrate``: offline tools on the tables on disk.

Invariants:

* No server: each command loads the config and opens the store it needs
  itself (``migrate`` both); the storage modules are imported inside the
  commands, so ``arrowport --help`` stays fast.
* Errors are one line on stderr, never a traceback: exit 2 for bad usage or
  config (a 400), else 1. ``--json`` prints JSON instead of a table.
* This module never imports ``cli``: ``cli`` registers ``delta_app`` and
  ``migrate_command`` on its app, and imports from here the options it shares
  with ``serve`` (``Backend``, ``DeltaPathOption``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from .config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from rich.table import Table as RichTable

    from .storage import DeltaStore


class Backend(StrEnum):
    duckdb = "duckdb"
    delta = "delta"


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: $ARROWPORT_STREAMS_PATH, else built-in defaults).",
    ),
]
DeltaPathOption = Annotated[
    str | None,
    typer.Option(
        "--delta-path",
        help="Root directory of the Delta tables (env ARROWPORT_DELTA_PATH; "
        "default ./arrowport_delta; config key delta_config.table_path).",
    ),
]
delta_app = typer.Typer(
    help="Inspect and maintain the Delta tables directly on disk (no server needed).",
    no_args_is_help=True,
)

RootOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        help="Root directory of the Delta tables (overrides delta_config.table_path "
        "and $ARROWPORT_DELTA_PATH).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TableArgument = Annotated[str, typer.Argument(help="Table name (matched ignoring case).")]


def _fail(message: str, code: int) -> NoReturn:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.echo(f"arrowport: {line}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    """One line on stderr instead of a traceback: exit 2 for bad usage or config, else 1."""
    from .errors import ArrowportError
    from .io.status import http_status

    try:
        yield
    except ConfigError as exc:
        _fail(f"config error: {exc}", 2)
    except ArrowportError as exc:
        _fail(exc.detail, 2 if http_status(exc) == 400 else 1)
    except OSError as exc:
        from .storage.errors import first_line

        _fail(first_line(exc), 1)


def _load(config: Path | None, overrides: dict[str, Any]) -> Config:
    try:
        return load_config(str(config) if config is not None else None, overrides=overrides)
    except ConfigError as exc:
        _fail(f"config error: {exc}", 2)


def _delta_store(config: Path | None, path: str | None) -> DeltaStore:
    from .storage import DeltaStore

    return DeltaStore.from_config(_load(config, {"delta_config.table_path": path}))


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _compact(value: object) -> str:
    return "" if not value else json.dumps(value, separators=(",", ":"), default=str)


def _rich_table(title: str, *columns: str) -> RichTable:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _print(renderable: object) -> None:
    from rich.console import Console

    Console(soft_wrap=False).print(renderable)


@delta_app.command("list")
def delta_list(
    config: ConfigOption = None, path: RootOption = None, as_json: JsonOption = False
) -> None:
    """List the Delta tables under the root: rows, size on disk, columns."""
    from .storage import delta_tables

    store = _delta_store(config, path)
    with _cli_errors():
        infos = delta_tables.list_tables(store)
    if as_json:
        _print_json(
            [
                {"name": i.name, "rows": i.rows, "bytes": i.bytes, "columns": i.schema.names}
                for i in infos
            ]
        )
        return
    if not infos:
        typer.echo(f"no Delta tables under {store.uri}")
        return
    table = _rich_table(f"Delta tables under {store.uri}", "table", "rows", "size", "columns")
    for i in infos:
        table.add_row(i.name, f"{i.rows:,}", _size(i.bytes), ", ".join(i.schema.names))
    _print(table)


@delta_app.command("info")
def delta_info(
    table: TableArgument,
    config: ConfigOption = None,
    path: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Describe a table: version, files, rows, schema, partitioning, properties."""
    from .storage import delta_tables

    store = _delta_store(config, path)
    with _cli_errors():
        info = delta_tables.describe(store, table)
    if as_json:
        _print_json(info)
        return
    summary = _rich_table(f"Delta table {info['table']}", "property", "value")
    for key in (
        "path",
        "version",
        "rows",
        "files",
        "size_bytes",
        "partition_by",
        "cdc_enabled",
        "created",
        "last_modified",
    ):
        value = info[key]
        if key == "size_bytes":
            value = f"{_size(value)} ({value:,} bytes)"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        summary.add_row(key, str(value))
    for key, value in info["properties"].items():
        summary.add_row(key, str(value))
    schema = _rich_table("schema", "column", "type", "delta type", "nullable")
    for column in info["schema"]:
        delta_type = column["delta_type"]
        schema.add_row(
            column["name"],
            column["type"],
            delta_type if isinstance(delta_type, str) else _compact(delta_type),
            "yes" if column["nullable"] else "no",
        )
    _print(summary)
    _print(schema)


@delta_app.command("history")
def delta_history(
    table: TableArgument,
    limit: Annotated[
        int | None, typer.Option(min=0, help="Show at most this many commits.")
    ] = None,
    config: ConfigOption = None,
    path: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a table's commits, newest first."""
    from .storage import delta_tables

    store = _delta_store(config, path)
    with _cli_errors():
        commits = delta_tables.history(store, table, limit)
    if as_json:
        _print_json(commits)
        return
    out = _rich_table(
        f"history of {table}", "version", "timestamp", "operation", "parameters", "metrics"
    )
    for c in commits:
        parameters = {k: v for k, v in c["parameters"].items() if k != "metadata"}
        out.add_row(
            str(c["version"]),
            str(c["timestamp"])[:19].replace("T", " "),
            str(c["operation"]),
            _compact(parameters),
            _compact(c["metrics"]),
        )
    _print(out)


@delta_app.command("vacuum")
def delta_vacuum(
    table: TableArgument,
    retention_hours: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Hours of versions to keep (default: delta_config.version_retention_hours, "
            "which the table's minimum must allow). A value given here skips that check: "
            "0 keeps only the latest version's files.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run/--no-dry-run",
            help="List the files that would be deleted (the default); --no-dry-run deletes them.",
        ),
    ] = True,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Also remove data files no version ever referenced, e.g. left by a killed "
            "server; only files older than the retention, so uncommitted files of running "
            "requests are safe unless you pass a retention shorter than your longest request.",
        ),
    ] = False,
    config: ConfigOption = None,
    path: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete data files no version within the retention needs.

    A dry run by default: it only lists the files; pass --no-dry-run to delete them.
    Versions whose files are deleted can no longer be read or restored.
    """
    from .storage import delta_maintenance

    store = _delta_store(config, path)
    with _cli_errors():
        files = delta_maintenance.vacuum(
            store, table, retention_hours=retention_hours, dry_run=dry_run, full=full
        )
    hours = store.version_retention_hours if retention_hours is None else retention_hours
    if as_json:
        _print_json(
            {
                "table": table,
                "dry_run": dry_run,
                "full": full,
                "retention_hours": hours,
                "files": files,
            }
        )
        return
    verb = "would delete" if dry_run else "deleted"
    mode = ", full" if full else ""
    typer.echo(f"vacuum of {table} (retention {hours:g} hours{mode}) {verb} {len(files)} files")
    for name in files:
        typer.echo(f"  {name}")
    if dry_run and files:
        typer.echo("this was a dry run: pass --no-dry-run to delete them")


@delta_app.command("restore")
def delta_restore(
    table: TableArgument,
    version: Annotated[int, typer.Argument(min=0, help="The version to make current again.")],
    config: ConfigOption = None,
    path: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make an earlier version of a table current again (as a new version)."""
    from .storage import delta_maintenance

    store = _delta_store(config, path)
    with _cli_errors():
        result = delta_maintenance.restore(store, table, version)
    if as_json:
        _print_json(result)
        return
    typer.echo(
        f"restored {result['table']} to version {version}: now at version {result['version']} "
        f"({_compact(result['metrics'])})"
    )


@delta_app.command("optimize")
def delta_optimize(
    table: TableArgument,
    z_order: Annotated[
        str | None,
        typer.Option("--z-order", help="Z-order by these columns (comma-separated); else compact."),
    ] = None,
    target_size: Annotated[
        str | None,
        typer.Option(help="Target file size, e.g. 128MiB (default: delta-rs's, 100 MiB)."),
    ] = None,
    config: ConfigOption = None,
    path: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compact small files into larger ones, or z-order them by some columns."""
    from .config import parse_size
    from .storage import delta_maintenance

    store = _delta_store(config, path)
    with _cli_errors():
        size = None if target_size is None else parse_size(target_size, "--target-size")
        columns = None
        if z_order is not None:
            columns = [c.strip() for c in z_order.split(",") if c.strip()]
        result = delta_maintenance.optimize(store, table, z_order=columns, target_size=size)
    if as_json:
        _print_json(result)
        return
    metrics = result["metrics"]
    how = f"z-ordered by {', '.join(result['z_order'])}" if result["z_order"] else "compacted"
    typer.echo(
        f"{how} {result['table']}: {metrics.get('numFilesRemoved', 0)} files removed, "
        f"{metrics.get('numFilesAdded', 0)} added; now at version {result['version']}"
    )


@delta_app.command("checkpoint")
def delta_checkpoint(
    table: TableArgument,
    config: ConfigOption = None,
    path: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a checkpoint of a table's latest version (faster loading)."""
    from .storage import delta_maintenance

    store = _delta_store(config, path)
    with _cli_errors():
        version = delta_maintenance.checkpoint(store, table)
    if as_json:
        _print_json({"table": table, "version": version})
        return
    typer.echo(f"checkpoint of {table} written at version {version}")


def migrate_command(
    table: TableArgument,
    to: Annotated[Backend, typer.Option("--to", help="Copy into this store: delta or duckdb.")],
    target: Annotated[
        str | None, typer.Option(help="Name of the destination table (default: the same).")
    ] = None,
    append: Annotated[
        bool, typer.Option("--append", help="Add the rows to an existing destination table.")
    ] = False,
    config: ConfigOption = None,
    db: Annotated[
        str | None, typer.Option("--db", help="DuckDB database file (env ARROWPORT_DB).")
    ] = None,
    delta_path: DeltaPathOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a table between the DuckDB file and the Delta root, streamed, in one commit.

    Runs offline: stop a server using the DuckDB file first (it holds a lock).
    """
    from .migrate import migrate

    effective = _load(config, {"db_path": db, "delta_config.table_path": delta_path})
    with _cli_errors():
        result = migrate(effective, table, to=to.value, target=target, append=append)
    if as_json:
        _print_json(result)
        return
    verb = "created" if result["created"] else "appended to"
    typer.echo(
        f"copied {result['rows']:,} rows of {result['from']} table {result['table']} "
        f"into {result['to']} table {result['target']} ({verb})"
    )
