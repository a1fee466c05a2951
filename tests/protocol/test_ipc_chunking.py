"""Property: however a stream is split into chunks, the decoder emits the same events."""

from __future__ import annotations

import functools
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ipc_testing import GOLDENS, Decoded, decode, decode_chunks, golden_bytes

from arrowport.protocol import BatchReceived, SchemaReceived, StreamEnded


@functools.cache
def _reference(name: str) -> Decoded:
    return decode(golden_bytes(name)).ok()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _assert_same_events(got: Decoded, want: Decoded, trailing: int = 0) -> None:
    assert len(got.events) == len(want.events)
    for g, w in zip(got.events, want.events, strict=True):
        assert type(g) is type(w)
        if isinstance(g, SchemaReceived) and isinstance(w, SchemaReceived):
            assert g.schema.equals(w.schema, check_metadata=True)
        elif isinstance(g, BatchReceived) and isinstance(w, BatchReceived):
            assert g.batch.equals(w.batch)
            assert (g.wire_bytes, g.decoded_bytes) == (w.wire_bytes, w.decoded_bytes)
        else:
            assert isinstance(g, StreamEnded) and g == w
    stats = want.decoder.statistics() | {"buffered_bytes": trailing}
    assert got.decoder.statistics() == stats


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(GOLDENS)), data=st.data())
def test_any_chunking_yields_the_same_batches(name: str, data: st.DataObject) -> None:
    """Any split of a golden stream decodes to the same events as the whole buffer."""
    raw = golden_bytes(name)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60), label="cuts")
    _assert_same_events(decode_chunks(_split(raw, cuts)).ok(), _reference(name))


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(n for n, g in GOLDENS.items() if g.eos_marker)),
    data=st.data(),
)
def test_chunking_with_trailing_bytes_keeps_them(name: str, data: st.DataObject) -> None:
    """Any split of a stream plus trailing bytes keeps exactly those bytes as trailing data."""
    raw = golden_bytes(name)
    trailer = data.draw(st.binary(min_size=1, max_size=40), label="trailer")
    whole = raw + trailer
    cuts = data.draw(st.lists(st.integers(0, len(whole)), max_size=30), label="cuts")
    got = decode_chunks(_split(whole, cuts)).ok()
    _assert_same_events(got, _reference(name), trailing=len(trailer))
    assert got.decoder.trailing_data == (trailer, True)
