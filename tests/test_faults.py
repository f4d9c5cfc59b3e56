"""Crash safety, proven by killing real `cohortsync sync` processes with SIGKILL.

Each trial copies a prepared project, runs a sync that is killed (at a named point of the commit
protocol, or after a random delay), runs it again to completion, and checks that the landing equals
that of an uninterrupted run — same rows, no duplicates, no gaps, no temporary files — and that the
state store agrees with the files on disk (every listed file present with its sha256, nothing unlisted,
the same watermarks). benchmarks/crash_trials.py runs many more trials.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from cohortsync.state import StateStore
from conftest import TEST_KEY, Project, person_ids

TABLES = ["person", "condition_occurrence", "drug_exposure", "measurement"]
EXTRA_CONFIG = f"""
[sync]
tables = {TABLES!r}
batch_rows = 4096
""".replace("'", '"')

# Named points and how often each scenario passes them (all are reached, so each trial really dies).
NAMED = {
    "fresh": ["mid_stream", "mid_stream@5", "mid_stream@12", "before_finish", "between_renames", "between_renames@4",
              "after_land", "after_land@2", "after_commit", "after_commit@3"],
    "incremental": ["mid_stream", "mid_stream@3", "before_finish", "before_finish@2", "between_renames",
                    "between_renames@3", "after_land", "after_land@3", "after_commit", "after_commit@2"],
    "late": ["between_renames", "after_land", "after_land@3"],
}


def sync_process(root: Path, fault: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY}
    env.pop("COHORTSYNC_FAULT_POINT", None)
    if fault:
        env["COHORTSYNC_FAULT_POINT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "cohortsync.cli", "--config", str(root / "cohortsync.toml"), "sync", "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def landing_rows(root: Path) -> dict[str, list[tuple[object, ...]]]:
    con = duckdb.connect()
    out = {}
    for d in sorted((root / "landing").glob("*/*")):
        files = sorted(d.glob("*.parquet"))
        rows = con.execute(f"SELECT * FROM read_parquet({[str(f) for f in files]!r})").fetchall() if files else []
        out[f"{d.parent.name}/{d.name}"] = sorted(rows, key=repr)
    return out


def check_state_matches_disk(root: Path) -> dict[tuple[str, str], object]:
    with StateStore(root / "state") as st:
        marks = st.watermarks()
        for cohort, table in marks:
            listed = {f["name"]: f for f in st.files(cohort, table)}
            d = root / "landing" / cohort / table
            on_disk = {p.name for p in d.iterdir()} if d.exists() else set()
            assert on_disk == set(listed), (cohort, table, on_disk ^ set(listed))
            for name, f in listed.items():
                assert hashlib.sha256((d / name).read_bytes()).hexdigest() == f["sha256"]
    return {k: v.wm for k, v in marks.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, eunomia_db: Path) -> dict[str, Path]:
    """Two starting points (before the backfill; before an incremental sync) and their uninterrupted outcomes."""
    from click.testing import CliRunner

    from conftest import CONFIG, keep_everything_policy

    base = tmp_path_factory.mktemp("faults")
    fresh = base / "fresh"
    fresh.mkdir()
    shutil.copy(eunomia_db, fresh / "omop.duckdb")
    (fresh / "cohortsync.toml").write_text(CONFIG + EXTRA_CONFIG)
    (fresh / "keep_everything.toml").write_text(keep_everything_policy())
    p = Project(fresh, CliRunner())
    ids = person_ids(p)
    assert p.cli("add-cohort", "alpha", "--patients", str(p.write_ids("a.csv", ids[::3]))).exit_code == 0
    assert p.cli("add-cohort", "beta", "--patients", str(p.write_ids("b.csv", ids[::5]))).exit_code == 0

    fresh_done = base / "fresh_done"
    shutil.copytree(fresh, fresh_done)
    assert Project(fresh_done, CliRunner()).cli("sync", "-q").exit_code == 0

    incremental = base / "incremental"
    shutil.copytree(fresh_done, incremental)
    Project(incremental, CliRunner()).add_load()
    incremental_done = base / "incremental_done"
    shutil.copytree(incremental, incremental_done)
    assert Project(incremental_done, CliRunner()).cli("sync", "-q").exit_code == 0
    # A new load arrives between the crash and the re-run: the re-run's window differs from the dead one's.
    late_done = base / "late_done"
    shutil.copytree(fresh, late_done)
    Project(late_done, CliRunner()).add_load()
    assert Project(late_done, CliRunner()).cli("sync", "-q").exit_code == 0
    return {
        "fresh": fresh, "fresh_done": fresh_done, "incremental": incremental, "incremental_done": incremental_done,
        "late": fresh, "late_done": late_done,
    }


TRIALS = [(stage, f"named:{p}") for stage, points in NAMED.items() for p in points] + [
    (stage, f"random:{i}") for i in range(2) for stage in ("fresh", "incremental")
]


@pytest.mark.parametrize(("stage", "fault"), TRIALS, ids=[f"{s}-{f}" for s, f in TRIALS])
def test_killed_sync_then_rerun_equals_an_uninterrupted_run(
    prepared: dict[str, Path], tmp_path: Path, stage: str, fault: str
) -> None:
    root = tmp_path / "p"
    shutil.copytree(prepared[stage], root)
    kind, _, arg = fault.partition(":")
    if kind == "named":
        proc = sync_process(root, arg)
        proc.wait(timeout=300)
        # Every named point is reached by this scenario, so the run must have been killed.
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else b""
    else:
        proc = sync_process(root)
        time.sleep(random.Random(int(arg)).uniform(0.3, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
    if stage == "late":
        from click.testing import CliRunner

        Project(root, CliRunner()).add_load()
    again = sync_process(root)
    again.wait(timeout=300)
    assert again.returncode == 0, again.stderr.read() if again.stderr else b""
    assert not list(root.rglob(".tmp-*"))
    expected = prepared[f"{stage}_done"]
    assert check_state_matches_disk(root) == check_state_matches_disk(expected)
    assert landing_rows(root) == landing_rows(expected)
