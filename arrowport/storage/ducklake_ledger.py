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
* A key names one request to one table: a lookup matches ``table_name``
  (ignoring case) as well as ``key``.
* What is read is checked. A day table is used only if its columns are
  exactly ours (``tables`` leaves any other out, with a warning), and a row
  with NULL, negative or non-integer counts is treated as absent (logged).
  If today's table is malformed (made by hand), keys go into
  ``<day>_1`` … ``<day>_9`` instead, which sort between that day and the next.
* Pure SQL on a cursor the caller gives; the caller owns transactions.
"""

from __future__ import annotations

import logging
import re
import time

import duckdb

from ..names import quote_identifier
from .duckdb_ledger import distrust, valid_row

log = logging.getLogger("arrowport.storage")

PREFIX = "_arrowport_ledger_"  # + YYYYMMDD (UTC), + _N if that day's table is malformed
NAME = re.compile(re.escape(PREFIX) + r"[0-9]{8}(_[1-9])?\Z")
COLUMNS = (
    ("key", "VARCHAR"),
    ("table_name", "VARCHAR"),
    ("rows", "BIGINT"),
    ("batches", "BIGINT"),
    ("committed_at", "DOUBLE"),
)
DDL = (
    "CREATE TABLE IF NOT EXISTS {name} (key VARCHAR, table_name VARCHAR, "
    "rows BIGINT, batches BIGINT, committed_at DOUBLE)"
)
DAY = 86400.0
_warned: set[str] = set()  # malformed day tables already logged


def day_table(at: float) -> str:
    """The ledger table for the UTC day of ``at`` (seconds since the epoch)."""
    return PREFIX + time.strftime("%Y%m%d", time.gmtime(at))


def day_tables(cur: duckdb.DuckDBPyConnection) -> dict[str, bool]:
    """Every ledger day table, oldest first, and whether its columns are ours."""
    rows = cur.execute(
        "SELECT table_name, list(column_name || ' ' || data_type ORDER BY column_index) "
        "FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND starts_with(table_name, ?) "
        "GROUP BY table_name ORDER BY table_name",
        [PREFIX],
    ).fetchall()
    expected = [f"{name} {dtype}" for name, dtype in COLUMNS]
    found = {}
    for name, cols in rows:
        if not NAME.match(name):
            continue
        found[name] = list(cols) == expected
        if not found[name] and name not in _warned:
            _warned.add(name)
            log.warning(
                "ignoring idempotency ledger table %s: its columns (%s) are not Arrowport's",
                name,
                ", ".join(cols),
            )
    return found


def tables(cur: duckdb.DuckDBPyConnection) -> list[str]:
    """The ledger's well-formed day tables, oldest first."""
    return [name for name, ok in day_tables(cur).items() if ok]


def today_table(found: dict[str, bool], at: float) -> tuple[str, bool]:
    """(name, exists) of the table to record keys of the day of ``at`` in: the day's
    own name unless a malformed table has it, then the first free or good ``_N``."""
    day = day_table(at)
    for name in (day, *(f"{day}_{n}" for n in range(1, 10))):
        if name not in found or found[name]:
            return name, name in found
    raise duckdb.CatalogException(f"ledger tables {day} to {day}_9 are all malformed")


def lookup(
    cur: duckdb.DuckDBPyConnection, table: str, key: str, ttl_hours: float, now: float
) -> tuple[int, int] | None:
    """(rows, batches) of ``key``'s commit into ``table`` within the TTL, or None."""
    since = now - ttl_hours * 3600
    first = day_table(since - DAY)  # a key committed just after midnight: see above
    live = [t for t in tables(cur) if t >= first]
    if not live:
        return None
    union = " UNION ALL ".join(
        f"SELECT rows, batches, committed_at FROM {quote_identifier(t)} "
        "WHERE key = $key AND lower(table_name) = $table AND committed_at > $since"
        for t in live
    )
    # the newest commit is picked here, not with ORDER BY ... LIMIT 1, which on
    # DuckLake 1.5.5 takes 6 ms more than the plain scan (a key has one row or few)
    found = cur.execute(union, {"key": key, "table": table.lower(), "since": since}).fetchall()
    trusted = []
    for row in found:
        if valid_row(row, now):
            trusted.append(row)
        else:
            distrust("the DuckLake ledger", table, key, row)
    if not trusted:
        return None
    rows, batches, _ = max(trusted, key=lambda row: row[2])
    return int(rows), int(batches)


def record(
    cur: duckdb.DuckDBPyConnection, key: str, table: str, rows: int, batches: int, now: float
) -> bool:
    """Insert ``key`` into the newest good day table; False if there is none."""
    days = tables(cur)
    if not days:
        return False
    cur.execute(
        f"INSERT INTO {quote_identifier(days[-1])} (key, table_name, rows, batches, committed_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [key, table.lower(), rows, batches, now],
    )
    return True


def expired(days: list[str], ttl_hours: float, now: float) -> list[str]:
    """The day tables whose keys have all outlived the TTL, with a day's margin
    beyond what ``lookup`` reads (for clocks that differ between instances)."""
    cutoff = day_table(now - ttl_hours * 3600 - 2 * DAY)
    return [t for t in days if t < cutoff]
