"""A short, bounded, deterministic fuzz run plus every input fuzzing ever crashed on.

The invariant (``fuzz/ipc_invariant.py``): fed whole and byte by byte, any
input decodes or raises a ProtocolError, and both feedings agree. ``check``
itself feeds both ways, so these tests need no ``mode`` fixture.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pytest
from ipc_invariant import LIMITS, check, mutate, split
from ipc_testing import GOLDENS, golden_bytes, write_stream
from request_invariant import check as request_check
from request_invariant import seeds as request_seeds

NAMES = sorted(GOLDENS)
# ~2 s in all by default (CI); ARROWPORT_FUZZ_MUTANTS=5000 for a long run,
# ARROWPORT_FUZZ_SEED to explore beyond the fixed seed.
MUTANTS_PER_GOLDEN = int(os.environ.get("ARROWPORT_FUZZ_MUTANTS", "20"))
SEED = int(os.environ.get("ARROWPORT_FUZZ_SEED", "20260415"))


@pytest.mark.parametrize("name", NAMES)
def test_goldens_satisfy_the_invariant(name: str) -> None:
    """Every golden decodes (whole and byte by byte alike) under the fuzzing limits."""
    outcome = check(golden_bytes(name))
    assert outcome.parsed
    assert outcome.events[-1] == ("end", GOLDENS[name].eos_marker)


@pytest.mark.parametrize("name", NAMES)
def test_mutants_satisfy_the_invariant(name: str) -> None:
    """Deterministic structure-aware mutants of each golden parse or raise ProtocolError."""
    rng = random.Random(f"{SEED}:{name}")
    donors = [golden_bytes(n) for n in NAMES]
    outcomes = set()
    for _ in range(MUTANTS_PER_GOLDEN):
        outcome = check(mutate(golden_bytes(name), rng, donors))
        outcomes.add(outcome.error[0] if outcome.error else "parsed")
    if MUTANTS_PER_GOLDEN >= 20:
        assert len(outcomes) > 1  # the mutants are not all alike


def test_mutation_is_deterministic() -> None:
    """The same seed gives the same mutants, so a CI failure reproduces locally."""
    data = golden_bytes("dictionary_delta")
    a = [mutate(data, random.Random(7)) for _ in range(5)]
    b = [mutate(data, random.Random(7)) for _ in range(5)]
    assert a == b


def test_mutator_survives_its_own_output() -> None:
    """Stacked mutations never break the mutator itself (the harness must not crash)."""
    rng = random.Random(SEED)
    donors = [golden_bytes(n) for n in NAMES]
    statuses = set()
    for i in range(300):
        data = donors[i % len(donors)]
        for _ in range(8):
            data = mutate(data, rng, donors)
        assert isinstance(data, bytes)
        outcome = check(data)  # stacked mutants still satisfy the invariant
        statuses.add(outcome.error[1] if outcome.error else 200)
    assert statuses <= {200, 400, 413} and len(statuses) > 1


def test_split_round_trips() -> None:
    """The mutator's message splitter takes goldens apart losslessly."""
    from ipc_invariant import join

    for name in NAMES:
        messages, rest = split(golden_bytes(name))
        assert join(messages, rest) == golden_bytes(name)


def _compressed_delta_bomb() -> bytes:
    schema = pa.schema([pa.field("w", pa.dictionary(pa.int32(), pa.string()))])
    values, batches = [], []
    for i in range(20):
        values.append(chr(ord("a") + i) * 100_000)
        word = pa.DictionaryArray.from_arrays(pa.array([i], pa.int32()), pa.array(values))
        batches.append(pa.record_batch([word], schema=schema))
    return write_stream(schema, batches, compression="zstd", emit_dictionary_deltas=True)


def test_regression_compressed_dictionary_deltas_count_decompressed() -> None:
    """20 zstd deltas of 100 KB each (a few KB on the wire) stop at max_dictionary_bytes."""
    data = _compressed_delta_bomb()
    assert len(data) < 16 * 1024
    limit = 1024 * 1024
    outcome = check(data, LIMITS | {"max_dictionary_bytes": limit})
    assert outcome.error == ("limit_exceeded", 413)
    batches = sum(1 for e in outcome.events if e[0] == "batch")
    assert batches == limit // 100_000


# Fuzzing (about 11 minutes of atheris, and long structure-aware runs) has found no
# input that breaks the invariant from plain bytes. A crasher found later goes here
# as its own test, with its input as hex; the bugs found while writing tests need
# more than bytes (a registered extension type) or a limit to trip, and live in
# test_ipc_errors.py, test_ipc_limits.py and the regression test above.


