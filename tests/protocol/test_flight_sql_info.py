"""Flight SQL metadata results (``protocol/flight_sql_info.py``, ``flight_sql_types.py``).

Pure values: schemas as FlightSql.proto and the reference servers declare them,
the SqlInfo dense union through IPC bytes, LIKE patterns, DuckDB type names.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from arrowport.protocol import flight_sql_info as info
from arrowport.protocol.flight_sql_info import Int32, like
from arrowport.protocol.flight_sql_types import (
    duckdb_type_name,
    with_column_metadata,
    xdbc_type_info,
)


def _ipc_round_trip(table: pa.Table) -> pa.Table:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


def _layout(schema: pa.Schema) -> list[tuple[str, str, bool]]:
    return [(f.name, str(f.type), f.nullable) for f in schema]


# -- schemas -----------------------------------------------------------------------------------


def test_listing_schemas_are_the_specs() -> None:
    """Catalogs, schemas, tables and table types: names, types and nullability as specified."""
    assert _layout(info.CATALOGS_SCHEMA) == [("catalog_name", "string", False)]
    assert _layout(info.DB_SCHEMAS_SCHEMA) == [
        ("catalog_name", "string", True),
        ("db_schema_name", "string", False),
    ]
    tables = [
        ("catalog_name", "string", True),
        ("db_schema_name", "string", True),
        ("table_name", "string", False),
        ("table_type", "string", False),
    ]
    assert _layout(info.TABLES_SCHEMA) == tables
    assert _layout(info.TABLES_WITH_SCHEMA_SCHEMA) == [*tables, ("table_schema", "binary", False)]
    assert _layout(info.TABLE_TYPES_SCHEMA) == [("table_type", "string", False)]


def test_key_schemas_are_the_reference_servers() -> None:
    """Primary keys put key_sequence before key_name (as C++, Go, Java do); the three
    foreign-key commands share one 13-column schema with uint8 rules."""
    assert _layout(info.PRIMARY_KEYS_SCHEMA) == [
        ("catalog_name", "string", True),
        ("db_schema_name", "string", True),
        ("table_name", "string", False),
        ("column_name", "string", False),
        ("key_sequence", "int32", False),
        ("key_name", "string", True),
    ]
    assert info.KEYS_SCHEMA.names == [
        "pk_catalog_name",
        "pk_db_schema_name",
        "pk_table_name",
        "pk_column_name",
        "fk_catalog_name",
        "fk_db_schema_name",
        "fk_table_name",
        "fk_column_name",
        "key_sequence",
        "fk_key_name",
        "pk_key_name",
        "update_rule",
        "delete_rule",
    ]
    assert [f.nullable for f in info.KEYS_SCHEMA] == [1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0]
    assert info.KEYS_SCHEMA.field("update_rule").type == pa.uint8()


def test_sql_info_schema_is_the_specs_dense_union() -> None:
    """info_name uint32 not null; value a dense union of six children, type codes 0-5."""
    assert _layout(info.SQL_INFO_SCHEMA)[0] == ("info_name", "uint32", False)
    value = info.SQL_INFO_SCHEMA.field("value")
    assert not value.nullable and value.type.mode == "dense"
    assert list(value.type.type_codes) == [0, 1, 2, 3, 4, 5]
    children = [(f.name, f.type, f.nullable) for f in value.type]
    assert children == [
        ("string_value", pa.string(), False),
        ("bool_value", pa.bool_(), False),
        ("bigint_value", pa.int64(), False),
        ("int32_bitmask", pa.int32(), False),
        ("string_list", pa.list_(pa.string()), False),
        ("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), False),
    ]


def test_xdbc_type_info_schema_and_rows() -> None:
    """19 columns as specified; rows ordered by data_type, type_name; a filter keeps one type."""
    schema = info.XDBC_TYPE_INFO_SCHEMA
    assert len(schema) == 19
    not_null = [f.name for f in schema if not f.nullable]
    assert not_null == [
        "type_name",
        "data_type",
        "nullable",
        "case_sensitive",
        "searchable",
        "fixed_prec_scale",
        "sql_data_type",
    ]
    assert schema.field("create_params").type == pa.list_(pa.field("item", pa.string(), False))
    table = xdbc_type_info()
    table.validate(full=True)
    assert table.schema == schema
    keys = list(zip(table["data_type"].to_pylist(), table["type_name"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert {"BIGINT", "VARCHAR", "TIMESTAMP WITH TIME ZONE", "DECIMAL"} <= set(keys_names(table))
    timestamps = xdbc_type_info(93).to_pylist()
    assert [row["type_name"] for row in timestamps] == ["TIMESTAMP", "TIMESTAMP WITH TIME ZONE"]
    assert {(row["sql_data_type"], row["datetime_subcode"]) for row in timestamps} == {
        (9, 3),
        (9, 5),
    }
    assert xdbc_type_info(-4).num_rows == 0  # LONGVARBINARY: none


def keys_names(table: pa.Table) -> list[str]:
    return list(table["type_name"].to_pylist())


# -- SqlInfo ------------------------------------------------------------------------------------


VALUES: dict[int, info.SqlInfoValue] = {
    0: "Arrowport",
    3: False,
    8: Int32(0),
    504: '"',
    508: ["SELECT", "FROM"],
    517: {0: [0, 19], 4: []},
    541: 1 << 40,
}


def test_sql_info_values_go_to_their_union_children() -> None:
    """str, bool, Int32, int, list and dict land in children 0, 3... as the spec types them,
    and survive an IPC round trip."""
    table = _ipc_round_trip(info.sql_info_table(VALUES, []))
    assert table.schema == info.SQL_INFO_SCHEMA
    union = table.column("value").chunk(0)
    names = table["info_name"].to_pylist()
    codes = dict(zip(names, union.type_codes.to_pylist(), strict=True))
    assert union.offsets.to_pylist() == [0, 0, 0, 1, 0, 0, 0]  # each child's own positions
    assert codes == {0: 0, 3: 1, 8: 3, 504: 0, 508: 4, 517: 5, 541: 2}
    rows = {row["info_name"]: row["value"] for row in table.to_pylist()}
    assert rows == {
        0: "Arrowport",
        3: False,
        8: 0,
        504: '"',
        508: ["SELECT", "FROM"],
        517: [(0, [0, 19]), (4, [])],
        541: 1 << 40,
    }


def test_sql_info_requested_ids_in_order_unknown_left_out_once_each() -> None:
    """Asked ids come in the order asked, once each; unknown ids are left out; none asked: all."""
    table = info.sql_info_table(VALUES, [504, 9999, 0, 504, 8])
    table.validate(full=True)
    assert table["info_name"].to_pylist() == [504, 0, 8]
    assert table.to_pylist()[0]["value"] == '"'
    everything = info.sql_info_table(VALUES, [])
    assert everything["info_name"].to_pylist() == sorted(VALUES)
    nothing = info.sql_info_table(VALUES, [7])
    assert nothing.num_rows == 0 and nothing.schema == info.SQL_INFO_SCHEMA


def _facts(sql: bool = True) -> dict[int, info.SqlInfoValue]:
    return info.all_info(
        info.ServerFacts(version="9.9", arrow_version="26.0.1", sql=sql),
        info.DialectFacts(
            keywords=["SELECT"],
            functions={509: ["ABS"], 510: [], 511: [], 512: []},
            converts={0: [0, 19]},
            max_table_name_length=128,
        ),
    )


def test_server_answers_the_ids_adbc_and_sql_tools_ask_for() -> None:
    """Server ids 0-11 (but Substrait's versions), 100, 101, and every syntax id 500-576."""
    values = _facts()
    assert set(range(500, 577)) <= set(values)
    assert {0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 100, 101} <= set(values)
    assert not {6, 7} & set(values)  # null when Substrait is not served: left out
    assert (values[0], values[1], values[2]) == ("Arrowport", "9.9", "26.0.1")
    assert values[8] == 0 and isinstance(values[8], Int32)  # SQL_SUPPORTED_TRANSACTION_NONE
    assert (values[10], values[11], values[3], values[5], values[9]) == (
        True,
        False,
        False,
        False,
        False,
    )
    assert (values[500], values[501], values[502]) == (False, False, False)  # no DDL
    assert values[504] == '"' and values[513] == "\\"
    assert values[508] == ["SELECT"] and values[509] == ["ABS"] and values[559] == 128
    assert values[563] is False and values[562] == 0  # no transactions: isolation NONE
    assert (values[4], _facts(sql=False)[4]) == (True, False)
    table = info.sql_info_table(values, [])
    table.validate(full=True)
    assert table.num_rows == len(values)


def test_int32_ids_are_int32() -> None:
    """Ordinals and bitmasks (8, 100, 101, 503, 505, 507, 522, 525-528, 533-535, 538, 540,
    562, 564, 567-571) are int32_bitmask; the SQL_MAX_* lengths are bigint."""
    values = _facts()
    int32_ids = [8, 100, 101, 503, 505, 507, 522, 525, 526, 528, 533, 534, 535, 538, 540, 562]
    int32_ids += [564, 567, 568, 569, 570, 571]
    assert all(isinstance(values[i], Int32) for i in int32_ids)
    assert all(type(values[i]) is int for i in range(541, 562))


# -- LIKE ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        (None, "anything", True),
        ("%", "", True),
        ("%", "events", True),
        ("", "events", False),
        ("events", "events", True),
        ("EVENTS", "events", True),  # case is ignored, as DuckDB matches identifiers
        ("event", "events", False),
        ("ev%", "events", True),
        ("%ts", "events", True),
        ("%en%", "events", True),
        ("%x%", "events", False),
        ("e_ents", "events", True),
        ("e_nts", "events", False),
        ("______", "events", True),
        ("_______", "events", False),
        ("a_b", "axb", True),
        ("a\\_b", "axb", False),  # an escaped _ is itself
        ("a\\_b", "a_b", True),
        ("a\\%", "a%", True),
        ("a\\%", "ab", False),
        ("a\\\\b", "a\\b", True),
        ("ab\\", "ab\\", True),  # a trailing escape is itself
        ("%%%", "x", True),
        ("%a%b%", "xaxxbx", True),
        ("%b%a%", "xaxxbx", False),
    ],
)
def test_like_patterns(pattern: str | None, name: str, expected: bool) -> None:
    """% is any run, _ one character, \\ escapes; the whole name must match."""
    assert like(pattern, name) is expected


