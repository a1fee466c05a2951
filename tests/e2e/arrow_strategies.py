"""Hypothesis strategies for random Arrow tables: every primitive type (each temporal unit,
time zones at the ends of the range, decimals 32/64/128/256), values at their extremes,
views, list views (out of order, overlapping), run-end encoding, dictionaries (nested too),
structs, maps (keys may repeat), unions, fixed-size lists, and wide or deep nesting."""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

ZONES = (
    None,
    "UTC",
    "+14:00",
    "-12:00",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Kathmandu",
    "America/St_Johns",
)
UNITS = ("s", "ms", "us", "ns")
_NS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
_PRIMITIVE_KINDS = (
    *("null", "bool", "int", "float", "decimal", "string", "binary", "fsb"),
    *("date32", "date64", "time", "timestamp", "duration", "mdn"),
)
_NESTED_KINDS = (
    *("prim", "prim", "prim", "list", "large_list", "list_view", "fsl", "struct"),
    *("map", "dict", "ree", "union"),
)
_DECIMALS = ((pa.decimal32, 9), (pa.decimal64, 18), (pa.decimal128, 38), (pa.decimal256, 76))


def _extreme_ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Integers in [lo, hi], the ends and their neighbours often."""
    edges = [lo, lo + 1, -1, 0, 1, hi - 1, hi]
    return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@st.composite
def _primitive(draw: st.DrawFn) -> tuple[pa.DataType, st.SearchStrategy[Any], str]:
    """A primitive type, a strategy for its values, and how to build the array:
    ``py`` (pa.array from Python values), ``raw`` (the storage integers, viewed) or ``str``
    (cast from their text)."""
    kind = draw(
        st.sampled_from(
            [
                "null",
                "bool",
                "int",
                "float",
                "decimal",
                "string",
                "binary",
                "fsb",
                "date32",
                "date64",
                "time",
                "timestamp",
                "duration",
                "mdn",
            ]
        )
    )
    if kind == "null":
        return pa.null(), st.none(), "py"
    if kind == "bool":
        return pa.bool_(), st.booleans(), "py"
    if kind == "int":
        bits, signed = draw(st.sampled_from([8, 16, 32, 64])), draw(st.booleans())
        t = getattr(pa, f"{'' if signed else 'u'}int{bits}")()
        return t, _extreme_ints(*_int_range(bits, signed)), "py"
    if kind == "float":
        width = draw(st.sampled_from([16, 32, 64]))
        t = {16: pa.float16(), 32: pa.float32(), 64: pa.float64()}[width]
        return t, st.floats(width=width, allow_nan=True, allow_infinity=True), "py"
    if kind == "decimal":
        make, most = draw(st.sampled_from(_DECIMALS))
        precision = draw(st.integers(1, most))
        scale = draw(st.integers(0, precision))
        top = 10**precision - 1
        exact = Context(prec=100)  # the default 28 digits would round
        values = _extreme_ints(-top, top).map(lambda i: Decimal(i).scaleb(-scale, exact))
        return make(precision, scale), values, "str"  # pa.array mis-infers some Decimals
    if kind in ("string", "binary"):
        size = draw(st.sampled_from(["", "large_", "view"]))
        base = st.text(max_size=12) if kind == "string" else st.binary(max_size=12)
        if size == "view":
            return getattr(pa, f"{kind}_view")(), base, "py"
        return getattr(pa, f"{size}{kind}")(), base, "py"
    if kind == "fsb":
        n = draw(st.integers(1, 20))
        return pa.binary(n), st.binary(min_size=n, max_size=n), "py"
    if kind == "date32":
        return pa.date32(), _extreme_ints(*_int_range(32, True)), "raw"
    if kind == "date64":  # whole days, as the format says
        days = 2**63 // 86_400_000
        return pa.date64(), _extreme_ints(-days, days - 1).map(lambda d: d * 86_400_000), "raw"
    if kind == "time":
        unit = draw(st.sampled_from(UNITS))
        t = pa.time32(unit) if unit in ("s", "ms") else pa.time64(unit)
        return t, _extreme_ints(0, _NS_PER_DAY[unit] - 1), "raw"
    if kind == "timestamp":
        unit, zone = draw(st.sampled_from(UNITS)), draw(st.sampled_from(ZONES))
        return pa.timestamp(unit, tz=zone), _extreme_ints(*_int_range(64, True)), "raw"
    if kind == "duration":
        unit = draw(st.sampled_from(UNITS))
        return pa.duration(unit), _extreme_ints(*_int_range(64, True)), "raw"
    parts = st.tuples(
        _extreme_ints(*_int_range(32, True)),
        _extreme_ints(*_int_range(32, True)),
        _extreme_ints(*_int_range(64, True)),
    )
    return pa.month_day_nano_interval(), parts, "py"


def _storage(t: pa.DataType) -> pa.DataType:
    return pa.int32() if t.bit_width == 32 else pa.int64()


@st.composite
def _mask(draw: st.DrawFn, n: int) -> pa.Array | None:
    if not draw(st.booleans()):
        return None
    return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), pa.bool_())


@st.composite
def primitive_array(draw: st.DrawFn, n: int) -> pa.Array:
    t, values, build = draw(_primitive())
    rows = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
    if build == "raw":
        return pa.array(rows, _storage(t)).view(t)
    if build == "str":
        return pa.array([None if r is None else format(r, "f") for r in rows], pa.string()).cast(t)
    return pa.array(rows, t)


def _offsets(draw: st.DrawFn, n: int, child_max: int = 4) -> list[int]:
    sizes = draw(st.lists(st.integers(0, child_max), min_size=n, max_size=n))
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


@st.composite
def array(draw: st.DrawFn, n: int, depth: int) -> pa.Array:
    """An array of ``n`` rows, nested at most ``depth`` levels."""
    if depth <= 0:
        return draw(primitive_array(n))
    kind = draw(
        st.sampled_from(
            [
                "prim",
                "prim",
                "prim",
                "list",
                "large_list",
                "list_view",
                "fsl",
                "struct",
                "map",
                "dict",
                "ree",
                "union",
            ]
        )
    )
    if kind == "prim":
        return draw(primitive_array(n))
    if kind in ("list", "large_list"):
        offsets = _offsets(draw, n)
        child = draw(array(offsets[-1], depth - 1))
        kind_offsets = pa.int32() if kind == "list" else pa.int64()
        make = pa.ListArray if kind == "list" else pa.LargeListArray
        mask = draw(_mask(n))
        return make.from_arrays(pa.array(offsets, kind_offsets), child, mask=mask)
    if kind == "list_view":  # views out of order and overlapping
        m = draw(st.integers(0, 6))
        child = draw(array(m, depth - 1))
        starts = draw(st.lists(st.integers(0, m), min_size=n, max_size=n))
        sizes = [draw(st.integers(0, m - s)) for s in starts]
        large = draw(st.booleans())
        make = pa.LargeListViewArray if large else pa.ListViewArray
        width = pa.int64() if large else pa.int32()
        return make.from_arrays(
            pa.array(starts, width), pa.array(sizes, width), child, mask=draw(_mask(n))
        )
    if kind == "fsl":
        size = draw(st.integers(1, 3))
        child = draw(array(n * size, depth - 1))
        return pa.FixedSizeListArray.from_arrays(child, size, mask=draw(_mask(n)))
    if kind == "struct":
        width = draw(st.integers(1, 4))
        names = draw(st.lists(_name(), min_size=width, max_size=width, unique_by=str.lower))
        children = [draw(array(n, depth - 1)) for _ in names]
        return pa.StructArray.from_arrays(children, names=names, mask=draw(_mask(n)))
    if kind == "map":
        offsets = _offsets(draw, n, 3)
        keys = draw(st.lists(st.text(max_size=3), min_size=offsets[-1], max_size=offsets[-1]))
        items = draw(array(offsets[-1], depth - 1))
        return pa.MapArray.from_arrays(
            pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), items, mask=draw(_mask(n))
        )
    if kind == "dict":
        d = draw(st.integers(1, 4))
        dictionary = draw(_plain(d, depth - 1))
        index = draw(st.sampled_from([pa.int8(), pa.int16(), pa.int32(), pa.int64()]))
        indices = draw(
            st.lists(st.one_of(st.none(), st.integers(0, d - 1)), min_size=n, max_size=n)
        )
        return pa.DictionaryArray.from_arrays(pa.array(indices, index), dictionary)
    if kind == "ree":
        cuts = sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=3))))
        ends = [c for c in cuts if c < n] + [n] if n else []
        values = draw(_plain(len(ends), depth - 1))
        width = draw(st.sampled_from([pa.int16(), pa.int32(), pa.int64()]))
        return pa.RunEndEncodedArray.from_arrays(pa.array(ends, width), values)
    # union
    members = draw(st.integers(1, 3))
    names = [f"m{i}" for i in range(members)]
    codes = sorted(
        draw(st.lists(st.integers(0, 127), min_size=members, max_size=members, unique=True))
    )
    types = draw(st.lists(st.integers(0, members - 1), min_size=n, max_size=n))
    type_ids = pa.array([codes[j] for j in types], pa.int8())
    if draw(st.booleans()):
        children = [draw(array(n, depth - 1)) for _ in names]
        return pa.UnionArray.from_sparse(type_ids, children, names, codes)
    counts = [types.count(j) for j in range(members)]
    children = [draw(array(c, depth - 1)) for c in counts]
    seen = [0] * members
    offsets = []
    for j in types:
        offsets.append(seen[j])
        seen[j] += 1
    return pa.UnionArray.from_dense(type_ids, pa.array(offsets, pa.int32()), children, names, codes)


@st.composite
def _plain(draw: st.DrawFn, n: int, depth: int) -> pa.Array:
    """Values of a dictionary or a run-end encoding: not encoded again at the top (IPC has no
    dictionary of a dictionary); nested encodings below a list or struct are fine."""
    out = draw(array(n, depth))
    if isinstance(out.type, pa.DictionaryType | pa.RunEndEncodedType) or pa.types.is_union(
        out.type
    ):
        return draw(primitive_array(n))
    return out


def _name() -> st.SearchStrategy[str]:
    return st.text(
        alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_ éß"),
        min_size=1,
        max_size=10,
    ).filter(lambda s: s.strip() == s and not s.lower().startswith("_arrowport"))


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """A table: usually a few columns nested up to 2 deep; sometimes 40 wide or 6 deep."""
    shape = draw(st.sampled_from(["small", "small", "small", "wide", "deep"]))
    n = draw(st.integers(0, 6))
    width = {"small": draw(st.integers(1, 4)), "wide": 40, "deep": 1}[shape]
    depth = {"small": draw(st.integers(0, 2)), "wide": 1, "deep": 6}[shape]
    names = draw(st.lists(_name(), min_size=width, max_size=width, unique_by=str.lower))
    return pa.table({name: draw(array(n, depth)) for name in names})
