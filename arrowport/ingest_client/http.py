"""Sending one input over HTTP: a chunked ``POST /ingest/{stream}``, and its answer.

A connection failure and HTTP 429/502/503/504 are ``Retryable`` (with the
server's Retry-After); other refusals and errors are a ``Failure``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import select
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from .. import __version__
from ..protocol.sink import IpcSink
from .common import EXIT_CONNECT, EXIT_REFUSED, EXIT_SERVER, Failure, Retryable, Target, first_line
from .inputs import Source, Tally, rechunk

RETRY_STATUSES = {429, 502, 503, 504}
RETRY_AFTER_MAX = 300.0
CONNECT_TIMEOUT = 30.0  # seconds; --timeout, if shorter, applies
ARROW_STREAM = "application/vnd.apache.arrow.stream"


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
        sink, sent = IpcSink(), 0
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
            raise Retryable(f"cannot connect to {target.url}: {first_line(exc)}") from None
        assert conn.sock is not None
        conn.sock.settimeout(target.timeout)
        path = f"{target.base}/ingest/{quote(stream, safe='')}"
        try:
            conn.request("POST", path, body=body(), headers=headers, encode_chunked=True)
        except (OSError, http.client.HTTPException) as exc:
            response = _early_response(conn)  # the server may have answered, then closed
            if response is None:
                raise Retryable(f"connection lost while sending: {first_line(exc)}") from None
        else:
            try:
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise Retryable(f"connection lost before the answer: {first_line(exc)}") from None
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
        raise Retryable(f"connection lost while reading the answer: {first_line(exc)}") from None
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
