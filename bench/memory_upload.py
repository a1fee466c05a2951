# ruff: noqa: E501
"""Server RSS during and after one large HTTP upload.

    python bench/memory_upload.py                  # 6 GB, the server's defaults
    python bench/memory_upload.py --quick          # ~1 GB
    python bench/memory_upload.py --gb 2 --config bench/configs/mem64.yaml
    python bench/memory_upload.py --set duckdb.memory_limit=4GB   # an older default, for comparison

Starts ``arrowport serve --port 0 --db <fresh file>`` and uploads one Arrow IPC
stream of ``--gb`` GB to ``POST /ingest/mem`` with ``Content-Length`` (one
request, one transaction). The body is generated while it is sent: the schema,
then ``--batches-distinct`` pre-made record batches of 8 numeric columns
(int64/float64, random, ``--rows`` rows each, 7.9 MB) cycled until the size is
reached, then the end-of-stream marker. The client never holds more than one
batch's bytes.

A thread samples the server's VmRSS from ``/proc/PID/status`` every 100 ms.
Reported: idle RSS (after start, before the upload), peak RSS, RSS at the
answer, and RSS ``--after`` seconds (5 by default) after the answer; the upload's
MB/s; and the rows in the table (checked against the rows sent). A body of more rows
than ``limits.max_request_rows`` (100M; 6 GiB is 100.6M) raises that limit, and only it,
unless ``--config`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

SERVING = re.compile(r"serving on http://([\d.]+):(\d+)")
STREAM = "mem"
GB = 1024**3
DEFAULT_MAX_REQUEST_ROWS = 100_000_000  # limits.max_request_rows; 6 GiB is 100.6M rows


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def rss_parts_mb(pid: int) -> dict[str, int]:
    """RssAnon and RssFile (shared libraries' pages touched so far) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile"):
                out[key] = round(int(line.split()[1]) / 1024)
    return out


class Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``interval`` s: (seconds since start, MB)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic() - self.started_at, rss_mb(self.pid)))
            except (FileNotFoundError, ProcessLookupError, RuntimeError):
                return
            self.stopped.wait(self.interval)

    @property
    def peak(self) -> float:
        return max(mb for _, mb in self.samples)


def make_batches(rows: int, distinct: int) -> tuple[pa.Schema, list[bytes]]:
    """``distinct`` record batches of 4 int64 + 4 float64 columns, as IPC messages."""
    rng = np.random.default_rng(18)
    batches = []
    for _ in range(distinct):
        columns = {f"i{c}": pa.array(rng.integers(0, 1 << 40, rows)) for c in range(4)}
        columns.update({f"f{c}": pa.array(rng.random(rows)) for c in range(4)})
        batches.append(pa.record_batch(columns))
    schema = batches[0].schema
    messages = [b.serialize().to_pybytes() for b in batches]
    return schema, messages


