"""atheris harness for a whole request through the protocol layer.

An input is one request: a first byte that picks the transport (even: an
HTTP body, odd: a Flight DoPut), then the bytes the client sends. It is
driven as the server drives it (decoders with ``validate=False``, then
``validate_batch`` on every batch, the DoPut descriptor checks, the ingest
loop's queue and trailing-data rules), fed whole, byte by byte and split at
random points; see ``request_invariant.py``. Anything but acceptance or a
clean 400/413 refusal is a crash.

Run (``pip install atheris``)::

    python fuzz/fuzz_request.py -max_total_time=300          # corpus in $TMPDIR
    python fuzz/fuzz_request.py -runs=10000 my_corpus_dir/   # or your own corpus

Known, unfixed bugs (``request_invariant.KNOWN_BUGS``) are crashes unless
``ARROWPORT_FUZZ_TOLERATE=all`` is set, as ``fuzz/run.py`` and the CI test do.
A corpus directory that is missing or empty is seeded with every golden
stream as an HTTP body and as a DoPut (see ``harness.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

if harness.atheris is not None:
    with harness.atheris.instrument_imports(include=["arrowport"]):
        import request_invariant
else:  # pragma: no cover - main() says atheris is missing
    import request_invariant


def main(argv: list[str]) -> None:
    harness.main(
        argv,
        name="request",
        check=request_invariant.check,
        mutate=request_invariant.mutate,
    )


if __name__ == "__main__":
    main(sys.argv)
