# ruff: noqa: E501
"""Build a deterministic TPC-H lineitem-like Arrow table and cache it as an IPC stream file.

    python bench/lineitem.py --rows 10000000      # writes bench/data/lineitem_10000000.arrows

The 16 columns have lineitem's names and types (decimals as decimal128(15, 2)).
Values follow TPC-H's distributions loosely; strings are drawn from small
vocabularies (flags, modes, instructions) or assembled from a word list
(comments, 10-43 characters), all vectorized with numpy, so 10M rows take
seconds. The same ``--rows`` and ``--seed`` always give the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

BATCH_ROWS = 122_880
DATA_DIR = Path(__file__).resolve().parent / "data"

SCHEMA = pa.schema(
    [
        ("l_orderkey", pa.int64()),
        ("l_partkey", pa.int64()),
        ("l_suppkey", pa.int64()),
        ("l_linenumber", pa.int32()),
        ("l_quantity", pa.decimal128(15, 2)),
        ("l_extendedprice", pa.decimal128(15, 2)),
        ("l_discount", pa.decimal128(15, 2)),
        ("l_tax", pa.decimal128(15, 2)),
        ("l_returnflag", pa.string()),
        ("l_linestatus", pa.string()),
        ("l_shipdate", pa.date32()),
        ("l_commitdate", pa.date32()),
        ("l_receiptdate", pa.date32()),
        ("l_shipinstruct", pa.string()),
        ("l_shipmode", pa.string()),
        ("l_comment", pa.string()),
    ]
)

_INSTRUCT = ["DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN"]
_MODES = ["REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB"]
_WORDS = [
    "furiously",
    "sly",
    "carefully",
    "blithely",
    "quickly",
    "fluffily",
    "slyly",
    "ironic",
    "final",
    "regular",
    "express",
    "special",
    "pending",
    "unusual",
    "even",
    "bold",
    "silent",
    "ideas",
    "accounts",
    "packages",
    "requests",
    "deposits",
    "foxes",
    "pinto",
    "beans",
    "instructions",
    "theodolites",
    "platelets",
    "asymptotes",
    "dependencies",
    "across",
    "about",
    "above",
    "after",
    "against",
    "along",
    "among",
    "around",
    "the",
    "nag",
    "haggle",
    "wake",
    "sleep",
    "cajole",
]
_EPOCH_1992 = 8035  # days from 1970-01-01 to 1992-01-01
_CUTOFF = 9298  # 1995-06-17: TPC-H's "current date" for returnflag/linestatus


def _dict_strings(codes: np.ndarray, vocab: list[str]) -> pa.Array:
    """A plain string array (not dictionary-encoded) from small-integer codes."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int8)), pa.array(vocab)).cast(
        pa.string()
    )


def _comments(rng: np.random.Generator, n: int) -> pa.Array:
    """Comments of 10-43 characters built from word-list bytes, vectorized."""
    words = np.array(_WORDS)
    # Pool of 4096 distinct comments; rows pick from it and are truncated to varying lengths.
    pool_idx = rng.integers(0, len(words), size=(4096, 8))
    pool = np.array([" ".join(row) for row in words[pool_idx]])
    pool_bytes = np.frombuffer(
        "".join(p.ljust(64)[:64] for p in pool).encode(), dtype=np.uint8
    ).reshape(4096, 64)
    pick = rng.integers(0, 4096, size=n)
    lengths = rng.integers(10, 44, size=n).astype(np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    # Gather: the byte at position j of row i is pool_bytes[pick[i], j] for j < lengths[i].
    row_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
    col_of = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(
        offsets[:-1].astype(np.int64), lengths
    )
    data = pool_bytes[pick[row_of], col_of]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))


def _decimal(cents: np.ndarray) -> pa.Array:
    """decimal128(15, 2) from int64 hundredths, without going through Python objects."""
    return pa.Array.from_buffers(
        pa.decimal128(15, 2), len(cents), [None, pa.py_buffer(_to_dec128_bytes(cents))]
    )


