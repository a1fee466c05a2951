"""Lossless Arrow array conversions and value checks for the type plans.

Every function here either returns an array holding exactly the values it
was given (in another physical layout or a wider type), or raises
``ValueRefused`` saying why a value cannot be kept. Nothing truncates,
wraps or drops: a safe pyarrow cast is used wherever a cast is lossless
only for some values (sub-microsecond parts, overflow), so the values that
would change are refused, not cut.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

Convert = Callable[[pa.Array], pa.Array]


class ValueRefused(Exception):
    """A value has no exact representation in the target type."""


def safe_cast(target: pa.DataType) -> Convert:
    """Cast to ``target``, refusing any value the cast would change."""

    def convert(arr: pa.Array) -> pa.Array:
        try:
            return arr.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueRefused(one_line(exc)) from None

    return convert


def storage(arr: pa.Array) -> pa.Array:
    """An extension array's storage."""
    return arr.storage if isinstance(arr, pa.ExtensionArray) else arr


_PLAIN = {"string_view": pa.large_string(), "binary_view": pa.large_binary()}


def plain_type(t: pa.DataType) -> pa.DataType:
    """A view type's plain (large) equivalent, a dictionary's value type; any other
    type as it is."""
    if isinstance(t, pa.DictionaryType):
        return plain_type(t.value_type)
    return _PLAIN.get(str(t), t)


def dictionary_decode(values: Convert | None) -> Convert:
    """A dictionary array as its values: the dictionary is converted by ``values``
    first (once per value, not per row), then taken by the indices. View values
    are made plain first: pyarrow 26 has no take kernel for them."""

    def convert(arr: pa.Array) -> pa.Array:
        dictionary = arr.dictionary
        if values is not None:
            dictionary = values(dictionary)
        plain = plain_type(dictionary.type)
        if plain != dictionary.type:
            dictionary = dictionary.cast(plain)
        taken: pa.Array = dictionary.take(arr.indices)
        return taken

    return convert


def run_end_decode(values: Convert | None) -> Convert:
    """A run-end encoded array as its values: the runs' values are converted by
    ``values`` first (once per run), made plain where pyarrow 26 has no decode kernel
    (dictionaries, views), then expanded."""

    def convert(arr: pa.Array) -> pa.Array:
        physical = arr.values  # every run, whatever the slice
        if values is not None:
            physical = values(physical)
        plain = plain_type(physical.type)
        if plain != physical.type:
            physical = physical.cast(plain)
        runs = pa.RunEndEncodedArray.from_arrays(arr.run_ends, physical)
        decoded: pa.Array = pc.run_end_decode(runs)
        return decoded.slice(arr.offset, len(arr))

    return convert


def list_view_to_list(target: pa.DataType) -> Convert:
    """A list view as a list of the same lists, whatever order its views are in.

    ``list_flatten`` follows each view (pyarrow 26's cast does not, for
    out-of-order or overlapping views); the offsets are the running sum of
    the sizes of the lists that are not null.
    """

    def convert(arr: pa.Array) -> pa.Array:
        values = pc.list_flatten(arr)
        valid = arr.is_valid()
        sizes = pc.if_else(valid, arr.sizes, pa.scalar(0, arr.sizes.type))
        ends = pc.cumulative_sum(sizes)
        offsets = pa.concat_arrays([pa.array([0], sizes.type), ends.cast(sizes.type)])
        if len(values) != (ends[-1].as_py() if len(ends) else 0):
            raise ValueRefused("a list view whose views do not add up")  # validated before
        cls = pa.LargeListArray if pa.types.is_large_list(target) else pa.ListArray
        mask = pc.invert(valid) if arr.null_count else None
        return cls.from_arrays(offsets, values, type=target, mask=mask)

    return convert


def fixed_size_list_to_list(target: pa.DataType) -> Convert:
    def convert(arr: pa.Array) -> pa.Array:
        return arr.cast(target)

    return convert


