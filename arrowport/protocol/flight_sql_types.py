"""Column types for Flight SQL metadata: DuckDB's names for Arrow types, the
``ARROW:FLIGHT:SQL:*`` field metadata of ``CommandGetTables``' schemas, and
``CommandGetXdbcTypeInfo``'s rows.

Pure: Arrow types in, names and tables out.

Invariants:

* ``duckdb_type_name`` names an Arrow type as DuckDB names it when it scans
  Arrow data (``DESCRIBE SELECT * FROM arrow_table``): what a query shows for
  the column, whichever backend stores it. A type DuckDB does not scan gets
  its Arrow name.
* ``with_column_metadata`` only adds metadata; names, types and nullability
  of the schema are unchanged.
* ``xdbc_type_info`` rows are ordered by ``data_type``, then ``type_name``.
"""

from __future__ import annotations

import re

import pyarrow as pa

from .flight_sql_info import XDBC_TYPE_INFO_SCHEMA

_SIMPLE = {
    pa.null(): "INTEGER",  # as DuckDB types an all-null Arrow column
    pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.string_view(): "VARCHAR",
    pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
    pa.binary_view(): "BLOB",
    pa.date32(): "DATE",
    pa.date64(): "DATE",
    pa.time32("s"): "TIME",
    pa.time32("ms"): "TIME",
    pa.time64("us"): "TIME",
    pa.time64("ns"): "TIME_NS",
    pa.month_day_nano_interval(): "INTERVAL",
}
_TIMESTAMPS = {"s": "TIMESTAMP_S", "ms": "TIMESTAMP_MS", "us": "TIMESTAMP", "ns": "TIMESTAMP_NS"}
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def duckdb_type_name(kind: pa.DataType, keywords: frozenset[str] = frozenset()) -> str:
    """DuckDB's name for ``kind`` (``keywords``, lower case: struct field names to quote)."""
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return simple
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP WITH TIME ZONE" if kind.tz is not None else _TIMESTAMPS[kind.unit]
    if pa.types.is_decimal(kind) and kind.precision <= 38:
        return f"DECIMAL({kind.precision},{kind.scale})"
    if pa.types.is_duration(kind):
        return "INTERVAL"
    if pa.types.is_fixed_size_binary(kind):
        return "BLOB"
    if isinstance(kind, pa.BaseExtensionType):
        named = {"arrow.uuid": "UUID", "arrow.json": "JSON"}.get(kind.extension_name)
        if named is not None:
            return named
        return duckdb_type_name(kind.storage_type, keywords)
    if pa.types.is_fixed_size_list(kind):
        return f"{duckdb_type_name(kind.value_type, keywords)}[{kind.list_size}]"
    if _is_list(kind):
        return f"{duckdb_type_name(kind.value_type, keywords)}[]"
    if pa.types.is_map(kind):
        key = duckdb_type_name(kind.key_type, keywords)
        return f"MAP({key}, {duckdb_type_name(kind.item_type, keywords)})"
    if pa.types.is_struct(kind):
        fields = (
            f"{_identifier(f.name, keywords)} {duckdb_type_name(f.type, keywords)}" for f in kind
        )
        return f"STRUCT({', '.join(fields)})"
    if pa.types.is_dictionary(kind):
        return duckdb_type_name(kind.value_type, keywords)
    if pa.types.is_run_end_encoded(kind):
        return duckdb_type_name(kind.value_type, keywords)
    return str(kind)


def _is_list(kind: pa.DataType) -> bool:
    types = pa.types
    return bool(
        types.is_list(kind)
        or types.is_large_list(kind)
        or types.is_list_view(kind)
        or types.is_large_list_view(kind)
    )


def _identifier(name: str, keywords: frozenset[str]) -> str:
    if _PLAIN_NAME.match(name) and name.lower() not in keywords:
        return name
    return '"' + name.replace('"', '""') + '"'


SQL_METADATA_PREFIX = "ARROW:FLIGHT:SQL:"


def column_metadata(
    field: pa.Field, catalog: str, db_schema: str, table: str, keywords: frozenset[str]
) -> dict[bytes, bytes]:
    """The ``ARROW:FLIGHT:SQL:*`` metadata of one column of ``catalog.db_schema.table``.

    The schema name goes under both ``SCHEMA_NAME`` (what the C++, Go and Java
    clients read) and ``DB_SCHEMA_NAME`` (what FlightSql.proto lists).
    """
    kind = field.type
    values = {
        "CATALOG_NAME": catalog,
        "SCHEMA_NAME": db_schema,
        "DB_SCHEMA_NAME": db_schema,
        "TABLE_NAME": table,
        "TYPE_NAME": duckdb_type_name(kind, keywords),
        "IS_AUTO_INCREMENT": "0",
        "IS_CASE_SENSITIVE": "1" if _is_text(kind) else "0",
    }
    if pa.types.is_decimal(kind):
        values["PRECISION"] = str(kind.precision)
        values["SCALE"] = str(kind.scale)
    return {(SQL_METADATA_PREFIX + key).encode(): value.encode() for key, value in values.items()}


