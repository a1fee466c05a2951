"""``arrowport ingest``: send Arrow IPC, Parquet and CSV files to a running server.

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

import contextlib
import email.utils
import hashlib
import http.client
import json
import mmap
import os
import select
import socket
import ssl
import stat
import sys
import threading
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
EOS_MARKER = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # ends an IPC stream; pre-0.15: 4 zero bytes
MISSING_EOS = (
    "the Arrow IPC stream has no end-of-stream marker, so it may be cut short (did its "
    "producer die?). --allow-missing-eos sends such a stream as complete"
)


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
    warnings: list[str] = field(default_factory=list)

    def release(self) -> None:
        """Drop mapped pages already read from this process (the page cache keeps them)."""
        if self.mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED)


@contextlib.contextmanager
def open_input(path: str, chunk_size: int, allow_missing_eos: bool = False) -> Iterator[Source]:
    """Open ``path`` (or ``-``, an IPC stream on stdin); any read error is an ``InputError``.

    An IPC stream that ends without its end-of-stream marker raises an
    ``InputError`` after its last batch, unless ``allow_missing_eos``.
    """
    try:
        with contextlib.ExitStack() as stack:
            source = _open(path, chunk_size, allow_missing_eos, stack)
            source.batches = _guarded(path, source.batches)
            yield source
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"cannot read: {_first_line(exc)}") from None


def _guarded(path: str, batches: Batches) -> Batches:
    try:
        yield from batches
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"cannot read: {_first_line(exc)}") from None


def _open(
    path: str, chunk_size: int, allow_missing_eos: bool, stack: contextlib.ExitStack
) -> Source:
    if path == "-":
        stdin = _TailReader(sys.stdin.buffer)
        reader = pa.ipc.open_stream(pa.PythonFile(stdin, mode="r"))
        return _ipc_stream(reader, None, stdin.tell, stdin.tail, allow_missing_eos)
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

            def tail() -> bytes:
                end = reader.tell()
                return bytes(mapped[max(0, end - 8) : end])

            stream = pa.ipc.open_stream(reader)
            source = _ipc_stream(stream, size, reader.tell, tail, allow_missing_eos)
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


class _TailReader:
    """A binary stream (stdin) that counts the bytes read and keeps the last 8."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.read_bytes, self.last = raw, 0, b""

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.read_bytes += len(data)
        self.last = (self.last + data)[-8:]
        return data

    def tell(self) -> int:
        return self.read_bytes

    def tail(self) -> bytes:
        return self.last


def _ipc_stream(
    reader: pa.ipc.RecordBatchStreamReader,
    size: int | None,
    tell: Callable[[], int],
    tail: Callable[[], bytes],
    allow_missing_eos: bool,
) -> Source:
    """An IPC stream's batches; after the last, check that it ended with the end-of-stream marker.

    pyarrow reads a stream a message at a time and ends it quietly at the end of the input
    just as at the marker, so the bytes read after the last message tell which it was.
    """

    def batches() -> Batches:
        last = tell()  # where the last message read (the schema, then each batch) ends
        for batch in reader:
            last = tell()
            yield batch, last
        if not _ended_with_marker(tell() - last, tail()):
            if not allow_missing_eos:
                raise InputError(MISSING_EOS)
            source.warnings.append(
                "the Arrow IPC stream has no end-of-stream marker; sent as complete "
                "(--allow-missing-eos)"
            )

    source = Source(reader.schema, batches(), size)
    return source


def _ended_with_marker(after_last_message: int, tail: bytes) -> bool:
    """Whether the bytes read after the last message were the end-of-stream marker."""
    if after_last_message == 4:  # the pre-0.15 marker, a zero length without continuation
        return tail[-4:] == EOS_MARKER[4:]
    return after_last_message >= 8 and tail[-8:] == EOS_MARKER


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
    key: str | None,
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

    headers = {"Content-Type": ARROW_STREAM, "User-Agent": f"arrowport-ingest/{__version__}"}
    if key is not None:
        headers["Idempotency-Key"] = key
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
    key: str | None,
    source: Source,
    tally: Tally,
    chunk_size: int,
    on_chunk: Callable[[Tally], None],
) -> dict[str, Any]:
    """DoPut ``source`` with the key in a JSON descriptor cmd; return the last ack.

    Acks are read while sending: a ``commit: batch`` stream acks every batch, and acks
    left unread would fill the call's flow-control window and stall the server.
    """
    import pyarrow.flight as fl

    scheme = "grpc+tls" if target.tls else "grpc"
    roots = Path(target.cafile).read_bytes() if target.cafile else None
    host = f"[{target.host}]" if ":" in target.host else target.host
    # Straight to the server, whatever grpc_proxy/https_proxy/http_proxy say: abandoning a
    # DoPut means cutting the connection to the server's port, which a proxy would hide.
    client = fl.FlightClient(
        f"{scheme}://{host}:{target.port}",
        tls_root_certs=roots,
        generic_options=[("grpc.enable_http_proxy", 0)],
    )
    headers = [(b"authorization", f"Bearer {target.token}".encode())] if target.token else []
    call = fl.FlightCallOptions(headers=headers, write_options=target.options)
    spec = {"stream": stream} if key is None else {"stream": stream, "idempotency_key": key}
    before = _tcp_sockets(target.port)
    try:
        writer, reader = client.do_put(
            fl.FlightDescriptor.for_command(json.dumps(spec).encode()), source.schema, call
        )
        acks = _Acks(reader)
        try:
            for batch, position in rechunk(source.batches, chunk_size):
                writer.write_batch(batch)
                tally.add(batch, position, source)
                on_chunk(tally)
        except BaseException as exc:
            cut = _disconnect(_tcp_sockets(target.port) - before)
            ours = not isinstance(exc, pa.ArrowException)  # else the call has ended already
            if ours and not cut:  # end it, to learn what the server made of it
                with contextlib.suppress(pa.ArrowException, OSError):
                    writer.done_writing()
            acks.join(target.timeout)
            with contextlib.suppress(pa.ArrowException, OSError):
                writer.close()  # fails now, instead of noisily when collected
            if ours:
                note = _abandon_note(cut, acks.acks, tally, target.port)
                if note:
                    raise _noted(exc, note) from None
            raise
        writer.done_writing()
        acks.join()
        if acks.error is not None:
            raise acks.error
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
    except ValueError as exc:
        raise Failure(EXIT_SERVER, f"the server's acknowledgement is not JSON: {exc}") from None
    finally:
        client.close()
    if not acks.acks:
        raise Failure(EXIT_SERVER, "the server ended the call without an acknowledgement")
    return dict(acks.acks[-1])


