# ruff: noqa: E501
"""HTTP ingest into Delta Lake vs. in-process ``write_deltalake``: rows/s, data files and peak RSS.

    python bench/delta_ingest.py --rows 500000                 # smoke test, a few seconds
    python bench/delta_ingest.py --repeat 3 --quiet-wait 120   # 10M rows: 3 interleaved pairs (~1.5 min)
    python bench/delta_ingest.py --repeat 1 --target-file-size 32MiB   # smaller files (12 for 10M rows)
    python bench/delta_ingest.py --compression zstd            # both sides write zstd
    python bench/delta_ingest.py --repeat 1 --py-spy /tmp/delta.txt   # + py-spy of the server (summary printed)
    python bench/delta_ingest.py --writer-variants --repeat 2  # in-process: write_deltalake vs ParquetWriter settings

The data is ``bench/lineitem.py``'s IPC stream file, the one
``bench/http_ingest.py`` uses (built by ``lineitem.ensure(--rows)`` if missing).
Each repetition runs, in alternating order:

* baseline: a child process (a fresh interpreter, so memory and CPU compare)
  calls ``deltalake.write_deltalake(<fresh dir>, reader, mode="append")``
  where ``reader`` is a ``RecordBatchStreamReader`` over ``pa.OSFile`` (one
  batch at a time), with delta-rs's default options (snappy; with
  ``--compression`` other than snappy the same codec is passed through
  ``WriterProperties``; ``--baseline-same-file-size`` also passes
  ``target_file_size``). Timed around the call; the child reports its VmHWM.
* arrowport: ``arrowport serve --port 0 --db <tmp>/x.duckdb --config <tmp>/delta.yaml``
  (the port from its "serving on http://HOST:PORT" line; ``http_ingest.Server``),
  where the config sets ``delta_config.table_path`` to a fresh directory and
  ``streams: {lineitem: {target_table: lineitem, delta_options:
  {target_file_size, compression}}}`` (``POST /delta/{table}`` takes the
  ``delta_options`` of the stream that targets the table). The file is
  uploaded with ``curl -X POST -T <file>`` (streamed from disk) to
  ``POST /delta/lineitem`` and timed from request start to the JSON
  response, which Arrowport sends only after the Delta commit (curl's
  ``time_total``). The server's VmHWM is read before SIGINT.

After each run the table is opened with ``DeltaTable``: its rows (summed from
the Parquet footers of ``DeltaTable.file_uris()``) must equal the file's rows; the
data files are counted and their total size summed. For Arrowport the file
count must be ``floor(q)`` or ``ceil(q)`` for ``q = total size / target_file_size``
(a file is closed once it reaches the target, so all but the last are at least
that big). The first data file's
layout (row groups, codec, statistics) is printed for both sides.

The ratio (arrowport rows/s ÷ baseline rows/s) is computed per pair, then its
median. Target >= 0.9x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lineitem  # noqa: E402
from flight_transport import code_version, cpu_by_process, top_others, wait_quiet  # noqa: E402
from http_ingest import (  # noqa: E402
    CONTENT_TYPE,
    STREAM,
    RssSampler,
    Run,
    Server,
    proc_cpu_seconds,
    proc_status,
    system_busy_seconds,
    thread_cpu_seconds,
)
from pyspy_top import Profiler, summarise  # noqa: E402

TARGET_RATIO = 0.9
MIB = 1024**2
DEFAULT_TARGET_FILE_SIZE = 128 * MIB  # arrowport's DeltaOptions default


def parse_size(text: str) -> int:
    """``134217728``, ``128MiB``, ``64MB`` (MB = MiB here, as in the config) -> bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1024, "m": MIB, "g": 1024**3}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# -- the Delta table written -----------------------------------------------------------


def inspect_table(table: Path) -> dict[str, Any]:
    """Rows (from the Parquet footers), data files, their bytes, and the first file's layout."""
    from deltalake import DeltaTable

    dt = DeltaTable(str(table))
    files = dt.file_uris()  # DeltaTable.files() is gone in deltalake 1.x
    rows = size = row_groups = 0
    sizes: list[int] = []
    layout: dict[str, object] = {}
    for i, name in enumerate(files):
        full = Path(name.removeprefix("file://"))
        sizes.append(full.stat().st_size)
        size += sizes[-1]
        meta = pq.ParquetFile(full).metadata
        rows += meta.num_rows
        row_groups += meta.num_row_groups
        if i == 0 and meta.num_row_groups:
            rg = meta.row_group(0)
            col = rg.column(15) if rg.num_columns > 15 else rg.column(0)  # l_comment
            layout = {
                "rows_per_row_group": rg.num_rows,
                "codec": col.compression,
                "stats": col.is_stats_set,
                "comment_encodings": "/".join(col.encodings),
                "created_by": meta.created_by.split(" (")[0],
                "format": meta.format_version,
            }
    return {
        "version": dt.version(),
        "rows": rows,
        "files": len(files),
        "data_bytes": size,
        "file_mb": "/".join(f"{n / 1e6:.0f}" for n in sorted(sizes, reverse=True)),
        "row_groups": row_groups,
        "layout": layout,
    }


