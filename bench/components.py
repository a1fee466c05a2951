# ruff: noqa: E501
"""Where the HTTP path's time and memory go, one component at a time.

    python bench/components.py --rows 10000000            # all parts
    python bench/components.py --only imports,validate

Parts (each prints one line per measurement):

* imports   RSS of a fresh interpreter after importing each layer of the server.
* validate  batch.validate() vs. batch.validate(full=True) over the whole file
            (the decoder runs full validation on every batch).
* decode    arrowport's IPCStreamDecoder fed from the file in 64 KiB chunks
            (hypercorn's read size), no network: the event loop's decode cost.
* recv      loopback TCP: a sender thread sendfile()s the file, Python receives
            with recv(64 KiB) (what hypercorn does) and recv_into(1 MiB).
* insert    DuckDB INSERT from the C++ IPC reader vs. from a Python generator
            wrapped in RecordBatchReader.from_batches (what the server does),
            vs. a generator fed from another thread through a queue (like
            trio.from_thread), each with default memory and memory_limit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lineitem


def _batches(path: Path):
    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def part_imports(path: Path) -> None:
    layers = [
        ("python", ""),
        ("pyarrow", "import pyarrow"),
        ("duckdb", "import duckdb"),
        ("pyarrow+duckdb", "import pyarrow, duckdb"),
        ("trio+hypercorn+quart_trio", "import trio, hypercorn.trio, quart_trio"),
        ("arrowport.io.server", "import arrowport.io.server"),
        (
            "server + duckdb.connect(':memory:')",
            "import arrowport.io.server, duckdb; duckdb.connect()",
        ),
    ]
    for name, code in layers:
        probe = code + "\nprint(open('/proc/self/status').read())"
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
        rss = next(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS:"))
        print(f"imports   {name:40} RSS {rss / 1024:7.1f} MB")


def part_validate(path: Path) -> None:
    batches = list(_batches(path))
    for full in (False, True):
        started = time.perf_counter()
        for batch in batches:
            batch.validate(full=full)
        seconds = time.perf_counter() - started
        print(f"validate  full={full!s:5} {seconds:7.2f} s for {len(batches)} batches")


def part_decode(path: Path, chunk: int = 64 * 1024) -> None:
    from arrowport.protocol import NEED_DATA, BatchReceived, IPCStreamDecoder

    decoder = IPCStreamDecoder()
    rows = 0
    started = time.perf_counter()
    cpu = time.process_time()
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            decoder.receive_data(data)
            while (event := decoder.next_event()) is not NEED_DATA:
                if isinstance(event, BatchReceived):
                    rows += event.batch.num_rows
            if not data:
                break
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    print(
        f"decode    {chunk // 1024} KiB chunks: {seconds:7.2f} s wall, {time.process_time() - cpu:6.2f} s CPU, "
        f"{size / 1e6 / seconds:6.0f} MB/s, {rows:,} rows (includes file reads)"
    )


def part_recv(path: Path) -> None:
    size = path.stat().st_size
    for mode, n in (("recv", 64 * 1024), ("recv", 1024 * 1024), ("recv_into", 1024 * 1024)):
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def send(port: int = port) -> None:
            with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb") as f:
                s.sendfile(f)

        sender = threading.Thread(target=send)
        sender.start()
        conn, _ = server.accept()
        got = 0
        buf = bytearray(n)
        started = time.perf_counter()
        cpu = time.process_time()
        while True:
            if mode == "recv":
                data = conn.recv(n)
                k = len(data)
            else:
                k = conn.recv_into(buf)
            if not k:
                break
            got += k
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        sender.join()
        conn.close()
        server.close()
        assert got == size
        print(
            f"recv      {mode}({n // 1024} KiB): {seconds:6.2f} s wall, {cpu:6.2f} s CPU "
            f"(both ends), {size / 1e6 / seconds:6.0f} MB/s"
        )


_INSERT_CHILD = r"""
import json, queue, sys, threading, time
import duckdb, pyarrow as pa
path, db, mode, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
con = duckdb.connect(db, config=settings)
source = pa.ipc.open_stream(pa.OSFile(path, "rb"))
if mode == "cpp":
    reader = source
elif mode == "pygen":
    reader = pa.RecordBatchReader.from_batches(source.schema, (b for b in source))
else:  # "thread": batches handed over from another thread, one at a time, like the server's queue
    q = queue.Queue(maxsize=4)
    def produce():
        for b in source:
            q.put(b)
        q.put(None)
    threading.Thread(target=produce, daemon=True).start()
    def gen():
        while (b := q.get()) is not None:
            yield b
    reader = pa.RecordBatchReader.from_batches(source.schema, gen())
con.register("src", reader)
con.execute("CREATE TABLE t AS SELECT * FROM src LIMIT 0")
t0, c0 = time.perf_counter(), time.process_time()
con.execute("BEGIN"); con.execute("INSERT INTO t SELECT * FROM src"); con.execute("COMMIT")
s, c = time.perf_counter() - t0, time.process_time() - c0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"s": s, "cpu": c, "hwm": hwm, "rows": con.execute("SELECT count(*) FROM t").fetchone()[0]}))
"""


def part_insert(path: Path, memory_limits: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="arrowport-components-") as tmp:
        for limit in memory_limits:
            settings = {"memory_limit": limit, "threads": 2} if limit != "default" else {}
            for mode in ("cpp", "pygen", "thread"):
                db = Path(tmp) / f"{mode}.duckdb"
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _INSERT_CHILD,
                        str(path),
                        str(db),
                        mode,
                        json.dumps(settings),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                db.unlink(missing_ok=True)
                print(
                    f"insert    memory_limit={limit:8} source={mode:6} {r['s']:6.2f} s "
                    f"{r['rows'] / r['s'] / 1e6:5.2f} M rows/s  cores {r['cpu'] / r['s']:4.2f}  "
                    f"peak RSS {r['hwm'] / 1024:6.0f} MB"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--only", default="imports,validate,decode,recv,insert")
    parser.add_argument("--memory-limits", default="default,200MB,100MB")
    args = parser.parse_args()
    path = lineitem.ensure(args.rows)
    parts = args.only.split(",")
    print(f"file {path} ({path.stat().st_size / 1e6:,.0f} MB), nproc {os.cpu_count()}")
    for part in parts:
        if part == "imports":
            part_imports(path)
        elif part == "validate":
            part_validate(path)
        elif part == "decode":
            part_decode(path)
        elif part == "recv":
            part_recv(path)
        elif part == "insert":
            part_insert(path, args.memory_limits.split(","))
        else:
            raise SystemExit(f"unknown part {part!r}")


if __name__ == "__main__":
    main()
