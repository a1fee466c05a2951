# ruff: noqa: E501
"""Flight DoPut transport only: Arrowport's h2 transport + FlightData decoder vs. pyarrow's native server.

    python bench/flight_transport.py --mb 100                # smoke test, a few seconds
    python bench/flight_transport.py --repeat 9 --quiet-wait 60   # the measurement: ~1 GB per run, 9 pairs
    python bench/flight_transport.py --repeat 1 --mb 3000 --py-spy /tmp/transport.txt --py-spy-rate 200
                                                             # + py-spy of the Arrowport server (summary printed)

Both servers come from ``bench/flight_servers.py`` (a discard sink: every batch
is decoded, not validated, then dropped; in real ingest Arrowport validates in
the writer's thread, next to the INSERT, not in the transport); the
native ``pyarrow.flight.FlightServerBase`` is the BASELINE ONLY. The client is a
stock ``pyarrow.flight.FlightClient`` in this process. The batches are the
lineitem table's (``bench/lineitem.py``, ``--rows`` of them, 122,880 rows each)
held in memory and re-sent until ``--mb`` MB of IPC payload went out per run.

Each repetition runs both servers, in alternating order; one run is
``do_put`` … ``done_writing`` … the PutResult … ``close``. Reported per run:
MB/s (IPC bytes, ``pa.ipc.get_record_batch_size``), the server's CPU seconds
(utime+stime from ``/proc/PID/stat`` before/after), the client's CPU seconds
and ``other_cpu_s`` (busy CPU of the machine not used by server or client:
other people's work; a run with more than 10% of a core of it is flagged "*").
The ratio (Arrowport MB/s ÷ native MB/s) is computed per pair, then its median.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lineitem  # noqa: E402
from http_ingest import proc_cpu_seconds, proc_status, thread_cpu_seconds  # noqa: E402
from pyspy_top import Profiler, summarise  # noqa: E402

TARGET_RATIO = 0.8


@dataclass
class Put:
    kind: str
    seconds: float
    nbytes: int
    rows: int
    server_cpu: float
    client_cpu: float
    other_cpu: float
    threads: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds

    @property
    def loaded(self) -> bool:
        return self.other_cpu > max(0.1 * self.seconds, 0.2)


def system_busy_seconds() -> float:
    """Busy CPU time of the machine from /proc/stat, without irq/softirq.

    Loopback TCP is processed in softirq context, which /proc/PID/stat does not
    always charge to the sender or receiver; it is left out here (and reported
    as ``softirq_s``) so that it does not look like other people's load.
    """
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[7]) / os.sysconf("SC_CLK_TCK")


def softirq_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def proc_sys_seconds(pid: int) -> float:
    """stime of ``pid``: kernel time, most of it loopback TCP here."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """utime+stime of every process on the machine (to name who else used the CPU)."""
    out: dict[int, tuple[str, float]] = {}
    tck = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(entry)] = (comm, (int(fields[11]) + int(fields[12])) / tck)
    return out


def top_others(before: dict[int, tuple[str, float]], exclude: set[int], n: int = 3) -> str:
    """The processes (not in ``exclude``) that used the most CPU since ``before``."""
    after = cpu_by_process()
    deltas = [
        (cpu - before.get(pid, (comm, 0.0))[1], pid, comm)
        for pid, (comm, cpu) in after.items()
        if pid not in exclude
    ]
    deltas.sort(reverse=True)
    return ",".join(f"{comm}[{pid}]={d:.1f}s" for d, pid, comm in deltas[:n] if d >= 0.1)


def wait_quiet(max_wait: float, cores: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the machine's load over 1 s is under ``cores``.

    Returns the load seen last. Other sessions share this machine; pairs are
    still interleaved, this only avoids starting a pair in the middle of a burst.
    """
    deadline = time.monotonic() + max_wait
    while True:
        b0 = system_busy_seconds()
        time.sleep(1.0)
        load = system_busy_seconds() - b0
        if load < cores or time.monotonic() >= deadline:
            return load


