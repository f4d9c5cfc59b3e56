"""Many more SIGKILL trials than the test suite runs: `python benchmarks/crash_trials.py --trials 200`.

Uses the same harness as tests/test_faults.py (prepared projects on Eunomia, kill, re-run, compare with
an uninterrupted run) with kill delays drawn at random and named points chosen at random. Prints
the pass count and, for any failure, the trial's seed so it can be replayed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_faults as tf  # noqa: E402
from conftest import build_eunomia  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cohortsync-crash-"))
    db = work / "eunomia.duckdb"
    build_eunomia(db)

    class Factory:
        def mktemp(self, name: str) -> Path:
            p = work / name
            p.mkdir()
            return p

    prepared = tf.prepared.__wrapped__(Factory(), db)  # type: ignore[attr-defined]
    rng = random.Random(args.seed)
    failures = []
    started = time.time()
    for i in range(args.trials):
        stage = rng.choice(["fresh", "incremental", "late"])
        fault = f"named:{rng.choice(tf.NAMED[stage])}" if rng.random() < 0.5 else f"random:{rng.randrange(10**6)}"
        trial = work / f"t{i}"
        trial.mkdir()
        try:
            tf.test_killed_sync_then_rerun_equals_an_uninterrupted_run(prepared, trial, stage, fault)
        except (AssertionError, Exception) as e:  # report and go on: the point is the count
            failures.append((i, stage, fault, repr(e)[:200]))
        shutil.rmtree(trial, ignore_errors=True)
    print(f"{args.trials - len(failures)}/{args.trials} trials passed in {time.time() - started:.0f}s")
    for f in failures:
        print("FAILED", *f)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _ = pytest  # the harness module imports pytest; keep it importable here
    raise SystemExit(main())
