"""A damaged or missing landing file (issue 15): verify names it, sync refuses to build on it,
status shows it, verify --repair lands the table again through the commit protocol, crash-safe.

The scenarios are also the rows truncated-file ... landing-older-than-state of tests/BAD_INPUTS.md
(tests/test_bad_inputs.py runs them); this file adds the kill-in-the-middle trials of a repair.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from cohortsync.state import StateStore
from conftest import TEST_KEY, Project, person_ids
from test_faults import landing_rows

TABLES = ["person", "condition_occurrence", "drug_exposure", "measurement"]
TARGET = "condition_occurrence"


def prepared(p: Project, file_rows: int = 1_000_000) -> None:
    extra = f"\n[sync]\ntables = {json.dumps(TABLES)}\nfile_rows = {file_rows}\nbatch_rows = {min(file_rows, 122_880)}\n"
    p.config.write_text(p.config.read_text() + extra)
    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", person_ids(p)[::3]))).exit_code == 0
    r = p.cli("sync", "-q")
    assert r.exit_code == 0, r.output


def state_matches_disk(p: Project) -> None:
    """Every file the state lists is on disk with its size and checksum; nothing else but set-aside folders."""
    import hashlib

    with StateStore(p.root / "state") as st:
        assert st.relandings() == {}
        for cohort, table in st.watermarks():
            listed = {f["name"]: f for f in st.files(cohort, table)}
            d = p.landing / cohort / table
            assert {x.name for x in d.iterdir() if x.name != ".unlisted"} == set(listed), table
            for name, f in listed.items():
                assert hashlib.sha256((d / name).read_bytes()).hexdigest() == f["sha256"]


def damage(p: Project, kind: str) -> Path:
    f = sorted((p.landing / "c" / TARGET).glob("*.parquet"))[0]
    data = f.read_bytes()
    if kind == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        f.write_bytes(b"\x00garbage!\xff")  # 10 bytes
    elif kind == "flipped":
        i = len(data) // 2
        f.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif kind == "missing":
        f.unlink()
    return f


PROBLEM = {
    "truncated": "bytes, the state recorded",
    "garbage": "10 bytes, the state recorded",
    "flipped": "content differs from what was landed (SHA-256 mismatch)",
    "missing": ": missing",
}


def damaged_file_scenario(p: Project, kind: str) -> None:
    """verify names the file, --json says the same, status shows it, sync refuses the table (when
    the size tells), verify --repair lands it again; no traceback anywhere (the CLI runner re-raises)."""
    prepared(p)
    before = landing_rows(p.root)
    f = damage(p, kind)
    r = p.cli("verify", "c")
    assert r.exit_code == 5
    found = [x for x in r.output.splitlines() if x.startswith("damaged: ")]
    assert found == [next(x for x in found if x.startswith(f"damaged: c {TARGET} {f.name}"))], r.output
    assert PROBLEM[kind] in found[0]
    lines = {x.split()[0]: x for x in r.output.splitlines() if not x.startswith(("damaged: ", "error: "))}
    assert lines[TARGET].split()[1] == "damaged"
    assert all(lines[t].split()[1] == "ok" for t in TABLES if t != TARGET), r.output
    j = p.cli("verify", "c", "--json")
    assert j.exit_code == 5
    doc = json.loads(j.output)
    assert [(x["table"], x["file"]) for x in doc["damaged_files"]] == [(TARGET, f.name)]
    assert PROBLEM[kind] in ": " + doc["damaged_files"][0]["problem"]
    assert {t["table"]: t["status"] for t in doc["tables"]}[TARGET] == "damaged"
    up_to_date = p.cli("sync", "-q")  # nothing to pull: it builds on nothing, but says what it saw
    assert up_to_date.exit_code == 0
    if kind != "flipped":
        assert f"note: landed file c/{TARGET}/{f.name} is " in up_to_date.output, up_to_date.output
    s = json.loads(p.cli("status", "--json").output)
    assert {t["table"]: t["last_verify"] for t in s["tables"]}[TARGET] == "damaged"
    assert "damaged" in next(x for x in p.cli("status").output.splitlines() if f" {TARGET} " in x)

    p.add_load()
    r = p.cli("sync", "-q")
    if kind == "flipped":  # same size: the cheap check before a sync cannot tell; verify does
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 5
        refused = f"{TARGET}: FAILED: landed file c/{TARGET}/{f.name} is "
        assert refused in r.output and "run 'cohortsync verify c --repair'" in r.output, r.output
        assert r.output.count("FAILED") == 1  # the other tables synced
    r = p.cli("verify", "c", "--repair")
    assert r.exit_code == 0, r.output
    assert f"re-landed c/{TARGET}:" in r.output and r.output.rstrip().endswith("repaired")
    state_matches_disk(p)
    assert p.cli("sync", "-q").exit_code == 0
    assert p.cli("verify", "c").exit_code == 0
    assert {t["table"]: t["last_verify"] for t in json.loads(p.cli("status", "--json").output)["tables"]}[TARGET] == "ok"
    after = landing_rows(p.root)
    assert set(after["c/person"]) == set(before["c/person"])


def restored_state_scenario(p: Project) -> None:
    """The state comes back from a backup older than the landing: files it does not list, rows it
    does not count. verify says so; the repair moves those files aside (never deletes them)."""
    prepared(p)
    shutil.copytree(p.root / "state", p.root / "state.bak")
    p.add_load()
    assert p.cli("sync", "-q").exit_code == 0
    shutil.rmtree(p.root / "state")
    shutil.copytree(p.root / "state.bak", p.root / "state")
    r = p.cli("verify", "c")
    assert r.exit_code == 5 and "file(s) in the folder that the state does not list" in r.output, r.output
    r = p.cli("verify", "c", "--repair")
    assert r.exit_code == 0, r.output
    assert "file(s) the state did not list moved to" in r.output
    assert list(p.landing.glob("c/*/.unlisted/*/*.parquet"))  # kept, out of the way
    state_matches_disk(p)
    assert p.cli("sync", "-q").exit_code == 0
    assert p.cli("verify", "c").exit_code == 0


def restored_landing_scenario(p: Project) -> None:
    """The landing comes back from a backup older than the state: files the state lists are gone."""
    prepared(p)
    shutil.copytree(p.landing, p.root / "landing.bak")
    p.add_load()
    assert p.cli("sync", "-q").exit_code == 0
    shutil.rmtree(p.landing)
    shutil.copytree(p.root / "landing.bak", p.landing)
    r = p.cli("verify", "c")
    assert r.exit_code == 5 and ": missing" in r.output, r.output
    p.add_load()
    r = p.cli("sync", "-q")
    assert r.exit_code == 5 and "is missing; run 'cohortsync verify c --repair'" in r.output, r.output
    r = p.cli("verify", "c", "--repair")
    assert r.exit_code == 0, r.output
    state_matches_disk(p)
    assert p.cli("sync", "-q").exit_code == 0
    assert p.cli("verify", "c").exit_code == 0


def cli_process(root: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY}
    env.pop("COHORTSYNC_FAULT_POINT", None)
    if fault:
        env["COHORTSYNC_FAULT_POINT"] = fault
    cmd = [sys.executable, "-m", "cohortsync.cli", "--config", str(root / "cohortsync.toml"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=300)


@pytest.mark.parametrize(
    ("fault", "recover"),
    [
        ("relanding_sealed", "verify --repair"),  # new files durable, state not swapped
        ("relanding_swapped", "sync"),  # state swapped, no file moved yet
        ("between_relanding_moves", "sync"),  # one file moved, the others not
        ("between_relanding_moves@3", "verify"),
    ],
)
def test_a_repair_killed_midway_is_finished_by_the_next_command(project: Project, fault: str, recover: str) -> None:
    prepared(project, file_rows=2048)  # several files per table, so a kill can fall between two moves
    assert len(list((project.landing / "c" / TARGET).glob("*.parquet"))) >= 4
    before = landing_rows(project.root)
    damage(project, "truncated")
    killed = cli_process(project.root, "verify", "c", "--repair", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    again = cli_process(project.root, *recover.split(), "c" if recover.startswith("verify") else "-q")
    assert b"Traceback" not in again.stderr, again.stderr.decode()
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    # The recovering command alone put state and folder back in agreement.
    state_matches_disk(project)
    assert not list(project.landing.rglob(".tmp-*"))
    final = cli_process(project.root, "verify", "c")
    assert final.returncode == 0, final.stdout.decode() + final.stderr.decode()
    assert landing_rows(project.root) == before


def test_a_withdrawal_refuses_a_missing_file_and_is_finished_after_the_repair(project: Project) -> None:
    """A purge must reach every file: with one missing it stops (one line), the repair lands the
    table again without the withdrawn person, and the next sync records the purge as done."""
    prepared(project)
    members = person_ids(project)[::3]
    f = damage(project, "missing")
    r = project.cli("amend-cohort", "c", "--remove", str(project.write_ids("w.csv", members[:2])))
    assert r.exit_code != 0
    assert r.output.startswith("error: cannot purge the withdrawn persons: landed file c/condition_occurrence/")
    assert r.output.count("\n") == 1 and f"{f.name} is missing; run 'cohortsync verify c --repair'" in r.output
    assert project.cli("verify", "c", "--repair").exit_code == 0
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert "finished the purge of amendment 1" in r.output
    con = duckdb.connect()
    left = con.execute(
        f"SELECT count(*) FROM read_parquet('{project.landing}/c/*/*.parquet', union_by_name=true) "
        f"WHERE person_id IN ({members[0]}, {members[1]})"
    ).fetchone()
    assert left == (0,)
    assert project.cli("verify", "c").exit_code == 0


@pytest.mark.parametrize("fault", ["relanding_sealed@2", "relanding_swapped", "between_relanding_moves@2"])
def test_a_load_dt_rewrite_killed_midway_is_finished_by_the_next_repair(project: Project, fault: str) -> None:
    """The in-place rewrite of a raw load_dt (issue 14) goes through the same swap: killed anywhere,
    the next repair finishes it and every table holds all its rows, order-only."""
    prepared(project, file_rows=2048)
    counts = {k: len(v) for k, v in landing_rows(project.root).items()}
    policy = project.root / "keep_everything.toml"
    policy.write_text(policy.read_text().replace('"load_dt" = "keep"', '"load_dt" = "order_only"'))
    killed = cli_process(project.root, "verify", "c", "--repair", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    again = cli_process(project.root, "verify", "c", "--repair")
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    state_matches_disk(project)
    assert not list(project.landing.rglob(".tmp-*"))
    assert cli_process(project.root, "verify", "c").returncode == 0
    assert {k: len(v) for k, v in landing_rows(project.root).items()} == counts
    con = duckdb.connect()
    for t in TABLES:
        kind = con.execute(f"SELECT DISTINCT typeof(load_dt) FROM read_parquet('{project.landing}/c/{t}/*.parquet')").fetchall()
        assert kind == [("BIGINT",)], t
