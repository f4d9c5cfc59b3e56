"""The state in a real PostgreSQL server, through the real CLI: the whole flow, the copy from SQLite,
a SIGKILL trial, and the faults of issue 11 (unreachable, lock held, connection dropped mid-commit).

The server comes from tests/servers/postgres.py; these tests never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from cohortsync.state import DB_NAME, TABLES, StateStore, open_state, table_digest
from conftest import CONFIG, Project, keep_everything_policy, person_ids
from servers.postgres import PostgresState
from test_faults import EXTRA_CONFIG, landing_rows, sync_process

pytestmark = pytest.mark.slow


def on_postgres(project: Project, pg: PostgresState) -> None:
    """Point the project's state at the test's PostgreSQL database (the password is in the environment)."""
    text = project.config.read_text()
    project.config.write_text(text.replace('[state]\npath = "state"\n', f'[state]\npath = "state"\nurl = "{pg.url}"\n'))


def new_project(root: Path, eunomia_db: Path, extra: str = "") -> Project:
    root.mkdir(parents=True)
    shutil.copy(eunomia_db, root / "omop.duckdb")
    (root / "cohortsync.toml").write_text(CONFIG + extra, encoding="utf-8")
    (root / "keep_everything.toml").write_text(keep_everything_policy(), encoding="utf-8")
    return Project(root, CliRunner())


def state_of(project: Project) -> dict[str, Any]:
    """What the state says, engine-independently: watermarks, files with checksums, purges, cohorts."""
    with open_state(project.settings()) as st:
        marks = st.watermarks()
        return {
            "marks": {k: (v.wm, v.batch) for k, v in marks.items()},
            "files": {k: [(f["name"], f["rows"], f["sha256"]) for f in st.files(*k)] for k in marks},
            "cohorts": st.cohort_names(),
            "purged": {c: st.purged_amendments(c) for c in st.cohort_names()},
            "verify": {k: v["status"] for k, v in st.verify_results().items()},
            "exports": [(e["cohort"], e["consumer"], e["rows"], e["status"]) for e in st.exports()],
        }


def export_rows(out: Path) -> dict[str, list[tuple[object, ...]]]:
    con = duckdb.connect()
    return {
        d.name: sorted(con.execute(f"SELECT * FROM read_parquet('{d}/*.parquet')").fetchall(), key=repr)
        for d in sorted(out.iterdir()) if d.is_dir()
    }


def flow(p: Project) -> dict[str, Any]:
    """add-cohort, backfill, incremental, amend (add), withdraw, export, verify: each must succeed."""
    ids = person_ids(p)
    steps = [
        ("add-cohort", "a", "--patients", str(p.write_ids("a.csv", ids[:600]))),
        ("sync", "-q"),
        "load",
        ("sync", "-q"),
        ("amend-cohort", "a", "--add", str(p.write_ids("add.csv", ids[1000:1010]))),
        ("sync", "-q"),
        ("amend-cohort", "a", "--remove", str(p.write_ids("gone.csv", ids[5:15]))),
        "load",
        ("sync", "-q"),
        ("export", "a", "--consumer", "acme", "--out", str(p.root / "out")),
        ("verify", "a"),
        ("status",),
    ]
    for step in steps:
        if step == "load":
            p.add_load()
            continue
        r = p.cli(*step)
        assert r.exit_code == 0, (step, r.output)
    return {"state": state_of(p), "landing": landing_rows(p.root), "export": export_rows(p.root / "out")}


def test_the_whole_flow_with_state_in_postgres_equals_the_sqlite_one(
    tmp_path: Path, eunomia_db: Path, postgres_state: PostgresState
) -> None:
    on_pg = new_project(tmp_path / "pg", eunomia_db)
    on_postgres(on_pg, postgres_state)
    on_sqlite = new_project(tmp_path / "sqlite", eunomia_db)
    got, want = flow(on_pg), flow(on_sqlite)
    assert not (on_pg.root / "state" / DB_NAME).exists()  # nothing of the state went to the local disk
    assert got["state"]["marks"] and got["state"]["purged"] == {"a": {2}}
    assert got == want
    assert "ok" in got["state"]["verify"].values() and [e[3] for e in got["state"]["exports"]] == ["done"]


def test_state_copy_moves_a_sqlite_state_into_postgres_and_syncs_on(
    project: Project, postgres_state: PostgresState
) -> None:
    ids = person_ids(project)
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", ids[:300]))).exit_code == 0
    assert project.cli("sync", "-q").exit_code == 0
    assert project.cli("verify", "c").exit_code == 0
    before = state_of(project)
    with StateStore(project.root / "state") as sqlite:
        digests = {t: table_digest(sqlite, t) for t in TABLES}
    r = project.cli("state", "copy", "--to", postgres_state.url)
    assert r.exit_code == 0, r.output
    assert f"from {project.root / 'state'} to {postgres_state.url}; set state.url" in r.output
    with StateStore.postgres(postgres_state.url, postgres_state.password) as pg:
        assert {t: table_digest(pg, t) for t in TABLES} == digests
    on_postgres(project, postgres_state)
    assert state_of(project) == before
    project.add_load()
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert state_of(project)["marks"] != before["marks"]


def one_line(output: str, needle: str) -> None:
    assert output.startswith("error: ") and output.count("\n") == 1, output
    assert needle in output and "Traceback" not in output, output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the faults of tests/BAD_INPUTS.md (run there, by tests/test_bad_inputs.py) --------------------------


def state_unreachable(project: Project, pg: PostgresState) -> None:
    port = free_port()
    url = f"postgresql://cohortsync@127.0.0.1:{port}/cohortsync"
    project.config.write_text(project.config.read_text().replace('[state]\n', f'[state]\nurl = "{url}"\n'))
    StateStore(project.root / "state").close()  # a SQLite state for state copy to read
    for args in (("status",), ("sync", "-q"), ("state", "copy", "--to", url)):
        r = project.cli(*args)
        assert r.exit_code == 4, (args, r.output)
        one_line(r.output, f'error: state store {url} cannot be reached: connection failed: connection to server at '
                           f'"127.0.0.1", port {port} failed: Connection refused')
    assert not project.landing.exists()


def state_url_password(project: Project, pg: PostgresState) -> None:
    secret = "s3cr3t-pw"
    bad = pg.url.replace("cohortsync@", f"cohortsync:{secret}@")
    text = project.config.read_text()
    project.config.write_text(text.replace('[state]\n', f'[state]\nurl = "{bad}"\n'))
    r = project.cli("status")
    assert r.exit_code == 2 and secret not in r.output
    one_line(r.output, "state.url: Value error, must not carry a password: set COHORTSYNC_STATE_PASSWORD instead")
    project.config.write_text(text)
    r = project.cli("state", "copy", "--to", f"{pg.url}?sslmode=disable&password={secret}")
    assert r.exit_code == 2 and secret not in r.output
    one_line(r.output, "error: state copy --to: must not carry a password: set COHORTSYNC_STATE_PASSWORD instead")


def state_wrong_password(project: Project, pg: PostgresState) -> None:
    on_postgres(project, pg)
    r = project.cli("status", env={"COHORTSYNC_STATE_PASSWORD": "not-the-password"})
    assert r.exit_code == 2 and "not-the-password" not in r.output
    one_line(r.output, f'error: state store {pg.url} refuses the connection: connection failed: connection to server at '
                       f'"127.0.0.1", port {pg.server.port} failed: FATAL:  password authentication failed for user "cohortsync"')
    # Secrets only from the environment: a libpq password file with the right password is not read.
    passfile = project.root / "pgpass"
    passfile.write_text(f"*:*:*:*:{pg.password}\n")
    passfile.chmod(0o600)
    r = project.cli("status", env={"COHORTSYNC_STATE_PASSWORD": None, "PGPASSFILE": str(passfile)})
    assert r.exit_code == 2 and pg.password not in r.output, r.output
    one_line(r.output, f"error: state store {pg.url} refuses the connection: connection failed: connection to server at "
                       f'"127.0.0.1", port {pg.server.port} failed: fe_sendauth: no password supplied')


def pg_lock_held(project: Project, pg: PostgresState) -> None:
    on_postgres(project, pg)
    ids = person_ids(project)
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", ids[:50]))).exit_code == 0
    with StateStore.postgres(pg.url, pg.password) as holder:
        holder.lock("sync")
        add = str(project.write_ids("x.csv", ids[60:61]))
        for args in (("sync", "-q"), ("amend-cohort", "c", "--add", add)):
            r = project.cli(*args)
            assert r.exit_code == 3, r.output
            holder_text = f"pid {os.getpid()} on {socket.gethostname()}, sync, since "
            one_line(r.output, f"error: another cohortsync run holds the lock ({holder_text}")
            assert r.output.endswith("); try again when it ends\n")
        with pg.connect() as con:  # visible to an operator, too
            (n,) = con.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cohortsync run lock'").fetchone()  # type: ignore[misc]
            assert n == 1
        assert state_of(project)["marks"] == {}
    assert project.cli("sync", "-q").exit_code == 0  # released with its session
    assert state_of(project)["marks"]


def pg_connection_cut(p: Project, pg: PostgresState) -> None:
    """pg_terminate_backend on the state's connection after a table's inserts, before its COMMIT."""
    reference = new_project(p.root / "ref", p.db, EXTRA_CONFIG)  # the same loads, synced without a fault
    p.config.write_text(p.config.read_text() + EXTRA_CONFIG)
    on_postgres(p, pg)
    ids = person_ids(p)
    for q in (p, reference):
        assert q.cli("add-cohort", "a", "--patients", str(q.write_ids("a.csv", ids[::3]))).exit_code == 0
        assert q.cli("sync", "-q").exit_code == 0
        q.add_load()
    before = state_of(p)
    calls = {"n": 0}
    original = StateStore.commit_table

    def commit_table_then_cut(self: StateStore, run_id: str, outcomes: list[Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second table: the first is committed, this one is cut mid-commit
            commit = self.db.commit

            def cut_then_commit() -> None:
                assert pg.terminate("cohortsync") == 1  # the data session only; the lock's stays
                commit()

            self.db.commit = cut_then_commit  # type: ignore[method-assign]
        original(self, run_id, outcomes)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StateStore, "commit_table", commit_table_then_cut)
        r = p.cli("sync", "-q")
    assert r.exit_code == 4, r.output
    last = r.output.splitlines()[-1]
    assert last == (f"error: state store {pg.url}: connection lost at commit: terminating connection due to administrator "
                    "command; nothing was committed "
                    "that the landing does not hold, run again"), last
    mid = state_of(p)
    moved = [k for k in mid["marks"] if mid["marks"][k] != before["marks"][k]]
    assert len(moved) == 1  # the first table committed; the cut one and every later one did not move
    for k in set(mid["marks"]) - set(moved):
        assert mid["files"][k] == before["files"][k]
    r = p.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert reference.cli("sync", "-q").exit_code == 0
    assert landing_rows(p.root) == landing_rows(reference.root)
    assert state_of(p)["marks"] == state_of(reference)["marks"]


def state_copy_not_empty(project: Project, pg: PostgresState) -> None:
    StateStore(project.root / "state").close()
    with StateStore.postgres(pg.url, pg.password) as target:
        target.check_key_fingerprint("someone else's")
        before = {t: table_digest(target, t) for t in TABLES}
    r = project.cli("state", "copy", "--to", pg.url)
    assert r.exit_code == 2
    one_line(r.output, f"error: state copy: the target {pg.url} is not empty (meta has 1 rows); copy only into a new, "
                       "empty database")
    with StateStore.postgres(pg.url, pg.password) as target:
        assert {t: table_digest(target, t) for t in TABLES} == before


@pytest.mark.parametrize("fault", ["after_land", "between_renames@2", "after_commit"])
def test_a_sync_killed_with_state_in_postgres_resumes_exactly(
    tmp_path: Path, eunomia_db: Path, postgres_state: PostgresState, fault: str
) -> None:
    p = new_project(tmp_path / "p", eunomia_db, EXTRA_CONFIG)
    on_postgres(p, postgres_state)
    ids = person_ids(p)
    assert p.cli("add-cohort", "a", "--patients", str(p.write_ids("a.csv", ids[::3]))).exit_code == 0
    reference = new_project(tmp_path / "ref", eunomia_db, EXTRA_CONFIG)
    shutil.copytree(p.root / "cohorts", reference.root / "cohorts")
    proc = sync_process(p.root, fault)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else b""
    again = sync_process(p.root)  # the killed run's lock went with its session: no stale lock
    again.wait(timeout=300)
    assert again.returncode == 0, again.stderr.read() if again.stderr else b""
    assert not list(p.root.rglob(".tmp-*"))
    assert reference.cli("sync", "-q").exit_code == 0
    assert landing_rows(p.root) == landing_rows(reference.root)
    got, want = state_of(p), state_of(reference)
    assert got["marks"] == want["marks"]
    assert {k: sorted(r for _, r, _ in v) for k, v in got["files"].items()} == {
        k: sorted(r for _, r, _ in v) for k, v in want["files"].items()}
    with StateStore.postgres(postgres_state.url, postgres_state.password) as st:
        assert [r["status"] for r in st.runs()] == ["ok", "running"]  # the killed run stays on record as it died


def test_a_run_whose_lock_session_died_commits_nothing_more(postgres_state: PostgresState) -> None:
    """Fencing: with its lock gone, another run may have started; this one must not write."""
    from cohortsync.errors import TransientStateError
    from cohortsync.landing import LandedFile
    from cohortsync.state import TableOutcome

    with StateStore.postgres(postgres_state.url, postgres_state.password) as st:
        st.lock("sync")
        run = st.start_run("sync")
        assert postgres_state.terminate("cohortsync run lock") == 1
        o = TableOutcome("a", "person", None, datetime(2026, 10, 4), 1, [LandedFile("f", 1, 1, "0" * 64)], "landed")
        with pytest.raises(TransientStateError, match="this run lost its lock"):
            st.commit_table(run, [o])
        assert st.watermarks() == {}
        with StateStore.postgres(postgres_state.url, postgres_state.password) as other:
            other.lock("sync")  # free for the next run
