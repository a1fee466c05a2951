"""What the HTTP read routes share (``delta_http``, ``lake_http``).

Query arguments are parsed into storage calls' arguments, raising
``InvalidReadError`` (400) with a message that says what was wrong; an
Arrow IPC response is streamed one batch at a time, the next batch read in a
worker thread only after the previous one is sent, so memory stays bounded
by one batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pyarrow as pa
import trio
from quart import Response, jsonify, request

from ..protocol import ArrowportError
from ..protocol.sink import IpcSink
from ..storage import InvalidReadError
from .answers import public_json
from .status import http_status

ARROW_STREAM = "application/vnd.apache.arrow.stream"
READ_BATCH_ROWS = 65_536


def next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    """The reader's next batch, or None at its end (for ``trio.to_thread``; Flight DoGet too)."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


async def arrow_stream(reader: pa.RecordBatchReader) -> AsyncIterator[bytes]:
    """``reader`` as Arrow IPC stream bytes, a batch at a time; closes the reader."""
    sink = IpcSink()
    try:
        with pa.ipc.new_stream(sink, reader.schema) as writer:
            yield sink.take()  # the schema, at once
            while True:
                batch = await trio.to_thread.run_sync(next_batch, reader)
                if batch is None:
                    break
                writer.write_batch(batch)
                del batch
                yield sink.take()
        yield sink.take()  # the end-of-stream marker
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reader.close)


def int_arg(name: str, *, minimum: int = 0) -> int | None:
    """The request's integer query argument ``name``, or None when it is absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidReadError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise InvalidReadError(f"{name} must be at least {minimum}, not {value}")
    return value


def columns_arg() -> list[str] | None:
    """The request's ``columns=a,b`` query argument as a list, or None for every column."""
    raw = request.args.get("columns")
    if raw is None or raw.strip() == "":
        return None
    return [c.strip() for c in raw.split(",")]


def error_json(exc: ArrowportError) -> Response:
    """``exc`` as a JSON ``{error, detail}`` answer with its HTTP status."""
    response = jsonify(public_json(exc))
    response.status_code = http_status(exc)
    return with_retry_after(response, exc)


def with_retry_after(response: Response, exc: ArrowportError) -> Response:
    """``response``, with ``Retry-After`` when ``exc`` says when to try again."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
