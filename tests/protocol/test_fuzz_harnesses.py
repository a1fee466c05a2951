"""The atheris harnesses run, and the whole-request invariant holds on its seeds.

The first part needs no atheris: the request harness's invariant
(``fuzz/request_invariant.py``) on every seed and on deterministic mutants,
and the corpus builder. The second part runs each harness in a subprocess for
a few seconds on a fresh seed corpus and checks that it exits cleanly after
fuzzing past its seeds; it is skipped when atheris is not installed
(``pip install atheris``). Long runs: ``python fuzz/run.py`` (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import corpus
import h2session_invariant
import pytest
import request_invariant
from ipc_testing import GOLDENS
from request_invariant import FLIGHT, HTTP, KNOWN_BUGS, check, mutate, split_request

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
CRASHES = Path(__file__).resolve().parent / "golden" / "crashes"
SECONDS = 4  # per harness; three harnesses stay well under 30 s with start-up
SEED = int(os.environ.get("ARROWPORT_FUZZ_SEED", "20260415"))
MUTANTS = int(os.environ.get("ARROWPORT_FUZZ_MUTANTS", "20"))
ALL_KNOWN = frozenset(KNOWN_BUGS)  # the fuzz runs below go past bugs not fixed yet
SEEDS = request_invariant.seeds()
NAMES = sorted(SEEDS)


@pytest.mark.parametrize("name", NAMES)
def test_request_seeds_are_accepted(name: str) -> None:
    """Each golden, as an HTTP body and as a DoPut, is accepted (whole, byte by byte, split);
    over HTTP a golden without the end-of-stream marker is refused as truncated."""
    outcome = check(SEEDS[name], frozenset())
    golden = name.split("_", 1)[1]
    if name.startswith("http_") and not GOLDENS[golden].eos_marker:
        assert outcome.error is not None and outcome.error[0] == "missing_eos_marker", outcome
        return
    assert outcome.parsed, outcome
    assert outcome.transport == (FLIGHT if name.startswith("flight_") else HTTP)
    assert outcome.events[-1][0] == "end"


@pytest.mark.parametrize("name", NAMES)
def test_request_mutants_satisfy_the_invariant(name: str) -> None:
    """Deterministic structure-aware mutants are accepted or cleanly refused."""
    rng = random.Random(f"{SEED}:{name}")
    donors = list(SEEDS.values())
    outcomes = set()
    for _ in range(MUTANTS):
        outcome = check(mutate(SEEDS[name], rng, donors), ALL_KNOWN)
        outcomes.add(outcome.error[0] if outcome.error else "accepted")
    if MUTANTS >= 20:
        assert len(outcomes) > 1


def test_request_mutator_covers_the_request_checks() -> None:
    """Stacked mutants reach every stage: decoder, validate_batch and the DoPut checks."""
    rng = random.Random(SEED)
    donors = list(SEEDS.values())
    stages, errors = set(), set()
    for i in range(400):
        data = donors[i % len(donors)]
        for _ in range(rng.randint(1, 4)):
            data = mutate(data, rng, donors)
        outcome = check(data, ALL_KNOWN)
        stages.add(outcome.stage)
        errors.add(outcome.error[0] if outcome.error else None)
    assert {None, "decoder", "validate", "request"} <= stages
    assert {"invalid_batch", "invalid_request", "invalid_name", "trailing_data"} <= errors


def test_transport_byte() -> None:
    assert split_request(b"") == (HTTP, b"")
    assert split_request(b"\x00abc") == (HTTP, b"abc")
    assert split_request(b"\x03abc") == (FLIGHT, b"abc")


def test_tolerated_names_only_known_bugs() -> None:
    assert request_invariant.tolerated("all") == ALL_KNOWN
    assert request_invariant.tolerated("") == frozenset()
    with pytest.raises(ValueError, match="no known bug"):
        request_invariant.tolerated("no_such_bug")


@pytest.mark.parametrize("harness", corpus.HARNESSES)
def test_corpus_builder(tmp_path: Path, harness: str) -> None:
    """Seeds: every golden plus one mini stream per golden column, none of them empty."""
    goldens = len(corpus.golden_streams())
    written = corpus.build(tmp_path, harness)
    files = sorted(tmp_path.iterdir())
    assert written == len(files) > goldens
    assert all(f.stat().st_size > 0 for f in files)
    assert corpus.build(tmp_path, harness) == 0  # existing seeds are kept


# -- the harnesses themselves (atheris) --------------------------------------------

_DONE = re.compile(r"^Done (\d+) runs in \d+ second", re.M)


def _harness(name: str, *args: str, tolerate: str = "all", cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, ARROWPORT_FUZZ_TOLERATE=tolerate)
    proc = subprocess.run(
        [sys.executable, str(FUZZ_DIR / f"fuzz_{name}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", corpus.HARNESSES)
def test_harness_fuzzes_without_crashing(tmp_path: Path, name: str) -> None:
    """A few seconds of coverage-guided fuzzing from the seed corpus: no crash, runs done."""
    pytest.importorskip("atheris")
    seeds = tmp_path / "corpus"
    count = corpus.build(seeds, name)
    code, output = _harness(
        name,
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-timeout=20",
        # Linux keeps ru_maxrss across exec, so the child starts with pytest's peak RSS
        # (GBs late in a full run): bound single allocations instead of the RSS.
        "-rss_limit_mb=32768",
        "-malloc_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(seeds),
        cwd=tmp_path,
    )
    assert code == 0, output[-4000:]
    done = _DONE.search(output)
    assert done, output[-4000:]
    assert int(done.group(1)) > count  # fuzzed past the seeds, not just loaded them


# -- the HTTP/2 session harness (fuzz/fuzz_h2session.py) ------------------------------


def test_h2session_seeds_and_mutants_hold_the_invariant() -> None:
    """Seeds and frame-level mutants: no exception, whole frames out, bounded memory."""
    seeds = h2session_invariant.seeds()
    verdicts = {name: h2session_invariant.check(data) for name, data in seeds.items()}
    assert verdicts["request"] is None and verdicts["continuation"] == "header_block"
    rng = random.Random(SEED)
    donors = list(seeds.values())
    seen = set()
    for i in range(10 * MUTANTS):
        data = donors[i % len(donors)]
        for _ in range(rng.randint(1, 3)):
            data = h2session_invariant.mutate(data, rng, donors)
        seen.add(h2session_invariant.check(data))
    assert {None, "protocol_error"} <= seen and len(seen) > 3


def test_h2session_harness_fuzzes_without_crashing(tmp_path: Path) -> None:
    """A few seconds of coverage-guided fuzzing of the HTTP/2 session: no crash, runs done."""
    pytest.importorskip("atheris")
    seeds = tmp_path / "corpus"
    code, output = _harness(
        "h2session",
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-timeout=20",
        "-rss_limit_mb=32768",
        "-malloc_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(seeds),
        cwd=tmp_path,
    )
    assert code == 0, output[-4000:]
    done = _DONE.search(output)
    assert done, output[-4000:]
    assert int(done.group(1)) > len(h2session_invariant.seeds())
