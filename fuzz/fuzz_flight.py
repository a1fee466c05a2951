"""atheris harness for the sans-IO FlightData (DoPut request stream) decoder.

Each input is fed whole, byte by byte and split at random points; it must
decode or raise a ``ProtocolError`` (see ``flight_invariant.py``). Anything
else is a crash, and every crash becomes a regression test in
``tests/protocol/test_flight_decoder.py`` or ``test_fuzz_regressions.py``.

Run (``pip install atheris``)::

    python fuzz/fuzz_flight.py -max_total_time=300          # corpus in $TMPDIR
    python fuzz/fuzz_flight.py -runs=10000 my_corpus_dir/   # or your own corpus

A corpus directory that is missing or empty is seeded with DoPut streams
built from the golden IPC streams of ``tests/protocol/golden`` (see
``harness.py``). Half of the mutations are libFuzzer's, half are
structure-aware (``flight_invariant.mutate``) so inputs get past the gRPC and
protobuf framing into the IPC messages.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

if harness.atheris is not None:
    with harness.atheris.instrument_imports(include=["arrowport"]):
        import flight_invariant
else:  # pragma: no cover - main() says atheris is missing
    import flight_invariant


def main(argv: list[str]) -> None:
    harness.main(
        argv,
        name="flight",
        check=flight_invariant.check,
        mutate=flight_invariant.mutate,
    )


if __name__ == "__main__":
    main(sys.argv)
