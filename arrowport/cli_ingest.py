"""``arrowport ingest``: send Arrow IPC, Parquet and CSV files to a running server.

Invariants:

* Flat client memory. Inputs are read a chunk at a time (Arrow IPC
  memory-mapped, Parquet by row group, CSV by block) and each chunk is sent
  before the next is read. Mapped pages already sent are dropped from the
  process (``madvise``), so RSS does not grow with the file.
* One request per input: its own transaction and idempotency key. A retry
  resends the whole input with the same key, so the server writes it once.
  stdin cannot be reread and is never retried.
* An input that fails mid-way (a bad CSV row) is abandoned without ending
  its stream: the connection is closed (HTTP) or the call cancelled (Flight),
  so nothing of it is committed.
* Exit codes (``EXIT_*``) say what failed; errors are one line on stderr.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import mmap
import os
import select
import socket
import ssl
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import pyarrow as pa
import typer

from . import __version__

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_CONNECT, EXIT_SERVER = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
RETRY_STATUSES = {429, 502, 503, 504}
BACKOFF, BACKOFF_MAX, RETRY_AFTER_MAX = 0.5, 10.0, 300.0
CONNECT_TIMEOUT = 30.0  # seconds; --timeout, if shorter, applies
RELEASE_BYTES = 8 * 1024 * 1024  # drop mapped pages after this much data is sent
IPC_SUFFIXES = {".arrow", ".arrows", ".feather", ".ipc"}
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
CSV_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
ARROW_STREAM = "application/vnd.apache.arrow.stream"


class Failure(Exception):
    """An input that was not committed; ``code`` is the exit status."""

    def __init__(self, code: int, message: str, answer: object = None) -> None:
        super().__init__(message)
        self.code, self.answer = code, answer


class InputError(Failure):
    def __init__(self, message: str) -> None:
        super().__init__(EXIT_INPUT, message)


class Retryable(Exception):
    """An attempt worth repeating: the connection failed, or the server asked us to wait."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


# -- inputs ---------------------------------------------------------------------

Batches = Iterator[tuple[pa.RecordBatch, int]]  # each batch, and the input bytes read so far


@dataclass
class Source:
    schema: pa.Schema
    batches: Batches
    size: int | None  # bytes of input; None for stdin
    mapping: mmap.mmap | None = None

    def release(self) -> None:
        """Drop mapped pages already read from this process (the page cache keeps them)."""
        if self.mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED)


@contextlib.contextmanager
def open_input(path: str, chunk_size: int) -> Iterator[Source]:
    """Open ``path`` (or ``-``, an IPC stream on stdin); any read error is an ``InputError``."""
    try:
        with contextlib.ExitStack() as stack:
            source = _open(path, chunk_size, stack)
            source.batches = _guarded(path, source.batches)
            yield source
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"cannot read: {_first_line(exc)}") from None


def _guarded(path: str, batches: Batches) -> Batches:
    try:
        yield from batches
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"cannot read: {_first_line(exc)}") from None


def _open(path: str, chunk_size: int, stack: contextlib.ExitStack) -> Source:
    if path == "-":
        stdin = pa.PythonFile(sys.stdin.buffer, mode="r")
        return _ipc_stream(pa.ipc.open_stream(stdin), None)
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(6)
    suffixes = [s.lower() for s in Path(path).suffixes[-2:]]
    last = suffixes[-1] if suffixes else ""
    if head == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff" or last in IPC_SUFFIXES:
        if size == 0:
            raise InputError("the file is empty")
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data = pa.py_buffer(mapped)
        if head == b"ARROW1":
            source = _ipc_file(pa.ipc.open_file(data), size)
        else:
            reader = pa.BufferReader(data)
            source = _ipc_stream(pa.ipc.open_stream(reader), size, reader.tell)
        source.mapping = mapped
        return source
    if head[:4] == b"PAR1":
        import pyarrow.parquet as pq

        parquet = stack.enter_context(pq.ParquetFile(path))
        return Source(parquet.schema_arrow, _parquet(parquet, chunk_size, size), size)
    if head[:4] == b"FEA1":
        raise InputError("Feather V1 is not supported; rewrite the file as Feather V2")
    codec = CSV_CODECS.get(last)
    kind = (suffixes[0] if len(suffixes) == 2 else "") if codec else last
    if kind in CSV_SUFFIXES:
        import pyarrow.csv as pacsv

        raw = stack.enter_context(pa.OSFile(path))
        stream = pa.CompressedInputStream(raw, codec) if codec else raw
        options = pacsv.ParseOptions(delimiter=CSV_SUFFIXES[kind])
        reader = pacsv.open_csv(stream, parse_options=options)
        return Source(reader.schema, ((b, raw.tell()) for b in reader), size)
    raise InputError(
        "cannot tell its format: expected Arrow IPC (.arrow, .arrows, .feather), "
        "Parquet, or CSV (.csv, .tsv, optionally .gz, .bz2, .zst or .lz4)"
    )


