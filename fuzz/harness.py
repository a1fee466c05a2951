"""What the three atheris harnesses share: the mutator and the corpus set-up.

A harness module imports its invariant module under
``atheris.instrument_imports`` and calls :func:`main` with it. This module is
not instrumented and imports nothing from arrowport, so that instrumentation
sees arrowport's modules first.

Corpus handling: with no corpus directory on the command line, a working
corpus under the temp directory (``$TMPDIR/arrowport-<name>-corpus``) is used.
A corpus directory that does not exist yet, or is empty, is first filled with
the harness's seeds (``corpus.py``: the golden streams of
``tests/protocol/golden``, which libFuzzer must never write into, and small
streams built from them). ``--minis`` (ours, not libFuzzer's) seeds with and
mutates towards the small streams only. Files named on the command line are
run once each, as libFuzzer does (to reproduce a crash). ``-jobs``/``-workers``,
``-minimize_crash=1`` and ``-merge=1`` work: argv[0] becomes ``python script``.
"""

from __future__ import annotations

import random
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import corpus

try:
    import atheris
except ImportError:  # the test suite imports the invariants, never atheris
    atheris = None

Mutate = Callable[[bytes, random.Random, list[bytes]], bytes]


def _corpus_args(argv: list[str], name: str, minis_only: bool) -> list[str]:
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if not positional:
        directory = Path(tempfile.gettempdir()) / f"arrowport-{name}-corpus"
        corpus.build(directory, name, minis_only)
        return [*argv, str(directory)]
    first = Path(positional[0])
    if not first.exists() or (first.is_dir() and not any(first.iterdir())):
        corpus.build(first, name, minis_only)
    return argv


def main(argv: list[str], *, name: str, check: Callable[[bytes], object], mutate: Mutate) -> None:
    """Fuzz ``check`` with libFuzzer's mutations and ``mutate``'s, half and half."""
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    minis_only = "--minis" in argv
    argv = [a for a in argv if a != "--minis"]
    # libFuzzer starts itself again by argv[0] for -jobs/-workers, -minimize_crash and
    # -merge; the script is not executable, so make argv[0] the command that runs it
    argv[0] = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(argv[0]).resolve()))}"
    donors = list(corpus.seeds(name, minis_only).values())

    def test_one_input(data: bytes) -> None:
        check(data)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return bytes(atheris.Mutate(data, max_size))
        return mutate(data, rng, donors)[:max_size]

    atheris.Setup(
        _corpus_args(argv, name, minis_only), test_one_input, custom_mutator=custom_mutator
    )
    atheris.Fuzz()