# -- baseline ---------------------------------------------------------------------------

_BASELINE_CHILD = r"""
import json, sys, time
import pyarrow as pa
import deltalake
from deltalake import WriterProperties, write_deltalake
path, table, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kwargs = {}
if opts.get("target_file_size"):
    kwargs["target_file_size"] = opts["target_file_size"]
if opts.get("compression"):
    codec = {"none": "UNCOMPRESSED"}.get(opts["compression"], opts["compression"].upper())
    kwargs["writer_properties"] = WriterProperties(compression=codec)
with pa.OSFile(path, "rb") as source:
    reader = pa.ipc.open_stream(source)  # one batch at a time, like the server's decoder
    started_cpu = time.process_time()
    started = time.perf_counter()
    write_deltalake(table, reader, mode="append", **kwargs)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - started_cpu
hwm = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
print(json.dumps({"seconds": seconds, "hwm_kb": hwm, "cpu": cpu, "deltalake": deltalake.__version__}))
"""


def run_baseline(path: Path, tmp: Path, rows: int, args: argparse.Namespace) -> Run:
    table = tmp / "baseline_delta"
    shutil.rmtree(table, ignore_errors=True)
    opts: dict[str, object] = {}
    if args.compression != "snappy":
        opts["compression"] = args.compression
    if args.baseline_same_file_size:
        opts["target_file_size"] = args.target_file_size
    procs0 = cpu_by_process()
    busy0, before = system_busy_seconds(), os.times()
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE_CHILD, str(path), str(table), json.dumps(opts)],
        capture_output=True,
        text=True,
    )
    after, busy = os.times(), system_busy_seconds() - busy0
    if out.returncode != 0:
        raise SystemExit(f"FAIL: baseline child exited {out.returncode}:\n{out.stderr[-3000:]}")
    child_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    info = inspect_table(table)
    if not args.keep:
        shutil.rmtree(table, ignore_errors=True)
    if info["rows"] != rows:
        raise SystemExit(f"FAIL: baseline table holds {info['rows']} rows, expected {rows}")
    return Run(
        "baseline",
        result["seconds"],
        rows,
        path.stat().st_size,
        peak_rss_mb=result["hwm_kb"] / 1024,
        cpu_seconds=result["cpu"],
        extra={
            "files": info["files"],
            "data_mb": info["data_bytes"] / 1e6,
            "file_mb": info["file_mb"],
            "row_groups": info["row_groups"],
            "layout": info["layout"],
            "other_cpu_s": max(0.0, busy - child_cpu),
            "others": top_others(procs0, {os.getpid()}),
            "deltalake": result["deltalake"],
        },
    )


# -- arrowport -----------------------------------------------------------------------------