def _ipc_file(reader: pa.ipc.RecordBatchFileReader, size: int) -> Source:
    n = reader.num_record_batches
    batches = ((reader.get_batch(i), size * (i + 1) // n) for i in range(n))
    return Source(reader.schema, batches, size)


def _ipc_stream(
    reader: pa.ipc.RecordBatchStreamReader, size: int | None, tell: Callable[[], int] | None = None
) -> Source:
    def batches() -> Batches:
        read = 0
        for batch in reader:
            read += batch.nbytes
            yield batch, tell() if tell else read

    return Source(reader.schema, batches(), size)


def _parquet(parquet: Any, chunk_size: int, size: int) -> Batches:
    total, done = max(parquet.metadata.num_rows, 1), 0
    for batch in parquet.iter_batches(batch_size=chunk_size):
        done += batch.num_rows
        yield batch, size * done // total


def rechunk(batches: Batches, rows: int) -> Batches:
    """Batches of exactly ``rows`` rows (the last may be shorter): big ones sliced, small joined."""
    pending: list[pa.RecordBatch] = []
    count = position = 0
    for batch, position in batches:
        start = 0
        while start < batch.num_rows:
            piece = batch.slice(start, rows - count)
            start += piece.num_rows
            pending.append(piece)
            count += piece.num_rows
            if count == rows:
                yield _join(pending), position
                pending, count = [], 0
    if pending:
        yield _join(pending), position


def _join(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


# -- sending ----------------------------------------------------------------------


@dataclass
class Tally:
    rows: int = 0
    batches: int = 0
    bytes: int = 0  # Arrow data sent, uncompressed
    sent_bytes: int | None = None  # the HTTP body; None on Flight
    position: int = 0  # input bytes read
    unreleased: int = 0

    def add(self, batch: pa.RecordBatch, position: int, source: Source) -> None:
        self.rows += batch.num_rows
        self.batches += 1
        self.bytes += batch.nbytes
        self.position = position
        self.unreleased += batch.nbytes
        if self.unreleased >= RELEASE_BYTES:
            source.release()
            self.unreleased = 0


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    base: str
    tls: bool
    flight: bool
    token: str | None
    cafile: str | None
    timeout: float
    options: pa.ipc.IpcWriteOptions


class _Sink:
    """The file pyarrow's IPC writer writes into; ``take`` returns what it wrote."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def write(self, data: Any) -> int:
        self.parts.append(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def send_http(
    target: Target,
    stream: str,
    key: str,
    source: Source,
    tally: Tally,
    chunk_size: int,
    on_chunk: Callable[[Tally], None],
) -> dict[str, Any]:
    """POST ``source`` as one chunked Arrow IPC stream and return the server's JSON answer."""
    timeout = min(target.timeout, CONNECT_TIMEOUT)
    if target.tls:
        context = ssl.create_default_context(cafile=target.cafile)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    tally.sent_bytes = 0

    def answered() -> bool:
        """The server answered before the end (it refused the stream): stop sending.

        Not under TLS, where a readable socket may hold only session tickets.
        """
        sock = conn.sock
        if target.tls or sock is None:
            return False
        return bool(select.select([sock], [], [], 0)[0])

    def body() -> Iterator[bytes]:
        sink, sent = _Sink(), 0
        writer = pa.ipc.new_stream(sink, source.schema, options=target.options)
        for batch, position in rechunk(source.batches, chunk_size):
            writer.write_batch(batch)
            data = sink.take()
            yield data
            tally.sent_bytes = sent = sent + len(data)
            tally.add(batch, position, source)
            on_chunk(tally)
            if answered():
                return
        writer.close()
        end = sink.take()
        yield end
        tally.sent_bytes = sent + len(end)

    headers = {"Content-Type": ARROW_STREAM, "Idempotency-Key": key}
    headers["User-Agent"] = f"arrowport-ingest/{__version__}"
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    try:
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise Failure(EXIT_CONNECT, f"cannot connect to {target.url}: {exc}") from None
        except OSError as exc:
            raise Retryable(f"cannot connect to {target.url}: {_first_line(exc)}") from None
        assert conn.sock is not None
        conn.sock.settimeout(target.timeout)
        path = f"{target.base}/ingest/{quote(stream, safe='')}"
        try:
            conn.request("POST", path, body=body(), headers=headers, encode_chunked=True)
        except (OSError, http.client.HTTPException) as exc:
            response = _early_response(conn)  # the server may have answered, then closed
            if response is None:
                raise Retryable(f"connection lost while sending: {_first_line(exc)}") from None
        else:
            try:
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise Retryable(f"connection lost before the answer: {_first_line(exc)}") from None
        return _answer(response)
    finally:
        conn.close()


def _early_response(conn: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    if conn.sock is None:
        return None
    try:
        conn.sock.settimeout(5)
        return conn.getresponse()
    except (OSError, http.client.HTTPException):
        return None


def _answer(response: http.client.HTTPResponse) -> dict[str, Any]:
    try:
        raw = response.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise Retryable(f"connection lost while reading the answer: {_first_line(exc)}") from None
    status = response.status
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    shown = json.dumps(answer) if answer is not None else raw.decode(errors="replace").strip()
    if status == 200 and isinstance(answer, dict):
        return answer
    if status in RETRY_STATUSES:
        wait = _retry_after(response.getheader("Retry-After"))
        raise Retryable(f"the server answered HTTP {status}: {shown}", wait)
    if 400 <= status < 500:
        raise Failure(EXIT_REFUSED, f"refused by the server (HTTP {status}): {shown}", answer)
    raise Failure(EXIT_SERVER, f"server error (HTTP {status}): {shown}", answer)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def send_flight(
    target: Target,
    stream: str,
    key: str,
    source: Source,
    tally: Tally,
    chunk_size: int,
    on_chunk: Callable[[Tally], None],
) -> dict[str, Any]:
    """DoPut ``source`` with the key in a JSON descriptor cmd; return the last ack."""
    import pyarrow.flight as fl

    scheme = "grpc+tls" if target.tls else "grpc"
    roots = Path(target.cafile).read_bytes() if target.cafile else None
    host = f"[{target.host}]" if ":" in target.host else target.host
    client = fl.FlightClient(f"{scheme}://{host}:{target.port}", tls_root_certs=roots)
    headers = [(b"authorization", f"Bearer {target.token}".encode())] if target.token else []
    call = fl.FlightCallOptions(headers=headers, write_options=target.options)
    cmd = json.dumps({"stream": stream, "idempotency_key": key}).encode()
    before = _tcp_sockets(target.port)
    try:
        writer, reader = client.do_put(fl.FlightDescriptor.for_command(cmd), source.schema, call)
        try:
            for batch, position in rechunk(source.batches, chunk_size):
                writer.write_batch(batch)
                tally.add(batch, position, source)
                on_chunk(tally)
        except BaseException:
            _disconnect(_tcp_sockets(target.port) - before)
            with contextlib.suppress(pa.ArrowException, OSError):
                writer.close()  # fails now, instead of noisily when collected
            raise
        writer.done_writing()
        acks = []
        while (buf := reader.read()) is not None:
            acks.append(json.loads(buf.to_pybytes()))
        writer.close()
    except (fl.FlightUnavailableError, fl.FlightTimedOutError, fl.FlightCancelledError) as exc:
        message = f"Flight call to {target.url} failed: {_flight_message(exc)}"
        if "handshake failed" in message.lower():  # a certificate not trusted: retrying won't help
            raise Failure(EXIT_CONNECT, message) from None
        raise Retryable(message) from None
    except (fl.FlightUnauthenticatedError, fl.FlightUnauthorizedError, pa.ArrowInvalid) as exc:
        message = _flight_message(exc)
        if message.startswith("resource exhausted") and "retry" in message:  # too busy
            raise Retryable(f"the server is busy: {message}") from None
        raise Failure(EXIT_REFUSED, f"refused by the server: {message}") from None
    except (pa.ArrowException, KeyError) as exc:
        raise Failure(EXIT_SERVER, f"server error: {_flight_message(exc)}") from None
    finally:
        client.close()
    if not acks:
        raise Failure(EXIT_SERVER, "the server ended the call without an acknowledgement")
    return dict(acks[-1])


def _tcp_sockets(port: int) -> set[int]:
    """The file descriptors of this process's TCP connections to ``port``."""
    found: set[int] = set()
    if not os.path.isdir("/dev/fd"):  # Linux and macOS have it
        return found
    for name in os.listdir("/dev/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                if inet and sock.getpeername()[1] == port:
                    found.add(fd)
        except (OSError, ValueError):
            continue
    return found


def _disconnect(fds: set[int]) -> None:
    """Cut the Flight client's connections, so the server sees the DoPut abandoned.

    pyarrow cannot cancel a DoPut: ``writer.close()``, ``client.close()`` and
    garbage collection all end the stream normally, and the server commits
    what was sent. A connection that drops before the end commits nothing.
    """
    for fd in fds:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _flight_message(exc: BaseException) -> str:
    text = str(exc).split(". Detail:")[0].split(". gRPC client debug context")[0]
    return _first_line(text.replace("Flight returned ", "").replace("gRPC returned ", ""))


def _first_line(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- the command ------------------------------------------------------------------


class Compression(StrEnum):
    zstd = "zstd"
    lz4 = "lz4"
    none = "none"


@dataclass
class FileResult:
    path: str
    idempotency_key: str
    status: str = "skipped"  # ok, failed or skipped (not tried after an earlier failure)
    rows: int = 0
    batches: int = 0
    bytes: int = 0
    sent_bytes: int | None = None
    replayed: bool = False
    attempts: int = 0
    seconds: float = 0.0
    answer: Any = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


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


def _ingest_one(
    target: Target, stream: str, result: FileResult, chunk_size: int, retries: int, out: Reporter
) -> None:
    send = send_flight if target.flight else send_http
    allowed = 1 if result.path == "-" else retries + 1
    started = time.monotonic()
    while True:
        result.attempts += 1
        tally = Tally()
        try:
            with open_input(result.path, chunk_size) as source:
                out.begin(result.path, source.size)
                key = result.idempotency_key
                answer = send(target, stream, key, source, tally, chunk_size, out.update)
            break
        except Retryable as exc:
            if result.attempts >= allowed:
                why = (
                    "stdin cannot be re-read, so it is not retried"
                    if result.path == "-"
                    else f"gave up after {result.attempts} attempts"
                )
                raise Failure(EXIT_CONNECT, f"{exc} ({why})") from None
            wait = exc.wait
            if wait is None:
                wait = min(BACKOFF_MAX, BACKOFF * 2 ** (result.attempts - 1))
            out.note(
                f"arrowport: {result.path}: {exc}; retrying in {wait:.1f} s "
                f"(attempt {result.attempts + 1} of {allowed}, same idempotency key)"
            )
            time.sleep(wait)
        finally:
            result.rows, result.batches, result.bytes = tally.rows, tally.batches, tally.bytes
            result.sent_bytes = tally.sent_bytes
            result.seconds = round(time.monotonic() - started, 3)
    result.status, result.answer = "ok", answer
    result.replayed = bool(answer.get("replayed"))
    committed = answer.get("rows", answer.get("committed_rows"))
    if committed != result.rows:
        why = "this key was first used for other data; " if result.replayed else ""
        result.warnings.append(f"the server reports {committed} rows, {why}{result.rows} were sent")


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


def _keys(key: str, paths: list[str]) -> list[str]:
    from .names import InvalidIdempotencyKeyError, validate_idempotency_key

    if key == "auto":
        return [str(uuid.uuid4()) for _ in paths]
    keys = [key] if len(paths) == 1 else [f"{key}-{i}" for i in range(1, len(paths) + 1)]
    try:
        for k in keys:
            validate_idempotency_key(k)
    except InvalidIdempotencyKeyError as exc:
        raise _usage(f"--idempotency-key: {exc.detail}") from None
    return keys


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
            "the data again. KEY: this key (KEY-1, KEY-2, ... for several files), so running "
            "the same command again writes nothing twice.",
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
            "twice. stdin ('-') is never retried: it cannot be re-read.",
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
    the data (a 4xx answer, printed); 2 bad usage, or an input that cannot be
    read or parsed; 3 no connection, or retries exhausted; 4 a server error
    (5xx); 130 interrupted. After a failure the remaining files are not sent;
    an input that fails part-way is abandoned, and nothing of it is committed.
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
                _ingest_one(target, stream, result, chunk_size, retries, out)
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
