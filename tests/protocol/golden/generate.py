"""Write the golden Arrow IPC streams the protocol tests decode.

Run ``python tests/protocol/golden/generate.py`` to rewrite the ``.arrows``
files and ``manifest.json`` next to this script; ``--check`` only compares.
Every golden is built from the deterministic builders below, and the tests
import this module to rebuild the table each stream must decode to, so no
expected-table sidecar is stored. Data is computed from row numbers, never
drawn at random, so the same pyarrow writes the same bytes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"

WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
]  # fmt: skip


@dataclass(frozen=True)
class Golden:
    """One golden stream: its schema, batches and how it is written."""

    schema: pa.Schema
    batches: Callable[[], list[pa.RecordBatch]]
    options: pa.ipc.IpcWriteOptions = field(default_factory=pa.ipc.IpcWriteOptions)
    strip_eos: bool = False

    @property
    def eos_marker(self) -> bool:
        return not self.strip_eos

    def expected_table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches(), schema=self.schema)

    def encode(self) -> bytes:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, self.schema, options=self.options) as writer:
            for batch in self.batches():
                writer.write_batch(batch)
        data = sink.getvalue()
        if self.strip_eos:
            assert data.endswith(EOS)
            data = data[: -len(EOS)]
        return data


def _nulls(n: int, every: int, start: int = 0) -> list[bool]:
    """A validity mask with every ``every``-th value null."""
    return [(start + i) % every == every - 1 for i in range(n)]


def _with_nulls(values: Sequence[object], every: int, start: int = 0) -> list[object]:
    mask = _nulls(len(values), every, start)
    return [None if null else v for v, null in zip(values, mask, strict=True)]


# -- primitives ----------------------------------------------------------------

PRIMITIVE_SCHEMA = pa.schema(
    [
        pa.field("i8", pa.int8()),
        pa.field("i16", pa.int16()),
        pa.field("i32", pa.int32(), nullable=False),
        pa.field("i64", pa.int64()),
        pa.field("u8", pa.uint8()),
        pa.field("u64", pa.uint64()),
        pa.field("f32", pa.float32()),
        pa.field("f64", pa.float64()),
        pa.field("flag", pa.bool_()),
        pa.field("name", pa.string()),
        pa.field("big_name", pa.large_string()),
        pa.field("blob", pa.binary()),
        pa.field("tag", pa.binary(4)),
        pa.field("ts_utc", pa.timestamp("us", tz="UTC")),
        pa.field("ts_ns", pa.timestamp("ns")),
        pa.field("day", pa.date32()),
        pa.field("day64", pa.date64()),
        pa.field("clock", pa.time64("us")),
        pa.field("elapsed", pa.duration("ms")),
        pa.field("price", pa.decimal128(12, 3)),
        pa.field("huge", pa.decimal256(40, 5)),
        pa.field("nothing", pa.null()),
    ],
    metadata={"origin": "arrowport-golden"},
)

_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def primitive_batch(start: int, n: int) -> pa.RecordBatch:
    rows = range(start, start + n)
    cols = [
        pa.array(_with_nulls([(r * 7) % 256 - 128 for r in rows], 5), pa.int8()),
        pa.array([r * 301 - 2**15 if r % 4 else None for r in rows], pa.int16()),
        pa.array([r * 65_537 for r in rows], pa.int32()),
        pa.array(_with_nulls([r * 10**12 - 2**62 for r in rows], 4, 1), pa.int64()),
        pa.array([r % 256 for r in rows], pa.uint8()),
        pa.array([2**64 - 1 - r for r in rows], pa.uint64()),
        pa.array(_with_nulls([r / 8 for r in rows], 3), pa.float32()),
        pa.array([r * 0.1 - 1e300 * (r % 2) for r in rows], pa.float64()),
        pa.array(_with_nulls([r % 3 == 0 for r in rows], 7), pa.bool_()),
        pa.array(_with_nulls([WORDS[r % 16] * (r % 3) for r in rows], 6), pa.string()),
        pa.array([f"row {r}: {WORDS[r % 16]}" for r in rows], pa.large_string()),
        pa.array(_with_nulls([bytes(range(r % 9)) for r in rows], 5, 2), pa.binary()),
        pa.array([r.to_bytes(4, "big") for r in rows], pa.binary(4)),
        pa.array(
            _with_nulls(
                [_EPOCH + dt.timedelta(seconds=r * 3_601, microseconds=r) for r in rows], 4
            ),
            pa.timestamp("us", tz="UTC"),
        ),
        pa.array([r * 1_000_000_007 for r in rows], pa.timestamp("ns")),
        pa.array([dt.date(2000, 1, 1) + dt.timedelta(days=r * 37) for r in rows], pa.date32()),
        pa.array(_with_nulls([r * 86_400_000 for r in rows], 3, 1), pa.date64()),
        pa.array([dt.time(r % 24, r % 60, r % 60, r) for r in rows], pa.time64("us")),
        pa.array([dt.timedelta(milliseconds=r * 1234) for r in rows], pa.duration("ms")),
        pa.array(
            _with_nulls([decimal.Decimal(r * 1001 - 5000).scaleb(-3) for r in rows], 5),
            pa.decimal128(12, 3),
        ),
        pa.array(
            [decimal.Decimal(10**34 + r).scaleb(-5) * (-1) ** r for r in rows],
            pa.decimal256(40, 5),
        ),
        pa.nulls(n),
    ]
    return pa.RecordBatch.from_arrays(cols, schema=PRIMITIVE_SCHEMA)


def primitive_batches() -> list[pa.RecordBatch]:
    # The last batch is a slice, so the writer must rebase offsets and bitmaps.
    return [primitive_batch(0, 10), primitive_batch(10, 23), primitive_batch(30, 40).slice(5, 17)]


# -- nested --------------------------------------------------------------------

_POINT = pa.struct([pa.field("x", pa.int32()), pa.field("y", pa.string())])
_ITEM = pa.struct([pa.field("a", pa.int16()), pa.field("b", pa.list_(pa.bool_()))])

NESTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("point", _POINT),
        pa.field("ints", pa.list_(pa.int64())),
        pa.field("words", pa.large_list(pa.string())),
        pa.field("attrs", pa.map_(pa.string(), pa.int32())),
        pa.field("items", pa.list_(_ITEM)),
        pa.field("pair", pa.list_(pa.float32(), 2)),
        pa.field("deep", pa.list_(pa.list_(pa.struct([pa.field("z", pa.list_(pa.int8()))])))),
    ]
)


def nested_batch(start: int, n: int) -> pa.RecordBatch:
    rows = range(start, start + n)
    point = [None if r % 5 == 4 else {"x": r, "y": WORDS[r % 16]} for r in rows]
    ints = [None if r % 6 == 5 else list(range(r, r + r % 4)) for r in rows]
    words = [[WORDS[(r + k) % 16] for k in range(r % 3)] for r in rows]
    attrs = [None if r % 7 == 6 else [(WORDS[k], r * k) for k in range(r % 3)] for r in rows]
    items = [
        [{"a": r + k, "b": None if k == 1 else [bool((r + k) % 2)] * k} for k in range(r % 3)]
        for r in rows
    ]
    pair = [None if r % 4 == 3 else [r / 2, -r / 4] for r in rows]
    deep = [[[{"z": [r % 100, k]}] * k for k in range(r % 3)] for r in rows]
    arrays = [
        pa.array(list(rows), pa.int64()),
        pa.array(point, _POINT),
        pa.array(ints, pa.list_(pa.int64())),
        pa.array(words, pa.large_list(pa.string())),
        pa.array(attrs, pa.map_(pa.string(), pa.int32())),
        pa.array(items, pa.list_(_ITEM)),
        pa.array(pair, pa.list_(pa.float32(), 2)),
        pa.array(deep, NESTED_SCHEMA.field("deep").type),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=NESTED_SCHEMA)


def nested_batches() -> list[pa.RecordBatch]:
    return [nested_batch(0, 12), nested_batch(12, 30).slice(3, 20)]


# -- dictionaries --------------------------------------------------------------

DICTIONARY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32()),
        pa.field("word", pa.dictionary(pa.int32(), pa.string())),
        pa.field("code", pa.dictionary(pa.int8(), pa.int64())),
        pa.field("tags", pa.list_(pa.dictionary(pa.int16(), pa.string()))),
    ]
)

_CODES = pa.array([10**9 + k for k in range(5)], pa.int64())


def dictionary_batch(start: int, n: int, words: int) -> pa.RecordBatch:
    """Indices reference the first ``words`` entries of ``WORDS``."""
    rows = range(start, start + n)
    word_dict = pa.array(WORDS[:words], pa.string())
    word = pa.DictionaryArray.from_arrays(
        pa.array(_with_nulls([(r * 3) % words for r in rows], 5), pa.int32()), word_dict
    )
    code = pa.DictionaryArray.from_arrays(pa.array([r % 5 for r in rows], pa.int8()), _CODES)
    tag_values = pa.DictionaryArray.from_arrays(
        pa.array([k % words for k in range(sum(r % 3 for r in rows))], pa.int16()), word_dict
    )
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + r % 3)
    tags = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), tag_values)
    ids = pa.array(list(rows), pa.int32())
    return pa.RecordBatch.from_arrays([ids, word, code, tags], schema=DICTIONARY_SCHEMA)


def dictionary_batches() -> list[pa.RecordBatch]:
    """The same dictionaries in every batch: one dictionary message each."""
    return [dictionary_batch(0, 9, 6), dictionary_batch(9, 15, 6), dictionary_batch(24, 4, 6)]


def delta_dictionary_batches() -> list[pa.RecordBatch]:
    """Each batch's dictionary extends the previous one: the writer emits deltas."""
    return [dictionary_batch(i * 8, 8, 3 + 3 * i) for i in range(4)]


