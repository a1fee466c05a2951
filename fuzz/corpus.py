"""Seed corpora for the atheris harnesses, all built from the golden streams.

Two kinds of seed, for each harness:

* the golden streams themselves (``tests/protocol/golden/*.arrows``), and
* "minis": for each golden and each of its top-level columns, a stream of that
  column alone holding the first two rows of the first three batches, written
  with the golden's own options (compression, dictionary deltas, legacy
  framing, no end marker) by ``tests/protocol/golden/generate.py``'s builders.

Every input is fed byte by byte as well as whole, so a run's speed is about
inversely proportional to input size: minis average 0.7 KB against 6 KB for the
goldens, run about eight times faster, and still hold every message kind,
codec and type the goldens do. The Flight and request seeds are the same
streams framed as DoPut requests (and, for requests, as HTTP bodies).

Build them into directories (the harnesses also do this themselves for a
missing or empty corpus directory)::

    python fuzz/corpus.py OUT_DIR            # OUT_DIR/ipc, OUT_DIR/flight, OUT_DIR/request
    python fuzz/corpus.py OUT_DIR --minis    # minis only (for short, fast runs)
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa

HERE = Path(__file__).resolve().parent
GOLDEN_DIR = HERE.parent / "tests" / "protocol" / "golden"
HARNESSES = ("ipc", "flight", "request")
SUFFIXES = {"ipc": ".arrows", "flight": ".flight", "request": ".request"}
MINI_ROWS, MINI_BATCHES = 2, 3


def _generator() -> ModuleType:
    name = "arrowport_golden_generate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GOLDEN_DIR / "generate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def golden_streams() -> dict[str, bytes]:
    """The checked-in golden IPC streams, by name."""
    return {p.stem: p.read_bytes() for p in sorted(GOLDEN_DIR.glob("*.arrows"))}


def mini_streams() -> dict[str, bytes]:
    """One small stream per golden and top-level column (see the module docstring)."""
    out = {}
    for name, golden in _generator().GOLDENS.items():
        batches = golden.batches()[:MINI_BATCHES]
        for i, column in enumerate(golden.schema):
            schema = pa.schema([column])
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, schema, options=golden.options) as writer:
                for batch in batches:
                    writer.write_batch(batch.select([i]).slice(0, MINI_ROWS))
            data = sink.getvalue()
            if golden.strip_eos:
                data = data[:-8]
            out[f"mini_{name}_{column.name}"] = data
    return out


def streams(minis_only: bool = False) -> dict[str, bytes]:
    minis = mini_streams()
    return minis if minis_only else golden_streams() | minis


def seeds(harness: str, minis_only: bool = False) -> dict[str, bytes]:
    """The seed inputs of ``harness`` (``ipc``, ``flight`` or ``request``), by name.

    Imports the harness's invariant module only now, so that a harness that
    imported it under atheris instrumentation keeps the instrumented one.
    """
    ipc = streams(minis_only)
    if harness == "ipc":
        return ipc
    if harness == "flight":
        import flight_invariant

        return flight_invariant.seeds(streams=ipc)
    if harness == "request":
        import request_invariant

        return request_invariant.seeds(streams=ipc)
    raise ValueError(f"unknown harness {harness!r}; one of {', '.join(HARNESSES)}")


def build(directory: Path, harness: str, minis_only: bool = False) -> int:
    """Write ``harness``'s seeds into ``directory``; return how many files were written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, data in seeds(harness, minis_only).items():
        target = directory / f"{name}{SUFFIXES[harness]}"
        if not target.exists():
            target.write_bytes(data)
            written += 1
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="writes OUT/ipc, OUT/flight and OUT/request")
    parser.add_argument("--minis", action="store_true", help="the small seeds only")
    parser.add_argument("--harness", choices=HARNESSES, action="append")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    for harness in args.harness or HARNESSES:
        count = build(args.out / harness, harness, args.minis)
        print(f"{args.out / harness}: {count} seeds written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