def body_parts(
    schema: pa.Schema, messages: list[bytes], total: int
) -> tuple[int, int, Iterator[bytes]]:
    """(Content-Length, rows, a generator of the body's parts) for about ``total`` bytes."""
    head = schema.serialize().to_pybytes()
    eos = b"\xff\xff\xff\xff\x00\x00\x00\x00"
    count = max(1, (total - len(head)) // len(messages[0]))
    length = len(head) + sum(len(messages[i % len(messages)]) for i in range(count)) + len(eos)

    def parts() -> Iterator[bytes]:
        yield head
        for i in range(count):
            yield messages[i % len(messages)]
        yield eos

    return length, count, parts()


def start_server(
    db: Path, config: Path | None, sets: list[str]
) -> tuple[subprocess.Popen[str], str, int, list[str]]:
    cmd = [sys.executable, "-m", "arrowport", "serve", "--port", "0", "--db", str(db)]
    if config is not None:
        cmd += ["--config", str(config)]
    if sets:
        cfg = db.parent / "memory_upload.yaml"
        cfg.write_text(_yaml_from_sets(sets))
        if config is not None:
            raise SystemExit("--config and --set: give one")
        cmd += ["--config", str(cfg)]
    proc = subprocess.Popen(
        cmd, cwd=db.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line)
        match = SERVING.search(line)
        if match:
            threading.Thread(
                target=lambda: [log.append(x) for x in proc.stdout or ()], daemon=True
            ).start()
            return proc, match.group(1), int(match.group(2)), log
    raise SystemExit("server did not start:\n" + "".join(log))


def _yaml_from_sets(sets: list[str]) -> str:
    sections: dict[str, dict[str, str]] = {}
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or not value:
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        sections.setdefault(section, {})[name] = value
    return "".join(
        f"{section}:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in keys.items())
        for section, keys in sections.items()
    )


def upload(host: str, port: int, length: int, parts: Iterator[bytes]) -> tuple[float, bytes]:
    sock = socket.create_connection((host, port))
    started = time.monotonic()
    sock.sendall(
        f"POST /ingest/{STREAM} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/vnd.apache.arrow.stream\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    for part in parts:
        sock.sendall(part)
    sock.settimeout(600)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    seconds = time.monotonic() - started
    sock.close()
    return seconds, answer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=6.0, help="upload size in GiB (default 6)")
    parser.add_argument("--quick", action="store_true", help="1 GiB")
    parser.add_argument("--rows", type=int, default=122_880, help="rows per batch")
    parser.add_argument("--batches-distinct", type=int, default=8)
    parser.add_argument(
        "--after", type=float, default=5.0, help="seconds after the answer to read RSS"
    )
    parser.add_argument(
        "--idle-wait", type=float, default=3.0, help="seconds after start before idle is read"
    )
    parser.add_argument("--config", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    gb = 1.0 if args.quick else args.gb

    schema, messages = make_batches(args.rows, args.batches_distinct)
    length, count, parts = body_parts(schema, messages, int(gb * GB))
    raise_rows = not any(item.startswith("limits.max_request_rows=") for item in args.set)
    if count * args.rows > DEFAULT_MAX_REQUEST_ROWS and args.config is None and raise_rows:
        args.set.append(f"limits.max_request_rows={count * args.rows}")  # 6 GB: 100.6M rows
        print(f"(server started with --set {args.set[-1]})")
    tmp = Path(tempfile.mkdtemp(prefix="arrowport-mem-"))
    db = tmp / "mem.duckdb"
    proc, host, port, log = start_server(db, args.config, args.set)
    try:
        time.sleep(args.idle_wait)
        idle = rss_mb(proc.pid)
        idle_parts = rss_parts_mb(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        seconds, answer = upload(host, port, length, parts)
        at_answer = rss_mb(proc.pid)
        answered_at = time.monotonic() - sampler.started_at
        time.sleep(args.after)
        after = rss_mb(proc.pid)
        after_parts = rss_parts_mb(proc.pid)
        sampler.stopped.set()
        sampler.join()
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rows = None
    if " 200 " in status:
        with duckdb.connect(str(db), read_only=True) as con:
            rows = con.execute(f"SELECT count(*) FROM {STREAM}").fetchone()[0]  # type: ignore[index]
    expected = count * args.rows
    result = {
        "gb": gb,
        "body_mb": round(length / 2**20),
        "batches": count,
        "rows": rows,
        "rows_ok": rows == expected,
        "status": status,
        "seconds": round(seconds, 2),
        "mb_per_s": round(length / 2**20 / seconds),
        "idle_mb": round(idle),
        "peak_mb": round(sampler.peak),
        "at_answer_mb": round(at_answer),
        "after_mb": round(after),
        "after_s": args.after,
        "after_minus_idle_mb": round(after - idle),
        "answered_at_s": round(answered_at, 1),
        "idle_anon_file_mb": [idle_parts.get("RssAnon"), idle_parts.get("RssFile")],
        "after_anon_file_mb": [after_parts.get("RssAnon"), after_parts.get("RssFile")],
    }
    print(json.dumps(result, indent=1))
    if " 200 " not in status:
        print(
            answer.decode(errors="replace")[-2000:], "".join(log[-30:]), sep="\n", file=sys.stderr
        )
    if args.json:
        args.json.write_text(json.dumps({**result, "samples": sampler.samples}))
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
