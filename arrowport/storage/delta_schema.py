"""Arrow and Delta schemas for the Delta backend: conversion, partition
columns, and the schema a write leaves (``strict`` or ``merge``)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from deltalake import Field, Schema

from ..config import DeltaOptions
from .errors import SchemaMismatchError, UnsupportedTypeError, first_line
from .schema import Column, check_subset

# Delta primitive type -> the DuckDB name the shared widening rules use
_DUCKDB_NAMES = {
    "byte": "TINYINT",
    "short": "SMALLINT",
    "integer": "INTEGER",
    "long": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
}


def delta_columns(schema: Schema) -> list[Column]:
    """The columns for the shared schema policy. A nested type is its whole Delta JSON
    (field names, element and value types): a struct, list or map must match exactly,
    or pyarrow's cast would fill renamed fields with nulls and drop unknown ones."""
    columns = []
    for f in schema.fields:
        kind = str(getattr(f.type, "type", f.type))
        if kind in ("struct", "array", "map"):
            name = f"{kind.upper()} {_nested_json(f.type)}"
        else:
            name = _DUCKDB_NAMES.get(kind, kind.upper())
        columns.append(Column(f.name, name, f.nullable))
    return columns


_NOT_COMPARED = frozenset({"metadata", "nullable", "containsNull", "valueContainsNull"})


def _nested_json(t: Any) -> str:
    """A nested Delta type as JSON without field metadata (which a write strips) and
    nullability (a stream may be stricter than its table; delta-rs checks the rest)."""

    def bare(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: bare(v) for k, v in node.items() if k not in _NOT_COMPARED}
        if isinstance(node, list):
            return [bare(v) for v in node]
        return node

    return json.dumps(bare(json.loads(t.to_json())), sort_keys=True)


def _microseconds(t: pa.DataType) -> pa.DataType:
    """``t`` with every timestamp in microseconds, the unit Delta stores.

    (delta-rs would make ``timestamp[ns]`` a ``timestampNanos`` table that
    deltalake itself cannot read, and refuses ``timestamp[s]``.) Values are
    cast safely later, so sub-microsecond precision is refused, not cut.
    """
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", t.tz)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = t.value_field
        inner = item.with_type(_microseconds(item.type))
        return pa.list_(inner) if pa.types.is_list(t) else pa.large_list(inner)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_microseconds(f.type)) for f in t])
    return t


def _bare_field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, _bare_type(f.type), f.nullable)


def _bare_type(t: pa.DataType) -> pa.DataType:
    """``t`` with no metadata on any nested field (see ``without_metadata``)."""
    if pa.types.is_struct(t):
        return pa.struct([_bare_field(f) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_bare_field(t.key_field), _bare_field(t.item_field), t.keys_sorted)
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_bare_field(t.value_field), t.list_size)
    for is_kind, make in (
        (pa.types.is_list, pa.list_),
        (pa.types.is_large_list, pa.large_list),
        (pa.types.is_list_view, pa.list_view),
        (pa.types.is_large_list_view, pa.large_list_view),
    ):
        if is_kind(t):
            return make(_bare_field(t.value_field))
    return t


def without_metadata(schema: pa.Schema) -> pa.Schema:
    """``schema`` without schema or field metadata, at any depth.

    Arrow metadata is not data: delta-rs copies field metadata into the Delta
    schema (the log's metaData action) and pyarrow's Parquet writer into the
    footer of every data file, so 20 MB of metadata on one field made each
    later 1-row commit write 27 MB. Arrowport writes its Parquet files with
    logical column names (no column mapping), so nothing it writes needs it.
    """
    return pa.schema([_bare_field(f) for f in schema])


def to_delta_schema(schema: pa.Schema) -> Schema:
    schema = without_metadata(pa.schema([f.with_type(_microseconds(f.type)) for f in schema]))
    try:
        return Schema.from_arrow(schema)
    except Exception as exc:  # delta-rs raises several kinds here, with a backtrace
        bad = []
        for f in schema:
            try:
                Schema.from_arrow(pa.schema([f]))
            except Exception as field_exc:
                bad.append(f"{f.name} ({f.type}: {first_line(field_exc)})")
        if not bad:
            raise SchemaMismatchError(
                f"stream schema has no Delta equivalent: {first_line(exc)}"
            ) from None
        raise UnsupportedTypeError(
            "Delta cannot store these columns' Arrow types: " + "; ".join(bad)
        ) from None


def _partition_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):  # a categorical is stored as its values
        t = t.value_type
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_signed_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_date32(t)
    )


def partition_string(value: Any) -> str | None:
    """A partition value as the Delta protocol writes it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # ints as decimals, dates as YYYY-MM-DD, strings as is


def check_partitions(table: str, schema: pa.Schema, options: DeltaOptions) -> tuple[str, ...]:
    """The partition columns of a new table, as the stream spells them."""
    by_name = {f.name.lower(): f for f in schema}
    columns = []
    for name in options.partition_by:
        f = by_name.get(name.lower())
        if f is None:
            raise SchemaMismatchError(
                f"table {table!r} is partitioned by {name!r}, which the stream does not have",
                missing=(name,),
            )
        if not _partition_type_ok(f.type):
            raise SchemaMismatchError(
                f"partition column {f.name!r} has type {f.type}; partition by a string, "
                "integer, boolean or date column"
            )
        columns.append(f.name)
    if columns and len(columns) == len(schema):
        raise SchemaMismatchError(
            f"table {table!r}: every column is a partition column; keep at least one data column"
        )
    return tuple(columns)


def evolve_schema(table: str, incoming: Schema, existing: Schema, mode: str) -> Schema:
    """The table schema after this stream: the same, or with new nullable columns."""
    have = {f.name.lower() for f in existing.fields}
    new = [f for f in incoming.fields if f.name.lower() not in have]
    if mode == "strict" or not new:
        try:
            check_subset(table, delta_columns(incoming), delta_columns(existing))
        except SchemaMismatchError as exc:
            if mode == "strict" and exc.extra:
                exc.detail += " (schema_mode: strict; merge would add them)"
                exc.args = (exc.detail,)
            raise
        return existing
    known = Schema([f for f in incoming.fields if f.name.lower() in have])
    check_subset(table, delta_columns(known), delta_columns(existing))
    added = [Field(f.name, f.type, nullable=True) for f in new]
    return Schema([*existing.fields, *added])