def write_config(tmp: Path, table_root: Path, args: argparse.Namespace) -> Path:
    config = {
        "delta_config": {"table_path": str(table_root)},
        "streams": {
            STREAM: {
                "target_table": STREAM,
                "delta_options": {
                    "target_file_size": args.target_file_size,
                    "compression": args.compression,
                },
            }
        },
    }
    out = tmp / "delta.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def run_arrowport(
    path: Path, tmp: Path, rows: int, args: argparse.Namespace, index: int, profiles: list[Path]
) -> Run:
    root = tmp / "arrowport_delta"
    shutil.rmtree(root, ignore_errors=True)
    db = tmp / "x.duckdb"
    db.unlink(missing_ok=True)
    config = write_config(tmp, root, args)
    server = Server(db, str(config), [], args.verbose)
    try:
        idle = proc_status(server.pid)
        cpu0, threads0 = proc_cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        prof = None
        if args.py_spy:
            spec = Path(args.py_spy)
            prof = Profiler(
                server.pid,
                spec.with_name(f"{spec.stem}.{index}{spec.suffix or '.txt'}"),
                rate=args.py_spy_rate,
            )
        url = f"http://127.0.0.1:{server.port}/delta/{STREAM}"
        cmd = ["curl", "-sS", "-X", "POST", "-T", str(path), "-H", f"Content-Type: {CONTENT_TYPE}"]
        cmd += ["-w", "\n%{http_code} %{time_total}", url]
        procs0 = cpu_by_process()
        busy0, before = system_busy_seconds(), os.times()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        after, busy = os.times(), system_busy_seconds() - busy0
        if prof is not None:
            prof.stop()
            profiles.append(prof.out)
        sampler.stop()
        curl_cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        cpu = proc_cpu_seconds(server.pid) - cpu0
        threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu_seconds(server.pid).items()}
        busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
        status = proc_status(server.pid)  # VmHWM right before stopping
        others = top_others(procs0, {server.pid, os.getpid()})
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
    info = inspect_table(root / STREAM)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        db.unlink(missing_ok=True)
    if info["rows"] != rows or response.get("rows") != rows:
        raise SystemExit(
            f"FAIL: the server answered rows={response.get('rows')} and the table holds "
            f"{info['rows']}; expected {rows}"
        )
    quotient = info["data_bytes"] / args.target_file_size
    return Run(
        "arrowport",
        seconds,
        rows,
        path.stat().st_size,
        peak_rss_mb=status["VmHWM"] / 1024,
        cpu_seconds=cpu,
        extra={
            "files": info["files"],
            "expected_files": max(1, math.ceil(quotient)),
            "size_over_target": quotient,
            "data_mb": info["data_bytes"] / 1e6,
            "file_mb": info["file_mb"],
            "row_groups": info["row_groups"],
            "layout": info["layout"],
            "delta_version": info["version"],
            "server_ms": response.get("duration_ms"),
            "idle_rss_mb": idle["VmRSS"] / 1024,
            "curl_cpu_s": curl_cpu,
            "other_cpu_s": max(0.0, busy - cpu - curl_cpu),
            "others": others,
            "threads": ",".join(
                f"{name.split(':', 1)[1]}={sec:.1f}s" for name, sec in busiest if sec >= 0.05
            ),
        },
    )


# -- report -----------------------------------------------------------------------------------


def _num(run: Run, key: str) -> float:
    value = run.extra.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def _loaded(run: Run) -> bool:
    other = _num(run, "other_cpu_s")
    return other > max(0.1 * run.seconds, 0.2)


def _line(i: int, n: int, run: Run) -> str:
    keys: tuple[str, ...] = (
        "files",
        "expected_files",
        "size_over_target",
        "data_mb",
        "file_mb",
        "row_groups",
    )
    keys += ("server_ms", "idle_rss_mb")
    keys += ("curl_cpu_s", "other_cpu_s", "others", "threads")
    shown = [
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
        for k in keys
        if (v := run.extra.get(k)) not in (None, "")
    ]
    return (
        f"[{i + 1}/{n}] {run.kind:9} {run.seconds:7.2f} s  {run.rows_per_s / 1e6:6.3f} M rows/s  "
        f"{run.mb_per_s:6.0f} MB/s  CPU {run.cpu_seconds or 0:5.1f} s  peak RSS {run.peak_rss_mb:6.0f} MB  "
        + " ".join(shown)
    )