def _to_dec128_bytes(values: np.ndarray) -> bytes:
    """Little-endian 128-bit two's complement of int64 values (the unscaled decimal)."""
    out = np.empty((len(values), 2), dtype=np.int64)
    out[:, 0] = values
    out[:, 1] = values >> 63  # sign extension
    return out.tobytes()


def make_batch(start: int, n: int, seed: int) -> pa.RecordBatch:
    """Rows ``start .. start+n``; deterministic in (start, seed)."""
    rng = np.random.default_rng([seed, start])
    row = np.arange(start, start + n, dtype=np.int64)
    orderkey = row // 4 + 1  # about four lines per order
    linenumber = (row % 4 + 1).astype(np.int32)
    partkey = rng.integers(1, 2_000_001, size=n, dtype=np.int64)
    suppkey = rng.integers(1, 100_001, size=n, dtype=np.int64)
    quantity = rng.integers(1, 51, size=n, dtype=np.int64)
    price_cents = (90_000 + (partkey // 10) % 20_001 + 100 * (partkey % 1_000)) * quantity
    discount = rng.integers(0, 11, size=n, dtype=np.int64)
    tax = rng.integers(0, 9, size=n, dtype=np.int64)
    orderdate = _EPOCH_1992 + rng.integers(0, 2406, size=n).astype(np.int32)
    shipdate = orderdate + rng.integers(1, 122, size=n).astype(np.int32)
    commitdate = orderdate + rng.integers(30, 91, size=n).astype(np.int32)
    receiptdate = shipdate + rng.integers(1, 31, size=n).astype(np.int32)
    delivered = receiptdate <= _CUTOFF
    returnflag = np.where(delivered, rng.integers(0, 2, size=n), 2)  # R, A, N
    linestatus = (shipdate > _CUTOFF).astype(np.int8)  # F, O
    columns = [
        pa.array(orderkey),
        pa.array(partkey),
        pa.array(suppkey),
        pa.array(linenumber),
        _decimal(quantity * 100),
        _decimal(price_cents),
        _decimal(discount),
        _decimal(tax),
        _dict_strings(returnflag, ["R", "A", "N"]),
        _dict_strings(linestatus, ["F", "O"]),
        pa.array(shipdate, pa.date32()),
        pa.array(commitdate, pa.date32()),
        pa.array(receiptdate, pa.date32()),
        _dict_strings(rng.integers(0, len(_INSTRUCT), size=n), _INSTRUCT),
        _dict_strings(rng.integers(0, len(_MODES), size=n), _MODES),
        _comments(rng, n),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def batches(rows: int, seed: int = 42):
    for start in range(0, rows, BATCH_ROWS):
        yield make_batch(start, min(BATCH_ROWS, rows - start), seed)


def path_for(rows: int, seed: int = 42) -> Path:
    suffix = "" if seed == 42 else f"_s{seed}"
    return DATA_DIR / f"lineitem_{rows}{suffix}.arrows"


def count_rows(path: Path) -> int:
    """Rows in an IPC stream file (memory-mapped, no copies)."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        return sum(b.num_rows for b in reader)


def ensure(rows: int, seed: int = 42, *, force: bool = False, quiet: bool = False) -> Path:
    """Return the cached IPC stream file for ``rows``; build it if missing or wrong."""
    path = path_for(rows, seed)
    if path.exists() and not force:
        try:
            if count_rows(path) == rows:
                return path
        except pa.ArrowInvalid:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    started = time.perf_counter()
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        for batch in batches(rows, seed):
            writer.write_batch(batch)
    os.replace(tmp, path)
    if not quiet:
        size = path.stat().st_size
        print(
            f"wrote {path} ({rows:,} rows, {size / 1e6:,.0f} MB) in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    args = parser.parse_args()
    path = ensure(args.rows, args.seed, force=args.force)
    print(path)


if __name__ == "__main__":
    main()
