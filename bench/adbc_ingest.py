# ruff: noqa: E501
"""ADBC bulk ingest vs. HTTP ingest vs. pyarrow ``do_put``, all of the same data, in one run.

    python bench/adbc_ingest.py --rows 500000 --repeat 1     # smoke test, ~30 s
    python bench/adbc_ingest.py --repeat 3                    # 10M lineitem rows, 3 interleaved rounds

Each round runs, in an order rotated from round to round:

* baseline: ``bench/http_ingest.py``'s in-process ``INSERT INTO lineitem
  SELECT * FROM <RecordBatchReader over the IPC file>`` in a child process;
* http: ``curl -T lineitem.arrows`` to ``POST /ingest/lineitem`` on a fresh
  ``arrowport serve`` (``http_ingest.run_http``);
* flight: pyarrow ``FlightClient.do_put`` to descriptor path "lineitem"
  (``flight_ingest.run_flight``);
* adbc: ``adbc_driver_flightsql.dbapi`` ``cursor.adbc_ingest("lineitem",
  reader, mode="create")`` over a ``RecordBatchStreamReader`` on the IPC
  file (one batch in memory at a time), timed from the call to its return
  (the driver returns after the server's ``DoPutUpdateResult``, which
  Arrowport sends only after the commit); the rows in the file are counted
  afterwards and must equal the record count.

Every server writes a fresh DuckDB file. Reported: per-kind median rows/s,
server peak RSS (VmHWM) and CPU, and the ratios adbc/http, adbc/flight and
each/baseline. This machine's speed drifts, so compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lineitem  # noqa: E402
from flight_ingest import run_flight  # noqa: E402
from http_ingest import (  # noqa: E402
    STREAM,
    Run,
    Server,
    _remove_db,
    proc_cpu_seconds,
    proc_status,
    run_baseline,
    run_http,
)

KINDS = ("baseline", "http", "flight", "adbc")


def run_adbc(path: Path, db: Path, rows: int, args: argparse.Namespace) -> Run:
    import adbc_driver_flightsql.dbapi as flightsql
    import duckdb

    _remove_db(db)
    server = Server(db, args.config, [], args.verbose)
    try:
        idle = proc_status(server.pid)
        cpu0 = proc_cpu_seconds(server.pid)
        # the Go driver refuses to send a message over 16 MiB by default; one 122,880-row
        # lineitem batch is ~20 MB
        conn = flightsql.connect(
            f"grpc://127.0.0.1:{server.port}",
            db_kwargs={"adbc.flight.sql.client_option.with_max_msg_size": str(64 << 20)},
        )
        t0 = os.times()
        started = time.perf_counter()
        with pa.OSFile(str(path), "rb") as source, conn.cursor() as cursor:
            reader = pa.ipc.open_stream(source)
            count = cursor.adbc_ingest(STREAM, reader, mode="create")
        seconds = time.perf_counter() - started
        t1 = os.times()
        conn.close()
        cpu = proc_cpu_seconds(server.pid) - cpu0
        status = proc_status(server.pid)
    finally:
        server.stop()
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(f"SELECT count(*) FROM {STREAM}").fetchone()
        counted = row[0] if row else None
    finally:
        con.close()
    _remove_db(db)
    if counted != rows or count != rows:
        raise SystemExit(
            f"FAIL: adbc_ingest returned {count}, the file holds {counted}; expected {rows}"
        )
    return Run(
        "adbc",
        seconds,
        rows,
        path.stat().st_size,
        peak_rss_mb=status["VmHWM"] / 1024,
        cpu_seconds=cpu,
        extra={
            "client_cpu_s": (t1.user - t0.user) + (t1.system - t0.system),
            "idle_rss_mb": idle["VmRSS"] / 1024,
        },
    )


def _one(kind: str, path: Path, tmp: Path, rows: int, args: argparse.Namespace, index: int) -> Run:
    if kind == "baseline":
        return run_baseline(path, tmp, rows, {})
    if kind == "http":
        return run_http(path, tmp, rows, args, index)
    if kind == "flight":
        db = tmp / "flight.duckdb"
        run = run_flight(path, db, rows, args, index, [])
        _remove_db(db)
        return run
    return run_adbc(path, tmp / "adbc.duckdb", rows, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="lineitem rows (default 10M)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--config", help="YAML config passed to `arrowport serve --config`")
    parser.add_argument("--json", help="write all runs to this JSON file")
    parser.add_argument("--verbose", "-v", action="store_true", help="echo the servers' logs")
    args = parser.parse_args()
    # what run_http / run_flight read from their own command lines
    args.py_spy = None
    args.no_expect = False
    args.keep = False
    args.no_native_stack = False
    args.py_spy_rate = 100

    path = lineitem.ensure(args.rows)
    with pa.OSFile(str(path), "rb") as source:
        rows = pa.ipc.open_stream(source).read_all().num_rows
    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="adbc-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for index in range(args.repeat):
            order = KINDS[index % len(KINDS) :] + KINDS[: index % len(KINDS)]
            for kind in order:
                run = _one(kind, path, tmp, rows, args, index)
                runs[kind].append(run)
                print(
                    f"round {index + 1} {kind:8s} {run.seconds:7.2f} s  {run.rows_per_s / 1e6:5.2f} M rows/s  "
                    f"{run.mb_per_s:6.0f} MB/s  peak {run.peak_rss_mb or 0:5.0f} MB",
                    flush=True,
                )
    med = {kind: statistics.median(r.rows_per_s for r in rs) for kind, rs in runs.items()}
    print(f"\n{rows:,} rows, {path.stat().st_size / 1e9:.2f} GB, {args.repeat} rounds (medians)")
    for kind in KINDS:
        peak = statistics.median(r.peak_rss_mb or 0 for r in runs[kind])
        print(
            f"  {kind:8s} {med[kind] / 1e6:5.2f} M rows/s  {med[kind] / med['baseline']:.2f}x baseline  peak {peak:.0f} MB"
        )
    print(
        f"  adbc/http {med['adbc'] / med['http']:.2f}x   adbc/flight {med['adbc'] / med['flight']:.2f}x"
    )
    if args.json:
        out = {kind: [vars(r) for r in rs] for kind, rs in runs.items()}
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
