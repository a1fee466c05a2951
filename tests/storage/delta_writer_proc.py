"""A writer process for the Delta concurrency tests (not a test module).

Usage: ``python delta_writer_proc.py ROOT TABLE N START [--go FILE]``

Appends N requests to TABLE under ROOT through its own ``DeltaStore``. Each
request is one batch of ``ROWS`` rows with unique ids: request ``i`` holds the
ids ``START + i * ROWS`` up to ``START + (i + 1) * ROWS - 1``. With ``--go``
the process waits until FILE exists before the first write, so that several
processes start writing at the same moment. On success it prints one JSON
line: the store's statistics and, per request, its WriteResult fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa

from arrowport.storage import DeltaStore

ROWS = 4


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("table")
    parser.add_argument("n", type=int)
    parser.add_argument("start", type=int)
    parser.add_argument("--go", default=None)
    args = parser.parse_args(argv)

    store = DeltaStore(args.root)
    store.open()
    schema = pa.schema([("id", pa.int64()), ("writer", pa.int64())])
    if args.go is not None:
        deadline = time.monotonic() + 60
        while not Path(args.go).exists():
            if time.monotonic() > deadline:
                print("timed out waiting for the go file", file=sys.stderr)
                return 2
            time.sleep(0.005)
    results = []
    for i in range(args.n):
        first = args.start + i * ROWS
        batch = pa.record_batch(
            {
                "id": pa.array(range(first, first + ROWS), pa.int64()),
                "writer": pa.array([args.start] * ROWS, pa.int64()),
            },
            schema=schema,
        )
        write = store.open_write(args.table, schema)
        try:
            write.insert([batch])
            result = write.finish()
        except BaseException:
            write.rollback()
            raise
        results.append(
            {
                "rows": result.rows,
                "batches": result.batches,
                "created": result.created,
                "version": result.version,
                "replayed": result.replayed,
            }
        )
    print(json.dumps({"statistics": store.statistics(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
