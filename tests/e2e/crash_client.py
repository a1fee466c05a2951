"""Crash-safety harness: clients that keep their own record of acks, a killer, and probes.

Three parts, used by ``test_crash_safety.py``:

* **Probes** (``install_probes``) run inside the server process. The test starts the real
  ``arrowport serve`` with a generated ``sitecustomize.py`` on ``PYTHONPATH`` that calls them.
  They wrap the storage writes' ``insert``, ``finish`` and commit steps (DuckDB ``TableWrite``,
  Delta ``DeltaWrite``) and append one line per step to a file (``os.write`` on an
  ``O_APPEND`` descriptor, so every line written survives a SIGKILL)::

      <time.monotonic()> <event> <idempotency key>

  with events ``insert``/``inserted`` (a group goes to storage), ``finish`` (the end of the
  request's stream reached storage), ``commit`` (the DuckDB ``COMMIT`` or the Delta log write
  starts), ``committed`` (``finish()`` returned: the commit is done and the answer not yet sent),
  ``replayed`` (a committed key: nothing written) and ``failed``. They only observe, except
  when *armed* (``ARROWPORT_CRASH_ARM=event,nth,delay,min_rows``): at the ``nth``
  occurrence of ``event`` (for ``insert``: of a group of at least ``min_rows`` rows) the server
  SIGKILLs itself, at once or after ``delay`` seconds, from a thread of its own. This is how
  kills land in windows of a few milliseconds or less (mid-insert, mid-commit, and right after
  a commit but before the answer); the kill is logged as a ``kill`` line first.
* **Clients** (``Client``): threads that each send one request at a time, every request with a
  fresh ``Idempotency-Key`` and rows ``(req, seq)`` that no other request sends, and record
  every attempt: when the body started and ended, and the answer (an *ack* is a 200, which
  the server sends only after the commit).
* **Classification** (``phases_at``): which phase each request in flight was in when the
  server died, from the probe lines and the client's own record.

``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process of the machine, so the
server's probe lines and the test's records can be compared.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_ENV = "ARROWPORT_CRASH_PROBE"
ARM_ENV = "ARROWPORT_CRASH_ARM"

# ---------------------------------------------------------------------------------------------
# probes (in the server process)


def install_probes() -> None:
    """Wrap the storage writes' steps with probe lines (no-op without ``ARROWPORT_CRASH_PROBE``)."""
    path = os.environ.get(PROBE_ENV)
    if not path:
        return
    from arrowport.storage import delta_write, group_write, table_write

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()
    counts: dict[str, int] = {}
    arm = os.environ.get(ARM_ENV, "")
    armed_event, nth, delay, min_rows = "", 0, 0.0, 0
    if arm:
        armed_event, n, d, m = arm.split(",")
        nth, delay, min_rows = int(n), float(d), int(m)

    def kill() -> None:
        os.write(fd, f"{time.monotonic():.6f} kill {armed_event}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)

    def note(event: str, write: Any, rows: int = 0) -> None:
        key = getattr(write, "key", None) or "-"
        with lock:
            os.write(fd, f"{time.monotonic():.6f} {event} {key}\n".encode())
            fire = False
            if event == armed_event and rows >= min_rows:
                counts[event] = counts.get(event, 0) + 1
                fire = counts[event] == nth
        if fire:
            if delay <= 0:
                kill()
            else:

                def later() -> None:
                    time.sleep(delay)
                    kill()

                threading.Thread(target=later, daemon=True).start()

    def wrap(cls: type, name: str, before: str, after: str | None) -> None:
        original = getattr(cls, name, None)
        if original is None:  # a renamed internal step: lose that probe, not the test
            return

        def probed(self: Any, *args: Any, **kwargs: Any) -> Any:
            rows = sum(b.num_rows for b in args[0]) if before == "insert" else 0
            note(before, self, rows)
            try:
                result = original(self, *args, **kwargs)
            except BaseException:
                note("failed", self)
                raise
            if after == "committed" and getattr(result, "replayed", False):
                note("replayed", self)
            elif after is not None:
                note(after, self)
            return result

        setattr(cls, name, probed)

    for cls in (table_write.TableWrite, delta_write.DeltaWrite):
        wrap(cls, "insert", "insert", "inserted")
        wrap(cls, "finish", "finish", "committed")
        wrap(cls, "_commit", "commit", None)

    # a group commit (storage/group_write.py): its parts' inserts, and its one COMMIT
    original_insert = group_write._insert_parts
    original_commit = group_write._commit

    def group_insert(store: Any, cur: Any, table: str, parts: list[Any], *args: Any) -> Any:
        rows = sum(p.rows for p in parts)
        for part in parts:
            note("insert", part, rows)
        return original_insert(store, cur, table, parts, *args)

    def group_commit(cur: Any, parts: list[Any]) -> None:
        if parts:  # armable: a group of at least min_rows parts
            note("group", parts[0], len(parts))
        for part in parts:
            note("commit", part)
        try:
            original_commit(cur, parts)
        except BaseException:
            for part in parts:
                note("failed", part)
            raise
        for part in parts:
            note("committed", part)

    original_statement = group_write._commit_statement

    def group_statement(
        store: Any, cur: Any, table: str, schema: Any, rows: Any, part: Any
    ) -> None:
        note("commit", part)
        try:
            original_statement(store, cur, table, schema, rows, part)
        except BaseException:
            note("failed", part)
            raise
        note("committed", part)

    group_write._insert_parts = group_insert  # type: ignore[assignment]
    group_write._commit = group_commit  # type: ignore[assignment]
    group_write._commit_statement = group_statement  # type: ignore[assignment]

    # a Delta group (storage/delta_group.py): one commit for its members' files
    from arrowport.storage import delta_group

    original_delta_commit = delta_group.GroupWrite.commit

    def delta_group_commit(self: Any) -> Any:
        for member in self.members:
            note("commit", member)
        try:
            results = original_delta_commit(self)
        except BaseException:
            for member in self.members:
                note("failed", member)
            raise
        for member in self.members:
            note("committed", member)
        return results

    delta_group.GroupWrite.commit = delta_group_commit  # type: ignore[method-assign]


def read_probes(path: Path) -> list[tuple[float, str, str]]:
    """The probe lines of one server run: (time, event, key)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) == 3:
            lines.append((float(parts[0]), parts[1], parts[2]))
    return lines


# ---------------------------------------------------------------------------------------------
# requests and the clients' record


@dataclass
class Attempt:
    """One try of a request: the client's own record."""

    cycle: int
    started: float
    body_done: float | None = None  # the last body byte handed to the socket
    ended: float | None = None
    status: int | None = None  # None: no answer (the connection died)
    answer: dict[str, Any] | None = None
    error: str = ""

    @property
    def acked(self) -> bool:
        return self.status == 200


@dataclass
class Request:
    req: int  # its rows are (req, 0) ... (req, rows - 1)
    key: str
    table: str
    rows: int
    batches: int
    slow: bool  # a trickled body (mid-body kills)
    attempts: list[Attempt] = field(default_factory=list)
    visible: bool = False  # at the last check: all its rows are in the table

    @property
    def acked(self) -> bool:
        return any(a.acked for a in self.attempts)


KINDS = (  # name, weight, rows, batches, slow
    ("small", 3, 10, 1, False),
    ("medium", 3, 5_000, 5, False),
    ("large", 2, 60_000, 12, False),
    ("slow", 2, 2_000, 10, True),
)


class Record:
    """Every request and attempt, shared by the client threads."""

    def __init__(self, tables: tuple[str, ...], rng: random.Random) -> None:
        self.tables = tables
        self.rng = rng
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    def new_request(self) -> Request:
        with self.lock:
            _, _, rows, batches, slow = self.rng.choices(KINDS, [k[1] for k in KINDS])[0]
            request = Request(
                req=len(self.requests),
                key=str(uuid.uuid4()),
                table=self.rng.choice(self.tables),
                rows=rows,
                batches=batches,
                slow=slow,
            )
            self.requests.append(request)
            return request

    def unacked(self) -> list[Request]:
        return [r for r in self.requests if not r.acked]


def body_bytes(request: Request) -> bytes:
    import numpy as np
    import pyarrow as pa

    n = request.rows
    seq = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "req": pa.array(np.full(n, request.req, dtype=np.int64)),
            "seq": pa.array(seq),
            "val": pa.array(seq * 0.5),
            "tag": pa.array([f"r{request.req}"] * n),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, n // request.batches))
    return sink.getvalue().to_pybytes()


class Client(threading.Thread):
    """Sends requests one at a time (retries first) until ``stop`` is set."""

    def __init__(
        self,
        url: str,
        record: Record,
        retries: list[Request],
        cycle: int,
        stop: threading.Event,
        rng: random.Random,
        *,
        retries_only: bool = False,
        chunk: int = 256 * 1024,
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.record, self.retries, self.cycle = url, record, retries, cycle
        self.stop, self.rng, self.retries_only, self.chunk = stop, rng, retries_only, chunk
        self.in_body: Attempt | None = None  # a slow body being trickled (for the killer)
        self.crashed: BaseException | None = None

    def next_request(self) -> Request | None:
        with self.record.lock:
            if self.retries:
                return self.retries.pop()
        if self.retries_only:
            return None
        return self.record.new_request()

    def run(self) -> None:
        import httpx

        try:
            with httpx.Client(timeout=60) as http:
                while not self.stop.is_set():
                    request = self.next_request()
                    if request is None:
                        return
                    if not self.send(http, request):
                        return  # no answer: the server is dead (or the test flags it)
        except BaseException as exc:  # a bug in the harness: the test reports it
            self.crashed = exc

    def send(self, http: Any, request: Request) -> bool:
        """One attempt; False if the connection died without an answer."""
        import httpx

        body = body_bytes(request)
        attempt = Attempt(cycle=self.cycle, started=time.monotonic())
        with self.record.lock:
            request.attempts.append(attempt)
        if request.slow:
            pieces = 10
            step = -(-len(body) // pieces)
        else:
            step = self.chunk
        delays = [self.rng.uniform(0.02, 0.06) for _ in range(0, len(body), step)]

        def chunks() -> Iterator[bytes]:
            for i, start in enumerate(range(0, len(body), step)):
                if request.slow and i:  # the first piece is sent: the server is reading
                    self.in_body = attempt
                    time.sleep(delays[i])
                yield body[start : start + step]
            attempt.body_done = time.monotonic()
            self.in_body = None

        headers = {
            "Content-Type": "application/vnd.apache.arrow.stream",
            "Idempotency-Key": request.key,
        }
        if request.req % 2:  # half with Content-Length, half chunked
            headers["Content-Length"] = str(len(body))
        try:
            response = http.post(
                f"{self.url}/ingest/{request.table}", content=chunks(), headers=headers
            )
            attempt.status = response.status_code
            with contextlib.suppress(ValueError):
                attempt.answer = response.json()
        except httpx.TransportError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
            return False
        finally:
            attempt.ended = time.monotonic()
            self.in_body = None
        return True


# ---------------------------------------------------------------------------------------------
# where the kill landed

PHASES = ("body", "waiting", "insert", "finishing", "commit", "after-commit", "replay")


def phases_at(
    kill_time: float,
    attempts: list[tuple[Request, Attempt]],
    probes: list[tuple[float, str, str]],
    committed: set[int],
) -> dict[int, str]:
    """The phase of each attempt in flight at ``kill_time``, by request number.

    * ``replay``: a retry of a request in ``committed`` (committed before this server run).

    * ``body``: the client was still sending the body.
    * ``waiting``: the body was sent, no storage step running (decoding, validation, the
      table's lock, between groups).
    * ``insert``: a group was being written (DuckDB INSERT, Delta Parquet files).
    * ``finishing``: the end of the stream reached storage, before the commit call (Delta
      closes its files; the DuckDB ledger row is written).
    * ``commit``: inside the commit call (DuckDB ``COMMIT``, the Delta log write).
    * ``after-commit``: ``finish()`` returned (committed or replayed), the answer not yet
      received by the client.
    """
    last: dict[str, str] = {}
    for t, event, key in probes:
        if t <= kill_time and event != "kill":
            last[key] = event
    phases = {}
    for request, attempt in attempts:
        if attempt.started > kill_time or attempt.acked:
            continue
        event = last.get(request.key)
        if request.req in committed:
            phase = "replay"
        elif event in ("committed", "replayed"):
            phase = "after-commit"
        elif event == "commit":
            phase = "commit"
        elif event == "finish":
            phase = "finishing"
        elif event == "insert":
            phase = "insert"
        elif attempt.body_done is None or attempt.body_done > kill_time:
            phase = "body"
        else:
            phase = "waiting"
        phases[request.req] = phase
    return phases
