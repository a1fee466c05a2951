"""atheris harness for the sans-IO Arrow IPC stream decoder.

Each input is fed whole and byte by byte; it must decode or raise a
``ProtocolError`` (see ``ipc_invariant.py``). Anything else is a crash, and
every crash becomes a regression test in ``tests/protocol/test_fuzz_regressions.py``.

Run (``pip install atheris``)::

    python fuzz/fuzz_ipc.py -max_total_time=300          # corpus in $TMPDIR
    python fuzz/fuzz_ipc.py -runs=10000 my_corpus_dir/   # or your own corpus
    python fuzz/fuzz_ipc.py crash-1234abcd               # run one input once

A corpus directory that is missing or empty is seeded with the golden streams
of ``tests/protocol/golden`` (which libFuzzer must not write into); see
``harness.py``. Half of the mutations are libFuzzer's, half are structure-aware
(``ipc_invariant.mutate``) so inputs get past the framing. ``fuzz/run.py``
runs all three harnesses for a set time and totals their executions.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

if harness.atheris is not None:
    with harness.atheris.instrument_imports(include=["arrowport"]):
        import ipc_invariant
else:  # pragma: no cover - main() says atheris is missing
    import ipc_invariant


def main(argv: list[str]) -> None:
    harness.main(
        argv,
        name="ipc",
        check=ipc_invariant.check,
        mutate=ipc_invariant.mutate,
    )


if __name__ == "__main__":
    main(sys.argv)
