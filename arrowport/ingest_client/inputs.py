"""Reading inputs a chunk at a time: Arrow IPC files and streams, Parquet, CSV, stdin.

Arrow IPC is memory-mapped, and the pages already sent are dropped from the
process (``Tally.add`` calls ``Source.release``), so RSS does not grow with the
file. An IPC stream must end with its end-of-stream marker, unless allowed
not to. Any read error is an ``InputError``.
"""

from __future__ import annotations

import contextlib
import mmap
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .common import InputError, first_line

RELEASE_BYTES = 8 * 1024 * 1024  # drop mapped pages after this much data is sent
IPC_SUFFIXES = {".arrow", ".arrows", ".feather", ".ipc"}
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
CSV_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
EOS_MARKER = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # ends an IPC stream; pre-0.15: 4 zero bytes
MISSING_EOS = (
    "the Arrow IPC stream has no end-of-stream marker, so it may be cut short (did its "
    "producer die?). --allow-missing-eos sends such a stream as complete"
)


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
        raise InputError(f"cannot read: {first_line(exc)}") from None


def _guarded(path: str, batches: Batches) -> Batches:
    try:
        yield from batches
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"cannot read: {first_line(exc)}") from None


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
