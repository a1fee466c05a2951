"""The ``arrowport`` command line."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__, logs
from .cli_delta import DeltaPathOption, delta_app, migrate_command
from .cli_ingest import ingest_command
from .cli_ops import config_app, streams_command
from .config import ConfigError, load_config

app = typer.Typer(
    help="Arrowport: receive Arrow record-batch streams over HTTP or Arrow Flight and write "
    "them, transactionally, into DuckDB or Delta Lake.",
    no_args_is_help=True,
    add_completion=False,
)


class Backend(StrEnum):
    duckdb = "duckdb"
    ducklake = "ducklake"
    delta = "delta"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"arrowport {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Arrowport command line."""


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file (default: $ARROWPORT_STREAMS_PATH, else built-in defaults). "
            "It is reloaded while the server runs.",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to bind (env ARROWPORT_HOST; default 127.0.0.1, loopback only). "
            "Use 0.0.0.0 to accept connections from the network."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Port for HTTP and Arrow Flight (env ARROWPORT_PORT; default 8888; "
            "0 picks a free port)."
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="DuckDB database file (env ARROWPORT_DB; default ./arrowport.duckdb)."
        ),
    ] = None,
    backend: Annotated[
        Backend | None,
        typer.Option(
            help="Default storage backend for streams: duckdb (one file, one server), "
            "ducklake (see the ducklake: config section) or delta "
            "(env ARROWPORT_STORAGE_BACKEND; default duckdb)."
        ),
    ] = None,
    delta_path: DeltaPathOption = None,
    ducklake_catalog: Annotated[
        str | None,
        typer.Option(
            "--ducklake-catalog",
            help="DuckLake catalog: a .ducklake file (one server), or postgres:<libpq "
            "connection string> (several servers) (env ARROWPORT_DUCKLAKE_CATALOG; "
            "default ./arrowport.ducklake).",
        ),
    ] = None,
    ducklake_data_path: Annotated[
        str | None,
        typer.Option(
            "--ducklake-data-path",
            help="Where DuckLake writes Parquet files: a directory or s3://bucket/prefix/ "
            "(env ARROWPORT_DUCKLAKE_DATA_PATH; default ./arrowport_lake).",
        ),
    ] = None,
    certfile: Annotated[
        str | None,
        typer.Option(
            "--certfile",
            help="TLS certificate chain, PEM (env ARROWPORT_CERTFILE). With --keyfile the port "
            "speaks TLS only: HTTPS and Flight at grpc+tls://HOST:PORT.",
        ),
    ] = None,
    keyfile: Annotated[
        str | None,
        typer.Option(
            "--keyfile",
            help="TLS private key, PEM, unencrypted (env ARROWPORT_KEYFILE); needs --certfile.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Also serve GET /metrics on this port (env ARROWPORT_METRICS_PORT; "
            "default: /metrics on the main port only).",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(help="Log level (env ARROWPORT_LOG_LEVEL).", envvar="ARROWPORT_LOG_LEVEL"),
    ] = LogLevel.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="text, or json: one JSON object per line. Each line a request logs "
            "carries its request id (X-Request-Id).",
            envvar="ARROWPORT_LOG_FORMAT",
        ),
    ] = LogFormat.text,
) -> None:
    """Serve HTTP (POST /ingest/{stream}) and Arrow Flight (grpc://HOST:PORT) on one port,
    until Ctrl-C or SIGTERM. The Flight port also speaks Flight SQL (ADBC's adbc_ingest,
    catalog browsing, read-only queries; see flight_sql in the config). With
    --certfile/--keyfile: HTTPS and grpc+tls:// instead."""
    logs.configure(log_level.value, log_format.value)
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "db_path": db,
        "storage_backend": backend.value if backend else None,
        "delta_config.table_path": delta_path,
        "ducklake.catalog": ducklake_catalog,
        "ducklake.data_path": ducklake_data_path,
        "tls.certfile": certfile,
        "tls.keyfile": keyfile,
        "metrics.port": metrics_port,
    }
    path = str(config) if config is not None else None
    try:
        effective = load_config(path, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"arrowport: config error: {exc}", err=True)
        raise typer.Exit(2) from None

    from .io.server import run
    from .storage import StorageError

    try:
        run(effective, config_path=path, overrides=overrides)
    except* ConfigError as group:  # found while starting: e.g. an unusable TLS key
        for leaf in _leaves(group):
            typer.echo(f"arrowport: config error: {leaf}", err=True)
        raise typer.Exit(2) from None
    except* StorageError as group:
        for leaf in _leaves(group):
            typer.echo(f"arrowport: {getattr(leaf, 'detail', leaf)}", err=True)
        raise typer.Exit(1) from None
    except* OSError as group:
        for leaf in _leaves(group):
            typer.echo(
                f"arrowport: cannot listen on {effective.host}:{effective.port}: "
                f"{getattr(leaf, 'strerror', None) or leaf}",
                err=True,
            )
        raise typer.Exit(1) from None
    except* KeyboardInterrupt:
        pass


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


# -- offline tools: arrowport delta ... and arrowport migrate (cli_delta) ------

app.command("migrate")(migrate_command)
app.command("ingest")(ingest_command)
app.add_typer(delta_app, name="delta")

# -- arrowport streams and arrowport config ... (cli_ops) ---------------------

app.command("streams")(streams_command)
app.add_typer(config_app, name="config")


def main() -> None:
    app(prog_name="arrowport")


if __name__ == "__main__":
    main()
