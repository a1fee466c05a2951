# ruff: noqa: E501
"""HTTP ingest vs. in-process DuckDB: rows/s, MB/s and the server's peak RSS.

    python bench/http_ingest.py                       # 10M rows, once
    python bench/http_ingest.py --rows 500000         # smoke test
    python bench/http_ingest.py --repeat 3 --config bench/configs/mem200.yaml

Each repetition runs, in alternating order:

* baseline: a fresh DuckDB file in a child process (same duckdb as the server);
  ``BEGIN; INSERT INTO lineitem SELECT * FROM <RecordBatchReader over the IPC
  file>; COMMIT`` is timed. The child reports its own peak RSS.
* http: ``arrowport serve --port 0 --db <fresh file>`` is started, the IPC file
  is uploaded with ``curl -T`` (streamed from disk) and timed from request start
  to the 200 response (curl's ``time_total``). The server's VmHWM is read just
  before SIGINT; after it exits, the rows in the file are counted and must
  equal the table's rows.

Medians over repetitions are printed; the ratio is computed per pair
(HTTP rows/s / baseline rows/s from the same repetition), then its median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lineitem

STREAM = "lineitem"
CONTENT_TYPE = "application/vnd.apache.arrow.stream"
SERVING = re.compile(r"serving on http://([\d.]+):(\d+)")
TARGET_RATIO = 0.9
TARGET_RSS_MB = 256


# -- /proc helpers -------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM etc. in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread of ``pid``, keyed "tid:comm"."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[f"{tid}:{comm}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def system_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out = [pid]
    for child_pid in _children(pid):
        out.extend(descendants(child_pid))
    return out


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children.extend(int(c) for c in f.read().split())
    except FileNotFoundError:
        pass
    return children


def listener_pid(root: int, port: int) -> int:
    """The process under ``root`` that holds the listening socket on ``port``.

    ``arrowport`` is a console script (a Python process), but it may be wrapped
    (e.g. by py-spy); the socket's owner is the server, whatever the wrapper.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except FileNotFoundError:
            pass
    for pid in descendants(root):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return pid
        except (FileNotFoundError, PermissionError):
            continue
    raise RuntimeError(f"no process under pid {root} listens on port {port}")


# -- results ---------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    seconds: float
    rows: int
    nbytes: int
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds


# -- baseline ----------------------------------------------------------------------------

_BASELINE_CHILD = r"""
import json, os, sys, time
import duckdb, pyarrow as pa
path, db, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
con = duckdb.connect(db, config=settings)
reader = pa.ipc.open_stream(pa.OSFile(path, "rb"))  # streamed, like the server's decoder
con.register("src", reader)
con.execute("CREATE TABLE lineitem AS SELECT * FROM src LIMIT 0")
started_cpu = time.process_time()
started = time.perf_counter()
con.execute("BEGIN")
con.execute("INSERT INTO lineitem SELECT * FROM src")
con.execute("COMMIT")
seconds = time.perf_counter() - started
cpu = time.process_time() - started_cpu
con.unregister("src")
rows = con.execute("SELECT count(*) FROM lineitem").fetchone()[0]
hwm = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
con.close()
print(json.dumps({"seconds": seconds, "rows": rows, "hwm_kb": hwm, "cpu": cpu, "duckdb": duckdb.__version__}))
"""


def run_baseline(path: Path, tmp: Path, expected_rows: int, settings: dict[str, object]) -> Run:
    db = tmp / "baseline.duckdb"
    _remove_db(db)
    busy0, before = system_busy_seconds(), os.times()
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE_CHILD, str(path), str(db), json.dumps(settings)],
        check=True,
        capture_output=True,
        text=True,
    )
    after, busy = os.times(), system_busy_seconds() - busy0
    child_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    _remove_db(db)
    if result["rows"] != expected_rows:
        raise SystemExit(f"FAIL: baseline wrote {result['rows']} rows, expected {expected_rows}")
    return Run(
        "baseline",
        result["seconds"],
        result["rows"],
        path.stat().st_size,
        peak_rss_mb=result["hwm_kb"] / 1024,
        cpu_seconds=result["cpu"],
        extra={"duckdb": result["duckdb"], "other_cpu_s": max(0.0, busy - child_cpu)},
    )


# -- HTTP ----------------------------------------------------------------------------------


class Server:
    """``arrowport serve`` on a free port; stderr is collected (and echoed with --verbose)."""

    def __init__(self, db: Path, config: str | None, wrap: list[str], verbose: bool) -> None:
        arrowport = shutil.which("arrowport") or str(Path(sys.executable).parent / "arrowport")
        cmd = [*wrap, arrowport, "serve", "--port", "0", "--db", str(db)]
        if config:
            cmd += ["--config", config]
        self.log: list[str] = []
        self.verbose = verbose
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self._ready = threading.Event()
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60) or not self.port:
            self.proc.kill()
            raise SystemExit("FAIL: server did not start:\n" + "".join(self.log))
        self.pid = listener_pid(self.proc.pid, self.port)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if self.verbose:
                sys.stderr.write("  server| " + line)
            match = SERVING.search(line)
            if match and not self.port:
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("FAIL: server did not stop within 300 s of SIGINT") from None
        self._reader.join(5)
        if self.proc.returncode not in (0, -signal.SIGINT, 130):
            raise SystemExit(
                f"FAIL: server exited with {self.proc.returncode}:\n" + "".join(self.log[-20:])
            )