def code_version() -> str:
    """The commit measured, and whether arrowport/ differs from it."""
    root = HERE.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "arrowport"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in arrowport/" if dirty else " (arrowport/ clean)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FlightServerProc:
    """``python bench/flight_servers.py KIND PORT`` as a child process."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "flight_servers.py"), kind, str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.proc.kill()
            raise SystemExit(f"FAIL: {kind} server did not start ({line!r})")
        # "ready" may be printed just before the socket listens: wait until it accepts
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    raise SystemExit(
                        f"FAIL: {kind} server does not listen on {self.port}"
                    ) from None
                time.sleep(0.05)
        self.pid = self.proc.pid
        self.location = f"grpc://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load_batches(rows: int) -> list[pa.RecordBatch]:
    path = lineitem.ensure(rows)
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    # copy out of the mapping so the measurement never page-faults on the file
    return [
        pa.RecordBatch.from_arrays([pa.concat_arrays([c]) for c in b.columns], schema=b.schema)
        for b in table.to_batches()
    ]


def plan(batches: list[pa.RecordBatch], mb: float) -> list[pa.RecordBatch]:
    """The batches, cycled, until ``mb`` MB of IPC payload (at least one batch)."""
    out: list[pa.RecordBatch] = []
    total = 0
    while total < mb * 1e6 or not out:
        b = batches[len(out) % len(batches)]
        out.append(b)
        total += pa.ipc.get_record_batch_size(b)
    return out


def do_put(server: FlightServerProc, send: list[pa.RecordBatch], nbytes: int) -> Put:
    rows = sum(b.num_rows for b in send)
    client = fl.FlightClient(server.location)
    client.wait_for_available(timeout=10)
    cpu0, sys0 = proc_cpu_seconds(server.pid), proc_sys_seconds(server.pid)
    threads0 = thread_cpu_seconds(server.pid)
    busy0, t0, irq0 = system_busy_seconds(), os.times(), softirq_seconds()
    started = time.perf_counter()
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("lineitem"), send[0].schema)
    for batch in send:
        writer.write_batch(batch)
    writer.done_writing()
    ack = reader.read()
    writer.close()
    seconds = time.perf_counter() - started
    t1, busy, irq = os.times(), system_busy_seconds() - busy0, softirq_seconds() - irq0
    server_cpu = proc_cpu_seconds(server.pid) - cpu0
    client_cpu = (t1.user - t0.user) + (t1.system - t0.system)
    threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu_seconds(server.pid).items()}
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:3]
    client.close()
    got = int(ack.to_pybytes()) if ack is not None else -1
    if got != rows:
        raise SystemExit(f"FAIL: {server.kind} server counted {got} rows, sent {rows}")
    return Put(
        server.kind,
        seconds,
        nbytes,
        rows,
        server_cpu,
        client_cpu,
        max(0.0, busy - server_cpu - client_cpu),
        ",".join(f"{n.split(':', 1)[1]}={s:.2f}s" for n, s in busiest if s > 0.05),
        {"softirq_s": irq, "server_sys_s": proc_sys_seconds(server.pid) - sys0},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=500_000,
        help="lineitem rows held in memory and cycled (default 500k: 5 batches, 84 MB)",
    )
    parser.add_argument(
        "--mb", type=float, default=1000.0, help="MB of IPC payload per DoPut (default 1000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="pairs of runs (native, arrowport), alternating order"
    )
    parser.add_argument(
        "--warmup-mb", type=float, default=100.0, help="untimed DoPut to each server first"
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUT.txt",
        help="profile the Arrowport server's runs with py-spy (raw format, one file per run); profiled runs are slower",
    )
    parser.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--no-native-stack", action="store_true", help="py-spy without --native (less overhead)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each pair, wait up to S s for other load under 0.3 cores",
    )
    parser.add_argument("--json", help="write all runs to this JSON file")
    args = parser.parse_args()

    batches = load_batches(args.rows)
    send = plan(batches, args.mb)
    nbytes = sum(pa.ipc.get_record_batch_size(b) for b in send)
    warm = plan(batches, args.warmup_mb)
    warm_bytes = sum(pa.ipc.get_record_batch_size(b) for b in warm)
    print(
        f"{len(send)} batches, {sum(b.num_rows for b in send):,} rows, {nbytes / 1e6:,.0f} MB per DoPut "
        f"(from {len(batches)} distinct batches of {args.rows:,} lineitem rows)",
        file=sys.stderr,
    )
    servers = {k: FlightServerProc(k) for k in ("native", "arrowport")}
    runs: dict[str, list[Put]] = {"native": [], "arrowport": []}
    idle = {k: proc_status(s.pid)["VmRSS"] / 1024 for k, s in servers.items()}
    profiles: list[Path] = []
    try:
        for s in servers.values():
            do_put(s, warm, warm_bytes)
        for i in range(args.repeat):
            order = ("native", "arrowport") if i % 2 == 0 else ("arrowport", "native")
            if args.quiet_wait:
                print(
                    f"  (load before pair: {wait_quiet(args.quiet_wait):.2f} cores)",
                    file=sys.stderr,
                )
            for kind in order:
                prof = None
                if args.py_spy and kind == "arrowport":
                    spec = Path(args.py_spy)
                    out = spec.with_name(f"{spec.stem}.{i}{spec.suffix or '.txt'}")
                    prof = Profiler(
                        servers[kind].pid,
                        out,
                        native=not args.no_native_stack,
                        rate=args.py_spy_rate,
                    )
                try:
                    put = do_put(servers[kind], send, nbytes)
                finally:
                    if prof is not None:
                        prof.stop()
                        profiles.append(prof.out)
                runs[kind].append(put)
                print(
                    f"[{i + 1}/{args.repeat}] {kind:9} {put.seconds:6.2f} s {put.mb_per_s:7.0f} MB/s  "
                    f"server CPU {put.server_cpu:5.2f} s (sys {put.extra['server_sys_s']:.2f}; {put.server_cpu / put.seconds:.2f} cores)  "
                    f"client CPU {put.client_cpu:5.2f} s  other {put.other_cpu:4.2f} s{' *' if put.loaded else ''}  softirq {put.extra['softirq_s']:.2f} s  "
                    f"[{put.threads}]",
                    file=sys.stderr,
                    flush=True,
                )
        hwm = {k: proc_status(s.pid)["VmHWM"] / 1024 for k, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()

    med = statistics.median
    ratios = [
        a.mb_per_s / n.mb_per_s for n, a in zip(runs["native"], runs["arrowport"], strict=True)
    ]
    print(f"\ncode: {code_version()}; pyarrow {pa.__version__}")
    print(
        f"DoPut transport, {nbytes / 1e6:,.0f} MB per run, {args.repeat} pair(s), medians (* = other load > 10% of a core):"
    )
    print(
        "| server | MB/s | seconds | server CPU s (of it sys) | server cores | client CPU s | idle RSS MB | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("native", "arrowport"):
        rs = runs[kind]
        print(
            f"| {kind} | {med([r.mb_per_s for r in rs]):.0f} | {med([r.seconds for r in rs]):.2f} | "
            f"{med([r.server_cpu for r in rs]):.2f} ({med([float(r.extra['server_sys_s']) for r in rs]):.2f}) | {med([r.server_cpu / r.seconds for r in rs]):.2f} | "
            f"{med([r.client_cpu for r in rs]):.2f} | {idle[kind]:.0f} | {hwm[kind]:.0f} |"
        )
    flags = [
        "*" if (n.loaded or a.loaded) else ""
        for n, a in zip(runs["native"], runs["arrowport"], strict=True)
    ]
    ratio = med(ratios)
    cpu_ratio = med(
        [
            a.server_cpu / n.server_cpu
            for n, a in zip(runs["native"], runs["arrowport"], strict=True)
        ]
    )
    print(
        f"per-pair ratios arrowport/native: {', '.join(f'{r:.3f}{f}' for r, f in zip(ratios, flags, strict=True))}"
    )
    print(
        f"median ratio: {ratio:.3f}  (target >= {TARGET_RATIO}: {'MET' if ratio >= TARGET_RATIO else 'MISSED'}); "
        f"server CPU per byte arrowport/native: {cpu_ratio:.2f}x"
    )
    for p in profiles:
        print()
        print(summarise(p))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "mb": nbytes / 1e6,
                    "ratios": ratios,
                    "runs": [r.__dict__ for rs in runs.values() for r in rs],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
