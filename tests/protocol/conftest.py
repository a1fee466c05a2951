"""Fixtures for the sans-IO protocol tests: bytes in, events out.

``ipc_testing`` (next to this file) and ``fuzz/ipc_invariant.py`` are plain
modules; this conftest puts their folders on ``sys.path`` so the tests import
them whatever pytest's import mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parents[1] / "fuzz"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from ipc_testing import MODES  # noqa: E402


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """How the bytes are fed: whole, one byte at a time, or with trailing bytes."""
    return str(request.param)