def with_column_metadata(
    schema: pa.Schema,
    catalog: str,
    db_schema: str,
    table: str,
    keywords: frozenset[str] = frozenset(),
) -> pa.Schema:
    """``schema`` with each top-level field's ``ARROW:FLIGHT:SQL:*`` metadata added."""
    fields = []
    for field in schema:
        metadata = dict(field.metadata or {})
        metadata.update(column_metadata(field, catalog, db_schema, table, keywords))
        fields.append(field.with_metadata(metadata))
    return pa.schema(fields, metadata=schema.metadata)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind) or pa.types.is_run_end_encoded(kind):
        kind = kind.value_type
    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


# -- CommandGetXdbcTypeInfo -------------------------------------------------------------------

# XdbcDataType values (FlightSql.proto)
_XDBC = {
    "BIT": -7,
    "TINYINT": -6,
    "BIGINT": -5,
    "VARBINARY": -3,
    "DECIMAL": 3,
    "INTEGER": 4,
    "SMALLINT": 5,
    "REAL": 7,
    "DOUBLE": 8,
    "DATETIME": 9,
    "INTERVAL": 10,
    "VARCHAR": 12,
    "DATE": 91,
    "TIME": 92,
    "TIMESTAMP": 93,
}
_NULLABLE = 1  # Nullable.NULLABILITY_NULLABLE
_SEARCHABLE_FULL, _SEARCHABLE_BASIC = 3, 2

# (DuckDB type, XDBC type, column size, literal prefix/suffix, create params, unsigned,
#  min/max scale, datetime subcode, radix)
_TYPES: list[tuple[str, str, int | None, str | None, list[str] | None, bool | None]] = [
    ("BOOLEAN", "BIT", 1, None, None, None),
    ("TINYINT", "TINYINT", 3, None, None, False),
    ("UTINYINT", "TINYINT", 3, None, None, True),
    ("BIGINT", "BIGINT", 19, None, None, False),
    ("UBIGINT", "BIGINT", 20, None, None, True),
    ("BLOB", "VARBINARY", None, "'", None, None),
    ("DECIMAL", "DECIMAL", 38, None, ["precision", "scale"], False),
    ("INTEGER", "INTEGER", 10, None, None, False),
    ("UINTEGER", "INTEGER", 10, None, None, True),
    ("SMALLINT", "SMALLINT", 5, None, None, False),
    ("USMALLINT", "SMALLINT", 5, None, None, True),
    ("FLOAT", "REAL", 24, None, None, False),
    ("DOUBLE", "DOUBLE", 53, None, None, False),
    ("INTERVAL", "INTERVAL", None, "INTERVAL '", None, None),
    ("VARCHAR", "VARCHAR", None, "'", None, None),
    ("DATE", "DATE", 10, "DATE '", None, None),
    ("TIME", "TIME", 15, "TIME '", None, None),
    ("TIMESTAMP", "TIMESTAMP", 26, "TIMESTAMP '", None, None),
    ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP", 32, "TIMESTAMPTZ '", None, None),
]
# XdbcDatetimeSubcode for the datetime types (their sql_data_type is DATETIME)
_SUBCODES = {"DATE": 1, "TIME": 2, "TIMESTAMP": 3, "TIMESTAMP WITH TIME ZONE": 5}


def xdbc_type_info(data_type: int | None = None) -> pa.Table:
    """The ``CommandGetXdbcTypeInfo`` result: the SQL types Arrowport's tables hold in
    DuckDB (of XDBC type ``data_type`` only, if given)."""
    rows = []
    for name, xdbc, size, prefix, params, unsigned in _TYPES:
        code = _XDBC[xdbc]
        if data_type is not None and code != data_type:
            continue
        subcode = _SUBCODES.get(name)
        numeric = unsigned is not None
        exact = numeric and xdbc not in ("REAL", "DOUBLE")
        rows.append(
            {
                "type_name": name,
                "data_type": code,
                "column_size": size,
                "literal_prefix": prefix,
                "literal_suffix": "'" if prefix else None,
                "create_params": params,
                "nullable": _NULLABLE,
                "case_sensitive": xdbc == "VARCHAR",
                "searchable": _SEARCHABLE_FULL if xdbc == "VARCHAR" else _SEARCHABLE_BASIC,
                "unsigned_attribute": unsigned,
                "fixed_prec_scale": False,
                "auto_increment": False if numeric else None,
                "local_type_name": name,
                "minimum_scale": 0 if xdbc == "DECIMAL" else None,
                "maximum_scale": 38 if xdbc == "DECIMAL" else None,
                "sql_data_type": _XDBC["DATETIME"] if subcode else code,
                "datetime_subcode": subcode,
                "num_prec_radix": (10 if exact else 2) if numeric else None,
                "interval_precision": None,
            }
        )
    rows.sort(key=lambda row: (row["data_type"], row["type_name"]))
    return pa.Table.from_pylist(rows, schema=XDBC_TYPE_INFO_SCHEMA)
