"""``arrowport ingest``: send Arrow IPC, Parquet and CSV files to a running server.

The options, the output (progress, summary lines, ``--json``) and the exit
status are here; reading inputs and sending them is ``arrowport.ingest_client``.

Invariants:

* Flat client memory. Inputs are read a chunk at a time (Arrow IPC
  memory-mapped, Parquet by row group, CSV by block) and each chunk is sent
  before the next is read. Mapped pages already sent are dropped from the
  process (``madvise``), so RSS does not grow with the file.
* One request per input: its own transaction and idempotency key. A retry
  resends the whole input with the same key, so the server writes it once.
  stdin cannot be reread and is never retried.
* An input that fails mid-way (a bad CSV row, an IPC stream without its
  end-of-stream marker) is abandoned without ending its stream: the
  connection is closed (HTTP) or cut (Flight), so nothing of it is committed
  (on a ``commit: batch`` stream, the batches committed before stay). Where
  the Flight connection cannot be found to cut, the error says so.
* Exit codes (``EXIT_*``) say what failed; errors are one line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import pyarrow as pa
import typer

from .ingest_client.common import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, Failure, Target
from .ingest_client.inputs import Tally
from .ingest_client.send import FileResult, ingest_one


class Compression(StrEnum):
    zstd = "zstd"
    lz4 = "lz4"
    none = "none"


class Reporter:
    """A rich progress bar on stderr when it is a terminal; summary lines on stdout."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.as_json = as_json
        console = Console(stderr=True)
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.path = ""
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rows]:,} rows"),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.progress.start()

    def begin(self, path: str, size: int | None) -> None:
        self.path = path
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(path, total=size, rows=0)
        else:  # a retry starts the file again
            self.progress.reset(self.task, total=size, rows=0)

    def update(self, tally: Tally) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=tally.position, rows=tally.rows)

    def end(self, failed: bool = False) -> None:
        if self.progress is not None and self.task is not None and failed:
            self.progress.update(self.task, description=f"{self.path} (failed)")
        self.task = None

    def note(self, message: str) -> None:
        """A line on stderr (above the bar on a terminal)."""
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(message, err=True)

    def line(self, message: str) -> None:
        """A summary line on stdout, unless --json."""
        if self.as_json:
            return
        if self.progress is not None and sys.stdout.isatty():
            self.note(message)
        else:
            typer.echo(message)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _summary(result: FileResult) -> str:
    from .cli_delta import _size

    table = result.answer.get("table", "?") if isinstance(result.answer, dict) else "?"
    sent = f", {_size(result.sent_bytes)} sent" if result.sent_bytes is not None else ""
    line = (
        f"{result.path}: {result.rows:,} rows in {_plural(result.batches, 'batch')} "
        f"({_size(result.bytes)} of Arrow data{sent}) -> {table} in {result.seconds:.1f} s"
    )
    if result.replayed:
        line += "; replayed: committed earlier with this key, nothing written"
    return line


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "es" if noun.endswith("ch") else "s")


def _usage(message: str) -> typer.Exit:
    typer.echo(f"arrowport: {message}", err=True)
    return typer.Exit(EXIT_INPUT)


def _target(
    url: str,
    flight: bool,
    token: str | None,
    cafile: str | None,
    timeout: float,
    compression: Compression,
    level: int | None,
) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in ("http", "https", "grpc", "grpc+tls") or not parts.hostname or port == -1:
        raise _usage(f"--url {url!r}: expected http(s)://HOST[:PORT] or grpc[+tls]://HOST:PORT")
    if cafile is not None and not Path(cafile).is_file():
        raise _usage(f"--cafile {cafile}: no such file")
    if compression is Compression.none:
        if level is not None:
            raise _usage("--level needs --compression zstd or lz4")
        options = pa.ipc.IpcWriteOptions()
    else:
        try:
            codec = pa.Codec(compression.value, level)
        except (ValueError, pa.ArrowException) as exc:
            raise _usage(f"--compression {compression.value} --level {level}: {exc}") from None
        options = pa.ipc.IpcWriteOptions(compression=codec)
    tls = scheme in ("https", "grpc+tls")
    return Target(
        url=url,
        host=parts.hostname,
        port=port or (443 if tls else 80),
        base=parts.path.rstrip("/"),
        tls=tls,
        flight=flight or scheme.startswith("grpc"),
        token=token,
        cafile=cafile,
        timeout=timeout,
        options=options,
    )