def report(base: list[Run], ours: list[Run], args: argparse.Namespace) -> bool:
    med = statistics.median
    ratios = [a.rows_per_s / b.rows_per_s for b, a in zip(base, ours, strict=True)]
    ratio = med(ratios)
    print()
    print(
        f"rows {base[0].rows:,}  IPC file {base[0].nbytes / 1e6:,.0f} MB  repeat {len(base)}  "
        f"target_file_size {args.target_file_size:,} B  compression {args.compression}  "
        f"deltalake {base[0].extra.get('deltalake')}  code {code_version()}"
    )
    header = f"{'':10} {'M rows/s':>9} {'MB/s':>7} {'seconds':>8} {'CPU s':>6} {'peak RSS MB':>12} {'files':>6} {'data MB':>8}"
    print(header)
    print("-" * len(header))
    for runs, label in ((base, "baseline"), (ours, "arrowport")):
        print(
            f"{label:10} {med([r.rows_per_s for r in runs]) / 1e6:9.3f} "
            f"{med([r.mb_per_s for r in runs]):7.0f} {med([r.seconds for r in runs]):8.2f} "
            f"{med([r.cpu_seconds or 0 for r in runs]):6.1f} "
            f"{med([r.peak_rss_mb or 0 for r in runs]):12.0f} "
            f"{med([_num(r, 'files') for r in runs]):6.0f} "
            f"{med([_num(r, 'data_mb') for r in runs]):8.0f}"
        )
    print()
    for i, (b, a, r) in enumerate(zip(base, ours, ratios, strict=True)):
        flag = " (other load!)" if _loaded(b) or _loaded(a) else ""
        print(
            f"pair #{i + 1}: baseline {b.seconds:.2f} s ({b.rows_per_s / 1e6:.3f} M rows/s), "
            f"arrowport {a.seconds:.2f} s ({a.rows_per_s / 1e6:.3f} M rows/s), ratio {r:.3f}{flag}"
        )
    clean = [
        r for b, a, r in zip(base, ours, ratios, strict=True) if not (_loaded(b) or _loaded(a))
    ]
    print(
        f"median ratio {ratio:.3f}; over the {len(clean)} pairs without other load: "
        + (f"{statistics.median(clean):.3f}" if clean else "n/a")
    )
    print(
        "CPU s (median): baseline process "
        f"{med([b.cpu_seconds or 0 for b in base]):.1f}; server {med([a.cpu_seconds or 0 for a in ours]):.1f} "
        f"(+ curl {med([_num(a, 'curl_cpu_s') for a in ours]):.1f}); server threads: "
        + " | ".join(str(a.extra.get("threads")) for a in ours)
    )
    print(f"baseline first file:  {base[0].extra['layout']}")
    print(f"arrowport first file: {ours[0].extra['layout']}")
    files = [(int(_num(a, "files")), _num(a, "size_over_target")) for a in ours]
    # a file is closed once it reaches the target, so all but the last are >= target:
    # floor(q) or ceil(q) files for q = size / target_file_size
    ok_files = all(math.floor(q) <= got <= max(1, math.ceil(q)) for got, q in files)
    if any(_loaded(r) for r in base + ours):
        print(
            "WARNING: other processes used over 10% of a core during some runs (other_cpu_s); "
            "those figures are not comparable"
        )
    ok_ratio = ratio >= TARGET_RATIO
    print(
        f"target arrowport >= {TARGET_RATIO}x write_deltalake: {'MET' if ok_ratio else 'MISSED'} "
        f"({ratio:.3f}x); data files ~ size/target_file_size: {'MET' if ok_files else 'MISSED'} "
        f"(files written {', '.join(str(g) for g, _ in files)}; data size / target_file_size "
        f"{', '.join(f'{q:.2f}' for _, q in files)})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": base[0].rows,
                    "target_file_size": args.target_file_size,
                    "compression": args.compression,
                    "ratios": ratios,
                    "ratio_median": ratio,
                    "runs": [
                        r.__dict__ | {"rows_per_s": r.rows_per_s, "mb_per_s": r.mb_per_s}
                        for r in base + ours
                    ],
                },
                indent=2,
                default=str,
            )
        )
    return ok_ratio and ok_files


# -- in-process writer variants (--writer-variants) ------------------------------------------

# (label, batches per row group, ParquetWriter keyword arguments)
VARIANTS: list[tuple[str, int, dict[str, object]]] = [
    ("pyarrow, one row group per batch (DeltaWrite today)", 1, {}),
    ("  + store_decimal_as_integer", 1, {"store_decimal_as_integer": True}),
    ("pyarrow, one row group per 4 batches (a writer group)", 4, {}),
    ("  + store_decimal_as_integer", 4, {"store_decimal_as_integer": True}),
    (
        "pyarrow, one row group per 8 batches + decimal as int",
        8,
        {"store_decimal_as_integer": True},
    ),
]


