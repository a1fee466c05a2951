"""atheris harness for the sans-IO HTTP/2 session (``arrowport.protocol.h2session``).

Each input is a client's frames after the preface, fed whole, byte by byte and
split; the session must refuse or serve it without an exception, send only
whole frames, and keep its memory bounded (see ``h2session_invariant.py``).

Run (``pip install atheris``)::

    python fuzz/fuzz_h2session.py -max_total_time=300     # corpus in $TMPDIR
    python fuzz/fuzz_h2session.py -runs=10000 my_corpus/  # or your own corpus
    python fuzz/fuzz_h2session.py crash-1234abcd          # run one input once

A corpus directory that is missing or empty is seeded with
``h2session_invariant.seeds()``. Half of the mutations are libFuzzer's, half
frame-aware (``h2session_invariant.mutate``).
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import atheris
except ImportError:  # pragma: no cover - main() says atheris is missing
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["arrowport", "h2", "hpack", "hyperframe"]):
        import h2session_invariant
else:  # pragma: no cover
    import h2session_invariant


def main(argv: list[str]) -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if not positional:
        directory = Path(tempfile.gettempdir()) / "arrowport-h2session-corpus"
        argv = [*argv, str(directory)]
        positional = [str(directory)]
    first = Path(positional[0])
    if not first.exists() or (first.is_dir() and not any(first.iterdir())):
        first.mkdir(parents=True, exist_ok=True)
        for name, data in h2session_invariant.seeds().items():
            (first / f"{name}.h2").write_bytes(data)
    donors = list(h2session_invariant.seeds().values())

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return bytes(atheris.Mutate(data, max_size))
        return h2session_invariant.mutate(data, rng, donors)[:max_size]

    atheris.Setup(argv, h2session_invariant.check, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
