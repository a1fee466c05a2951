"""The in-flight memory budget holds against hostile bodies, on a real server.

The server runs with ``limits.max_inflight_bytes: 64MiB``. Its RSS is read from
``/proc/<pid>/status`` while the attack runs; the allowance over the budget is
stated in each test: one message over the budget (the one request allowed over
it at a time), plus ``SLACK`` for buffers, DuckDB and allocator noise. Before
this budget counted received and compressed bytes, these attacks took the server
several hundred MB past it (issue 17; at c4926dc these tests measure +283 MB, +291 MB
and +329 MB). Each test gets a fresh server (warmed up by one small upload): memory
freed by an earlier test would hide a later one's growth.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from flight_helpers import flight_client, put_table
from support import ARROW, Server, start_upload

MiB = 1024 * 1024
BUDGET = 64 * MiB
SLACK = 64 * MiB  # buffers (1 MiB per HTTP body, socket buffers), DuckDB, allocator


def _rss(server: Server) -> int:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _ipc(table: pa.Table, *, max_chunksize: int | None = None, **options: object) -> bytes:
    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(**options)  # type: ignore[arg-type]
    with pa.ipc.new_stream(sink, table.schema, options=opts) as writer:
        for batch in table.to_batches(max_chunksize=max_chunksize):
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


class Watch:
    """Samples the server's RSS and the latency of a fresh /health, in threads."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.base = _rss(server)
        self.peak = self.base
        self.health: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._rss, self._probe)]

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.server))
            time.sleep(0.01)

    def _probe(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                httpx.get(f"{self.server.url}/health", timeout=5).raise_for_status()
                self.health.append(time.monotonic() - started)
            except httpx.HTTPError:
                self.health.append(float("inf"))
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    @property
    def grown(self) -> int:
        return self.peak - self.base


CONFIG = """\
limits:
  max_inflight_bytes: 64MiB
  max_request_rows: 10000000
  max_request_decoded_bytes: 200MB
  body_idle_timeout: 20
"""


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    """A fresh server per test: memory another test freed would hide this one's growth."""
    config = tmp_path / "arrowport.yaml"
    config.write_text(CONFIG)
    started = server_factory(tmp_path, config=config).start()
    # warm up (first insert, ZSTD codec): RSS growth is measured from a served state
    warm = _ipc(pa.table({"x": pa.array([0] * MiB, pa.int64())}), compression="zstd")
    assert started.post("warm", warm).status_code == 200
    # let the idle server give DuckDB's cache back (io/server.py: once a second) before the
    # baseline is taken: a release during the test would lower the baseline mid-way
    time.sleep(1.5)
    return started


def _in_threads(jobs: list[Callable[[], object]]) -> list[object]:
    results: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_concurrent_zstd_bombs_stay_within_budget(server: Server) -> None:
    """4 concurrent ZSTD bodies of a few kB, each 2 x 32 MiB decoded: RSS grows by at most
    the budget + one batch (32 MiB) + SLACK, /health answers within 1 s, and all commit
    (429s, while the budget is spent, are retried)."""
    bomb = _ipc(
        pa.table({"x": pa.array([0] * (8 * MiB), pa.int64())}),
        max_chunksize=4 * MiB,
        compression="zstd",
    )
    assert len(bomb) < 64 * 1024

    def post(i: int) -> httpx.Response:  # as a client should: retry after a 429
        while True:
            answer = httpx.post(
                f"{server.url}/ingest/bomb{i}",
                content=bomb,
                headers={"Content-Type": ARROW},
                timeout=120,
            )
            if answer.status_code != 429:
                return answer
            time.sleep(0.05)

    jobs: list[Callable[[], object]] = [lambda i=i: post(i) for i in range(4)]
    with Watch(server) as watch:
        answers = _in_threads(jobs)
    for answer in answers:
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200, answer.text
        assert answer.json()["decoded_bytes"] == 64 * MiB
    assert watch.grown <= BUDGET + 32 * MiB + SLACK, watch.grown / MiB
    assert max(watch.health) < 1.0, watch.health


def test_concurrent_flight_zstd_bombs_stay_within_budget(server: Server) -> None:
    """The same over Flight: 4 concurrent DoPuts of 2 ZSTD batches of 32 MiB decoded each
    stay within the budget + one batch + SLACK, and every DoPut commits (retried when the
    budget is spent: RESOURCE_EXHAUSTED)."""
    table = pa.table({"x": pa.array([0] * (8 * MiB), pa.int64())})
    options = fl.FlightCallOptions(write_options=pa.ipc.IpcWriteOptions(compression="zstd"))

    def put(i: int) -> list[dict[str, object]]:
        client = flight_client(server)
        while True:
            try:
                return put_table(client, f"fbomb{i}", table, max_chunksize=4 * MiB, options=options)
            except pa.ArrowInvalid as exc:  # the budget is spent: retry
                assert "resource exhausted" in str(exc), exc
                time.sleep(0.05)

    with Watch(server) as watch:
        results = _in_threads([lambda i=i: put(i) for i in range(4)])
    for acks in results:
        assert isinstance(acks, list), acks
        assert acks[-1]["committed_rows"] == 8 * MiB
    print(f"flight bombs: RSS grew {watch.grown / MiB:.0f} MiB")
    # measured 122-179 MiB over runs at this commits (the upper end in full-suite runs
    # on a loaded machine): four DuckDB transactions writing at once each hold the row groups
    # they write, beyond SLACK's share; unbudgeted, the 8 batches alone would be 256 MiB
    assert watch.grown <= BUDGET + 32 * MiB + SLACK + 32 * MiB, watch.grown / MiB
    assert max(watch.health) < 1.0, watch.health


def test_held_uploads_stay_within_budget(server: Server) -> None:
    """6 uploads of one 40 MiB batch, each held 4 kB before its end: RSS grows by at most
    the budget + one body (40 MiB) + SLACK, and /health answers within 1 s. (Two bodies are
    taken, the second over the budget; a third waits; the rest get 429: the budget is spent.)"""
    data = _ipc(pa.table({"x": pa.array(range(5 * MiB), pa.int64())}))
    assert len(data) > 40 * MiB
    sockets: list[socket.socket] = []

    def hold(i: int) -> None:
        sock = start_upload(server.url, f"held{i}", len(data))
        sockets.append(sock)
        with contextlib.suppress(OSError):
            sock.sendall(data[:-4096])  # blocks once the server stops reading

    senders = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(6)]
    with Watch(server) as watch:
        for sender in senders:
            sender.start()
        time.sleep(4)
    for sock in sockets:
        sock.close()
    for sender in senders:
        sender.join(10)
    assert len(sockets) == 6
    assert watch.grown <= BUDGET + 40 * MiB + SLACK, watch.grown / MiB
    assert max(watch.health) < 1.0, watch.health