def _keys(key: str, paths: list[str]) -> list[str | None]:
    from .names import InvalidIdempotencyKeyError, validate_idempotency_key

    if key == "auto":
        return [str(uuid.uuid4()) for _ in paths]
    if key == "none":
        return [None for _ in paths]
    keys = [key] if len(paths) == 1 else [f"{key}-{_identity(p)}" for p in paths]
    try:
        for k in keys:
            validate_idempotency_key(k)
    except InvalidIdempotencyKeyError as exc:
        more = "; with several files, KEY-HASH is 17 characters longer" if len(keys) > 1 else ""
        raise _usage(f"--idempotency-key: {exc.detail}{more}") from None
    return list(keys)


def _identity(path: str) -> str:
    """16 hex digits of SHA-256 of the file's resolved path, size and mtime (ns); 'stdin'."""
    if path == "-":
        return "stdin"
    try:
        st = os.stat(path)
        identity = f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    except OSError:  # it will fail to open; any key will do
        identity = str(Path(path).absolute())
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def ingest_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH",
            help="Files to send, each as its own request: Arrow IPC files or streams "
            "(.arrow, .arrows, .feather; told apart by their first bytes), Parquet, or CSV "
            "(.csv, .tsv, optionally .gz, .bz2, .zst or .lz4). '-' reads an Arrow IPC stream "
            "from stdin.",
            show_default=False,
        ),
    ],
    stream: Annotated[
        str, typer.Option("--stream", "-s", help="The stream to write to (routed to a table).")
    ],
    url: Annotated[
        str,
        typer.Option(
            envvar="ARROWPORT_URL",
            help="The server: http://HOST:PORT or https:// (the system trust store, or "
            "--cafile). grpc://HOST:PORT or grpc+tls:// imply --flight.",
        ),
    ] = "http://127.0.0.1:8888",
    flight: Annotated[
        bool,
        typer.Option(
            "--flight",
            help="Send with Arrow Flight DoPut (grpc://, or grpc+tls:// for an https URL, on "
            "the URL's host and port) instead of HTTP POST /ingest/{stream}.",
        ),
    ] = False,
    compression: Annotated[
        Compression, typer.Option(help="Arrow IPC body compression of the batches sent.")
    ] = Compression.zstd,
    level: Annotated[
        int | None, typer.Option(help="Compression level (default: the codec's own).")
    ] = None,
    chunk_size: Annotated[
        int,
        typer.Option(min=1, help="Rows per batch sent; the input's batches are split or joined."),
    ] = 122880,
    idempotency_key: Annotated[
        str,
        typer.Option(
            help="'auto': a fresh random key per file, so running the command again sends "
            "the data again. KEY: for one file, this key; for several, KEY-HASH, HASH 16 hex "
            "digits of SHA-256 of the file's resolved path, size and mtime, so running the "
            "command again, with all the files or only those not yet sent, writes nothing "
            "twice (one file alone gets KEY itself). 'none': no key, as commit: batch streams "
            "need (they refuse keys); a retry then resends the file and may write rows twice.",
        ),
    ] = "auto",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="ARROWPORT_TOKEN", help="Bearer token for a server with authentication."
        ),
    ] = None,
    cafile: Annotated[
        str | None,
        typer.Option(help="PEM file of the CA certificates to trust for https/grpc+tls."),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Retries per file after a connection failure, HTTP 429/502/503/504, or a "
            "busy Flight server (waiting as Retry-After says, else 0.5 s doubling up to "
            "10 s). Each retry "
            "resends the whole file with the same idempotency key, so nothing is written "
            "twice (without a key, --idempotency-key none, it may be). stdin ('-') is never "
            "retried: it cannot be re-read.",
        ),
    ] = 5,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="HTTP only: seconds the connection may stay silent (sending, or waiting for "
            "the commit) before the attempt counts as failed; connecting gets at most 30 s.",
        ),
    ] = 300.0,
    allow_missing_eos: Annotated[
        bool,
        typer.Option(
            "--allow-missing-eos",
            help="Send an Arrow IPC stream (stdin, or a stream file) that ends without its "
            "end-of-stream marker as complete. Without it such a stream, which is what a "
            "producer that died mid-stream leaves, is abandoned (exit 2).",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON summary on stdout (each file's rows, batches, bytes, "
            "replayed and the server's answer; totals) instead of summary lines.",
        ),
    ] = False,
) -> None:
    """Send files to a running server: each file is one request, one transaction.

    Files are streamed, memory-mapped or read a row group or block at a time,
    so they may be larger than memory. A progress bar shows on a terminal.

    Exit status: 0 every file committed (or replayed); 1 the server refused
    the data (a 4xx answer, printed), or replayed a key used for other data;
    2 bad usage, or an input that cannot be read or parsed (an IPC stream
    without its end-of-stream marker too); 3 no connection, or retries
    exhausted; 4 a server error (5xx); 130 interrupted. After a failure the
    remaining files are not sent; an input that fails part-way is abandoned,
    and nothing of it is committed (on a commit: batch stream, the batches
    committed before stay). If a Flight call cannot be cut off, the error
    says the input may be partly committed.
    """
    if paths.count("-") > 1:
        raise _usage("'-' (stdin) can be given once")
    target = _target(url, flight, token, cafile, timeout, compression, level)
    results = [FileResult(p, k) for p, k in zip(paths, _keys(idempotency_key, paths), strict=True)]
    code, started = EXIT_OK, time.monotonic()
    out = Reporter(as_json)
    try:
        for result in results:
            try:
                ingest_one(target, stream, result, chunk_size, retries, allow_missing_eos, out)
            except Failure as exc:
                result.status, result.error, result.answer = "failed", str(exc), exc.answer
                code = exc.code
            except KeyboardInterrupt:
                result.status, result.error = "failed", "interrupted before the server answered"
                code = EXIT_INTERRUPTED
            out.end(failed=bool(result.error))
            if result.error:
                out.note(f"arrowport: {result.path}: {result.error}")
                break
            for warning in result.warnings:
                out.note(f"arrowport: {result.path}: warning: {warning}")
            out.line(_summary(result))
    finally:
        out.stop()
    _report(results, target, stream, code, time.monotonic() - started, out)
    raise typer.Exit(code)


def _report(
    results: list[FileResult],
    target: Target,
    stream: str,
    code: int,
    seconds: float,
    out: Reporter,
) -> None:
    from .cli_delta import _size

    done = [r for r in results if r.status == "ok"]
    totals: dict[str, Any] = {
        "files": len(results),
        **{s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")},
        "replayed": sum(r.replayed for r in results),
        "rows": sum(r.rows for r in done),
        "batches": sum(r.batches for r in done),
        "bytes": sum(r.bytes for r in done),
        "seconds": round(seconds, 3),
    }
    if out.as_json:
        transport = "flight" if target.flight else "http"
        report = {"stream": stream, "url": target.url, "transport": transport}
        files = [asdict(r) for r in results]
        typer.echo(json.dumps({**report, "exit_code": code, "files": files, "totals": totals}))
    elif len(results) > 1:
        rate = int(totals["bytes"] / seconds) if seconds > 0 else 0
        out.line(
            f"{len(done)} of {_plural(len(results), 'file')} sent: {totals['rows']:,} rows, "
            f"{_size(totals['bytes'])} in {seconds:.1f} s ({_size(rate)}/s)"
        )