def writer_variants(path: Path, tmp: Path, args: argparse.Namespace) -> None:
    """Time ``write_deltalake`` against ``pq.ParquetWriter`` settings, in this process.

    The batches are memory-mapped from the IPC file and touched once first;
    files roll at ``--target-file-size`` as DeltaWrite's do. Interleaved,
    ``--repeat`` rounds. Also times ``validate(full=True)`` over all batches
    (what the server's writer thread does before writing).
    """
    import pyarrow as pa
    from deltalake import write_deltalake

    with pa.memory_map(str(path)) as source:
        batches = list(pa.ipc.open_stream(source))
    schema = batches[0].schema
    rows = sum(b.num_rows for b in batches)
    started = time.perf_counter()
    for b in batches:
        b.validate(full=True)
    print(
        f"{rows:,} rows, {len(batches)} batches; validate(full=True) of all: {time.perf_counter() - started:.2f} s"
    )

    def parquet(group: int, kwargs: dict[str, object]) -> tuple[float, float, int, int]:
        files: list[Path] = []
        sink = writer = None

        def roll() -> tuple[pa.NativeFile, pq.ParquetWriter]:
            files.append(tmp / f"variant-{len(files)}.parquet")
            out = pa.OSFile(str(files[-1]), "wb")
            return out, pq.ParquetWriter(out, schema, compression=args.compression, **kwargs)

        t0, c0 = time.perf_counter(), time.process_time()
        sink, writer = roll()
        for k in range(0, len(batches), group):
            chunk = pa.Table.from_batches(batches[k : k + group])
            writer.write_table(chunk, row_group_size=chunk.num_rows)
            if sink.tell() >= args.target_file_size:
                writer.close()
                sink.close()
                sink, writer = roll()
        writer.close()
        sink.close()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = sum(f.stat().st_size for f in files)
        for f in files:
            f.unlink()
        return seconds, cpu, size, len(files)

    def delta() -> tuple[float, float, int, int]:
        table = tmp / "variant_delta"
        shutil.rmtree(table, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        write_deltalake(
            str(table), pa.RecordBatchReader.from_batches(schema, batches), mode="append"
        )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        files = list(table.glob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        shutil.rmtree(table)
        return seconds, cpu, size, len(files)

    print(
        f"{'':55} {'seconds':>8} {'CPU s':>6} {'M rows/s':>9} {'data MB':>8} {'files':>6} {'vs write_deltalake':>19}"
    )
    for _ in range(max(1, args.repeat)):
        ref = delta()
        print(
            f"{'write_deltalake (defaults)':55} {ref[0]:8.2f} {ref[1]:6.2f} {rows / ref[0] / 1e6:9.2f} {ref[2] / 1e6:8.1f} {ref[3]:6}"
        )
        for label, group, kwargs in VARIANTS:
            got = parquet(group, kwargs)
            print(
                f"{label:55} {got[0]:8.2f} {got[1]:6.2f} {rows / got[0] / 1e6:9.2f} "
                f"{got[2] / 1e6:8.1f} {got[3]:6} {ref[0] / got[0]:18.3f}x",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved pairs; medians reported")
    parser.add_argument(
        "--target-file-size",
        type=parse_size,
        default=DEFAULT_TARGET_FILE_SIZE,
        help="Arrowport's delta_options.target_file_size (bytes or 128MiB; default 128MiB)",
    )
    parser.add_argument(
        "--compression",
        default="snappy",
        choices=["snappy", "zstd", "lz4", "gzip", "none"],
        help="Parquet codec for Arrowport (delta_options.compression) and, if not snappy, the baseline",
    )
    parser.add_argument(
        "--baseline-same-file-size",
        action="store_true",
        help="pass --target-file-size to write_deltalake too (default: delta-rs's own default)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and both tables")
    parser.add_argument(
        "--py-spy",
        metavar="OUT.txt",
        help="attach `py-spy record --native --threads` to the server during each upload "
        "(one raw file per repetition; summaries are printed)",
    )
    parser.add_argument("--py-spy-rate", type=int, default=50)
    parser.add_argument(
        "--writer-variants",
        action="store_true",
        help="instead: time write_deltalake against ParquetWriter settings in-process (no server)",
    )
    parser.add_argument("--json", help="write all runs to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo the server's log")
    args = parser.parse_args()
    path = lineitem.ensure(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="arrowport-delta-bench-"))
    if args.writer_variants:
        try:
            writer_variants(path, tmp, args)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    base: list[Run] = []
    ours: list[Run] = []
    profiles: list[Path] = []
    try:
        for i in range(args.repeat):
            order = ("baseline", "arrowport") if i % 2 == 0 else ("arrowport", "baseline")
            for kind in order:
                if args.quiet_wait:
                    wait_quiet(args.quiet_wait)
                if kind == "baseline":
                    run = run_baseline(path, tmp, args.rows, args)
                    base.append(run)
                else:
                    run = run_arrowport(path, tmp, args.rows, args, i, profiles)
                    ours.append(run)
                print(_line(i, args.repeat, run), file=sys.stderr, flush=True)
        ok = report(base, ours, args)
        for prof in profiles:
            if prof.exists():
                print()
                print(summarise(prof))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok or not args.strict else 1)


if __name__ == "__main__":
    main()
