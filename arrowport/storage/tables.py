"""Looking up and describing DuckDB tables for the read side (Flight).

Invariants:

* Every function here takes the caller's cursor and only reads; the caller
  owns the cursor and its transaction (one snapshot per call of the store).
* Names resolve as DuckDB resolves identifiers: case-insensitively, in schema
  ``main`` of the store's own database file (not attached databases).
* Tables whose names start with ``_arrowport`` are Arrowport's own (e.g. a
  ledger) and do not exist as far as readers are concerned: they are never
  listed, and naming one is refused (400 invalid_name, as in ``names``). Neither do tables
  whose names are not valid Arrowport identifiers: they could not be named
  in a read or drop, so they are not listed either.
* Arrow types are DuckDB's own export (see ``read_cursor``): the schema of
  ``TableInfo`` is exactly the schema a ``scan`` of the table returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from ..names import RESERVED_PREFIX, InvalidNameError, is_reserved, quote_identifier, validate_name
from .errors import ColumnNotFoundError, InvalidReadError, TableNotFoundError, UnsupportedTypeError

INTERNAL_PREFIX = RESERVED_PREFIX
SAMPLE_ROWS = 2048  # rows read to estimate a table's Arrow size (one DuckDB vector)


@dataclass(frozen=True, slots=True, kw_only=True)
class TableInfo:
    """What the read side knows about one table, from one snapshot.

    ``rows`` is exact. ``bytes`` estimates the table's size as Arrow data
    (what a full ``scan`` returns, before IPC framing): the Arrow size of the
    first ``SAMPLE_ROWS`` rows scaled to ``rows``, so it is close for
    fixed-width columns and a guess for strings, blobs and nested columns.
    It is 0 for an empty table.
    """

    name: str
    schema: pa.Schema
    rows: int
    bytes: int


def prepare_read_cursor(cur: duckdb.DuckDBPyConnection) -> None:
    """Make ``cur`` export TIMESTAMPTZ as ``tz=UTC`` whatever the server's zone.

    DuckDB labels exported TIMESTAMPTZ columns with the session time zone,
    which defaults to the machine's; the instants are the same either way.
    """
    with contextlib.suppress(duckdb.Error):  # no ICU: DuckDB exports UTC anyway
        cur.execute("SET TimeZone = 'UTC'")


def valid_table_name(name: str) -> str:
    """``name`` if it is a valid identifier, else ``InvalidNameError`` (400, INVALID_ARGUMENT)."""
    return validate_name(name, "table")


def is_internal(name: str) -> bool:
    return is_reserved(name)


def _addressable(name: str) -> bool:
    try:
        validate_name(name, "table")
    except InvalidNameError:
        return False
    return not is_internal(name)


def table_names(cur: duckdb.DuckDBPyConnection) -> list[str]:
    """The user tables readers can see, sorted by name (ignoring case, as DuckDB does)."""
    rows = cur.execute(
        "SELECT table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND NOT internal AND NOT temporary"
    ).fetchall()
    names = [name for (name,) in rows if _addressable(name)]
    return sorted(names, key=lambda name: (name.lower(), name))


def resolve_table(cur: duckdb.DuckDBPyConnection, name: str) -> str:
    """The stored spelling of table ``name``, or ``TableNotFoundError``."""
    if not is_internal(name):
        rows = cur.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            "AND NOT internal AND NOT temporary AND lower(table_name) = lower(?)",
            [name],
        ).fetchall()
        stored = [found for (found,) in rows]
        if name in stored:
            return name
        if stored:
            return str(stored[0])
    raise TableNotFoundError.named(name, table_names(cur))


def column_names(cur: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The columns of (resolved) ``table`` in order."""
    rows = cur.execute(
        "SELECT column_name FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return [name for (name,) in rows]


def select_list(cur: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str] | None) -> str:
    """The quoted SELECT list for ``columns`` of ``table`` (``*`` for all of them)."""
    if columns is None:
        return "*"
    if isinstance(columns, str):
        raise TypeError("columns must be a sequence of column names, not a string")
    if not columns:
        raise InvalidReadError("columns is empty: name at least one column, or omit it")
    existing = column_names(cur, table)
    by_lower = {name.lower(): name for name in existing}
    missing = [name for name in columns if name.lower() not in by_lower]
    if missing:
        raise ColumnNotFoundError.named(table, missing, existing)
    seen: set[str] = set()
    for name in columns:
        if name.lower() in seen:
            raise InvalidReadError(f"column {name!r} is requested more than once")
        seen.add(name.lower())
    return ", ".join(quote_identifier(by_lower[name.lower()]) for name in columns)


@contextlib.contextmanager
def snapshot(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One read-only transaction on ``cur``, rolled back on exit."""
    cur.begin()
    try:
        yield
    finally:
        with contextlib.suppress(duckdb.Error):  # already ended (see arrow_schema)
            cur.rollback()


def arrow_schema(cur: duckdb.DuckDBPyConnection, table: str) -> pa.Schema:
    """The Arrow schema a ``SELECT *`` of ``table`` returns (reads no rows).

    A column DuckDB cannot export (e.g. VARIANT) raises ``UnsupportedTypeError``
    naming it. The failed export aborts ``cur``'s transaction, so this rolls
    it back first and finds the culprits one statement at a time.
    """
    quoted = quote_identifier(table)
    try:
        return cur.execute(f"SELECT * FROM {quoted} LIMIT 0").to_arrow_table().schema
    except duckdb.NotImplementedException as exc:
        failure = exc
    with contextlib.suppress(duckdb.Error):
        cur.rollback()
    bad = []
    for name in column_names(cur, table):
        try:
            cur.execute(f"SELECT {quote_identifier(name)} FROM {quoted} LIMIT 0").to_arrow_table()
        except duckdb.NotImplementedException as exc:
            bad.append(f"{name} ({str(exc).splitlines()[0]})")
    raise UnsupportedTypeError(
        f"DuckDB cannot export these columns of table {table!r} as Arrow: "
        + ("; ".join(bad) or str(failure))
    )


def describe_table(cur: duckdb.DuckDBPyConnection, table: str) -> TableInfo:
    """``TableInfo`` for (resolved) ``table``, read through ``cur``'s snapshot."""
    schema = arrow_schema(cur, table)
    quoted = quote_identifier(table)
    row = cur.execute(f"SELECT count(*) FROM {quoted}").fetchone()
    rows = int(row[0]) if row else 0
    size = 0
    if rows:
        sample = cur.execute(f"SELECT * FROM {quoted} LIMIT {SAMPLE_ROWS}").to_arrow_table()
        if sample.num_rows:
            size = round(sample.nbytes * rows / sample.num_rows)
    return TableInfo(name=table, schema=schema, rows=rows, bytes=size)
