"""The checked-in golden streams are what generate.py writes, and stay small."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest
from ipc_testing import EOS, GOLDEN_DIR, GOLDENS, generate, golden_bytes, split_stream

MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())


def test_every_golden_is_checked_in_and_listed() -> None:
    """Each golden in generate.py has a checked-in file whose hash the manifest records."""
    files = MANIFEST["files"]
    assert sorted(files) == sorted(f"{name}.arrows" for name in GOLDENS)
    assert sorted(p.name for p in GOLDEN_DIR.glob("*.arrows")) == sorted(files)
    for name in GOLDENS:
        data = golden_bytes(name)
        entry = files[f"{name}.arrows"]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])


def test_goldens_are_small() -> None:
    """All goldens together stay under 300 KB."""
    assert sum(len(golden_bytes(name)) for name in GOLDENS) < 300 * 1024


@pytest.mark.skipif(
    pa.__version__ != MANIFEST["pyarrow"],
    reason=f"goldens were written by pyarrow {MANIFEST['pyarrow']}; compressed bytes may differ",
)
@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_generator_reproduces_the_checked_in_bytes(name: str) -> None:
    """Running generate.py with the recorded pyarrow rewrites identical bytes."""
    assert GOLDENS[name].encode() == golden_bytes(name)


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_pyarrow_reads_goldens_as_expected(name: str) -> None:
    """pyarrow's own reader agrees with the expected tables (the goldens are sound)."""
    table = pa.ipc.open_stream(golden_bytes(name)).read_all()
    assert table.equals(GOLDENS[name].expected_table())
    frames, end = split_stream(golden_bytes(name))
    legacy = frames[0].legacy
    assert end == (b"" if not GOLDENS[name].eos_marker else EOS[4:] if legacy else EOS)


def test_generator_check_mode_passes() -> None:
    """generate.py --check finds nothing stale when run with the recorded pyarrow."""
    if pa.__version__ != MANIFEST["pyarrow"]:
        pytest.skip("different pyarrow")
    assert generate.main(["--check"]) == 0
