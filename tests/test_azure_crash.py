"""SIGKILL crash trials with the landing on Azurite (issue 11): the fault points of tests/test_faults.py
and tests/test_damage.py, against the object-storage commit protocol (parts written under their final
names, the state as the only commit record; rewrites via temporary blobs, a server-side copy and the
redo record). After each kill the next run resumes exactly: the landing equals an uninterrupted
run's, every blob is a listed file with its SHA-256, and nothing is left over.

The state comes from ``state_env_module`` (SQLite by default; tests/test_azure_postgres.py overrides it).
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cohortsync.config import load_settings
from cohortsync.landing import open_landing
from conftest import CONFIG, TEST_KEY, Project, keep_everything_policy, person_ids
from servers.azurite import Azurite
from test_azure_landing import StateEnv, landing_rows_of, open_state
from test_faults import EXTRA_CONFIG

NAMED = {
    "fresh": ["mid_stream@5", "before_finish", "between_renames@4", "after_land", "after_commit@3"],
    "incremental": ["mid_stream@3", "between_renames", "after_land@3", "after_commit"],
    "late": ["after_land", "after_land@3"],
}


@pytest.fixture(scope="module")
def az_env(azurite: Azurite) -> Iterator[dict[str, str]]:
    """The emulator endpoint and key for the whole module (CLI runs and subprocesses inherit them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("COHORTSYNC_LANDING__PATH", raising=False)
        for k, v in azurite.env().items():
            mp.setenv(k, v)
        yield azurite.env()


@dataclass
class AzProject:
    """A project folder (source, cohorts, state) whose landing is ``container/prefix`` on Azurite."""

    root: Path
    azurite: Azurite
    container: str
    prefix: str

    @property
    def landing_root(self) -> str:
        return f"{self.container}/{self.prefix}"

    def write_config(self) -> None:
        url = self.azurite.url(self.container, self.prefix)
        text = (self.root / "cohortsync.toml").read_text()
        head, _, rest = text.partition("[landing]\npath = ")
        rest = rest.split("\n", 1)[1]
        (self.root / "cohortsync.toml").write_text(f'{head}[landing]\npath = "{url}"\n{rest}')

    def clone(self, root: Path, prefix: str | None = None) -> AzProject:
        shutil.copytree(self.root, root)
        other = AzProject(root, self.azurite, self.container, prefix or f"p{uuid.uuid4().hex[:12]}")
        self.azurite.copy_tree(self.landing_root, other.landing_root)
        other.write_config()
        return other

    def project(self) -> Project:
        return Project(self.root, CliRunner())

    def run(self, *args: str, fault: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        e = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, **(env or {})}
        e.pop("COHORTSYNC_FAULT_POINT", None)
        if fault:
            e["COHORTSYNC_FAULT_POINT"] = fault
        return subprocess.Popen(
            [sys.executable, "-m", "cohortsync.cli", "--config", str(self.root / "cohortsync.toml"), *args],
            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def rows(self) -> dict[str, list[tuple[object, ...]]]:
        s = load_settings(self.root / "cohortsync.toml")
        return landing_rows_of(open_landing(s), s)

    def state_matches_blobs(self) -> dict[tuple[str, str], object]:
        """Every blob is a listed file with its SHA-256 and the other way round; the watermarks."""
        blobs = self.azurite.files(self.landing_root)
        with open_state(load_settings(self.root / "cohortsync.toml")) as st:
            marks = st.watermarks()
            listed = {f"{c}/{t}/{f['name']}": f["sha256"] for (c, t) in marks for f in st.files(c, t)}
        extra = {k for k in blobs if "/.unlisted/" not in k} ^ set(listed)
        assert not extra, extra
        for k, digest in listed.items():
            assert hashlib.sha256(blobs[k]).hexdigest() == digest, k
        return {k: v.wm for k, v in marks.items()}


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (out + err).decode(errors="replace")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, eunomia_db: Path, azurite: Azurite, az_env: dict[str, str],
             state_env_module: StateEnv) -> dict[str, AzProject]:
    base = tmp_path_factory.mktemp("azcrash")
    container = azurite.new_container()
    root = base / "fresh"
    root.mkdir()
    shutil.copy(eunomia_db, root / "omop.duckdb")
    (root / "cohortsync.toml").write_text(CONFIG + EXTRA_CONFIG + "file_rows = 8192\n")  # several parts per window
    (root / "keep_everything.toml").write_text(keep_everything_policy())
    fresh = AzProject(root, azurite, container, "fresh")
    fresh.write_config()
    p = fresh.project()
    ids = person_ids(p)
    env = state_env_module(root)
    assert p.cli("add-cohort", "alpha", "--patients", str(p.write_ids("a.csv", ids[::3])), env=env).exit_code == 0
    assert p.cli("add-cohort", "beta", "--patients", str(p.write_ids("b.csv", ids[::5])), env=env).exit_code == 0
    fresh_done = fresh.clone(base / "fresh_done", "fresh_done")
    assert fresh_done.project().cli("sync", "-q", env=state_env_module(fresh_done.root)).exit_code == 0
    incremental = fresh_done.clone(base / "incremental", "incremental")
    incremental.project().add_load()
    incremental_done = incremental.clone(base / "incremental_done", "incremental_done")
    assert incremental_done.project().cli("sync", "-q", env=state_env_module(incremental_done.root)).exit_code == 0
    late_done = fresh.clone(base / "late_done", "late_done")
    late_done.project().add_load()
    assert late_done.project().cli("sync", "-q", env=state_env_module(late_done.root)).exit_code == 0
    return {"fresh": fresh, "fresh_done": fresh_done, "incremental": incremental, "incremental_done": incremental_done,
            "late": fresh, "late_done": late_done}


@pytest.fixture(scope="module")
def state_env_module() -> StateEnv:
    """``state_env`` of tests/test_azure_landing.py for module-scoped fixtures (override both together).
    A clone (:meth:`AzProject.clone`) copies the project folder, so a state kept elsewhere must be
    copied there too."""
    return lambda root: {}


TRIALS = [(stage, f"named:{p}") for stage, points in NAMED.items() for p in points] + [
    (stage, f"random:{i}") for i in range(2) for stage in ("fresh", "incremental")
]
TRIALS_MARKED = [
    pytest.param(stage, fault, id=f"{stage}-{fault}")
    for stage, fault in TRIALS
]


@pytest.mark.parametrize(("stage", "fault"), TRIALS_MARKED)
def test_killed_sync_on_azurite_then_rerun_equals_an_uninterrupted_run(
    prepared: dict[str, AzProject], tmp_path: Path, stage: str, fault: str, state_env_module: StateEnv
) -> None:
    p = prepared[stage].clone(tmp_path / "p")
    kind, _, arg = fault.partition(":")
    if kind == "named":
        code, out = finish(p.run("sync", "-q", fault=arg, env=state_env_module(p.root)))
        assert code == -signal.SIGKILL, out
    else:
        proc = p.run("sync", "-q", env=state_env_module(p.root))
        time.sleep(random.Random(int(arg)).uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=300)
    if stage == "late":
        p.project().add_load()
    code, out = finish(p.run("sync", "-q", env=state_env_module(p.root)))
    assert code == 0, out
    expected = prepared[f"{stage}_done"]
    assert p.state_matches_blobs() == expected.state_matches_blobs()
    assert p.rows() == expected.rows()


@pytest.mark.parametrize(
    ("fault", "recover"),
    [
        ("relanding_sealed", "verify --repair"),  # new blobs complete under temporary names, state not swapped
        ("relanding_swapped", "sync"),  # state swapped, no blob copied into place yet
        ("between_relanding_moves", "sync"),  # one copied, the others not
        ("between_relanding_moves@3", "verify"),
    ],
)
def test_a_repair_killed_midway_on_azurite_is_finished_by_the_next_command(
    prepared: dict[str, AzProject], tmp_path: Path, fault: str, recover: str, state_env_module: StateEnv
) -> None:
    p = prepared["fresh_done"].clone(tmp_path / "p")
    before = p.rows()
    blobs = p.azurite.files(p.landing_root)
    victim = sorted(k for k in blobs if k.startswith("alpha/condition_occurrence/"))[0]
    with p.azurite.fs.open_output_stream(f"{p.landing_root}/{victim}") as out:
        out.write(blobs[victim][: len(blobs[victim]) // 2])  # truncated
    code, out = finish(p.run("verify", "alpha", "--repair", fault=fault, env=state_env_module(p.root)))
    assert code == -signal.SIGKILL, out
    code, out = finish(p.run(*recover.split(), "alpha" if recover.startswith("verify") else "-q", env=state_env_module(p.root)))
    assert code == 0 and "Traceback" not in out, out
    p.state_matches_blobs()
    code, out = finish(p.run("verify", "alpha", env=state_env_module(p.root)))
    assert code == 0, out
    assert p.rows() == before


def test_a_withdrawal_killed_mid_purge_on_azurite_is_finished_by_the_next_sync(
    prepared: dict[str, AzProject], tmp_path: Path, state_env_module: StateEnv
) -> None:
    p = prepared["fresh_done"].clone(tmp_path / "p")
    members = [int(x) for x in (p.root / "a.csv").read_text().split()[1:]]
    gone = p.project().write_ids("gone.csv", members[:30])
    code, out = finish(p.run("amend-cohort", "alpha", "--remove", str(gone), fault="mid_purge", env=state_env_module(p.root)))
    assert code == -signal.SIGKILL, out
    code, out = finish(p.run("sync", "-q", env=state_env_module(p.root)))
    assert code == 0 and "finished the purge of amendment 1" in out, out
    p.state_matches_blobs()
    code, out = finish(p.run("verify", "alpha", env=state_env_module(p.root)))
    assert code == 0, out
    # The same withdrawal without a crash, on a local copy of the same start, lands the same rows.
    q = prepared["fresh_done"].clone(tmp_path / "q")
    assert q.project().cli("amend-cohort", "alpha", "--remove", str(gone), env=state_env_module(q.root)).exit_code == 0
    assert p.rows() == q.rows()
