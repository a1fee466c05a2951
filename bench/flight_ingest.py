# ruff: noqa: E501
"""Flight end to end: DoPut -> DuckDB vs. in-process insert, the server's peak RSS, and DoGet of the whole table.

    python bench/flight_ingest.py --rows 500000 --pause 1      # smoke test, ~15 s
    python bench/flight_ingest.py --repeat 4 --doget 2 --quiet-wait 120   # 10M rows: 4 interleaved pairs, then 2 DoGets
    python bench/flight_ingest.py --repeat 0 --doget 2         # DoGet only (loads the table in a child first)
    python bench/flight_ingest.py --repeat 0 --doget 1 --doget-db /tmp/dg.duckdb   # DoGet from a kept file (loaded once)
    python bench/flight_ingest.py --repeat 2 --config bench/configs/mem64.yaml     # server with a 64 MB DuckDB memory_limit
    python bench/flight_ingest.py --repeat 1 --doget 1 --py-spy /tmp/flight.txt   # + py-spy of the server

Each repetition runs, in alternating order:

* baseline: ``bench/http_ingest.py``'s in-process insert (imported, not
  copied): a child process opens a fresh DuckDB file and times ``BEGIN;
  INSERT INTO lineitem SELECT * FROM <RecordBatchReader over the IPC file>;
  COMMIT``.
* flight: ``arrowport serve --port 0 --db <fresh file>`` (the port comes from
  its "serving on http://HOST:PORT" log line); a stock
  ``pyarrow.flight.FlightClient`` in this process streams the IPC file
  (``pa.OSFile`` + ``RecordBatchStreamReader``: one batch in memory at a time)
  with ``do_put`` to descriptor path "lineitem", then waits for the
  PutResult, which Arrowport sends only after the commit. Timed from
  ``do_put`` to that ack. The server's VmHWM (``/proc/PID/status``) is read
  before SIGINT; after it exits the rows in the file are counted and must
  equal the table's.

The ratio (flight rows/s ÷ baseline rows/s) is computed per pair, then its
median. Target >= 0.9x; server peak RSS <= 256 MB.

DoGet (``--doget N`` times, after the pairs): a fresh ``arrowport serve`` on
the last flight run's file (or one loaded in a child process with
``--repeat 0``). The client sends ticket b"lineitem", reads the first batch,
sleeps ``--pause`` s (10 by default), then reads the rest. Reported: the
server's VmRSS before the DoGet, its VmHWM at the end of the pause and after
the last batch, and the throughput over the reading time only (pause
excluded). Target: VmHWM <= 256 MB. For reference the same table is then
scanned in-process (``to_arrow_reader``, child process) and timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import http_ingest  # noqa: E402
import lineitem  # noqa: E402
from flight_transport import (  # noqa: E402
    code_version,
    cpu_by_process,
    softirq_seconds,
    system_busy_seconds,
    top_others,
    wait_quiet,
)
from http_ingest import (  # noqa: E402
    STREAM,
    RssSampler,
    Run,
    Server,
    _remove_db,
    proc_cpu_seconds,
    proc_status,
    run_baseline,
    thread_cpu_seconds,
)
from pyspy_top import Profiler, summarise  # noqa: E402

TARGET_RATIO = 0.9
TARGET_RSS_MB = 256
BYTES_PER_ROW = 1_687_921_624 / 10_000_000  # the 10M-row file's IPC bytes per row


def _busiest(pid: int, before: dict[str, float], n: int = 4) -> str:
    threads = {k: v - before.get(k, 0.0) for k, v in thread_cpu_seconds(pid).items()}
    top = sorted(threads.items(), key=lambda kv: -kv[1])[:n]
    return ",".join(f"{name.split(':', 1)[1]}={sec:.1f}s" for name, sec in top if sec >= 0.05)


def _profiler(args: argparse.Namespace, pid: int, tag: str) -> Profiler | None:
    if not args.py_spy:
        return None
    spec = Path(args.py_spy)
    return Profiler(
        pid,
        spec.with_name(f"{spec.stem}.{tag}{spec.suffix or '.txt'}"),
        native=not args.no_native_stack,
        rate=args.py_spy_rate,
    )


# -- DoPut end to end ------------------------------------------------------------------


def run_flight(
    path: Path, db: Path, rows: int, args: argparse.Namespace, index: int, profiles: list[Path]
) -> Run:
    import duckdb

    _remove_db(db)
    server = Server(db, args.config, [], args.verbose)
    try:
        idle = proc_status(server.pid)
        cpu0, threads0 = proc_cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        prof = _profiler(args, server.pid, f"put{index}")
        client = fl.FlightClient(f"grpc://127.0.0.1:{server.port}")
        procs0 = cpu_by_process()
        busy0, t0, irq0 = system_busy_seconds(), os.times(), softirq_seconds()
        started = time.perf_counter()
        with pa.OSFile(str(path), "rb") as source:
            reader = pa.ipc.open_stream(source)
            writer, acks = client.do_put(fl.FlightDescriptor.for_path(STREAM), reader.schema)
            for batch in reader:
                writer.write_batch(batch)
            del batch
            writer.done_writing()
            ack = acks.read()
            writer.close()
        seconds = time.perf_counter() - started
        t1, busy, irq = os.times(), system_busy_seconds() - busy0, softirq_seconds() - irq0
        others = top_others(procs0, {server.pid, os.getpid()})
        if prof is not None:
            prof.stop()
            profiles.append(prof.out)
        sampler.stop()
        client.close()
        cpu = proc_cpu_seconds(server.pid) - cpu0
        threads = _busiest(server.pid, threads0)
        status = proc_status(server.pid)  # VmHWM right before stopping
    finally:
        server.stop()
    client_cpu = (t1.user - t0.user) + (t1.system - t0.system)
    committed = json.loads(ack.to_pybytes())["committed_rows"] if ack is not None else None
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(f"SELECT count(*) FROM {STREAM}").fetchone()
        counted = row[0] if row else None
    finally:
        con.close()
    if counted != rows or committed != rows:
        raise SystemExit(
            f"FAIL: the PutResult says {committed} rows and the file holds {counted}; expected {rows}"
        )
    peak = max(sampler.samples, key=lambda s: s[1]) if sampler.samples else (0.0, 0, 0, 0)
    return Run(
        "flight",
        seconds,
        rows,
        path.stat().st_size,
        peak_rss_mb=status["VmHWM"] / 1024,
        cpu_seconds=cpu,
        extra={
            "client_cpu_s": client_cpu,
            "idle_rss_mb": idle["VmRSS"] / 1024,
            "peak_rss_anon_mb": peak[2] / 1024,
            "peak_at_s": peak[0],
            "other_cpu_s": max(0.0, busy - cpu - client_cpu),
            "softirq_s": irq,
            "threads": threads,
            "others": others,
        },
    )


# -- DoGet --------------------------------------------------------------------------------

_LOAD_CHILD = r"""
import sys, duckdb, pyarrow as pa
path, db = sys.argv[1], sys.argv[2]
con = duckdb.connect(db)
con.register("src", pa.ipc.open_stream(pa.OSFile(path, "rb")))
con.execute("CREATE TABLE lineitem AS SELECT * FROM src")
con.close()
"""

_SCAN_CHILD = r"""
import json, sys, time, duckdb, pyarrow as pa
con = duckdb.connect(sys.argv[1], read_only=True)
started = time.perf_counter()
reader = con.execute("SELECT * FROM lineitem").to_arrow_reader(122_880)
rows = nbytes = 0
for batch in reader:
    rows += batch.num_rows
    nbytes += pa.ipc.get_record_batch_size(batch)
hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows, "bytes": nbytes, "hwm_kb": hwm}))
"""


@dataclass
class Get:
    seconds: float  # reading time, pause excluded
    rows: int
    nbytes: int
    batches: int
    rss_before_mb: float
    hwm_before_mb: float
    rss_pause_mb: float
    hwm_pause_mb: float
    hwm_after_mb: float
    sampled_peak_mb: float
    server_cpu: float
    client_cpu: float
    first_batch_s: float
    scan_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds


def run_doget(
    db: Path, rows: int, args: argparse.Namespace, index: int, profiles: list[Path]
) -> Get:
    server = Server(db, args.config, [], args.verbose)
    try:
        time.sleep(0.5)
        before = proc_status(server.pid)
        cpu0, threads0 = proc_cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
        sampler = RssSampler(server.pid, interval=0.05)
        sampler.start()
        prof = _profiler(args, server.pid, f"get{index}")
        client = fl.FlightClient(f"grpc://127.0.0.1:{server.port}")
        t0 = os.times()
        started = time.perf_counter()
        reader = client.do_get(fl.Ticket(STREAM.encode()))
        chunk = reader.read_chunk()
        got_rows, got_bytes, batches = (
            chunk.data.num_rows,
            pa.ipc.get_record_batch_size(chunk.data),
            1,
        )
        del chunk
        first = time.perf_counter() - started
        time.sleep(args.pause)
        pause = proc_status(server.pid)
        resumed = time.perf_counter()
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            got_rows += chunk.data.num_rows
            got_bytes += pa.ipc.get_record_batch_size(chunk.data)
            batches += 1
            del chunk
        rest = time.perf_counter() - resumed
        t1 = os.times()
        if prof is not None:
            prof.stop()
            profiles.append(prof.out)
        sampler.stop()
        client.close()
        after = proc_status(server.pid)
        cpu = proc_cpu_seconds(server.pid) - cpu0
        threads = _busiest(server.pid, threads0)
    finally:
        server.stop()
    if got_rows != rows:
        raise SystemExit(f"FAIL: DoGet returned {got_rows} rows, expected {rows}")
    out = subprocess.run(
        [sys.executable, "-c", _SCAN_CHILD, str(db)], check=True, capture_output=True, text=True
    ).stdout
    scan = json.loads(out.strip().splitlines()[-1])
    peak = max(s[1] for s in sampler.samples) if sampler.samples else 0
    return Get(
        seconds=first + rest,
        rows=got_rows,
        nbytes=got_bytes,
        batches=batches,
        rss_before_mb=before["VmRSS"] / 1024,
        hwm_before_mb=before["VmHWM"] / 1024,
        rss_pause_mb=pause["VmRSS"] / 1024,
        hwm_pause_mb=pause["VmHWM"] / 1024,
        hwm_after_mb=after["VmHWM"] / 1024,
        sampled_peak_mb=peak / 1024,
        server_cpu=cpu,
        client_cpu=(t1.user - t0.user) + (t1.system - t0.system),
        first_batch_s=first,
        scan_seconds=scan["seconds"],
        extra={
            "threads": threads,
            "scan_mb_per_s": scan["bytes"] / 1e6 / scan["seconds"],
            "scan_hwm_mb": scan["hwm_kb"] / 1024,
        },
    )


# -- main -----------------------------------------------------------------------------------


def _loaded(run: Run) -> bool:
    return float(run.extra.get("other_cpu_s", 0.0)) > max(0.1 * run.seconds, 0.2)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="lineitem rows (default 10M, 1,688 MB)"
    )
    parser.add_argument(
        "--mb", type=float, help="size in MB of IPC instead of --rows (about 169 bytes per row)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved (baseline, flight) pairs; 0 = none"
    )
    parser.add_argument(
        "--doget", type=int, default=1, metavar="N", help="DoGet runs after the pairs (default 1)"
    )
    parser.add_argument(
        "--doget-db",
        type=Path,
        help="DoGet from this existing DuckDB file (table lineitem with --rows rows) instead",
    )
    parser.add_argument(
        "--pause", type=float, default=10.0, help="DoGet client's pause after the first batch (s)"
    )
    parser.add_argument("--config", help="YAML config passed to `arrowport serve --config`")
    parser.add_argument(
        "--baseline-same-settings",
        action="store_true",
        help="apply the config's duckdb settings to the baseline",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each pair, wait up to S s for other load under 0.3 cores",
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUT.txt",
        help="profile the server's DoPut and DoGet with py-spy (raw, one file per run)",
    )
    parser.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--no-native-stack", action="store_true", help="py-spy without --native")
    parser.add_argument("--json", help="write all runs to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo the server's log")
    args = parser.parse_args()
    rows = round(args.mb * 1e6 / BYTES_PER_ROW) if args.mb else args.rows

    path = lineitem.ensure(rows)
    settings = http_ingest._duckdb_settings(args.config, args.baseline_same_settings)
    tmp = Path(tempfile.mkdtemp(prefix="arrowport-flight-bench-"))
    base: list[Run] = []
    flight: list[Run] = []
    gets: list[Get] = []
    profiles: list[Path] = []
    doget_db = args.doget_db or tmp / "doget.duckdb"
    try:
        for i in range(args.repeat):
            if args.quiet_wait:
                print(
                    f"  (load before pair: {wait_quiet(args.quiet_wait):.2f} cores)",
                    file=sys.stderr,
                )
            order = ("baseline", "flight") if i % 2 == 0 else ("flight", "baseline")
            for kind in order:
                if kind == "baseline":
                    procs0 = cpu_by_process()
                    run = run_baseline(path, tmp, rows, settings)
                    run.extra["others"] = top_others(procs0, {os.getpid()})
                    base.append(run)
                else:
                    run = run_flight(path, tmp / "flight.duckdb", rows, args, i, profiles)
                    flight.append(run)
                    if i == args.repeat - 1 and args.doget and not args.doget_db:
                        shutil.move(tmp / "flight.duckdb", doget_db)
                    else:
                        _remove_db(tmp / "flight.duckdb")
                print(
                    f"[{i + 1}/{args.repeat}] {kind:8} {run.seconds:7.2f} s  {run.rows_per_s / 1e6:6.3f} M rows/s  "
                    f"{run.mb_per_s:6.0f} MB/s  peak RSS {run.peak_rss_mb:6.0f} MB  CPU {run.cpu_seconds or 0:.1f} s{' *' if _loaded(run) else ''}  "
                    f"{' '.join(f'{k}={v:.2f}' if isinstance(v, float) else f'{k}={v}' for k, v in run.extra.items())}",
                    file=sys.stderr,
                    flush=True,
                )
        if args.doget and not doget_db.exists():
            print("loading the table for DoGet in a child process ...", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-c", _LOAD_CHILD, str(path), str(doget_db)], check=True
            )
        for j in range(args.doget):
            g = run_doget(doget_db, rows, args, j, profiles)
            gets.append(g)
            print(
                f"[DoGet {j + 1}/{args.doget}] {g.seconds:6.2f} s reading ({g.mb_per_s:.0f} MB/s, {g.batches} batches, first batch {g.first_batch_s:.2f} s)  "
                f"RSS before {g.rss_before_mb:.0f} MB, HWM before {g.hwm_before_mb:.0f}, RSS/HWM at pause end {g.rss_pause_mb:.0f}/{g.hwm_pause_mb:.0f}, "
                f"HWM after {g.hwm_after_mb:.0f} MB  server CPU {g.server_cpu:.1f} s client CPU {g.client_cpu:.1f} s  "
                f"in-process scan {g.scan_seconds:.2f} s ({g.extra['scan_mb_per_s']:.0f} MB/s, its peak RSS {g.extra['scan_hwm_mb']:.0f} MB)  [{g.extra['threads']}]",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    ok = True
    print(f"\ncode: {code_version()}; pyarrow {pa.__version__}")
    if base:
        ratios = [f.rows_per_s / b.rows_per_s for b, f in zip(base, flight, strict=True)]
        flags = ["*" if _loaded(b) or _loaded(f) else "" for b, f in zip(base, flight, strict=True)]
        ratio = med(ratios)
        rss = med([f.peak_rss_mb or 0 for f in flight])
        print(
            f"\nDoPut -> DuckDB, {rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB, {len(base)} pair(s), medians (* = other load > 10% of a core):"
        )
        print("| side | M rows/s | MB/s | seconds | peak RSS MB | CPU s |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, rs in (
            ("baseline (in-process INSERT)", base),
            ("flight (arrowport serve)", flight),
        ):
            print(
                f"| {name} | {med([r.rows_per_s for r in rs]) / 1e6:.3f} | {med([r.mb_per_s for r in rs]):.0f} | "
                f"{med([r.seconds for r in rs]):.2f} | {med([r.peak_rss_mb or 0 for r in rs]):.0f} | {med([r.cpu_seconds or 0 for r in rs]):.1f} |"
            )
        print(
            f"per-pair ratios flight/baseline: {', '.join(f'{r:.3f}{f}' for r, f in zip(ratios, flags, strict=True))}"
        )
        print(
            f"median ratio {ratio:.3f} (target >= {TARGET_RATIO}: {'MET' if ratio >= TARGET_RATIO else 'MISSED'}); "
            f"server peak RSS {rss:.0f} MB (target <= {TARGET_RSS_MB}: {'MET' if rss <= TARGET_RSS_MB else 'MISSED'}); "
            f"client CPU {med([float(f.extra['client_cpu_s']) for f in flight]):.2f} s"  # type: ignore[arg-type]
        )
        ok = ratio >= TARGET_RATIO and rss <= TARGET_RSS_MB
    if gets:
        hwm = max(g.hwm_after_mb for g in gets)
        print(f"\nDoGet of {rows:,} rows with a {args.pause:.0f} s pause after the first batch:")
        print(
            "| run | MB/s (pause excluded) | seconds reading | RSS before MB | HWM before MB | RSS / HWM at pause end MB | HWM after MB | server CPU s | in-process scan MB/s | its peak RSS MB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for j, g in enumerate(gets):
            print(
                f"| {j + 1} | {g.mb_per_s:.0f} | {g.seconds:.2f} | {g.rss_before_mb:.0f} | {g.hwm_before_mb:.0f} | "
                f"{g.rss_pause_mb:.0f} / {g.hwm_pause_mb:.0f} | {g.hwm_after_mb:.0f} | {g.server_cpu:.1f} | {g.extra['scan_mb_per_s']:.0f} | {g.extra['scan_hwm_mb']:.0f} |"
            )
        print(
            f"DoGet server peak RSS {hwm:.0f} MB (target <= {TARGET_RSS_MB}: {'MET' if hwm <= TARGET_RSS_MB else 'MISSED'})"
        )
        ok = ok and hwm <= TARGET_RSS_MB
    for p in profiles:
        print()
        print(summarise(p))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "runs": [
                        r.__dict__ | {"rows_per_s": r.rows_per_s, "mb_per_s": r.mb_per_s}
                        for r in base + flight
                    ],
                    "doget": [g.__dict__ | {"mb_per_s": g.mb_per_s} for g in gets],
                },
                indent=2,
                default=str,
            )
        )
    sys.exit(0 if ok or not args.strict else 1)


if __name__ == "__main__":
    main()
