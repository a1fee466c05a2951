# ruff: noqa: E501
"""In-process probe: one INSERT over the whole stream vs. one INSERT per K batches, in ONE transaction.

    python bench/insert_chunks.py --per 0 4 8 [--memory-limit 100MB] [--rows 10000000]

``--per 0`` is what the server does today (one statement over a RecordBatchReader of the whole
request). Each case runs in a fresh child process and prints seconds, rows/s, cores used and
peak RSS, showing that DuckDB holds the scanned Arrow batches until the statement ends.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lineitem

_CHILD = r"""
import itertools, json, sys, time
import duckdb, pyarrow as pa
path, db, per, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
con = duckdb.connect(db, config=settings)
src = pa.ipc.open_stream(pa.OSFile(path, "rb"))
con.register("e", src.schema.empty_table())
con.execute("CREATE TABLE t AS SELECT * FROM e LIMIT 0")
t0, c0 = time.perf_counter(), time.process_time()
con.execute("BEGIN")
if per == 0:
    con.register("src", src)
    con.execute("INSERT INTO t SELECT * FROM src")
else:
    it = iter(src)
    while group := list(itertools.islice(it, per)):
        con.register("src", pa.RecordBatchReader.from_batches(src.schema, iter(group)))
        del group
        con.execute("INSERT INTO t SELECT * FROM src")
        con.unregister("src")
con.execute("COMMIT")
s, c = time.perf_counter() - t0, time.process_time() - c0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"s": s, "cpu": c, "hwm": hwm, "rows": con.execute("SELECT count(*) FROM t").fetchone()[0]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--per", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    parser.add_argument(
        "--memory-limit", help="DuckDB memory_limit (with threads=2); default: DuckDB's"
    )
    args = parser.parse_args()
    path = lineitem.ensure(args.rows)
    settings = {"memory_limit": args.memory_limit, "threads": 2} if args.memory_limit else {}
    with tempfile.TemporaryDirectory(prefix="arrowport-chunks-") as tmp:
        for per in args.per:
            db = Path(tmp) / f"per{per}.duckdb"
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), str(db), str(per), json.dumps(settings)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            db.unlink(missing_ok=True)
            if r["rows"] != args.rows:
                raise SystemExit(f"FAIL: {r['rows']} rows, expected {args.rows}")
            label = "whole stream" if per == 0 else f"{per} batches"
            print(
                f"INSERT per {label:13} memory_limit={args.memory_limit or 'default':8} {r['s']:6.2f} s "
                f"{r['rows'] / r['s'] / 1e6:5.2f} M rows/s  cores {r['cpu'] / r['s']:4.2f}  peak RSS {r['hwm'] / 1024:6.0f} MB"
            )


if __name__ == "__main__":
    main()
