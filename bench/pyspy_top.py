# ruff: noqa: E501
"""Attach py-spy to a running server and summarise where its CPU goes.

    python bench/pyspy_top.py /tmp/prof.txt            # summarise a raw (collapsed) py-spy profile
    python bench/pyspy_top.py /tmp/prof.txt --top 25   # more rows

The benches call ``Profiler(pid, out)`` around the measured request
(``py-spy record -p PID --threads --native -f raw``; py-spy stops on SIGINT and
writes the file). ``summarise`` reads the collapsed stacks and prints, per
thread and overall, the functions with the most *self* samples (the leaf
frame), plus a few "inclusive" buckets that name the layers of the server.
Idle samples are excluded by py-spy unless ``--idle`` is passed to it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# Layers, matched leaf-first: a sample belongs to the first frame (from the leaf up) that matches any pattern.
BUCKETS: list[tuple[str, str]] = [
    ("batch validation (Validate*, validate)", r"Validat|validate"),
    (
        "DuckDB (duckdb::, storage/)",
        r"duckdb::|storage/duckdb\.py|storage/table_write\.py|duckdb\.cpython",
    ),
    ("socket send (kernel work on loopback included)", r"^(send|sendmsg|__send|sock_send)\b"),
    ("socket recv", r"^(recv|recv_into|recvmsg|__recv|sock_recv)\b"),
    ("memcpy / memmove (libc)", r"memcpy|memmove|^0x[0-9a-f]+ \(libc"),
    (
        "IPC read (read_message / read_record_batch / MessageReader)",
        r"read_message|read_record_batch|ReadRecordBatch|protocol/messages\.py",
    ),
    (
        "IPC write (DoGet: protocol/flight_encoder.py, serialize)",
        r"protocol/flight_encoder\.py|SerializeRecordBatch|WriteIpcPayload|write_batch|RecordBatchWriter",
    ),
    (
        "FlightData decoder (protocol/flight.py, input.py)",
        r"protocol/flight\.py|protocol/input\.py",
    ),
    ("h2 / hyperframe", r"h2/|hyperframe/|h2frames\.py"),
    ("h2conn (io/h2conn.py) / grpc.py", r"io/h2conn\.py|io/grpc\.py"),
    ("ingest pipeline (io/ingest.py, io/flight.py)", r"io/ingest\.py|io/flight\.py"),
    ("trio scheduler / epoll", r"trio/"),
    ("pyarrow (other)", r"pyarrow|libarrow"),
]


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in BUCKETS:
            if re.search(pattern, frame):
                return name
    return "other"


class Profiler:
    """``py-spy record`` attached to ``pid`` until ``stop()``."""

    def __init__(self, pid: int, out: Path, *, rate: int = 100, native: bool = True) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [
            exe,
            "record",
            "-p",
            str(pid),
            "--threads",
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(out),
        ]
        if native:
            cmd.append("--native")
        self.out = out
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(1.0)  # py-spy needs a moment to attach
        if self.proc.poll() is not None:
            raise SystemExit(
                f"FAIL: py-spy exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _strip_cxx(fn: str) -> str:
    """``ns::f<T, ...>::g(args)`` -> ``ns::f<>::g``: C++ symbols stay readable."""
    out, depth = [], 0
    for ch in fn:
        if ch in "<(":
            if depth == 0:
                out.append("<>" if ch == "<" else "")
            depth += 1
        elif ch in ">)" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)[:120]


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return _strip_cxx(frame)
    fn, file = _strip_cxx(m.group("fn")), m.group("file")
    for marker in ("site-packages/", "/arrowport/", "/lib/python3"):
        i = file.find(marker)
        if i >= 0:
            file = (
                file[i + len(marker) :]
                if marker != "/arrowport/"
                else "arrowport/" + file[i + len(marker) :]
            )
            break
    return f"{fn} ({os.path.basename(file) if file.startswith('/') else file})"


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if m:
            stacks.append((m.group(1).split(";"), int(m.group(2))))
    return stacks


def summarise(path: Path, top: int = 15) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks) or 1
    by_thread: collections.Counter[str] = collections.Counter()
    self_all: collections.Counter[str] = collections.Counter()
    self_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    buckets: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        # py-spy --threads puts "thread (0x..)" (and with -s "process ...") first; keep the name
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        leaf = _short(body[-1]) if body else "?"
        by_thread[thread] += n
        self_all[leaf] += n
        self_thread[thread][leaf] += n
        buckets[_bucket(body)] += n
        for fn in {_short(f) for f in body}:
            inclusive[fn] += n
    out = [f"{path}: {total} samples (non-idle)"]
    out.append(
        "threads: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in by_thread.most_common())
    )
    out.append("top self time, all threads:")
    out += [f"  {100 * n / total:5.1f}%  {fn}" for fn, n in self_all.most_common(top)]
    for thread, n in by_thread.most_common(3):
        out.append(f"top self time in {thread} ({100 * n / total:.0f}% of samples):")
        out += [
            f"  {100 * c / total:5.1f}%  {fn}"
            for fn, c in self_thread[thread].most_common(min(top, 10))
        ]
    out.append("top inclusive (arrowport/ and h2/trio frames; a function counts once per sample):")
    shown = [
        (fn, c)
        for fn, c in inclusive.most_common()
        if re.search(r"arrowport/|h2/|hyperframe/|h2frames|h2conn|trio/_socket", fn) and c < total
    ]
    out += [f"  {100 * c / total:5.1f}%  {fn}" for fn, c in shown[:top]]
    out.append("by layer (each sample to the first matching frame from the leaf up):")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in buckets.most_common()]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("raw", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.raw:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