def replaced_dictionary_batches() -> list[pa.RecordBatch]:
    """The dictionary shrinks, so the writer must replace it (not a delta)."""
    return [dictionary_batch(0, 8, 10), dictionary_batch(8, 8, 4), dictionary_batch(16, 8, 12)]


# -- newer and rarer layouts ---------------------------------------------------

EXOTIC_SCHEMA = pa.schema(
    [
        pa.field(
            "sparse", pa.sparse_union([pa.field("i", pa.int64()), pa.field("s", pa.string())])
        ),
        pa.field("dense", pa.dense_union([pa.field("i", pa.int32()), pa.field("s", pa.string())])),
        pa.field("runs", pa.run_end_encoded(pa.int32(), pa.string())),
        pa.field("view", pa.string_view()),
        pa.field("bytes_view", pa.binary_view()),
        pa.field("list_view", pa.list_view(pa.int16())),
        pa.field("large_list_view", pa.large_list_view(pa.string())),
        pa.field("half", pa.float16()),
        pa.field("d32", pa.decimal32(7, 2)),
        pa.field("d64", pa.decimal64(15, 3)),
        pa.field("interval", pa.month_day_nano_interval()),
        pa.field("t32", pa.time32("s")),
        pa.field("big_blob", pa.large_binary()),
        pa.field("uuid", pa.uuid()),
        pa.field("flag8", pa.bool8()),
        pa.field("doc", pa.json_()),
    ]
)


