"""The DuckDB file's idempotency ledger: table ``_arrowport_keys``.

A key names one request to one table: its row is ``(table_name, key)``, the
PRIMARY KEY, so the same key sent to another table is another request. (Up to
0.x the ledger was ``_arrowport_ledger`` with ``key`` alone as its PRIMARY
KEY, which let a key used for table A answer a request to table B as a replay
without writing it. DuckDB 1.5.5 cannot ALTER a PRIMARY KEY, so ``prepare``
copies that table's live rows into the new one once and drops it.)

Invariants:

* Pure SQL on a cursor the caller gives; the caller owns transactions.
* ``table_name`` is stored lower-cased: table names are case-insensitive.
* What is read is checked (``valid_row``): a row with NULL, negative or
  non-integer counts, or a commit time that is not a finite time before
  tomorrow, is not trusted. It is logged and treated as absent; recording
  the key again replaces it. A ledger table with other columns than ours
  (made by hand) fails ``prepare`` with a message saying what to do, so the
  server does not start rather than fail every keyed write.
"""

from __future__ import annotations

import logging
import math

import duckdb

from ..names import quote_identifier
from .errors import StorageError

log = logging.getLogger("arrowport.storage")

TABLE = "_arrowport_keys"
OLD_TABLE = "_arrowport_ledger"  # keys were global (PRIMARY KEY key): migrated at open
COLUMNS = (
    ("table_name", "VARCHAR"),
    ("key", "VARCHAR"),
    ("rows", "BIGINT"),
    ("batches", "BIGINT"),
    ("committed_at", "DOUBLE"),
)
DDL = (
    f"CREATE TABLE IF NOT EXISTS {quote_identifier(TABLE)} ("
    "table_name VARCHAR NOT NULL, key VARCHAR NOT NULL, "
    "rows BIGINT NOT NULL CHECK (rows >= 0), batches BIGINT NOT NULL CHECK (batches >= 0), "
    "committed_at DOUBLE NOT NULL, PRIMARY KEY (table_name, key))"
)
FUTURE_MARGIN = 86400.0  # a commit time later than this ahead of now is not trusted
_LEDGER = quote_identifier(TABLE)


def columns(cur: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of ``table`` in schema main, in order ([] if none)."""
    rows = cur.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return [(str(name), str(dtype)) for name, dtype in rows]


def prepare(cur: duckdb.DuckDBPyConnection, ttl_hours: float, now: float) -> None:
    """Create the ledger if missing, check its columns, and migrate the old one
    (in the caller's transaction)."""
    cur.execute(DDL)
    found = columns(cur, TABLE)
    if found != list(COLUMNS):
        shown = ", ".join(f"{n} {t}" for n, t in found)
        raise StorageError(
            f"the idempotency ledger table {TABLE} has unexpected columns ({shown}); it was "
            "not made by Arrowport: rename or drop it, and Arrowport creates its own"
        )
    old = dict(columns(cur, OLD_TABLE))
    if not old:
        return
    if not all(name in old for name, _ in COLUMNS):
        log.warning(
            "leaving table %s alone: it does not have the columns of an Arrowport ledger",
            OLD_TABLE,
        )
        return
    copied = cur.execute(
        f"INSERT INTO {_LEDGER} SELECT * FROM ("
        "SELECT lower(CAST(table_name AS VARCHAR)) AS t, CAST(key AS VARCHAR) AS k, "
        "TRY_CAST(rows AS BIGINT) AS r, TRY_CAST(batches AS BIGINT) AS b, "
        f"TRY_CAST(committed_at AS DOUBLE) AS c FROM {quote_identifier(OLD_TABLE)}) "
        "WHERE t IS NOT NULL AND k IS NOT NULL AND r >= 0 AND b >= 0 "
        "AND c > ? AND c < ? AND isfinite(c) ON CONFLICT DO NOTHING",
        [now - ttl_hours * 3600, now + FUTURE_MARGIN],
    ).fetchall()
    cur.execute(f"DROP TABLE {quote_identifier(OLD_TABLE)}")
    log.info(
        "moved %s live idempotency keys from %s to %s (keys are now per table)",
        copied[0][0] if copied else 0,
        OLD_TABLE,
        TABLE,
    )


def valid_row(row: tuple[object, ...], now: float) -> bool:
    """Whether (rows, batches, committed_at) read from a ledger can be trusted."""
    rows, batches, committed_at = row
    return (
        type(rows) is int
        and type(batches) is int
        and rows >= 0
        and batches >= 0
        and isinstance(committed_at, float)
        and math.isfinite(committed_at)
        and committed_at < now + FUTURE_MARGIN
    )


def distrust(where: str, table: str, key: str, row: tuple[object, ...]) -> None:
    log.warning(
        "ignoring a malformed idempotency ledger row in %s for table %s, key %r: %r",
        where,
        table,
        key,
        row,
    )


def lookup(
    cur: duckdb.DuckDBPyConnection, table: str, key: str, ttl_hours: float, now: float
) -> tuple[int, int] | None:
    """(rows, batches) of ``key``'s commit into ``table`` within the TTL, or None."""
    row = cur.execute(
        f"SELECT rows, batches, committed_at FROM {_LEDGER} "
        "WHERE table_name = ? AND key = ? AND committed_at > ?",
        [table.lower(), key, now - ttl_hours * 3600],
    ).fetchone()
    if row is None:
        return None
    if not valid_row(row, now):
        distrust(TABLE, table, key, row)
        return None
    return int(row[0]), int(row[1])


def record(
    cur: duckdb.DuckDBPyConnection, table: str, key: str, rows: int, batches: int, now: float
) -> None:
    """Record ``key`` for ``table`` (replacing an expired or untrusted entry)."""
    cur.execute(f"DELETE FROM {_LEDGER} WHERE table_name = ? AND key = ?", [table.lower(), key])
    cur.execute(
        f"INSERT INTO {_LEDGER} VALUES (?, ?, ?, ?, ?)", [table.lower(), key, rows, batches, now]
    )


def prune(cur: duckdb.DuckDBPyConnection, ttl_hours: float, now: float) -> None:
    """Forget keys older than the TTL."""
    cur.execute(f"DELETE FROM {_LEDGER} WHERE committed_at <= ?", [now - ttl_hours * 3600])
