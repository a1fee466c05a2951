"""With the default settings, one large upload neither grows the server by its size nor
leaves it holding that memory afterwards (issue 18: DuckDB's block cache and Arrow's
allocator used to keep a request's memory after the answer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from support import Server, read_response, start_upload

ROWS = 122_880  # one DuckDB row group per batch, 8 columns: 7.9 MB


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"VmRSS not in /proc/{pid}/status")


def _generated_body(batches: int) -> tuple[int, Iterator[bytes]]:
    """Content-Length and the parts of an IPC stream of ``batches`` random batches of
    4 int64 + 4 float64 columns, four distinct ones cycled: never more than those in memory."""
    rng = np.random.default_rng(18)
    made = []
    for _ in range(4):
        columns = {f"i{c}": pa.array(rng.integers(0, 1 << 40, ROWS)) for c in range(4)}
        columns.update({f"f{c}": pa.array(rng.random(ROWS)) for c in range(4)})
        made.append(pa.record_batch(columns))
    head = made[0].schema.serialize().to_pybytes()
    messages = [b.serialize().to_pybytes() for b in made]
    eos = b"\xff\xff\xff\xff\x00\x00\x00\x00"
    length = len(head) + sum(len(messages[i % 4]) for i in range(batches)) + len(eos)

    def parts() -> Iterator[bytes]:
        yield head
        for i in range(batches):
            yield messages[i % 4]
        yield eos

    return length, parts()


def test_large_upload_with_defaults_is_bounded_and_given_back(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A 1.2 GB upload (one transaction, default config): RSS grows by much less than the
    body while it is written, and falls back near idle once it is committed."""
    server = server_factory(tmp_path).start()
    assert server.proc is not None
    pid = server.proc.pid
    batches = 160
    length, parts = _generated_body(batches)
    time.sleep(1)
    idle = _rss_mb(pid)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sock = start_upload(server.url, "mem", length)
    for part in parts:
        sock.sendall(part)
    status = read_response(sock, timeout=300).split(b"\r\n")[0]
    sock.close()
    done.set()
    sampler.join()
    assert b" 200 " in status, status
    after = _settled(pid, idle)  # given back once the store is idle
    body_mb = length / 2**20
    print(f"idle {idle:.0f} MB, peak {peak[0]:.0f} MB, after {after:.0f} MB, body {body_mb:.0f} MB")
    # duckdb.memory_limit (512MB by default) + the batches in flight; DuckDB's own default
    # (80% of RAM) would cache the whole transaction: about the body's size
    assert peak[0] - idle < 768, f"RSS grew {peak[0] - idle:.0f} MB for a {body_mb:.0f} MB body"
    assert after - idle < 96, f"RSS stayed {after - idle:.0f} MB above idle after the upload"
    assert server.query("SELECT count(*), sum(i0 % 7) >= 0 FROM mem") == [(batches * ROWS, True)]


def _settled(pid: int, idle: float, within: float = 96, wait: float = 30) -> float:
    """RSS once it is within ``within`` MB of ``idle``, or after ``wait`` seconds."""
    rss = _rss_mb(pid)
    deadline = time.monotonic() + wait
    while rss - idle >= within and time.monotonic() < deadline:
        time.sleep(0.5)
        rss = _rss_mb(pid)
    return rss


def test_memory_of_a_rolled_back_upload_is_given_back(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """A client that goes away half-way through 1 GB: nothing is written, and the memory
    the rolled-back transaction used is given back (DuckDB keeps it in its allocator, with
    ``duckdb_memory()`` reporting nothing, until the release)."""
    server = server_factory(tmp_path).start()
    assert server.proc is not None
    pid = server.proc.pid
    batches = 130
    length, parts = _generated_body(batches)
    time.sleep(1)
    idle = _rss_mb(pid)
    sock = start_upload(server.url, "gone", length)
    for i, part in enumerate(parts):
        if i > batches // 2:
            break
        sock.sendall(part)
    time.sleep(1)  # the server has read what was sent
    grown = _rss_mb(pid) - idle
    sock.close()
    server.wait_for("rolled back", timeout=60)
    after = _settled(pid, idle)
    print(f"idle {idle:.0f} MB, grown {grown:.0f} MB, after {after:.0f} MB")
    assert grown > 192, "the half upload should have used memory (else this test shows nothing)"
    assert after - idle < 96, f"RSS stayed {after - idle:.0f} MB above idle after the rollback"
    assert "gone" not in server.tables()
