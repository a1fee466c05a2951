"""CPU per small write at the storage layer, without the network: Arrowport's group-commit
step against DuckDB's own autocommit insert, in one process, on fresh DuckDB files.

    python bench/store_write.py                 # 500 one-row writes each
    python bench/store_write.py --writes 2000 --rows 1000 --key   # keyed (a transaction each)

Prints CPU milliseconds per write (``time.process_time``) for:

* ``commit_group``: ``arrowport.storage.group_write.commit_group(store, "t", [part])``, what
  the server runs in its worker thread for a lone small request;
* ``in-process``: ``INSERT INTO t SELECT * FROM arrow_table`` on one DuckDB connection
  (autocommit), the in-process baseline of ``bench/small_writes.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import duckdb
import pyarrow as pa

from arrowport.storage import DuckDBStore
from arrowport.storage.group_write import commit_group
from arrowport.storage.port import Part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--key", action="store_true", help="each write has an idempotency key")
    args = parser.parse_args()
    n = args.rows
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "x": pa.array([0.5] * n),
            "s": pa.array(["abcdefghijklmnopqrst"] * n),
        }
    )
    batch = table.to_batches()[0]
    work = tempfile.mkdtemp()
    store = DuckDBStore(os.path.join(work, "arrowport.duckdb"))
    store.open()
    store.write("t", table.schema, [batch])
    keys = (f"k{i}" if args.key else None for i in itertools.count())
    for _ in range(20):  # warm up
        commit_group(store, "t", [Part(table.schema, (batch,), next(keys))])
    started = time.process_time()
    for _ in range(args.writes):
        outcome = commit_group(store, "t", [Part(table.schema, (batch,), next(keys))])[0]
        assert not isinstance(outcome, BaseException), outcome
    ours = (time.process_time() - started) / args.writes * 1000
    store.close()

    con = duckdb.connect(os.path.join(work, "inprocess.duckdb"))
    arrow_table = table  # noqa: F841  (DuckDB's replacement scan reads it by name)
    con.execute("CREATE TABLE t AS SELECT * FROM arrow_table")
    for _ in range(20):
        con.execute("INSERT INTO t SELECT * FROM arrow_table")
    started = time.process_time()
    for _ in range(args.writes):
        con.execute("INSERT INTO t SELECT * FROM arrow_table")
    theirs = (time.process_time() - started) / args.writes * 1000
    con.close()
    print(f"{args.writes} writes of {n} row(s){' with a key' if args.key else ''}:")
    print(f"  commit_group  {ours:.2f} ms CPU per write")
    print(f"  in-process    {theirs:.2f} ms CPU per write   (ratio {ours / theirs:.2f}x)")


if __name__ == "__main__":
    main()
