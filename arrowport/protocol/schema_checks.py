"""Schema checks the message stage runs on a stream's schema (limits, UTF-8 names)."""

from __future__ import annotations

import pyarrow as pa

from .errors import invalid


def nesting_depth(data_type: pa.DataType, limit: int) -> int:
    """Depth of ``data_type`` (1 for a flat type); stops counting past ``limit``."""
    if isinstance(data_type, pa.DictionaryType):
        return nesting_depth(data_type.value_type, limit)
    if isinstance(data_type, pa.BaseExtensionType):  # num_fields is 0: look at the storage
        return nesting_depth(data_type.storage_type, limit)
    deepest = 1
    if limit <= 1:
        return deepest + int(data_type.num_fields > 0)
    for i in range(data_type.num_fields):
        deepest = max(deepest, 1 + nesting_depth(data_type.field(i).type, limit - 1))
    return deepest


def check_field_names(schema: pa.Schema) -> None:
    """Raise ``invalid_schema`` if a field name or a time zone, at any depth, is not
    valid UTF-8 (the IPC format says it is; pyarrow raises when the string is read)."""
    stack: list[pa.Field] = []
    try:
        stack.extend(schema)
        while stack:
            field = stack.pop()
            field.name  # noqa: B018 - decoding the name is the check
            data_type = field.type
            while isinstance(data_type, pa.DictionaryType | pa.BaseExtensionType):
                if isinstance(data_type, pa.DictionaryType):
                    data_type = data_type.value_type
                else:
                    data_type = data_type.storage_type
            if isinstance(data_type, pa.TimestampType):
                data_type.tz  # noqa: B018 - as the name
            stack.extend(data_type.field(i) for i in range(data_type.num_fields))
    except UnicodeDecodeError:
        raise invalid(
            "a field name or time zone in the schema is not valid UTF-8", error="invalid_schema"
        ) from None


def count_fields(schema: pa.Schema, limit: int) -> int:
    """Count fields, nested children included; stops counting at ``limit``."""
    count = 0
    stack = [field.type for field in schema]
    count += len(stack)
    while stack and count < limit:
        data_type = stack.pop()
        if isinstance(data_type, pa.DictionaryType):
            data_type = data_type.value_type
        if isinstance(data_type, pa.BaseExtensionType):
            data_type = data_type.storage_type
        children = [data_type.field(i).type for i in range(data_type.num_fields)]
        count += len(children)
        stack.extend(children)
    return count


def _metadata_size(metadata: dict[bytes, bytes] | None) -> int:
    return sum(len(k) + len(v) for k, v in (metadata or {}).items())


def metadata_bytes(schema: pa.Schema, limit: int) -> int:
    """Key and value bytes of the schema's metadata and of every field's metadata,
    nested fields included; stops counting past ``limit``."""
    total = _metadata_size(schema.metadata)
    stack = list(schema)
    while stack and total <= limit:
        field = stack.pop()
        total += _metadata_size(field.metadata)
        data_type = field.type
        if isinstance(data_type, pa.DictionaryType):
            data_type = data_type.value_type
        if isinstance(data_type, pa.BaseExtensionType):
            data_type = data_type.storage_type
        stack.extend(data_type.field(i) for i in range(data_type.num_fields))
    return total