def rebuild_list(target: pa.DataType, values: Convert) -> Convert:
    """A (large or fixed-size) list whose values are converted by ``values``."""

    def convert(arr: pa.Array) -> pa.Array:
        arr = arr.slice(0) if arr.offset == 0 else _compact_list(arr)
        new_values = values(arr.values)
        mask = pc.invert(arr.is_valid()) if arr.null_count else None
        if pa.types.is_fixed_size_list(arr.type):
            return pa.FixedSizeListArray.from_arrays(new_values, type=target, mask=mask)
        cls = pa.LargeListArray if pa.types.is_large_list(arr.type) else pa.ListArray
        return cls.from_arrays(arr.offsets, new_values, type=target, mask=mask)

    return convert


def _compact_list(arr: pa.Array) -> pa.Array:
    """A sliced list array as an unsliced one (its ``values`` are then its own)."""
    return pa.concat_arrays([arr])  # concat copies the slice into a fresh array


def rebuild_struct(target: pa.DataType, children: list[Convert | None]) -> Convert:
    def convert(arr: pa.Array) -> pa.Array:
        fields = [arr.field(i) for i in range(arr.type.num_fields)]  # slice-aware
        new = [c(f) if c is not None else f for c, f in zip(children, fields, strict=True)]
        mask = pc.invert(arr.is_valid()) if arr.null_count else None
        return pa.StructArray.from_arrays(new, fields=list(target), mask=mask)

    return convert


def rebuild_map(target: pa.DataType, keys: Convert | None, items: Convert | None) -> Convert:
    def convert(arr: pa.Array) -> pa.Array:
        if arr.offset:
            arr = _compact_list(arr)
        new_keys = keys(arr.keys) if keys is not None else arr.keys
        new_items = items(arr.items) if items is not None else arr.items
        mask = pc.invert(arr.is_valid()) if arr.null_count else None
        return pa.MapArray.from_arrays(arr.offsets, new_keys, new_items, type=target, mask=mask)

    return convert


def check_unique_keys(arr: pa.Array) -> None:
    """Refuse a map that holds one key twice (DuckDB's MAP, Delta's and Parquet's
    maps have unique keys; keeping one of them would drop a value)."""
    if arr.offset:
        arr = _compact_list(arr)
    # As a list of keys: pyarrow 26 aborts the process on list_parent_indices(map).
    lists = pa.ListArray.from_arrays(arr.offsets, arr.keys)
    if arr.null_count:  # a null map's range of keys (if any) is not data
        lists = lists.filter(arr.is_valid())
    keys = pc.list_flatten(lists)
    if len(keys) < 2:
        return
    parents = pc.list_parent_indices(lists)
    try:
        groups = pa.table({"p": parents, "k": keys}).group_by(["p", "k"]).aggregate([]).num_rows
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        pairs = zip(parents.to_pylist(), keys.to_pylist(), strict=True)
        groups = len({(p, repr(k)) for p, k in pairs})
    if groups != len(keys):
        raise ValueRefused("a map holds the same key twice")


def month_day_nano_micros(arr: pa.Array) -> pa.Array:
    """Refuse month-day-nano intervals with a sub-microsecond part (DuckDB's
    INTERVAL holds microseconds)."""
    for value in arr.to_pylist():
        if value is not None and value.nanoseconds % 1000:
            raise ValueRefused(
                f"interval {value} has a sub-microsecond part; the backend stores microseconds"
            )
    return arr


def month_day_nano_parquet(arr: pa.Array) -> pa.Array:
    """Refuse month-day-nano intervals Parquet's INTERVAL cannot hold: it has unsigned
    months, days and milliseconds (DuckLake cuts the rest, wraps past 2**32 - 1 ms
    and fails on negative values)."""
    for value in arr.to_pylist():
        if value is None:
            continue
        months, days, nanos = value.months, value.days, value.nanoseconds
        if min(months, days, nanos) < 0:
            raise ValueRefused(f"interval {value} is negative; Parquet intervals are unsigned")
        if nanos % 1_000_000 or nanos // 1_000_000 > 2**32 - 1:
            raise ValueRefused(
                f"interval {value} is not a whole number of milliseconds below 2**32, "
                "as Parquet intervals are"
            )
    return arr


