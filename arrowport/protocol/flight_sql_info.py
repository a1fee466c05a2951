"""Flight SQL metadata results: their Arrow schemas, the SqlInfo table, LIKE patterns.

Pure: Arrow values in, Arrow tables out; no I/O, no storage (the facts that
need a DuckDB or the config are the caller's arguments).

Invariants:

* Every schema is exactly the one the reference servers declare
  (``arrow/flight/sql/server.cc``, which the ADBC Go driver's ``schema_ref``
  repeats and compares with ``Schema.Equal``: names, types and nullability).
  Where ``FlightSql.proto``'s comment and the implementations differ, the
  implementations win: ``CommandGetPrimaryKeys`` has ``key_sequence`` before
  ``key_name``.
* ``CommandGetSqlInfo``'s ``value`` is a dense union whose type codes are the
  child indexes 0-5 (clients index children by type code). An ``Int32``
  value goes in ``int32_bitmask`` (ordinals and bitmasks, as the spec says
  "int32"); a plain ``int`` in ``bigint_value``.
* An empty ``info`` list means every id this server knows, ascending; ids it
  does not know are left out, never an error; a repeated id is answered once.
* Filter patterns are SQL LIKE: ``%`` any run, ``_`` one character, ``\\``
  escapes the next character (SqlInfo 513 says so). Names compare ignoring
  case, as DuckDB resolves identifiers and as Arrowport names tables.
  Matching is a two-pointer wildcard match: O(len(name) * len(pattern)) at
  worst, and a pattern that needs more characters than the name has is
  refused at once, so no pattern makes it slow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

# -- result schemas --------------------------------------------------------------------

_UTF8 = pa.string()


def _f(name: str, kind: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable)


CATALOGS_SCHEMA = pa.schema([_f("catalog_name", _UTF8, False)])
DB_SCHEMAS_SCHEMA = pa.schema([_f("catalog_name", _UTF8), _f("db_schema_name", _UTF8, False)])
TABLES_SCHEMA = pa.schema(
    [
        _f("catalog_name", _UTF8),
        _f("db_schema_name", _UTF8),
        _f("table_name", _UTF8, False),
        _f("table_type", _UTF8, False),
    ]
)
TABLES_WITH_SCHEMA_SCHEMA = TABLES_SCHEMA.append(_f("table_schema", pa.binary(), False))
TABLE_TYPES_SCHEMA = pa.schema([_f("table_type", _UTF8, False)])
PRIMARY_KEYS_SCHEMA = pa.schema(
    [
        _f("catalog_name", _UTF8),
        _f("db_schema_name", _UTF8),
        _f("table_name", _UTF8, False),
        _f("column_name", _UTF8, False),
        _f("key_sequence", pa.int32(), False),
        _f("key_name", _UTF8),
    ]
)
# CommandGetExportedKeys, CommandGetImportedKeys and CommandGetCrossReference
KEYS_SCHEMA = pa.schema(
    [
        _f("pk_catalog_name", _UTF8),
        _f("pk_db_schema_name", _UTF8),
        _f("pk_table_name", _UTF8, False),
        _f("pk_column_name", _UTF8, False),
        _f("fk_catalog_name", _UTF8),
        _f("fk_db_schema_name", _UTF8),
        _f("fk_table_name", _UTF8, False),
        _f("fk_column_name", _UTF8, False),
        _f("key_sequence", pa.int32(), False),
        _f("fk_key_name", _UTF8),
        _f("pk_key_name", _UTF8),
        _f("update_rule", pa.uint8(), False),
        _f("delete_rule", pa.uint8(), False),
    ]
)
SQL_INFO_VALUE = pa.dense_union(
    [
        _f("string_value", _UTF8, False),
        _f("bool_value", pa.bool_(), False),
        _f("bigint_value", pa.int64(), False),
        _f("int32_bitmask", pa.int32(), False),
        _f("string_list", pa.list_(_UTF8), False),
        _f("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), False),
    ]
)
SQL_INFO_SCHEMA = pa.schema(
    [_f("info_name", pa.uint32(), False), _f("value", SQL_INFO_VALUE, False)]
)
XDBC_TYPE_INFO_SCHEMA = pa.schema(
    [
        _f("type_name", _UTF8, False),
        _f("data_type", pa.int32(), False),
        _f("column_size", pa.int32()),
        _f("literal_prefix", _UTF8),
        _f("literal_suffix", _UTF8),
        _f("create_params", pa.list_(_f("item", _UTF8, False))),
        _f("nullable", pa.int32(), False),
        _f("case_sensitive", pa.bool_(), False),
        _f("searchable", pa.int32(), False),
        _f("unsigned_attribute", pa.bool_()),
        _f("fixed_prec_scale", pa.bool_(), False),
        _f("auto_increment", pa.bool_()),
        _f("local_type_name", _UTF8),
        _f("minimum_scale", pa.int32()),
        _f("maximum_scale", pa.int32()),
        _f("sql_data_type", pa.int32(), False),
        _f("datetime_subcode", pa.int32()),
        _f("num_prec_radix", pa.int32()),
        _f("interval_precision", pa.int32()),
    ]
)

# -- SqlInfo ---------------------------------------------------------------------------------


class Int32(int):
    """A SqlInfo value the spec types int32 (ordinals, bitmasks): ``int32_bitmask``."""

    __slots__ = ()


SqlInfoValue = str | bool | int | list[str] | dict[int, list[int]]

# FlightSql.proto's SqlInfo ids (the ones served; see ``server_info`` and ``DIALECT``)
SERVER_NAME = 0
SERVER_VERSION = 1
SERVER_ARROW_VERSION = 2
SERVER_READ_ONLY = 3
SERVER_SQL = 4
SERVER_SUBSTRAIT = 5
SERVER_TRANSACTION = 8
SERVER_CANCEL = 9
SERVER_BULK_INGESTION = 10
SERVER_INGEST_TRANSACTIONS_SUPPORTED = 11
SERVER_STATEMENT_TIMEOUT = 100
SERVER_TRANSACTION_TIMEOUT = 101
SQL_ALL_TABLES_ARE_SELECTABLE = 506
SQL_KEYWORDS = 508
SQL_NUMERIC_FUNCTIONS = 509
SQL_STRING_FUNCTIONS = 510
SQL_SYSTEM_FUNCTIONS = 511
SQL_DATETIME_FUNCTIONS = 512
SQL_SEARCH_STRING_ESCAPE = 513
SQL_SUPPORTS_CONVERT = 517
SQL_MAX_TABLE_NAME_LENGTH = 559

SQL_SUPPORTED_TRANSACTION_NONE = 0
LIKE_ESCAPE = "\\"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerFacts:
    """What ``server_info`` reports about this server (the caller's config and versions)."""

    version: str
    arrow_version: str
    sql: bool  # queries are served (``flight_sql.queries``)
    statement_timeout_ms: int = 0  # prepared statement handles' timeout; 0: none


@dataclass(frozen=True, slots=True, kw_only=True)
class DialectFacts:
    """What the caller's DuckDB says about its SQL (``duckdb_keywords()`` and so on)."""

    keywords: list[str]  # SQL_KEYWORDS (508)
    functions: dict[int, list[str]]  # SQL_*_FUNCTIONS (509-512)
    converts: dict[int, list[int]]  # SQL_SUPPORTS_CONVERT (517): from -> [to]
    max_table_name_length: int  # SQL_MAX_TABLE_NAME_LENGTH (559): Arrowport's name limit


def all_info(server: ServerFacts, dialect: DialectFacts) -> dict[int, SqlInfoValue]:
    """Every SqlInfo id this server answers, with its value."""
    return {
        **server_info(server),
        **DIALECT,
        SQL_KEYWORDS: dialect.keywords,
        **dialect.functions,
        SQL_SUPPORTS_CONVERT: dialect.converts,
        SQL_MAX_TABLE_NAME_LENGTH: dialect.max_table_name_length,
    }


def server_info(facts: ServerFacts) -> dict[int, SqlInfoValue]:
    """SqlInfo ids 0-101: the server. Substrait's min/max versions (6, 7) are null
    when Substrait is not served, so they are left out."""
    return {
        SERVER_NAME: "Arrowport",
        SERVER_VERSION: facts.version,
        SERVER_ARROW_VERSION: facts.arrow_version,
        SERVER_READ_ONLY: False,  # it ingests
        SERVER_SQL: facts.sql,
        SERVER_SUBSTRAIT: False,
        SERVER_TRANSACTION: Int32(SQL_SUPPORTED_TRANSACTION_NONE),  # no BeginTransaction
        SERVER_CANCEL: False,
        SERVER_BULK_INGESTION: True,
        SERVER_INGEST_TRANSACTIONS_SUPPORTED: False,  # each ingest is its own transaction
        SERVER_STATEMENT_TIMEOUT: Int32(facts.statement_timeout_ms),
        SERVER_TRANSACTION_TIMEOUT: Int32(0),
        SQL_ALL_TABLES_ARE_SELECTABLE: facts.sql,
    }


# SqlInfo 500-576 for DuckDB's SQL as this server serves it: read-only (no DDL, DML or
# transactions), autocommit, one forward-only result per statement. Enum values are
# FlightSql.proto's; bitmasks set bit n for enum value n.
DIALECT: dict[int, SqlInfoValue] = {
    500: False,  # SQL_DDL_CATALOG
    501: False,  # SQL_DDL_SCHEMA
    502: False,  # SQL_DDL_TABLE
    503: Int32(1),  # SQL_IDENTIFIER_CASE: case-insensitive (DuckDB keeps case, matches without)
    504: '"',  # SQL_IDENTIFIER_QUOTE_CHAR
    505: Int32(1),  # SQL_QUOTED_IDENTIFIER_CASE: quoted ones too are matched ignoring case
    507: Int32(3),  # SQL_NULL_ORDERING: SQL_NULLS_SORTED_AT_END (default_null_order NULLS_LAST)
    513: LIKE_ESCAPE,  # SQL_SEARCH_STRING_ESCAPE (for the metadata filter patterns)
    514: "$",  # SQL_EXTRA_NAME_CHARACTERS (and any non-ASCII letter)
    515: True,  # SQL_SUPPORTS_COLUMN_ALIASING
    516: True,  # SQL_NULL_PLUS_NULL_IS_NULL: 'a' || NULL is NULL
    518: True,  # SQL_SUPPORTS_TABLE_CORRELATION_NAMES
    519: False,  # SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES: not restricted (t AS t works)
    520: True,  # SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY
    521: True,  # SQL_SUPPORTS_ORDER_BY_UNRELATED
    522: Int32(0b11),  # SQL_SUPPORTED_GROUP_BY: UNRELATED, BEYOND_SELECT
    523: True,  # SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE
    524: True,  # SQL_SUPPORTS_NON_NULLABLE_COLUMNS
    525: Int32(0b011),  # SQL_SUPPORTED_GRAMMAR: MINIMUM, CORE (no positioned updates: not EXTENDED)
    526: Int32(0b011),  # SQL_ANSI92_SUPPORTED_LEVEL: ENTRY, INTERMEDIATE
    527: False,  # SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY: no constraints can be declared
    528: Int32(2),  # SQL_OUTER_JOINS_SUPPORT_LEVEL: SQL_FULL_OUTER_JOINS
    529: "schema",  # SQL_SCHEMA_TERM
    530: "",  # SQL_PROCEDURE_TERM: DuckDB has no stored procedures
    531: "catalog",  # SQL_CATALOG_TERM (a catalog is a backend: duckdb, ducklake, delta)
    532: True,  # SQL_CATALOG_AT_START: catalog.schema.table
    533: Int32(0),  # SQL_SCHEMAS_SUPPORTED_ACTIONS: no procedures, index or privilege DDL
    534: Int32(0),  # SQL_CATALOGS_SUPPORTED_ACTIONS
    535: Int32(0),  # SQL_SUPPORTED_POSITIONED_COMMANDS
    536: False,  # SQL_SELECT_FOR_UPDATE_SUPPORTED
    537: False,  # SQL_STORED_PROCEDURES_SUPPORTED
    538: Int32(0b1111),  # SQL_SUPPORTED_SUBQUERIES: comparisons, EXISTS, IN, quantified
    539: True,  # SQL_CORRELATED_SUBQUERIES_SUPPORTED
    540: Int32(0b11),  # SQL_SUPPORTED_UNIONS: UNION, UNION ALL
    # SQL_MAX_*: DuckDB sets no such limits (0: none or unknown); table names are
    # Arrowport's (SQL_MAX_TABLE_NAME_LENGTH, from the caller)
    **dict.fromkeys(range(541, 559), 0),
    560: 0,  # SQL_MAX_TABLES_IN_SELECT
    561: 0,  # SQL_MAX_USERNAME_LENGTH
    562: Int32(0),  # SQL_DEFAULT_TRANSACTION_ISOLATION: NONE (autocommit, no transactions)
    563: False,  # SQL_TRANSACTIONS_SUPPORTED
    564: Int32(0),  # SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS
    565: False,  # SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT
    566: False,  # SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED
    567: Int32(0b10),  # SQL_SUPPORTED_RESULT_SET_TYPES: FORWARD_ONLY
    568: Int32(0),  # SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED
    569: Int32(0b10),  # ..._FORWARD_ONLY: READ_ONLY
    570: Int32(0),  # ..._SCROLL_SENSITIVE
    571: Int32(0),  # ..._SCROLL_INSENSITIVE
    572: False,  # SQL_BATCH_UPDATES_SUPPORTED
    573: False,  # SQL_SAVEPOINTS_SUPPORTED
    574: False,  # SQL_NAMED_PARAMETERS_SUPPORTED
    575: False,  # SQL_LOCATORS_UPDATE_COPY
    576: False,  # SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED
}

# FlightSql.proto's SqlSupportsConvert as DuckDB types, each with a value to cast
# (for SQL_SUPPORTS_CONVERT, 517: the caller asks its DuckDB which casts exist)
CONVERT_TYPES: dict[int, tuple[str, str]] = {
    0: ("BIGINT", "1::BIGINT"),
    1: ("BLOB", "'\\x01'::BLOB"),  # BINARY
    2: ("BOOLEAN", "true"),  # BIT
    3: ("VARCHAR", "'1'"),  # CHAR
    4: ("DATE", "DATE '2020-01-02'"),
    5: ("DECIMAL(18,3)", "1.5::DECIMAL(18,3)"),
    6: ("DOUBLE", "1.5::DOUBLE"),  # FLOAT (ODBC's FLOAT is double precision)
    7: ("INTEGER", "1::INTEGER"),
    8: ("INTERVAL", "INTERVAL 1 DAY"),  # INTERVAL_DAY_TIME
    9: ("INTERVAL", "INTERVAL 1 MONTH"),  # INTERVAL_YEAR_MONTH
    10: ("BLOB", "'\\x01'::BLOB"),  # LONGVARBINARY
    11: ("VARCHAR", "'1'"),  # LONGVARCHAR
    12: ("DECIMAL(18,3)", "1.5::DECIMAL(18,3)"),  # NUMERIC
    13: ("FLOAT", "1.5::FLOAT"),  # REAL
    14: ("SMALLINT", "1::SMALLINT"),
    15: ("TIME", "TIME '12:00:00'"),
    16: ("TIMESTAMP", "TIMESTAMP '2020-01-02 12:00:00'"),
    17: ("TINYINT", "1::TINYINT"),
    18: ("BLOB", "'\\x01'::BLOB"),  # VARBINARY
    19: ("VARCHAR", "'1'"),
}

# Candidates for SQL_*_FUNCTIONS (509-512): ODBC/JDBC's function names, of which the
# caller reports those its DuckDB has (``duckdb_functions()``).
FUNCTION_CANDIDATES: dict[int, str] = {  # space-separated names
    SQL_NUMERIC_FUNCTIONS: (
        "abs acos asin atan atan2 cbrt ceil ceiling cos cot degrees exp floor ln log log10 "
        "log2 mod pi pow power radians random round sign sin sqrt tan trunc"
    ),
    SQL_STRING_FUNCTIONS: (
        "ascii chr concat concat_ws contains left length lower lpad ltrim position repeat "
        "replace reverse right rpad rtrim split_part starts_with strpos substr substring trim "
        "upper"
    ),
    SQL_SYSTEM_FUNCTIONS: (
        "coalesce current_database current_schema current_user ifnull nullif typeof version"
    ),
    SQL_DATETIME_FUNCTIONS: (
        "age current_date current_time current_timestamp date_add date_diff date_part "
        "date_sub date_trunc datediff datepart day dayname dayofmonth dayofweek dayofyear "
        "epoch extract hour last_day make_date make_time make_timestamp minute month "
        "monthname now quarter second strftime strptime time_bucket to_timestamp week year"
    ),
}


def sql_info_table(values: Mapping[int, SqlInfoValue], info: Sequence[int]) -> pa.Table:
    """The ``CommandGetSqlInfo`` result: one row per id of ``info`` that ``values`` knows
    (every known id, ascending, when ``info`` is empty)."""
    ids: Iterable[int] = sorted(values) if not info else dict.fromkeys(info)
    names: list[int] = []
    codes: list[int] = []
    offsets: list[int] = []
    children: list[list[object]] = [[] for _ in range(6)]
    for info_id in ids:
        if info_id not in values:
            continue
        code, value = _union_member(values[info_id])
        names.append(info_id)
        codes.append(code)
        offsets.append(len(children[code]))
        children[code].append(value)
    arrays = [
        pa.array(child, field.type) for child, field in zip(children, SQL_INFO_VALUE, strict=True)
    ]
    union = pa.Array.from_buffers(
        SQL_INFO_VALUE,
        len(names),
        [None, pa.py_buffer(bytes(codes)), pa.array(offsets, pa.int32()).buffers()[1]],
        children=arrays,
    )
    return pa.Table.from_arrays([pa.array(names, pa.uint32()), union], schema=SQL_INFO_SCHEMA)


def _union_member(value: SqlInfoValue) -> tuple[int, object]:
    """The union child (type code) that holds ``value``, and the value as that child takes it."""
    if isinstance(value, str):
        return 0, value
    if isinstance(value, bool):
        return 1, value
    if isinstance(value, Int32):
        return 3, int(value)
    if isinstance(value, int):
        return 2, value
    if isinstance(value, list):
        return 4, value
    return 5, list(value.items())


# -- LIKE patterns ------------------------------------------------------------------------------

_ANY, _ONE = object(), object()  # the % and _ tokens; other tokens are characters


def like_tokens(pattern: str) -> list[object]:
    """``pattern`` as tokens: ``%`` runs collapsed, escapes resolved, characters lower-cased."""
    tokens: list[object] = []
    chars = iter(pattern)
    for c in chars:
        if c == LIKE_ESCAPE:
            tokens.extend(next(chars, LIKE_ESCAPE).lower())  # a trailing escape is itself
        elif c == "%":
            if not tokens or tokens[-1] is not _ANY:
                tokens.append(_ANY)
        elif c == "_":
            tokens.append(_ONE)
        else:
            tokens.extend(c.lower())  # (a few characters lower-case to two)
    return tokens


def like(pattern: str | None, name: str) -> bool:
    """Whether ``name`` matches the LIKE ``pattern`` (ignoring case); ``None`` matches all."""
    if pattern is None:
        return True
    tokens = like_tokens(pattern)
    text = name.lower()
    if sum(token is not _ANY for token in tokens) > len(text):
        return False
    t = p = 0
    star, mark = -1, 0  # the last % seen, and where in the text it was tried from
    while t < len(text):
        if p < len(tokens) and (tokens[p] is _ONE or tokens[p] == text[t]):
            t += 1
            p += 1
        elif p < len(tokens) and tokens[p] is _ANY:
            star, mark = p, t
            p += 1
        elif star >= 0:
            mark += 1
            t, p = mark, star + 1
        else:
            return False
    return all(token is _ANY for token in tokens[p:])