def test_like_is_fast_on_adversarial_patterns() -> None:
    """Patterns that make backtracking matchers exponential stay linear-ish here."""
    name = "a" * 128
    patterns = ["%a" * 60 + "%b", "%" + "_%" * 200 + "b", "a%" * 5000 + "b", "%" * 100_000]
    start = time.perf_counter()
    for pattern in patterns:
        for _ in range(20):
            like(pattern, name)
    assert time.perf_counter() - start < 2.0
    assert like("%" * 100_000, name) is True
    assert like("%a" * 60 + "%b", name) is False


# -- DuckDB type names and column metadata -------------------------------------------------------

# What DuckDB 1.5.5 names these Arrow types when it scans them (DESCRIBE of an Arrow table)
DUCKDB_NAMES = [
    (pa.bool_(), "BOOLEAN"),
    (pa.int8(), "TINYINT"),
    (pa.int64(), "BIGINT"),
    (pa.uint32(), "UINTEGER"),
    (pa.float32(), "FLOAT"),
    (pa.float64(), "DOUBLE"),
    (pa.decimal128(10, 2), "DECIMAL(10,2)"),
    (pa.decimal64(12, 3), "DECIMAL(12,3)"),
    (pa.string(), "VARCHAR"),
    (pa.large_string(), "VARCHAR"),
    (pa.string_view(), "VARCHAR"),
    (pa.binary(), "BLOB"),
    (pa.binary(4), "BLOB"),
    (pa.date32(), "DATE"),
    (pa.date64(), "DATE"),
    (pa.time32("ms"), "TIME"),
    (pa.time64("ns"), "TIME_NS"),
    (pa.timestamp("s"), "TIMESTAMP_S"),
    (pa.timestamp("ms"), "TIMESTAMP_MS"),
    (pa.timestamp("us"), "TIMESTAMP"),
    (pa.timestamp("ns"), "TIMESTAMP_NS"),
    (pa.timestamp("us", "UTC"), "TIMESTAMP WITH TIME ZONE"),
    (pa.timestamp("s", "Europe/Paris"), "TIMESTAMP WITH TIME ZONE"),
    (pa.duration("us"), "INTERVAL"),
    (pa.month_day_nano_interval(), "INTERVAL"),
    (pa.list_(pa.int32()), "INTEGER[]"),
    (pa.large_list(pa.string()), "VARCHAR[]"),
    (pa.list_(pa.int32(), 3), "INTEGER[3]"),
    (pa.list_(pa.list_(pa.int8())), "TINYINT[][]"),
    (
        pa.struct([("a", pa.int32()), ("b c", pa.string()), ("A", pa.int8())]),
        'STRUCT(a INTEGER, "b c" VARCHAR, A TINYINT)',
    ),
    (pa.map_(pa.string(), pa.int64()), "MAP(VARCHAR, BIGINT)"),
    (pa.dictionary(pa.int8(), pa.string()), "VARCHAR"),
    (pa.run_end_encoded(pa.int32(), pa.string()), "VARCHAR"),
    (pa.uuid(), "UUID"),
    (pa.null(), "INTEGER"),
]


