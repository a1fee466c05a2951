"""Read-only SQL over the stores: what a query may be, what it names, its parameters.

Invariants:

* A query is one statement of DuckDB's SELECT kind (``SELECT``, ``WITH …
  SELECT``, ``VALUES``, ``FROM t``, ``DESCRIBE``/``SHOW``/``SUMMARIZE``, a
  table-valued ``PRAGMA``) or an ``EXPLAIN`` of one. DuckDB's own parser reads
  its kind, in the sandbox, before anything runs; anything else is refused,
  naming its kind, with nothing run.
* The tables a query names are found in DuckDB's parse tree (not bound: a
  CTE in scope is no table; a name inside a string, as in ``query('…')``, is
  none either, and the sandbox has no such table) and resolved as catalog
  names: ``t`` and
  ``main.t`` are the default backend's; ``<backend>.t`` and
  ``<backend>.main.t`` that backend's (``duckdb``, ``ducklake``, ``delta``).
  The server authorizes each before its store is asked about it
  (``sql_process``); the sandbox sees those tables and nothing else.
* Parameters (``?``, ``$1``, ``$name``) take their values from one row of an
  Arrow batch: by position, or by field name for named ones.
* All of this runs in the query's own process (``sql_worker``), on its
  sandbox's connection; the server only authorizes and looks up the tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .sql_sandbox import QueryError, Sandbox

BACKENDS = ("duckdb", "ducklake", "delta")
DEFAULT_CATALOG = "memory"  # the sandbox's own: where the default backend's tables go
ALLOWED = ("SELECT", "EXPLAIN")
_EXPLAIN = re.compile(
    r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?",
    re.IGNORECASE | re.DOTALL,
)


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