# -- found by the whole-request harness (fuzz/fuzz_request.py) ----------------------
# Its minimized inputs are in golden/crashes/. Both bugs are outside the decoders,
# in what the server did with their events; both are fixed (ingest keeps app_metadata
# that precedes the schema out of the writer's queue; deeply nested JSON is a 400).

CRASHES = Path(__file__).resolve().parent / "golden" / "crashes"


def test_regression_app_metadata_before_the_schema_does_not_block_ingest() -> None:
    """A DoPut whose descriptor is followed by 5 app_metadata-only FlightData (no schema yet).

    ``ingest`` sends each ``MetadataReceived`` into the writer's queue
    (``queue_depth`` 4), but the writer task only starts on ``SchemaReceived``:
    the fifth send blocks forever, before the decoder can report anything, and
    ``body_idle_timeout`` does not apply to it. Fixed, the request is refused
    (this stream has no schema at all).
    """
    data = (CRASHES / "metadata_before_schema.request").read_bytes()
    outcome = request_check(data, frozenset())
    assert outcome.error is not None and outcome.error[1] == 400


def test_regression_app_metadata_before_a_valid_stream() -> None:
    """The same five app_metadata messages, then a valid stream: accepted or refused, no hang."""
    data = (CRASHES / "metadata_before_schema.request").read_bytes()
    stream = request_seeds()["flight_schema_only"][1:]  # a DoPut: descriptor + schema
    outcome = request_check(data + stream, frozenset())
    assert outcome.error is None or 400 <= outcome.error[1] < 500, outcome.error


def test_regression_deeply_nested_descriptor_cmd_is_refused() -> None:
    """A DoPut descriptor cmd ``{"stream": "t", "x": [[[...`` about 3000 levels deep.

    ``descriptor_target`` parses a cmd starting with ``{`` with ``json.loads``,
    which raises ``RecursionError`` (not a ``ValueError``); it escapes as a bug,
    so the client gets INTERNAL instead of INVALID_ARGUMENT. Fixed, it is a 400.
    """
    data = (CRASHES / "descriptor_json_recursion.request").read_bytes()
    outcome = request_check(data, frozenset())
    assert outcome.error is not None and outcome.error[1] == 400


def test_regression_descriptor_target_refuses_deep_json() -> None:
    """The same bug without the harness: descriptor_target itself."""
    from arrowport.io.status import http_status
    from arrowport.protocol import ArrowportError
    from arrowport.protocol.flight_descriptors import descriptor_target
    from arrowport.protocol.flight_pb import DESCRIPTOR_CMD, FlightDescriptor

    cmd = b'{"stream": "t", "x": ' + b"[" * 5000
    with pytest.raises(ArrowportError) as raised:
        descriptor_target(FlightDescriptor(type=DESCRIPTOR_CMD, cmd=cmd))
    assert http_status(raised.value) == 400


def test_regression_time_zone_not_utf8_is_refused() -> None:
    """A DoPut whose schema has a timestamp with the time zone ``E\\xc2rope/Paris``.

    Found once the harness ran the storage type plans (invariant 5): reading the
    zone raised ``UnicodeDecodeError`` there, a 500. Fixed, the decoder refuses it
    as it does a field name that is not UTF-8: 400 ``invalid_schema``.
    """
    data = (CRASHES / "timezone_not_utf8.request").read_bytes()
    outcome = request_check(data, frozenset())
    assert outcome.error is not None and outcome.error[:2] == ("invalid_schema", 400)


def test_regression_decimal_scale_above_precision_is_a_422_plan() -> None:
    """A stream with a ``decimal32(7, 8388610)`` column and a valid batch.

    Found by invariant 6: the precision check read the values as Python decimals,
    which raised ``InvalidOperation`` (a 500). Fixed, every backend's type plan
    refuses a scale below 0 or above the precision (422) before any value is read.
    """
    from arrowport.io.status import http_status
    from arrowport.storage import UnsupportedTypeError, typemap

    data = (CRASHES / "decimal_scale_above_precision.request").read_bytes()
    request_check(data, frozenset())  # the invariant holds (it raises otherwise)
    schema = pa.schema([("d32", pa.decimal32(7, 7))])
    for backend in ("duckdb", "ducklake", "delta"):
        typemap.plan(schema, backend)  # a scale equal to the precision is fine
    for scale in (-1, 8):
        bad = pa.schema([("d", pa.decimal128(7, scale))])
        for backend in ("duckdb", "ducklake", "delta"):
            with pytest.raises(UnsupportedTypeError) as refused:
                typemap.plan(bad, backend)
            assert http_status(refused.value) == 422 and "'d'" in refused.value.detail
