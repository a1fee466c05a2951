"""DuckLake's idempotency ledger: one lake table per UTC day.

DuckLake has no PRIMARY KEY, and a DELETE conflicts with every concurrent
INSERT into the same table. So a key is looked up, then inserted in the
request's own transaction, into the current day's table; expired keys are
never deleted, whole days are dropped instead.

Invariants:

* A key goes into the newest day table that exists, which just after
  midnight UTC may be the previous day's. So a lookup reads the day tables
  from the day before the TTL window began (chosen by name), and pruning drops
  only days older than that: a lookup never reads a day being dropped.
* Pure SQL on a cursor the caller gives; the caller owns transactions.
"""

from __future__ import annotations

import time

import duckdb

from ..names import quote_identifier

PREFIX = "_arrowport_ledger_"  # + YYYYMMDD (UTC)
DDL = (
    "CREATE TABLE IF NOT EXISTS {name} (key VARCHAR, table_name VARCHAR, "
    "rows BIGINT, batches BIGINT, committed_at DOUBLE)"
)
DAY = 86400.0


def day_table(at: float) -> str:
    """The ledger table for the UTC day of ``at`` (seconds since the epoch)."""
    return PREFIX + time.strftime("%Y%m%d", time.gmtime(at))


def tables(cur: duckdb.DuckDBPyConnection) -> list[str]:
    """The ledger's day tables, oldest first."""
    rows = cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND starts_with(table_name, ?) ORDER BY table_name",
        [PREFIX],
    ).fetchall()
    return [name for (name,) in rows]


def lookup(
    cur: duckdb.DuckDBPyConnection, key: str, ttl_hours: float, now: float
) -> tuple[int, int] | None:
    """(rows, batches) of ``key``'s commit within the TTL, or None."""
    since = now - ttl_hours * 3600
    first = day_table(since - DAY)  # a key committed just after midnight: see above
    live = [t for t in tables(cur) if t >= first]
    if not live:
        return None
    union = " UNION ALL ".join(
        f"SELECT rows, batches, committed_at FROM {quote_identifier(t)} "
        "WHERE key = $key AND committed_at > $since"
        for t in live
    )
    # the newest commit is picked here, not with ORDER BY ... LIMIT 1, which on
    # DuckLake 1.5.5 takes 6 ms more than the plain scan (a key has one row or few)
    found = cur.execute(union, {"key": key, "since": since}).fetchall()
    if not found:
        return None
    rows, batches, _ = max(found, key=lambda row: row[2])
    return int(rows), int(batches)


def record(
    cur: duckdb.DuckDBPyConnection, key: str, table: str, rows: int, batches: int, now: float
) -> bool:
    """Insert ``key`` into the newest day table; False if there is none."""
    days = tables(cur)
    if not days:
        return False
    cur.execute(
        f"INSERT INTO {quote_identifier(days[-1])} VALUES (?, ?, ?, ?, ?)",
        [key, table, rows, batches, now],
    )
    return True


def expired(days: list[str], ttl_hours: float, now: float) -> list[str]:
    """The day tables whose keys have all outlived the TTL, with a day's margin
    beyond what ``lookup`` reads (for clocks that differ between instances)."""
    cutoff = day_table(now - ttl_hours * 3600 - 2 * DAY)
    return [t for t in days if t < cutoff]
