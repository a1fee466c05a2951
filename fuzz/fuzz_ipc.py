"""atheris harness for the sans-IO Arrow IPC stream decoder.

Each input is fed whole and byte by byte; it must decode or raise a
``ProtocolError`` (see ``ipc_invariant.py``). Anything else is a crash, and
every crash becomes a regression test in ``tests/protocol/test_fuzz_regressions.py``.

Run (``pip install atheris``)::

    python fuzz/fuzz_ipc.py -max_total_time=300          # corpus in $TMPDIR
    python fuzz/fuzz_ipc.py -runs=10000 my_corpus_dir/   # or your own corpus

Without a corpus directory a working one is made under the temp directory and
seeded with the golden streams of ``tests/protocol/golden`` (which libFuzzer
must not write into). Half of the mutations are libFuzzer's, half are
structure-aware (``ipc_invariant.mutate``) so inputs get past the framing.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN_DIR = HERE.parent / "tests" / "protocol" / "golden"
sys.path.insert(0, str(HERE))

try:
    import atheris
except ImportError:  # the test suite imports nothing from here; atheris is optional
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["arrowport", "ipc_invariant"]):
        import ipc_invariant
else:
    import ipc_invariant


def seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(GOLDEN_DIR.glob("*.arrows"))]


_DONORS = seeds()


def test_one_input(data: bytes) -> None:
    ipc_invariant.check(data)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if atheris is not None and rng.random() < 0.5:
        out = atheris.Mutate(data, max_size)
        return bytes(out)
    return ipc_invariant.mutate(data, rng, _DONORS)[:max_size]


def _working_corpus() -> str:
    corpus = Path(tempfile.gettempdir()) / "arrowport-ipc-corpus"
    corpus.mkdir(exist_ok=True)
    for path in GOLDEN_DIR.glob("*.arrows"):
        target = corpus / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    return str(corpus)


def main(argv: list[str]) -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    if not [a for a in argv[1:] if not a.startswith("-")]:
        argv = [*argv, _working_corpus()]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
