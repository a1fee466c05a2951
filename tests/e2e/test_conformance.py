"""The Arrow project's integration "gold" streams and fuzzer-found streams, over HTTP and Flight,
into DuckDB, DuckLake and Delta: each valid stream is stored and read back equal by the
backend's own readers, or refused 4xx naming a column; never a 5xx, a death or a changed value.

The corpus is apache/arrow-testing's ``data`` directory: ``ARROW_TEST_DATA``, else
``../shared/arrow-testing/data`` beside the repository; without it these tests skip.

One server per backend runs every selected (stream, transport) first, then is stopped and
each table is read back; the tests then judge the recorded answers one by one. A send that
kills the server or leaves it unable to write is recorded and the server restarted, so that
the next stream's result is its own. ``ARROWPORT_CONFORMANCE_REPORT=<file>`` writes every
answer and verdict there as JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from conformance_support import (
    BACKENDS,
    TRANSPORTS,
    BackendServer,
    Outcome,
    Stored,
    corpus_data,
    read_back,
    skip_without_corpus,
    table_name,
    verdict,
)
from support import Server

DATA = corpus_data()
STREAMS = DATA / "arrow-ipc-stream" if DATA is not None else None


def _gold() -> list[str]:
    if STREAMS is None:
        return ["(no corpus)"]
    root = STREAMS / "integration"
    return sorted(str(p.relative_to(root))[: -len(".stream")] for p in root.rglob("*.stream"))


def _fuzz() -> list[str]:
    if STREAMS is None:
        return ["(no corpus)"]
    return sorted(p.name for p in STREAMS.iterdir() if p.is_file() and p.name != "README.md")


GOLD, FUZZ = _gold(), _fuzz()


def _path(kind: str, case: str) -> Path:
    assert STREAMS is not None
    if kind == "gold":
        return STREAMS / "integration" / f"{case}.stream"
    return STREAMS / case


def _read(data: bytes) -> tuple[pa.Schema, list[pa.RecordBatch]] | None:
    """The stream as pyarrow reads and validates it (None: it is not a valid stream)."""
    try:
        reader = pa.ipc.open_stream(data)
        batches = list(reader)
        for batch in batches:
            batch.validate(full=True)
    except Exception:
        return None
    return reader.schema, batches


@dataclass
class Sent:
    table: str
    outcome: Outcome
    sent: pa.Table | None
    valid: bool


@dataclass
class BackendRun:
    server: Server
    sent: dict[tuple[str, str, str], Sent]
    stored: dict[str, Stored]
    deaths: int
    restarts: int
    seconds: float


class Runs:
    """Each backend's run, made on first use, of every case selected in this session."""

    def __init__(self, request: pytest.FixtureRequest, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.done: dict[str, BackendRun] = {}
        self.selected: dict[str, list[tuple[str, str, str]]] = {b: [] for b in BACKENDS}
        for item in request.session.items:
            spec = getattr(item, "callspec", None)
            if item.module is not request.module or spec is None or "backend" not in spec.params:
                continue
            kind = "gold" if item.originalname == "test_gold_stream" else "fuzz"
            key = (kind, spec.params["case"], spec.params["transport"])
            self.selected[spec.params["backend"]].append(key)
        self.servers: list[BackendServer] = []

    def get(self, backend: str) -> BackendRun:
        if backend not in self.done:
            self.done[backend] = self._run(backend)
        return self.done[backend]

    def _run(self, backend: str) -> BackendRun:
        start = time.monotonic()
        bs = BackendServer(backend, self.factory.mktemp(f"conformance_{backend}"))
        self.servers.append(bs)
        sent: dict[tuple[str, str, str], Sent] = {}
        for kind, case, transport in self.selected[backend]:
            data = _path(kind, case).read_bytes()
            table = table_name(kind[0], case.replace("/", "_"), transport[0])
            read = _read(data)
            if transport == "http":
                outcome = bs.send_http(table, data)
            elif read is not None:
                outcome = bs.send_flight_table(table, read[0], read[1])
            else:
                outcome = bs.send_flight_raw(table, data)
            bs.check_after(outcome)
            whole = pa.Table.from_batches(read[1], read[0]) if read is not None else None
            sent[(kind, case, transport)] = Sent(table, outcome, whole, read is not None)
        bs.stop()
        stored = read_back(backend, bs.workdir, [s.table for s in sent.values()])
        return BackendRun(bs.server, sent, stored, bs.deaths, bs.restarts, time.monotonic() - start)

    def close(self) -> None:
        for bs in self.servers:
            bs.stop()


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    skip_without_corpus()
    all_runs = Runs(request, tmp_path_factory)
    yield all_runs
    all_runs.close()
    report = os.environ.get("ARROWPORT_CONFORMANCE_REPORT")
    if report:
        Path(report).write_text(json.dumps(_report(all_runs), indent=1, default=str))


def _report(all_runs: Runs) -> dict[str, object]:
    out: dict[str, object] = {}
    for backend, run in all_runs.done.items():
        rows = []
        for (kind, case, transport), s in run.sent.items():
            problems = verdict(s.outcome, s.sent, run.stored[s.table], run.server, valid=s.valid)
            rows.append(
                {
                    "kind": kind,
                    "case": case,
                    "transport": transport,
                    "outcome": asdict(s.outcome),
                    "problems": problems,
                }
            )
        out[backend] = {"seconds": run.seconds, "deaths": run.deaths, "rows": rows}
    return out


def _problems(runs: Runs, backend: str, kind: str, case: str, transport: str) -> list[str]:
    run = runs.get(backend)
    s = run.sent[(kind, case, transport)]
    return verdict(s.outcome, s.sent, run.stored[s.table], run.server, valid=s.valid)


def _cases(names: list[str]) -> list[object]:
    return [
        pytest.param(backend, transport, case, id=f"{backend}-{transport}-{case}")
        for backend in BACKENDS
        for transport in TRANSPORTS
        for case in names
    ]


@pytest.mark.parametrize(("backend", "transport", "case"), _cases(GOLD))
def test_gold_stream(runs: Runs, backend: str, transport: str, case: str) -> None:
    """The gold stream is stored and read back equal, or refused 4xx naming a column."""
    problems = _problems(runs, backend, "gold", case, transport)
    assert not problems, f"{backend} {transport} {case}:\n" + "\n".join(problems)


@pytest.mark.parametrize(("backend", "transport", "case"), _cases(FUZZ))
def test_fuzz_stream(runs: Runs, backend: str, transport: str, case: str) -> None:
    """The fuzzer-found stream is refused 4xx, the server lives, and nothing is written."""
    run = runs.get(backend)
    s = run.sent[("fuzz", case, transport)]
    problems = verdict(s.outcome, s.sent, run.stored[s.table], run.server, valid=s.valid)
    stored = run.stored[s.table]
    if not s.valid:
        problems += [
            f"{reader} holds a table for it" for reader, t in stored.tables.items() if t is not None
        ]
    assert not problems, f"{backend} {transport} {case}:\n" + "\n".join(problems)
