"""Read-only SQL over the stores: what a query may be, what it names, and how it runs.

Invariants:

* A query is one statement of DuckDB's SELECT kind (``SELECT``, ``WITH …
  SELECT``, ``VALUES``, ``FROM t``, ``DESCRIBE``/``SHOW``/``SUMMARIZE``, a
  table-valued ``PRAGMA``) or an ``EXPLAIN`` of one. DuckDB's own parser reads
  its kind, in the sandbox, before anything runs; anything else is refused,
  naming its kind, with nothing run.
* The tables a query names are found by DuckDB's binder (also those named in
  ``query()`` and ``query_table()``) and resolved as catalog names: ``t`` and
  ``main.t`` are the default backend's; ``<backend>.t`` and
  ``<backend>.main.t`` that backend's (``duckdb``, ``ducklake``, ``delta``).
  Each is authorized (``authorize``) before its store is asked about it; a
  name that is no table is NOT_FOUND, naming it as the query wrote it. The
  sandbox sees those tables and nothing else.
* Parameters (``?``, ``$1``, ``$name``) take their values from one row of an
  Arrow batch: by position, or by field name for named ones.
* Everything here is synchronous and runs in a worker thread; whatever fails,
  the sandbox is closed, unless a ``QueryReader`` was handed out (which closes it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import ArrowportError
from .errors import TableNotFoundError
from .sql_sandbox import QueryError, QueryReader, Sandbox, TableSource

BACKENDS = ("duckdb", "ducklake", "delta")
DEFAULT_CATALOG = "memory"  # the sandbox's own: where the default backend's tables go
ALLOWED = ("SELECT", "EXPLAIN")
SCAN_ROWS = 4096  # a store scan's batches, as DoGet reads them
_EXPLAIN = re.compile(
    r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?",
    re.IGNORECASE | re.DOTALL,
)

# (backend) -> the store; raises when the server does not run it
Stores = Callable[[str], Any]
# (backend, table as written) -> None; raises when the caller may not read it
Authorize = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class TableRef:
    written: str  # as the query wrote it (DuckDB's rendering)
    backend: str
    catalog: str  # the sandbox catalog its view goes in
    table: str


@dataclass(frozen=True, slots=True)
class Statement:
    kind: str
    refs: tuple[TableRef, ...]
    parameters: tuple[str, ...]  # "1", "2", … for ? and $n; names for $name


def check_statement(sandbox: Sandbox, sql: str, default_backend: str) -> Statement:
    """``sql`` as one query, or ``QueryError`` saying why it is not one."""
    con = sandbox.connection()
    try:
        statements = con.extract_statements(sql)
        kinds = [s.type.name for s in statements]
        if len(statements) != 1:
            raise QueryError(
                "the query is empty"
                if not statements
                else f"a query is one statement; this text holds {len(statements)} "
                f"({', '.join(kinds)})"
            )
        statement = statements[0]
        if kinds[0] not in ALLOWED:
            raise QueryError(_refusal(kinds[0]))
        text = statement.query  # a PRAGMA's is the SELECT DuckDB made of it
        if kinds[0] == "EXPLAIN":
            text = _explained(sandbox, text)
        parameters = _parameter_order(statement.named_parameters)
        names = table_names(sandbox, text)
    except Exception as exc:
        raise sandbox.error(exc) from None
    refs = sorted({resolve(name, default_backend) for name in names}, key=lambda r: r.written)
    return Statement(kind=kinds[0], refs=tuple(refs), parameters=parameters)


def table_names(sandbox: Sandbox, text: str) -> set[tuple[str, ...]]:
    """The tables a SELECT statement names, from DuckDB's parse tree (not bound: a name
    is any table reference that is not a CTE in scope), as name parts."""
    row = sandbox.connection().execute("SELECT json_serialize_sql(?)", [text]).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error"):
        raise QueryError(f"cannot read the query: {tree.get('error_message')}")
    names: set[tuple[str, ...]] = set()
    stack: list[tuple[Any, frozenset[str]]] = [(tree.get("statements"), frozenset())]
    while stack:  # iterative: a deeply nested query is no deep recursion here
        node, ctes = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes) for item in node)
        elif isinstance(node, dict):
            cte_map = node.get("cte_map")
            if isinstance(cte_map, dict):
                ctes = ctes | {str(e.get("key", "")).lower() for e in cte_map.get("map") or ()}
            if node.get("type") == "BASE_TABLE":
                keys = ("catalog_name", "schema_name", "table_name")
                parts = tuple(str(node[k]) for k in keys if node.get(k))
                if len(parts) > 1 or (parts and parts[0].lower() not in ctes):
                    names.add(parts)
            stack.extend((value, ctes) for value in node.values())
    return names


def _refusal(kind: str) -> str:
    return (
        f"{kind} statements are refused: this server's SQL is read-only and serves queries "
        "alone (SELECT, WITH … SELECT, VALUES, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); "
        "write with bulk ingest (ADBC adbc_ingest)"
    )


def _explained(sandbox: Sandbox, text: str) -> str:
    """The query an EXPLAIN explains (which must be one)."""
    match = _EXPLAIN.match(text)
    inner = sandbox.connection().extract_statements(text[match.end() :]) if match else []
    if len(inner) != 1:
        raise QueryError("EXPLAIN takes one query: write EXPLAIN [ANALYZE] SELECT …")
    if inner[0].type.name != "SELECT":
        raise QueryError(_refusal(f"EXPLAIN {inner[0].type.name}"))
    return str(inner[0].query)


def _parameter_order(names: set[str]) -> tuple[str, ...]:
    if all(name.isdigit() for name in names):
        return tuple(str(n) for n in range(1, max((int(n) for n in names), default=0) + 1))
    return tuple(sorted(names))


# -- names ---------------------------------------------------------------------------


def resolve(parts: tuple[str, ...], default_backend: str) -> TableRef:
    """Which backend's table a name the query uses is, and where its view goes."""
    *prefix, table = parts
    shown = ".".join(parts)
    lowered = [p.lower() for p in prefix]
    if not lowered or lowered == ["main"]:
        return TableRef(shown, default_backend, DEFAULT_CATALOG, table)
    if lowered[0] in BACKENDS and lowered[1:] in ([], ["main"]):
        return TableRef(shown, lowered[0], lowered[0], table)
    raise QueryError(
        f"the query names {shown!r}: tables are named t or main.t (the default backend, "
        f"{default_backend}) or <backend>.t, <backend>.main.t with <backend> one of "
        f"{', '.join(BACKENDS)}",
        error="table_not_found",
    )


