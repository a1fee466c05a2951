# ruff: noqa: E501
"""Many small writes, side by side: in-process DuckDB, Quack, Arrowport HTTP and Flight.

    python bench/small_writes.py --quick                     # smoke test, < 60 s (1x1, 64x1, 16x1000; 0.5 s each)
    python bench/small_writes.py                             # P=1,4,64 x 1 row, 16 x 1,000 rows, 8 s each
    python bench/small_writes.py --systems http,flight --workloads 1x1 --duration 20
    python bench/small_writes.py --profile /tmp/small        # + py-spy of the server, 1 producer x 1 row

Systems (``--systems``), each run on a fresh DuckDB file:

* ``inproc``: one child process opens the file; each producer thread has its
  own cursor and runs ``INSERT INTO t SELECT * FROM arrow_table`` (autocommit:
  one transaction per request) on a prebuilt pyarrow table.
* ``quack``: DuckDB's remote protocol (``duckdb-extension-quack``, loaded
  offline from the registry package like ``arrowport/storage/duckdb.py``
  does). A server process opens the file and runs ``CALL quack_serve(...)``;
  each producer thread opens its own in-memory DuckDB, ``ATTACH``es the
  server and runs ``INSERT INTO r.t SELECT * FROM arrow_table``.
* ``http``: ``arrowport serve --port 0`` (defaults); each producer thread
  keeps one HTTP/1.1 connection (``http.client``, keep-alive) and POSTs the
  prebuilt IPC stream bytes to ``/ingest/t``; 200 answers count.
* ``flight``: the same server; each producer thread has one
  ``pyarrow.flight.FlightClient`` and does ``do_put`` (descriptor path "t")
  per request, counting the PutResult (sent after commit).

Workloads (``--workloads``, ``PxR``: P producers x R rows per request): each
producer sends requests back to back for ``--duration`` seconds. Producers run
as threads in ``min(P, --procs)`` client processes (Python threads of one
process would be the bottleneck with 64 producers; ``inproc`` is one process
by definition). Before the timed phase one 1-row request creates the table
(not timed); after it, the server is stopped and ``count(*)`` must equal that
row plus the acknowledged rows exactly.

Reported per run: requests/s (tx/s), rows/s, p50/p99 latency as the producer
saw it, the server's CPU per request (utime+stime from ``/proc``; for
``inproc`` the whole process) and its busiest threads' (``/proc/PID/task``),
the clients' CPU per request, errors and the 1-minute load average when the
run started (the machine may be shared: compare runs at similar load). Ratios: Arrowport / inproc and
Arrowport / Quack (tx/s of the same workload).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from http_ingest import thread_cpu_seconds  # noqa: E402

STREAM = "t"
CONTENT_TYPE = "application/vnd.apache.arrow.stream"
TOKEN = "bench-token"
SYSTEMS = ("inproc", "quack", "http", "flight")
TICK = os.sysconf("SC_CLK_TCK")


# -- data ----------------------------------------------------------------------------------


def make_table(rows: int, producer: int) -> Any:
    import pyarrow as pa

    base = producer * 1_000_000
    return pa.table(
        {
            "a": pa.array(range(base, base + rows), pa.int64()),
            "b": pa.array([i * 0.5 for i in range(rows)], pa.float64()),
            "c": pa.array([f"{producer:06d}-{i:013d}" for i in range(rows)], pa.string()),
        }
    )


def ipc_bytes(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def load_extensions(con: Any, names: tuple[str, ...] = ("httpfs", "quack")) -> None:
    """Offline, from the registry packages (as arrowport/storage/duckdb.py load_extension)."""
    import duckdb_extensions  # type: ignore[import-untyped]

    for name in names:
        duckdb_extensions.import_extension(name)
        con.execute(f"LOAD {name}")


# -- producers (run in client processes: ``--worker``) --------------------------------------


class Sender:
    """One producer's connection; ``send()`` is one request and returns the rows acknowledged."""

    def __init__(self, system: str, target: str, rows: int, producer: int) -> None:
        self.system, self.rows = system, rows
        self.arrow_table = make_table(rows, producer)
        if system == "inproc":
            self.con = SHARED[0].cursor()
        elif system == "quack":
            import duckdb

            self.con = duckdb.connect()
            load_extensions(self.con)
            self.con.execute(
                f"ATTACH 'quack:{target}' AS r (TYPE quack, TOKEN '{TOKEN}', DISABLE_SSL true)"
            )
        elif system == "http":
            host, port = target.split(":")
            self.http = http.client.HTTPConnection(host, int(port), timeout=120)
            self.body = ipc_bytes(self.arrow_table)
            self.headers = {"Content-Type": CONTENT_TYPE}
        else:
            import pyarrow.flight as fl

            self.client = fl.FlightClient(f"grpc://{target}")
            self.descriptor = fl.FlightDescriptor.for_path(STREAM)

    def send(self) -> int:
        arrow_table = self.arrow_table  # noqa: F841  (DuckDB's replacement scan finds it by name)
        if self.system == "inproc":
            self.con.execute("INSERT INTO t SELECT * FROM arrow_table")
            return self.rows
        if self.system == "quack":
            self.con.execute("INSERT INTO r.t SELECT * FROM arrow_table")
            return self.rows
        if self.system == "http":
            self.http.request("POST", f"/ingest/{STREAM}", body=self.body, headers=self.headers)
            response = self.http.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
            return int(json.loads(data)["rows"])
        writer, reader = self.client.do_put(self.descriptor, self.arrow_table.schema)
        writer.write_table(self.arrow_table)
        writer.done_writing()
        answer = json.loads(reader.read().to_pybytes())
        writer.close()
        return int(answer["committed_rows"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.system in ("inproc", "quack"):
                self.con.close()
            elif self.system == "http":
                self.http.close()
            else:
                self.client.close()


SHARED: list[Any] = []  # inproc: the one DuckDB connection of the worker


def worker(spec: dict[str, Any]) -> None:
    """Prints "ready", reads the start time (time.time()) on stdin, runs, prints one JSON line."""
    system, threads = spec["system"], spec["threads"]
    if system == "inproc":
        import duckdb

        SHARED.append(duckdb.connect(spec["target"]))
    senders = [
        Sender(system, spec["target"], spec["rows"], spec["first"] + i) for i in range(threads)
    ]
    print("ready", flush=True)
    start_wall = float(sys.stdin.readline())
    cpu0 = os.times()
    results: list[dict[str, Any]] = [{} for _ in senders]

    def produce(i: int) -> None:
        sender, lat, acked, errors, first_error = senders[i], [], 0, 0, ""
        wait = start_wall - time.time()
        if wait > 0:
            time.sleep(wait)
        t_start = time.perf_counter()
        deadline = t_start + spec["duration"]
        end = t_start
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            try:
                acked += sender.send()
            except Exception as exc:  # counted, the run goes on
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {str(exc)[:200]}"
                if system == "http":  # the connection may be gone
                    sender.http.close()
                continue
            end = time.perf_counter()
            lat.append(end - t0)
        results[i] = {
            "lat": lat,
            "acked": acked,
            "errors": errors,
            "error": first_error,
            "elapsed": end - t_start,
        }

    pool = [threading.Thread(target=produce, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu1 = os.times()
    for sender in senders:
        sender.close()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    if system == "inproc":
        SHARED[0].close()
    print(json.dumps({"threads": results, "cpu": cpu}), flush=True)


# -- servers ----------------------------------------------------------------------------------

_QUACK_SERVER = r"""
import os, sys, signal
sys.path.insert(0, sys.argv[3])
import duckdb
from small_writes import load_extensions
con = duckdb.connect(sys.argv[1])
load_extensions(con)
con.execute("CREATE TABLE t (a BIGINT, b DOUBLE, c VARCHAR)")
con.execute(f"CALL quack_serve('quack:127.0.0.1:{sys.argv[2]}', token => '{sys.argv[4]}', disable_ssl => true)")
print("serving", flush=True)
sys.stdin.readline()  # the parent closes stdin to stop
con.execute("CHECKPOINT")
con.close()
os._exit(0)  # the listener's threads are not joined
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class QuackServer:
    def __init__(self, db: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _QUACK_SERVER, str(db), str(self.port), str(HERE), TOKEN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "serving":
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"quack server did not start: {line} {err[-2000:]}")
        self.pid = self.proc.pid
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait(timeout=120) != 0:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"quack server exited {self.proc.returncode}: {err[-2000:]}")


class ArrowportServer:
    def __init__(self, db: Path, verbose: bool) -> None:
        from http_ingest import Server

        self.server = Server(db, None, [], verbose)
        self.pid = self.server.pid
        self.target = f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.stop()


class NoServer:
    pid = 0

    def __init__(self, db: Path) -> None:
        import duckdb

        con = duckdb.connect(str(db))
        con.execute("CREATE TABLE t (a BIGINT, b DOUBLE, c VARCHAR)")
        con.close()
        self.target = str(db)

    def stop(self) -> None:
        pass


def count_rows(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute(f"SELECT count(*) FROM {STREAM}").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    producers: int
    rows: int
    procs: int
    seconds: float
    requests: int
    acked_rows: int
    table_rows: int
    errors: int
    first_error: str
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_req: float | None
    client_cpu_ms_per_req: float
    verified: bool
    load1: float  # the machine's 1-minute load average when the run started
    server_threads: str  # the server's busiest threads, ms CPU per request

    @property
    def tx_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.acked_rows / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_workers(
    system: str, target: str, producers: int, rows: int, args: argparse.Namespace
) -> list[subprocess.Popen[str]]:
    procs = 1 if system == "inproc" else min(producers, args.procs)
    workers, first = [], 0
    for w in range(procs):
        threads = producers // procs + (1 if w < producers % procs else 0)
        spec = {
            "system": system,
            "target": target,
            "rows": rows,
            "threads": threads,
            "first": first,
            "duration": args.duration,
        }
        first += threads
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    return workers


def warm_up(system: str, target: str) -> None:
    """One 1-row request (it creates the table for Arrowport); not timed, counted."""
    if system == "inproc":
        import duckdb

        SHARED.append(duckdb.connect(target))
        try:
            Sender(system, target, 1, 999).send()
        finally:
            SHARED.pop().close()
        return
    sender = Sender(system, target, 1, 999)
    try:
        sender.send()
    finally:
        sender.close()


def run_once(
    system: str,
    producers: int,
    rows: int,
    tmp: Path,
    args: argparse.Namespace,
    profile: Path | None = None,
) -> Result:
    db = tmp / f"{system}_{producers}x{rows}.duckdb"
    server: Any
    if system == "quack":
        server = QuackServer(db)
    elif system in ("http", "flight"):
        server = ArrowportServer(db, args.verbose)
    else:
        server = NoServer(db)
    profiler = None
    try:
        warm_up(system, server.target)
        workers = start_workers(system, server.target, producers, rows, args)
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{system} worker did not start")
        if profile is not None:
            from pyspy_top import Profiler

            # Python frames only: with --native, threads parked in a futex (idle trio
            # workers, GIL waits) show up as busy unresolved libc addresses
            profiler = Profiler(server.pid, profile, rate=250, native=False)
        cpu0 = proc_cpu(server.pid) if server.pid else 0.0
        threads0 = thread_cpu_seconds(server.pid) if server.pid else {}
        load1 = os.getloadavg()[0]
        start = time.time() + 0.2
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(f"{start}\n")
            w.stdin.flush()
        outs = []
        for w in workers:
            out, _ = w.communicate(timeout=args.duration + 300)
            if w.returncode != 0:
                raise RuntimeError(f"{system} worker exited {w.returncode}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        server_cpu = proc_cpu(server.pid) - cpu0 if server.pid else None
        threads1 = thread_cpu_seconds(server.pid) if server.pid else {}
        if profiler is not None:
            profiler.stop()
    finally:
        server.stop()
    table_rows = count_rows(db)
    if not args.keep:
        for p in (db, Path(f"{db}.wal")):
            p.unlink(missing_ok=True)
    threads = [t for o in outs for t in o["threads"]]
    lat = [x for t in threads for x in t["lat"]]
    acked = sum(t["acked"] for t in threads)
    requests = len(lat)
    seconds = max(t["elapsed"] for t in threads)
    client_cpu = sum(o["cpu"] for o in outs)
    if system == "inproc":
        server_cpu = client_cpu
    errors = sum(t["errors"] for t in threads)
    return Result(
        system=system,
        producers=producers,
        rows=rows,
        procs=len(workers),
        seconds=seconds,
        requests=requests,
        acked_rows=acked,
        table_rows=table_rows,
        errors=errors,
        first_error=next((t["error"] for t in threads if t["error"]), ""),
        p50_ms=percentile(lat, 0.5) * 1e3,
        p99_ms=percentile(lat, 0.99) * 1e3,
        server_cpu_ms_per_req=server_cpu / requests * 1e3
        if server_cpu is not None and requests
        else None,
        client_cpu_ms_per_req=client_cpu / requests * 1e3 if requests else 0.0,
        verified=table_rows == acked + 1,
        load1=load1,
        server_threads=", ".join(
            f"{name.split(':', 1)[1]}={sec / max(requests, 1) * 1e3:.2f}"
            for name, sec in sorted(
                ((k, v - threads0.get(k, 0.0)) for k, v in threads1.items()), key=lambda kv: -kv[1]
            )[:4]
            if sec > 0
        ),
    )


# -- report -------------------------------------------------------------------------------------


def line(r: Result) -> str:
    cpu = f"{r.server_cpu_ms_per_req:7.3f}" if r.server_cpu_ms_per_req is not None else "      -"
    return (
        f"{r.system:7} {r.producers:>3}x{r.rows:<5} {r.procs:>5} {r.tx_per_s:9.0f} {r.rows_per_s:11.0f} "
        f"{r.p50_ms:8.2f} {r.p99_ms:8.2f} {cpu} {r.client_cpu_ms_per_req:7.3f} {r.errors:6} "
        f"{'OK' if r.verified else f'MISMATCH table {r.table_rows} != acked {r.acked_rows}+1'} {r.load1:5.1f}"
    )


HEADER = (
    f"{'system':7} {'PxR':9} {'procs':>5} {'tx/s':>9} {'rows/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'srv cpu':>7} {'cli cpu':>7} {'errors':>6} count(*)\n{'':61}(ms CPU per request)"
)


def report(results: list[Result], args: argparse.Namespace) -> bool:
    print()
    print(
        f"duration {args.duration} s per run; load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cores"
    )
    print(HEADER)
    print("-" * 100)
    for r in results:
        print(line(r))
    print()
    by = {(r.system, r.producers, r.rows): r for r in results}
    for p, rows in sorted({(r.producers, r.rows) for r in results}):
        parts = []
        for ours in ("http", "flight"):
            mine = by.get((ours, p, rows))
            if mine is None:
                continue
            for other in ("inproc", "quack"):
                theirs = by.get((other, p, rows))
                if theirs is not None and theirs.tx_per_s:
                    parts.append(f"{ours}/{other} {mine.tx_per_s / theirs.tx_per_s:.2f}x")
        if parts:
            print(f"ratios {p}x{rows} (tx/s): " + ", ".join(parts))
    print("server threads (ms CPU per request): ")
    for r in results:
        if r.server_threads:
            print(f"  {r.system:7} {r.producers}x{r.rows}: {r.server_threads}")
    for r in results:
        if r.first_error:
            print(f"first error {r.system} {r.producers}x{r.rows}: {r.first_error}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items() if k != "worker"},
                    "results": [
                        asdict(r) | {"tx_per_s": r.tx_per_s, "rows_per_s": r.rows_per_s}
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    return all(r.verified for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--workloads",
        help="PxR, comma-separated (default 1x1,4x1,64x1,16x1000; --quick: 1x1,64x1,16x1000)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument(
        "--procs", type=int, default=4, help="client processes at most (threads share them)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 0.5 s per run, at most 2 client processes"
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="also py-spy the server over HTTP and Flight, 1x1 (PREFIX.http.txt, PREFIX.flight.txt)",
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the DuckDB files")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo Arrowport's log")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.quick:
        args.duration, args.procs = 0.5, min(args.procs, 2)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    if args.workloads is None:
        args.workloads = "1x1,64x1,16x1000" if args.quick else "1x1,4x1,64x1,16x1000"
    workloads = [tuple(int(v) for v in w.split("x")) for w in args.workloads.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="arrowport-small-"))
    results: list[Result] = []
    try:
        for p, rows in workloads:
            for system in systems:
                try:
                    r = run_once(system, p, rows, tmp, args)
                except Exception as exc:
                    print(
                        f"{system} {p}x{rows}: FAILED: {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                results.append(r)
                print(line(r), file=sys.stderr, flush=True)
        ok = report(results, args)
        if args.profile:
            from pyspy_top import summarise

            for system in ("http", "flight"):
                out = Path(f"{args.profile}.{system}.txt")
                r = run_once(system, 1, 1, tmp, args, profile=out)
                print(
                    f"\nprofiled {system} 1x1: {r.requests} requests, {r.tx_per_s:.0f} tx/s, server CPU {r.server_cpu_ms_per_req or 0:.3f} ms/request"
                )
                print(summarise(out, 25))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