def exotic_batch(start: int, n: int) -> pa.RecordBatch:
    rows = list(range(start, start + n))
    codes = pa.array([r % 2 for r in rows], pa.int8())
    sparse = pa.UnionArray.from_sparse(
        codes,
        [pa.array(rows, pa.int64()), pa.array([WORDS[r % 16] for r in rows])],
        field_names=["i", "s"],
    )
    dense = pa.UnionArray.from_dense(
        codes,
        pa.array([k // 2 for k in range(n)], pa.int32()),
        [
            pa.array([r * 3 for r in rows[: (n + 1) // 2]], pa.int32()),
            pa.array(_with_nulls([WORDS[r % 16] for r in rows[: n // 2]], 3)),
        ],
        field_names=["i", "s"],
    )
    run_ends = [*range(2, n, 3), n]
    runs = pa.RunEndEncodedArray.from_arrays(
        pa.array(run_ends, pa.int32()),
        pa.array(_with_nulls([WORDS[k % 16] for k in range(len(run_ends))], 4)),
    )
    text = [WORDS[r % 16] * (1 + r % 4) for r in rows]  # some inline (<= 12 bytes), some not
    arrays = [
        sparse,
        dense,
        runs,
        pa.array(_with_nulls(text, 5), pa.string_view()),
        pa.array([t.encode() for t in text], pa.binary_view()),
        pa.array(_with_nulls([list(range(r % 4)) for r in rows], 6), pa.list_view(pa.int16())),
        pa.array([[WORDS[r % 16]] * (r % 3) for r in rows], pa.large_list_view(pa.string())),
        pa.array(_with_nulls([(r % 40) / 4 for r in rows], 7), pa.float32()).cast(pa.float16()),
        pa.array([decimal.Decimal(r * 37 - 500).scaleb(-2) for r in rows], pa.decimal32(7, 2)),
        pa.array(
            _with_nulls([decimal.Decimal(r * 10**9).scaleb(-3) for r in rows], 4),
            pa.decimal64(15, 3),
        ),
        pa.array(
            [pa.MonthDayNano([r % 12, r % 28, r * 1000]) for r in rows],
            pa.month_day_nano_interval(),
        ),
        pa.array([r * 61 % 86_400 for r in rows], pa.time32("s")),
        pa.array(_with_nulls([bytes([r % 256]) * (r % 5) for r in rows], 3), pa.large_binary()),
        pa.ExtensionArray.from_storage(
            pa.uuid(), pa.array([r.to_bytes(16, "big") for r in rows], pa.binary(16))
        ),
        pa.ExtensionArray.from_storage(pa.bool8(), pa.array([r % 3 for r in rows], pa.int8())),
        pa.ExtensionArray.from_storage(pa.json_(), pa.array([f'{{"row": {r}}}' for r in rows])),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=EXOTIC_SCHEMA)


def exotic_batches() -> list[pa.RecordBatch]:
    return [exotic_batch(0, 9), exotic_batch(9, 14)]


# -- compression and mixed -----------------------------------------------------

MIXED_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("text", pa.string()),
        pa.field("ratio", pa.float64()),
        pa.field("ints", pa.list_(pa.int32())),
        pa.field("word", pa.dictionary(pa.int32(), pa.string())),
        pa.field("when", pa.timestamp("ms", tz="Europe/Paris")),
    ]
)


def mixed_batch(start: int, n: int) -> pa.RecordBatch:
    rows = range(start, start + n)
    word = pa.DictionaryArray.from_arrays(
        pa.array([r % 16 for r in rows], pa.int32()), pa.array(WORDS, pa.string())
    )
    arrays = [
        pa.array(list(rows), pa.int64()),
        pa.array(_with_nulls([f"{WORDS[r % 16]}-{r % 10}" for r in rows], 9), pa.string()),
        pa.array([(r % 50) / 4 for r in rows], pa.float64()),
        pa.array([list(range(r % 5)) for r in rows], pa.list_(pa.int32())),
        word,
        pa.array(
            [1_700_000_000_000 + r * 1000 for r in rows], pa.timestamp("ms", tz="Europe/Paris")
        ),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=MIXED_SCHEMA)


def mixed_batches() -> list[pa.RecordBatch]:
    return [mixed_batch(0, 300), mixed_batch(300, 0), mixed_batch(300, 200)]


def empty_batches() -> list[pa.RecordBatch]:
    """Zero-row batches first, in the middle and last (dictionaries included)."""
    return [
        mixed_batch(0, 0),
        mixed_batch(0, 5),
        mixed_batch(5, 0),
        mixed_batch(5, 3),
        mixed_batch(8, 0),
    ]


def _options(**kwargs: object) -> pa.ipc.IpcWriteOptions:
    return pa.ipc.IpcWriteOptions(**kwargs)


GOLDENS: dict[str, Golden] = {
    "primitives": Golden(PRIMITIVE_SCHEMA, primitive_batches),
    "nested": Golden(NESTED_SCHEMA, nested_batches),
    "exotic": Golden(EXOTIC_SCHEMA, exotic_batches),
    "dictionary": Golden(DICTIONARY_SCHEMA, dictionary_batches),
    "dictionary_delta": Golden(
        DICTIONARY_SCHEMA, delta_dictionary_batches, _options(emit_dictionary_deltas=True)
    ),
    "dictionary_replacement": Golden(DICTIONARY_SCHEMA, replaced_dictionary_batches),
    "compressed_lz4": Golden(MIXED_SCHEMA, mixed_batches, _options(compression="lz4")),
    "compressed_zstd": Golden(MIXED_SCHEMA, mixed_batches, _options(compression="zstd")),
    "empty_batches": Golden(MIXED_SCHEMA, empty_batches),
    "schema_only": Golden(NESTED_SCHEMA, list),
    "legacy_format": Golden(
        DICTIONARY_SCHEMA,
        dictionary_batches,
        _options(use_legacy_format=True, metadata_version=pa.ipc.MetadataVersion.V4),
    ),
    "no_eos": Golden(MIXED_SCHEMA, lambda: [mixed_batch(0, 7), mixed_batch(7, 5)], strip_eos=True),
}


def path_of(name: str) -> Path:
    return HERE / f"{name}.arrows"


def manifest() -> dict[str, object]:
    files = {}
    for name, golden in GOLDENS.items():
        data = golden.encode()
        files[path_of(name).name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"pyarrow": pa.__version__, "files": files}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, golden in GOLDENS.items():
        data, path = golden.encode(), path_of(name)
        if path.exists() and path.read_bytes() == data:
            continue
        stale.append(path.name)
        if not check:
            path.write_bytes(data)
    text = json.dumps(manifest(), indent=2, sort_keys=True) + "\n"
    if not MANIFEST.exists() or MANIFEST.read_text() != text:
        stale.append(MANIFEST.name)
        if not check:
            MANIFEST.write_text(text)
    if stale:
        print(("stale: " if check else "wrote: ") + ", ".join(stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
