"""atheris harness for the sans-IO FlightData (DoPut request stream) decoder.

Each input is fed whole, byte by byte and split at random points; it must
decode or raise a ``ProtocolError`` (see ``flight_invariant.py``). Anything
else is a crash, and every crash becomes a regression test in
``tests/protocol/test_flight_decoder.py``.

Run (``pip install atheris``)::

    python fuzz/fuzz_flight.py -max_total_time=300          # corpus in $TMPDIR
    python fuzz/fuzz_flight.py -runs=10000 my_corpus_dir/   # or your own corpus

Without a corpus directory a working one is made under the temp directory and
seeded with DoPut streams built from the golden IPC streams of
``tests/protocol/golden``. Half of the mutations are libFuzzer's, half are
structure-aware (``flight_invariant.mutate``) so inputs get past the gRPC and
protobuf framing into the IPC messages.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

try:
    import atheris
except ImportError:  # the test suite imports nothing from here; atheris is optional
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["arrowport", "flight_invariant", "ipc_invariant"]):
        import flight_invariant
else:
    import flight_invariant

_SEEDS = flight_invariant.seeds()
_DONORS = list(_SEEDS.values())


def test_one_input(data: bytes) -> None:
    flight_invariant.check(data)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if atheris is not None and rng.random() < 0.5:
        out = atheris.Mutate(data, max_size)
        return bytes(out)
    return flight_invariant.mutate(data, rng, _DONORS)[:max_size]


def _working_corpus() -> str:
    corpus = Path(tempfile.gettempdir()) / "arrowport-flight-corpus"
    corpus.mkdir(exist_ok=True)
    for name, data in _SEEDS.items():
        target = corpus / f"{name}.flight"
        if not target.exists():
            target.write_bytes(data)
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
