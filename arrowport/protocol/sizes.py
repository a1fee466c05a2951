"""What a record batch costs once a backend holds it, known before it is expanded.

A batch's decoded size starts as the sum of its buffers' uncompressed lengths
(``MessageReader`` reads them from the compressed buffers' 8-byte prefixes).
Some columns cost a backend far more than their buffers, because it expands
them; those are counted at their expanded size:

* a null column: one byte per row (its buffers are empty);
* a run-end-encoded column: its logical length times the value width;
* a dictionary column: what ``take(dictionary, indices)`` would be, that is
  the referenced values' lengths (variable width) or rows times the value
  width (fixed width).

Two passes, both cheap:

* ``header_extra`` reads only the flatbuffer's ``FieldNode`` lengths, before
  the body is decompressed: a lower bound (a variable-width value counts its
  offset, not its bytes);
* ``decoded_extra`` walks the decoded arrays, after decompression and before
  any expansion: exact for null, REE and dictionary columns of flat values
  (sums of referenced value lengths, never a ``take``); the average value
  size for nested dictionary values.

Only columns whose type holds such a site are walked: a schema without
null, REE or dictionary types costs nothing here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._flatbuf import NodeTable


class Kind(enum.Enum):
    NULL = enum.auto()
    RUN_END = enum.auto()
    DICTIONARY = enum.auto()


@dataclass(frozen=True, slots=True)
class Site:
    """A column (at any depth) that a backend expands."""

    node: int  # its index in the batch's FieldNode vector (pre-order)
    kind: Kind
    width: int  # bytes per row that the type alone tells


def value_width(data_type: pa.DataType) -> int:
    """Bytes per value the type alone tells: a fixed width, else an offset's width, else 1."""
    while isinstance(data_type, pa.BaseExtensionType):
        data_type = data_type.storage_type
    if pa.types.is_null(data_type):
        return 1
    try:
        return max(1, int(data_type.bit_width) // 8)
    except ValueError:  # not fixed width
        pass
    if pa.types.is_large_string(data_type) or pa.types.is_large_binary(data_type):
        return 8
    if pa.types.is_string_view(data_type) or pa.types.is_binary_view(data_type):
        return 16
    if pa.types.is_string(data_type) or pa.types.is_binary(data_type):
        return 4
    return 1


def _children(data_type: pa.DataType) -> list[pa.DataType]:
    return [data_type.field(i).type for i in range(data_type.num_fields)]


def _walk(data_type: pa.DataType, node: int, sites: list[Site], searching: bool) -> int:
    """Append the sites in ``data_type`` (at ``node``); return the next node index."""
    while isinstance(data_type, pa.BaseExtensionType):
        data_type = data_type.storage_type
    if isinstance(data_type, pa.DictionaryType):  # its values live in dictionary batches
        sites.append(Site(node, Kind.DICTIONARY, value_width(data_type.value_type)))
        return node + 1
    if pa.types.is_null(data_type):
        sites.append(Site(node, Kind.NULL, 1))
        return node + 1
    if pa.types.is_run_end_encoded(data_type):
        sites.append(Site(node, Kind.RUN_END, value_width(data_type.value_type)))
        searching = False  # the children's lengths are runs, not rows
    # unions and list views are counted as their buffers; REE children are runs
    recurse = searching and not (pa.types.is_union(data_type) or _is_list_view(data_type))
    following = node + 1
    for child in _children(data_type):
        following = _walk(child, following, sites if recurse else [], recurse)
    return following


def _is_list_view(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_list_view(data_type) or pa.types.is_large_list_view(data_type))


def expansion_sites(schema: pa.Schema) -> tuple[Site, ...]:
    """The columns of ``schema`` a backend expands, with their node indices."""
    sites: list[Site] = []
    node = 0
    for field in schema:
        node = _walk(field.type, node, sites, True)
    return tuple(sites)


def header_extra(sites: tuple[Site, ...], nodes: NodeTable) -> int:
    """Bytes the expansion adds, as far as the nodes' lengths tell (a lower bound)."""
    return sum(nodes.length(site.node) * site.width for site in sites)


def decoded_extra(batch: pa.RecordBatch) -> int:
    """Bytes the expansion adds to ``batch``'s buffers, from its decoded arrays."""
    return sum(_array_extra(column) for column in batch.columns)


def _array_extra(array: pa.Array) -> int:
    if isinstance(array, pa.ExtensionArray):
        return _array_extra(array.storage)
    data_type = array.type
    if isinstance(array, pa.DictionaryArray):
        return _values_size(array.dictionary, array.indices, None, len(array))
    if isinstance(array, pa.NullArray):
        return len(array)
    if isinstance(array, pa.RunEndEncodedArray):
        return _values_size(array.values, None, array.run_ends, len(array))
    if isinstance(array, pa.StructArray):
        return sum(_array_extra(array.field(i)) for i in range(data_type.num_fields))
    if isinstance(array, pa.ListArray | pa.LargeListArray | pa.FixedSizeListArray | pa.MapArray):
        return _array_extra(array.values)
    return 0


def _values_size(
    values: pa.Array, indices: pa.Array | None, run_ends: pa.Array | None, rows: int
) -> int:
    """Size of ``rows`` values picked from ``values`` (by ``indices`` or by runs)."""
    value_type = values.type
    while isinstance(value_type, pa.BaseExtensionType):
        value_type = value_type.storage_type
        values = values.storage
    width = value_width(value_type)
    flat = any(
        check(value_type)
        for check in (
            pa.types.is_string,
            pa.types.is_binary,
            pa.types.is_large_string,
            pa.types.is_large_binary,
            pa.types.is_string_view,
            pa.types.is_binary_view,
        )
    )
    if not flat:
        if value_type.num_fields == 0 or len(values) == 0:  # fixed width (or nothing)
            return int(rows * width)
        average = math.ceil(int(values.get_total_buffer_size()) / len(values))
        return int(rows * max(width, average))
    if pa.types.is_string_view(value_type) or pa.types.is_binary_view(value_type):
        lengths = _view_lengths(values)
    else:
        lengths = pc.binary_length(values).fill_null(0)
    if indices is not None:
        picked = pc.sum(pc.take(lengths, indices)).as_py() or 0
    else:
        assert run_ends is not None
        ends = run_ends.to_numpy(zero_copy_only=False).astype(np.int64)
        runs = np.diff(np.minimum(ends, rows), prepend=0).clip(min=0)
        sizes = lengths.to_numpy(zero_copy_only=False).astype(np.int64)
        count = min(len(runs), len(sizes))
        picked = int(np.dot(runs[:count], sizes[:count]))
    return rows * width + int(picked)


def _view_lengths(values: pa.Array) -> pa.Array:
    """The lengths of a string_view or binary_view array's values, 0 for nulls.

    ``binary_length`` has no kernel for views, and casting a view array that
    passed full validation can still crash pyarrow (a null slot's view is not
    checked), so the lengths are read straight from the 16-byte views.
    """
    views = values.buffers()[1]
    if views is None or len(values) == 0:
        return pa.array([0] * len(values), pa.int64())
    start = values.offset
    raw = np.frombuffer(views, dtype=np.int32, count=4 * (start + len(values)))
    lengths = raw[4 * start :: 4].astype(np.int64).clip(min=0)
    if values.null_count:
        lengths[~values.is_valid().to_numpy(zero_copy_only=False)] = 0
    return pa.array(lengths)