def test_dictionary_answer_reports_the_expanded_size(server: Server) -> None:
    """A 10 kB dictionary value behind 5,000 indices: the answer's decoded_bytes is what
    the backend expands it to (over 50 MB), not the 20 kB of indices."""
    column = pa.DictionaryArray.from_arrays(
        pa.array([0] * 5000, pa.int32()), pa.array(["v" * 10_000])
    )
    data = _ipc(pa.table({"d": column}))
    assert len(data) < 40_000
    answer = server.post("dictionary", data)
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == 5000
    assert answer.json()["decoded_bytes"] >= 5000 * 10_000


def test_huge_row_streams_are_refused_and_write_nothing(server: Server) -> None:
    """A null column of 16 M rows in a few hundred bytes and a run-end-encoded column of
    9 M rows get 413 limit_exceeded naming the limit (Flight: RESOURCE_EXHAUSTED), and
    nothing is written."""
    nulls = _ipc(pa.table({"n": pa.nulls(16 * 1024 * 1024)}), max_chunksize=4 * MiB)
    assert len(nulls) < 2_000
    answer = server.post("nulls", nulls)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "limit_exceeded"
    assert "limits.max_request_rows" in answer.json()["detail"]

    runs = pa.RunEndEncodedArray.from_arrays(pa.array([9_000_000], pa.int32()), ["v" * 100])
    ree = _ipc(pa.table({"r": runs}))
    assert len(ree) < 2_000
    answer = server.post("ree", ree)
    assert answer.status_code == 413, answer.text
    assert "limits.max_request_decoded_bytes" in answer.json()["detail"]

    with pytest.raises(pa.ArrowInvalid, match=r"resource exhausted.*max_request_rows"):
        put_table(flight_client(server), "nulls_flight", pa.table({"n": pa.nulls(11_000_000)}))
    assert server.tables() == {"warm"}