@pytest.mark.parametrize(("kind", "name"), DUCKDB_NAMES, ids=[str(t) for t, _ in DUCKDB_NAMES])
def test_duckdb_type_names(kind: pa.DataType, name: str) -> None:
    """Arrow types are named as DuckDB names them when it scans Arrow data."""
    assert duckdb_type_name(kind) == name


def test_struct_field_names_that_are_keywords_are_quoted() -> None:
    """A struct field named like a keyword is quoted, as DuckDB prints it; quotes are doubled."""
    kind = pa.struct([("value", pa.int32()), ('a"b', pa.int32()), ("x", pa.int32())])
    assert (
        duckdb_type_name(kind, frozenset({"value"}))
        == 'STRUCT("value" INTEGER, "a""b" INTEGER, x INTEGER)'
    )


def test_column_metadata_is_added_and_the_schema_kept() -> None:
    """Each top-level field gets ARROW:FLIGHT:SQL:* metadata; names, types, nullability and
    existing metadata stay; decimals get precision and scale."""
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("name", pa.string(), metadata={"keep": "me"}),
            pa.field("price", pa.decimal128(9, 2)),
        ],
        metadata={"table": "level"},
    )
    marked = with_column_metadata(schema, "duckdb", "main", "orders")
    assert marked.equals(schema) and marked.metadata == schema.metadata
    assert _layout(marked) == _layout(schema)
    prefix = b"ARROW:FLIGHT:SQL:"
    first = marked.field("id").metadata
    assert first[prefix + b"CATALOG_NAME"] == b"duckdb"
    assert first[prefix + b"SCHEMA_NAME"] == first[prefix + b"DB_SCHEMA_NAME"] == b"main"
    assert first[prefix + b"TABLE_NAME"] == b"orders"
    assert first[prefix + b"TYPE_NAME"] == b"BIGINT"
    assert first[prefix + b"IS_AUTO_INCREMENT"] == b"0"
    assert first[prefix + b"IS_CASE_SENSITIVE"] == b"0"
    name = marked.field("name").metadata
    assert name[b"keep"] == b"me" and name[prefix + b"IS_CASE_SENSITIVE"] == b"1"
    price = marked.field("price").metadata
    assert (price[prefix + b"PRECISION"], price[prefix + b"SCALE"]) == (b"9", b"2")
    assert prefix + b"PRECISION" not in first
    again = pa.ipc.read_schema(pa.py_buffer(marked.serialize().to_pybytes()))
    assert again.field("price").metadata == price