class _Acks(threading.Thread):
    """Reads a DoPut's acks (JSON ``PutResult`` metadata) until the call ends."""

    def __init__(self, reader: Any) -> None:
        super().__init__(name="arrowport-acks", daemon=True)
        self.reader = reader
        self.acks: list[Any] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            while (buf := self.reader.read()) is not None:
                self.acks.append(json.loads(buf.to_pybytes()))
        except BaseException as exc:  # raised in the caller's thread
            self.error = exc


def _abandon_note(cut: bool, acks: list[Any], tally: Tally, port: int) -> str:
    """What the server kept of a DoPut abandoned part-way, if not nothing."""
    committed = next((a.get("committed_rows") for a in reversed(acks) if isinstance(a, dict)), None)
    if cut:
        if committed is None:
            return ""  # cut before any commit: nothing of it is committed
        return f"the server had committed at least {committed:,} rows of it (commit: batch)"
    why = (
        "but the Flight call could not be cut off (no connection of this process to port "
        f"{port} was found), so it ended normally"
    )
    if committed is not None:
        return f"{why}: the server committed {committed:,} rows of this input"
    return f"{why}: the input may be partly committed (up to the {tally.rows:,} rows sent)"


def _noted(exc: BaseException, note: str) -> BaseException:
    if isinstance(exc, Failure):
        return Failure(exc.code, f"{exc}; {note}", exc.answer)
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, f"interrupted; {note}")
    return exc


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


def _disconnect(fds: set[int]) -> bool:
    """Cut the Flight client's connections, so the server sees the DoPut abandoned.

    pyarrow cannot cancel a DoPut: ``writer.close()``, ``client.close()`` and
    garbage collection all end the stream normally, and the server commits
    what was sent. A connection that drops before the end commits nothing.
    Returns whether there was a connection to cut.
    """
    cut = False
    for fd in fds:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
            cut = True
    return cut


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
    idempotency_key: str | None
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
    target: Target,
    stream: str,
    result: FileResult,
    chunk_size: int,
    retries: int,
    allow_missing_eos: bool,
    out: Reporter,
) -> None:
    send = send_flight if target.flight else send_http
    allowed = 1 if result.path == "-" else retries + 1
    key = result.idempotency_key
    started = time.monotonic()
    while True:
        result.attempts += 1
        tally = Tally()
        try:
            with open_input(result.path, chunk_size, allow_missing_eos) as source:
                out.begin(result.path, source.size)
                answer = send(target, stream, key, source, tally, chunk_size, out.update)
                result.warnings = source.warnings
            break
        except Failure as exc:
            if key is not None and _key_refused_for_batch_mode(exc):
                raise Failure(
                    EXIT_REFUSED,
                    f"{exc}; the stream commits each batch (commit: batch) and takes no "
                    "idempotency key: send it with --idempotency-key none",
                    exc.answer,
                ) from None
            raise
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
            same = (
                "same idempotency key" if key else "no idempotency key: rows may be written twice"
            )
            out.note(
                f"arrowport: {result.path}: {exc}; retrying in {wait:.1f} s "
                f"(attempt {result.attempts + 1} of {allowed}, {same})"
            )
            time.sleep(wait)
        finally:
            result.rows, result.batches, result.bytes = tally.rows, tally.batches, tally.bytes
            result.sent_bytes = tally.sent_bytes
            result.seconds = round(time.monotonic() - started, 3)
    result.status, result.answer = "ok", answer
    result.replayed = bool(answer.get("replayed"))
    committed = answer.get("rows", answer.get("committed_rows"))
    if committed != result.rows and result.replayed:
        raise Failure(
            EXIT_REFUSED,
            f"the server replayed idempotency key {key!r}, committed earlier with {committed:,} "
            f"rows, but this input has {result.rows:,}: the key was used for other data, and "
            "nothing of this input was written; send it with another --idempotency-key",
            answer,
        )
    if committed != result.rows:
        result.warnings.append(f"the server reports {committed} rows, {result.rows} were sent")


def _key_refused_for_batch_mode(exc: Failure) -> bool:
    """The server refused the idempotency key because the stream is in batch mode."""
    answer = exc.answer
    if isinstance(answer, dict) and answer.get("error") == "idempotency_unsupported":
        return True  # HTTP 400
    return "need commit: request" in str(exc)  # Flight INVALID_ARGUMENT


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
                _ingest_one(target, stream, result, chunk_size, retries, allow_missing_eos, out)
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