def check_multiple(factor: int, what: str) -> Convert:
    """Refuse values (as their integer storage) that are not multiples of ``factor``."""

    def convert(arr: pa.Array) -> pa.Array:
        ints = storage(arr).view(pa.int64())
        rest = pc.subtract(ints, pc.multiply(pc.divide(ints, factor), factor))
        if pc.any(pc.not_equal(rest, 0)).as_py():
            raise ValueRefused(f"a {what} value is not a multiple of {factor}")
        return arr

    return convert


def union_without_nulls(arr: pa.Array) -> pa.Array:
    """Refuse a sparse union holding a null: DuckDB reads it back as a null of its
    first member, so which member it was is lost."""
    for i in range(arr.type.num_fields):
        if arr.field(i).null_count:
            types = pa.Array.from_buffers(pa.int8(), len(arr), [None, arr.buffers()[1]], arr.offset)
            chosen = pc.equal(types, pa.scalar(arr.type.type_codes[i], pa.int8()))
            if pc.any(pc.and_(chosen, arr.field(i).is_null())).as_py():
                raise ValueRefused("a union value is null; DuckDB would not keep its member")
    return arr


def duration_micros(arr: pa.Array) -> pa.Array:
    """A duration in microseconds, refused if that changes it or it would not fit
    in nanoseconds (DuckDB's INTERVAL is read back as month-day-nano)."""
    micros = safe_cast(pa.duration("us"))(arr)
    safe_cast(pa.duration("ns"))(micros)
    return micros


def check_range(low: int, high: int, what: str) -> Convert:
    """Refuse values (as their integer storage) outside ``[low, high]``."""

    def convert(arr: pa.Array) -> pa.Array:
        if arr.null_count == len(arr):
            return arr
        ints = storage(arr).view(pa.int64() if arr.type.bit_width == 64 else pa.int32())
        found = pc.min_max(ints)
        lo, hi = found["min"].as_py(), found["max"].as_py()
        if lo < low or hi > high:
            bad = lo if lo < low else hi
            raise ValueRefused(f"{what} {bad} is outside the range the backend stores")
        return arr

    return convert


def check_precision(precision: int, scale: int) -> Convert:
    """Refuse decimals with more digits than their type declares (Arrow does not
    check; DuckLake's Parquet statistics fail on them and DuckDB reads them wrong)."""
    bound = Decimal(10) ** (precision - scale)

    def convert(arr: pa.Array) -> pa.Array:
        if arr.null_count == len(arr):
            return arr
        probe = arr
        if not isinstance(arr.type, pa.Decimal128Type | pa.Decimal256Type):
            probe = arr.cast(pa.decimal128(precision, scale), safe=False)  # no min_max kernel
        found = pc.min_max(probe)
        try:
            extremes = (found["min"].as_py(), found["max"].as_py())
        except ArithmeticError as exc:  # decimal.InvalidOperation: not a readable number
            raise ValueRefused(f"a decimal that cannot be read: {exc!r}") from None
        for value in extremes:
            if value is not None and value.copy_abs() >= bound:  # exact (no context rounding)
                raise ValueRefused(f"{value} has more digits than decimal({precision}, {scale})")
        return arr

    return convert


def chain(*steps: Convert | None) -> Convert | None:
    """The steps in order, or None if there are none (the array is kept as is)."""
    real = [s for s in steps if s is not None]
    if not real:
        return None
    if len(real) == 1:
        return real[0]

    def convert(arr: pa.Array) -> pa.Array:
        for step in real:
            arr = step(arr)
        return arr

    return convert


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
