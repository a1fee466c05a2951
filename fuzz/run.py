"""Run the atheris harnesses for a set time, a few processes at a time, and total the runs.

Each harness gets ``--processes`` libFuzzer processes of ``--seconds`` each,
sharing one corpus directory per harness (libFuzzer reloads it, so they
exchange finds); at most ``--jobs`` processes run at once. Corpora are seeded
(``corpus.py``) before the first run and kept, so a later run goes on from
there. Known, unfixed bugs (``request_invariant.KNOWN_BUGS``) are tolerated
unless ``--strict``. Logs go to ``CORPUS/logs``, crash inputs to
``CORPUS/artifacts/<harness>/``. Exits 1 if any process found a crash.

    python fuzz/run.py --seconds 30                     # a quick look: 3 x 2 x 30 s, 2 at a time
    python fuzz/run.py --seconds 600 --jobs 2           # the long run (30 min wall)
    python fuzz/run.py --harness request --minis -- -max_len=2048
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

_DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.M)
_STATUS = re.compile(r"^#(\d+)\s", re.M)


@dataclass
class Result:
    harness: str
    index: int
    returncode: int
    runs: int
    seconds: float
    log: Path

    @property
    def crashed(self) -> bool:
        return self.returncode != 0


def _runs(log: str) -> int:
    done = _DONE.findall(log)
    if done:
        return int(done[-1][0])
    status = _STATUS.findall(log)  # a crashed process prints no "Done"
    return int(status[-1]) if status else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per process (-max_total_time)")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once")
    parser.add_argument("--processes", type=int, default=2, help="per harness")
    parser.add_argument("--harness", choices=corpus.HARNESSES, action="append")
    parser.add_argument(
        "--corpus", type=Path, default=Path(tempfile.gettempdir()) / "arrowport-fuzz"
    )
    parser.add_argument("--minis", action="store_true", help="small seeds only (faster runs)")
    parser.add_argument("--strict", action="store_true", help="known bugs are crashes too")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args(argv)
    harnesses = args.harness or list(corpus.HARNESSES)
    env = dict(os.environ)
    if not args.strict:
        env["ARROWPORT_FUZZ_TOLERATE"] = "all"
    (args.corpus / "logs").mkdir(parents=True, exist_ok=True)
    for harness in harnesses:
        corpus.build(args.corpus / harness, harness, args.minis)
        (args.corpus / "artifacts" / harness).mkdir(parents=True, exist_ok=True)

    # round-robin, so a run stopped early has worked on every harness
    tasks = [(harness, i) for i in range(args.processes) for harness in harnesses]

    stamp = time.strftime("%Y%m%d-%H%M%S")
    running: list[tuple[str, int, subprocess.Popen[bytes], Path, float]] = []
    results: list[Result] = []
    while tasks or running:
        while tasks and len(running) < args.jobs:
            harness, i = tasks.pop(0)
            log = args.corpus / "logs" / f"{stamp}-{harness}-{i}.log"
            command = [
                sys.executable,
                str(HERE / f"fuzz_{harness}.py"),
                *(["--minis"] if args.minis else []),
                f"-max_total_time={args.seconds}",
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
                f"-artifact_prefix={args.corpus / 'artifacts' / harness}/",
                *args.libfuzzer,
                str(args.corpus / harness),
            ]
            out = log.open("wb")
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            out.close()
            running.append((harness, i, proc, log, time.monotonic()))
            print(f"started {harness}[{i}] pid {proc.pid}: {log}", flush=True)
        time.sleep(1)
        for entry in list(running):
            harness, i, proc, log, started = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            text = log.read_text(errors="replace")
            result = Result(
                harness, i, proc.returncode, _runs(text), time.monotonic() - started, log
            )
            results.append(result)
            state = "CRASH" if result.crashed else "ok"
            print(
                f"{harness}[{i}] {state}: {result.runs} runs in {result.seconds:.0f} s", flush=True
            )

    print(f"\n{'harness':10} {'processes':>9} {'runs':>12} {'seconds':>9} {'runs/s':>8}")
    total = 0
    for harness in harnesses:
        mine = [r for r in results if r.harness == harness]
        runs, seconds = sum(r.runs for r in mine), sum(r.seconds for r in mine)
        total += runs
        rate = runs / seconds if seconds else 0.0
        print(f"{harness:10} {len(mine):>9} {runs:>12,} {seconds:>9.0f} {rate:>8.0f}")
    print(f"{'total':10} {len(results):>9} {total:>12,}")
    crashed = [r for r in results if r.crashed]
    for r in crashed:
        print(f"CRASH in {r.harness}[{r.index}] (exit {r.returncode}): see {r.log}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
