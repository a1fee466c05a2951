"""One input end to end: open it, send it (HTTP or Flight), retry, check the answer.

One request per input, with its own idempotency key. A retry resends the whole
input with the same key, so the server writes it once; stdin cannot be reread
and is never retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .common import EXIT_CONNECT, EXIT_REFUSED, Failure, Retryable, Target
from .flight import send_flight
from .http import send_http
from .inputs import Tally, open_input

BACKOFF, BACKOFF_MAX = 0.5, 10.0


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


class Output(Protocol):
    """Where progress and notes go (the command's ``Reporter``)."""

    def begin(self, path: str, size: int | None) -> None: ...

    def update(self, tally: Tally) -> None: ...

    def note(self, message: str) -> None: ...


def ingest_one(
    target: Target,
    stream: str,
    result: FileResult,
    chunk_size: int,
    retries: int,
    allow_missing_eos: bool,
    out: Output,
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