def open_tables(
    sandbox: Sandbox,
    refs: tuple[TableRef, ...],
    *,
    stores: Stores,
    authorize: Authorize,
    scanning: bool,
) -> None:
    """Each table ``refs`` names, as a view in the sandbox: authorized, then looked up.

    ``scanning`` false: the views are empty (to bind a query, not run it).
    """
    done: set[tuple[str, str]] = set()
    for ref in refs:
        key = (ref.catalog, ref.table.lower())
        if key in done:
            continue
        done.add(key)
        authorize(ref.backend, ref.table)
        store = stores(ref.backend)
        schema = _probe(store, ref)
        sandbox.check()
        sandbox.add_table(
            ref.catalog,
            ref.table,
            TableSource(ref.written, schema, _opener(store, ref.table, schema, scanning)),
        )


def _probe(store: Any, ref: TableRef) -> pa.Schema:
    try:
        reader = store.scan(ref.table, limit=0, batch_rows=1)
    except TableNotFoundError as exc:
        raise TableNotFoundError(
            f"the query names {ref.written!r}: no such table in the {ref.backend} backend",
            table=ref.table,
            suggestions=exc.suggestions,
        ) from None
    except ArrowportError as exc:
        if exc.error == "invalid_name":
            raise QueryError(f"the query names {ref.written!r}: {exc.detail}") from None
        raise
    try:
        schema: pa.Schema = reader.schema
    finally:
        reader.close()
    return schema


def _opener(store: Any, table: str, schema: pa.Schema, scanning: bool) -> Callable[[], Any]:
    if scanning:
        return lambda: store.scan(table, batch_rows=SCAN_ROWS)
    return lambda: pa.RecordBatchReader.from_batches(schema, iter(()))


# -- parameters ------------------------------------------------------------------------


def parameter_values(statement: Statement, batch: pa.RecordBatch | None) -> Any:
    """The values to bind (a list by position, a dict by name), or None for none."""
    names = statement.parameters
    if batch is None:
        if names:
            raise QueryError(
                f"the query has {len(names)} parameter(s); bind their values (one row, "
                "through the prepared statement's DoPut) before running it"
            )
        return None
    if not names:
        raise QueryError(
            f"the query has no parameters, but values were bound for {batch.num_columns}"
        )
    if batch.num_rows != 1:
        raise QueryError(
            f"bind one row of parameter values; got {batch.num_rows} rows "
            "(one query runs per request)"
        )
    values = [column[0].as_py() for column in batch.columns]
    if names[0].isdigit():
        if len(values) != len(names):
            raise QueryError(
                f"the query has {len(names)} parameter(s); {len(values)} values were bound"
            )
        return values
    fields = batch.schema.names
    missing = [name for name in names if name not in fields]
    if missing:
        raise QueryError(
            f"no value bound for the parameter(s) {', '.join('$' + m for m in missing)}: "
            "bind named parameters as fields of those names"
        )
    return {name: values[fields.index(name)] for name in names}


def parameter_schema(statement: Statement) -> pa.Schema:
    """The parameters, by name; their types are known only once values are bound (null)."""
    return pa.schema([pa.field(name, pa.null()) for name in statement.parameters])


# -- whole queries ---------------------------------------------------------------------


def describe(
    sandbox: Sandbox,
    sql: str,
    *,
    stores: Stores,
    default_backend: str,
    authorize: Authorize,
    params: pa.RecordBatch | None = None,
) -> tuple[Statement, pa.Schema | None]:
    """Check and bind ``sql``: its statement, and its result's schema (None while it has
    parameters without values). Closes the sandbox."""
    try:
        sandbox.open()
        statement = check_statement(sandbox, sql, default_backend)
        open_tables(sandbox, statement.refs, stores=stores, authorize=authorize, scanning=False)
        sandbox.lock()
        if statement.parameters and params is None:
            return statement, None
        return statement, sandbox.result_schema(sql, parameter_values(statement, params))
    finally:
        sandbox.close()


def run(
    sandbox: Sandbox,
    sql: str,
    *,
    stores: Stores,
    default_backend: str,
    authorize: Authorize,
    params: pa.RecordBatch | None = None,
) -> QueryReader:
    """Check and start ``sql``; its rows stream from the reader, which closes the sandbox."""
    try:
        sandbox.open()
        statement = check_statement(sandbox, sql, default_backend)
        values = parameter_values(statement, params)
        open_tables(sandbox, statement.refs, stores=stores, authorize=authorize, scanning=True)
        sandbox.lock()
        return sandbox.execute(sql, values)
    except BaseException:
        sandbox.close()
        raise