class RssSampler(threading.Thread):
    """Polls VmRSS so the timeline around the peak can be reported."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self._halt.is_set():
            try:
                st = proc_status(self.pid)
                self.samples.append(
                    (time.perf_counter() - start, st["VmRSS"], st["RssAnon"], st["RssFile"])
                )
            except (FileNotFoundError, KeyError):
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_http(
    path: Path, tmp: Path, expected_rows: int, args: argparse.Namespace, index: int
) -> Run:
    import duckdb

    db = tmp / "http.duckdb"
    _remove_db(db)
    wrap: list[str] = []
    if args.py_spy:
        spec = Path(args.py_spy)
        target = f"{spec.with_suffix('')}.{index}{spec.suffix or '.svg'}"
        fmt = {".json": "speedscope", ".txt": "raw"}.get(spec.suffix, "flamegraph")
        wrap = [
            "py-spy",
            "record",
            "--native",
            "--threads",
            "--rate",
            "50",
            "--format",
            fmt,
            "-o",
            target,
            "--",
        ]
    server = Server(db, args.config, wrap, args.verbose)
    try:
        idle = proc_status(server.pid)
        cpu0 = proc_cpu_seconds(server.pid)
        threads0 = thread_cpu_seconds(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        url = f"http://127.0.0.1:{server.port}/ingest/{STREAM}"
        cmd = ["curl", "-sS", "-X", "POST", "-T", str(path), "-H", f"Content-Type: {CONTENT_TYPE}"]
        if args.no_expect:
            cmd += ["-H", "Expect:"]
        cmd += ["-w", "\n%{http_code} %{time_total}", url]
        wall0 = time.perf_counter()
        busy0, before = system_busy_seconds(), os.times()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        after, busy = os.times(), system_busy_seconds() - busy0
        wall = time.perf_counter() - wall0
        sampler.stop()
        curl_cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        cpu = proc_cpu_seconds(server.pid) - cpu0
        threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu_seconds(server.pid).items()}
        busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
        status = proc_status(server.pid)  # VmHWM right before stopping
        body, _, trailer = proc.stdout.rpartition("\n")
        parts = trailer.split()
        if proc.returncode != 0 or not parts or parts[0] != "200":
            raise SystemExit(
                f"FAIL: curl exited {proc.returncode}: {proc.stderr.strip()} {proc.stdout[-2000:]}"
            )
        response = json.loads(body)
        seconds = float(parts[1])
    finally:
        server.stop()
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(f"SELECT count(*) FROM {STREAM}").fetchone()[0]
    finally:
        con.close()
    if not args.keep:
        _remove_db(db)
    if rows != expected_rows or response.get("rows") != expected_rows:
        raise SystemExit(
            f"FAIL: the server answered rows={response.get('rows')} and the file holds {rows}; "
            f"expected {expected_rows}"
        )
    peak = max(sampler.samples, key=lambda s: s[1]) if sampler.samples else (0.0, 0, 0, 0)
    return Run(
        "http",
        seconds,
        rows,
        path.stat().st_size,
        peak_rss_mb=status["VmHWM"] / 1024,
        cpu_seconds=cpu,
        extra={
            "wall_s": wall,
            "server_ms": response.get("duration_ms"),
            "curl_cpu_s": curl_cpu,
            "idle_rss_mb": idle["VmRSS"] / 1024,
            "sampled_peak_rss_mb": peak[1] / 1024,
            "sampled_peak_at_s": peak[0],
            "peak_rss_anon_mb": peak[2] / 1024,
            "peak_rss_file_mb": peak[3] / 1024,
            "other_cpu_s": max(0.0, busy - cpu - curl_cpu),
            "threads": ",".join(f"{name}={sec:.1f}s" for name, sec in busiest),
        },
    )


def _remove_db(db: Path) -> None:
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)


def _duckdb_settings(config: str | None, same: bool) -> dict[str, object]:
    """The baseline's DuckDB settings: defaults, or the server config's (--baseline-same-settings)."""
    if not (config and same):
        return {}
    import yaml

    raw = (yaml.safe_load(Path(config).read_text()) or {}).get("duckdb") or {}
    return {k: raw[k] for k in ("memory_limit", "threads") if raw.get(k) is not None}


# -- report -----------------------------------------------------------------------------------


def _loaded(run: Run) -> bool:
    """Did other processes on the machine use CPU during this run?"""
    other = float(run.extra.get("other_cpu_s", 0.0))  # type: ignore[arg-type]
    return other > max(0.1 * run.seconds, 0.2)


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(
    base: list[Run], http: list[Run], args: argparse.Namespace, settings: dict[str, object]
) -> bool:
    ratios = [h.rows_per_s / b.rows_per_s for b, h in zip(base, http, strict=True)]
    ratio = median(ratios)
    rss = median([h.peak_rss_mb or 0 for h in http])
    rows = base[0].rows
    print()
    print(
        f"rows {rows:,}  file {base[0].nbytes / 1e6:,.0f} MB  repeat {len(base)}  "
        f"config {args.config or '(defaults)'}  baseline settings {settings or '(defaults)'}"
    )
    header = f"{'':10} {'M rows/s':>9} {'MB/s':>7} {'seconds':>8} {'ratio':>6} {'peak RSS MB':>12} {'CPU s':>6}"
    print(header)
    print("-" * len(header))
    for runs, label in ((base, "baseline"), (http, "http")):
        print(
            f"{label:10} {median([r.rows_per_s for r in runs]) / 1e6:9.3f} "
            f"{median([r.mb_per_s for r in runs]):7.0f} {median([r.seconds for r in runs]):8.2f} "
            f"{'' if label == 'baseline' else f'{ratio:.3f}':>6} "
            f"{median([r.peak_rss_mb or 0 for r in runs]):12.0f} "
            f"{median([r.cpu_seconds or 0 for r in runs]):6.1f}"
        )
    print()
    print(
        "per repetition: "
        + "; ".join(
            f"#{i + 1} base {b.seconds:.2f}s http {h.seconds:.2f}s ratio {r:.3f} rss {h.peak_rss_mb:.0f}MB"
            + (" (other load!)" if _loaded(b) or _loaded(h) else "")
            for i, (b, h, r) in enumerate(zip(base, http, ratios, strict=True))
        )
    )
    if any(_loaded(r) for r in base + http):
        print(
            "WARNING: other processes used over 10% of a core during some runs (other_cpu_s); "
            "those figures are not comparable"
        )
    extra_keys = (
        "server_ms",
        "curl_cpu_s",
        "idle_rss_mb",
        "peak_rss_anon_mb",
        "peak_rss_file_mb",
        "other_cpu_s",
    )
    print(
        "http medians: "
        + ", ".join(
            f"{k}={median([float(h.extra[k]) for h in http if h.extra.get(k) is not None]):.2f}"
            for k in extra_keys
            if any(h.extra.get(k) is not None for h in http)
        )
        + f", baseline other_cpu_s={median([float(b.extra['other_cpu_s']) for b in base]):.2f}"
        + f", server cores used={median([(h.cpu_seconds or 0) / h.seconds for h in http]):.2f}"
        + f", baseline cores used={median([(b.cpu_seconds or 0) / b.seconds for b in base]):.2f}"
    )
    ok_ratio, ok_rss = ratio >= TARGET_RATIO, rss <= TARGET_RSS_MB
    print(
        f"target HTTP >= {TARGET_RATIO}x baseline: {'MET' if ok_ratio else 'MISSED'} ({ratio:.3f}x); "
        f"server peak RSS <= {TARGET_RSS_MB} MB: {'MET' if ok_rss else 'MISSED'} ({rss:.0f} MB)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "config": args.config,
                    "baseline_settings": settings,
                    "ratio_median": ratio,
                    "runs": [
                        r.__dict__ | {"rows_per_s": r.rows_per_s, "mb_per_s": r.mb_per_s}
                        for r in base + http
                    ],
                },
                indent=2,
            )
        )
    return ok_ratio and ok_rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="repetitions; medians are reported")
    parser.add_argument("--config", help="YAML config passed to `arrowport serve --config`")
    parser.add_argument(
        "--baseline-same-settings",
        action="store_true",
        help="apply the config's duckdb.memory_limit/threads to the baseline too",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir and the HTTP db file"
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUT.svg",
        help="run the server under `py-spy record` (one file per repetition; "
        ".svg flamegraph, .json speedscope, .txt collapsed stacks)",
    )
    parser.add_argument(
        "--no-expect", action="store_true", help="send `Expect:` to disable 100-continue"
    )
    parser.add_argument("--json", help="write all runs to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo the server's log")
    args = parser.parse_args()

    path = lineitem.ensure(args.rows)
    settings = _duckdb_settings(args.config, args.baseline_same_settings)
    tmp = Path(tempfile.mkdtemp(prefix="arrowport-bench-"))
    base: list[Run] = []
    http: list[Run] = []
    try:
        for i in range(args.repeat):
            order = ("baseline", "http") if i % 2 == 0 else ("http", "baseline")
            for kind in order:
                if kind == "baseline":
                    run = run_baseline(path, tmp, args.rows, settings)
                    base.append(run)
                else:
                    run = run_http(path, tmp, args.rows, args, i)
                    http.append(run)
                print(
                    f"[{i + 1}/{args.repeat}] {kind:8} {run.seconds:7.2f} s  {run.rows_per_s / 1e6:6.3f} M rows/s  "
                    f"{run.mb_per_s:6.0f} MB/s  peak RSS {run.peak_rss_mb:6.0f} MB  "
                    f"{' '.join(f'{k}={v:.2f}' if isinstance(v, float) else f'{k}={v}' for k, v in run.extra.items())}",
                    file=sys.stderr,
                    flush=True,
                )
        ok = report(base, http, args, settings)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok or not args.strict else 1)


if __name__ == "__main__":
    main()
