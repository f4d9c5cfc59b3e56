"""Cohort lifecycle: amendments, withdrawals purged from the landing, retirement, late rows, retries."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from cohortsync import api, omop
from cohortsync.deid.structured import Keys, pseudonymize
from cohortsync.errors import TransientSourceError
from cohortsync.sources.duckdb import DuckDBSource
from cohortsync.state import StateStore
from conftest import TEST_KEY, Project, person_ids, snapshot
from test_deid_structured import structured_only
from test_sync import landed_count, source_count

TABLES = [t for t in omop.DEFAULT_TABLES if t != "note"]


def count_between(project: Project, table: str, ids: list[int], after: str | None, upto: str) -> int:
    con = project.con(read_only=True)
    try:
        cond = f" AND load_dt > TIMESTAMP '{after}'" if after else ""
        q = (
            f"SELECT count(*) FROM omop.omop.{table} WHERE person_id IN (SELECT unnest($ids::BIGINT[])) "
            f"AND load_dt <= TIMESTAMP '{upto}'{cond}"
        )
        return int(con.execute(q, {"ids": ids}).fetchall()[0][0])
    finally:
        con.close()


def test_an_amendment_adding_10_to_1000_pulls_their_history_and_the_new_load(project: Project) -> None:
    ids = person_ids(project)
    members, newcomers = ids[:1000], ids[1500:1510]
    assert project.cli("add-cohort", "k", "--patients", str(project.write_ids("k.csv", members))).exit_code == 0
    assert project.cli("sync", "-q").exit_code == 0
    with StateStore(project.root / "state") as st:
        wm = {t: st.watermarks()[("k", t)].wm for t in TABLES}
    before = {t: landed_count(project, "k", t) for t in TABLES}
    new_load = project.add_load()
    r = project.cli("amend-cohort", "k", "--add", str(project.write_ids("add.csv", newcomers)))
    assert r.exit_code == 0, r.output
    assert "amendment 1): +10 -0 -> 1010 members" in r.output
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    for t in TABLES:
        upto = str(new_load) if t != "person" else str(wm[t])
        history = count_between(project, t, newcomers, None, upto)
        new_rows = count_between(project, t, members, str(wm[t]), upto)
        assert landed_count(project, "k", t) - before[t] == history + new_rows, t
        assert history > 0 or t in ("observation", "visit_occurrence"), t
    # Reviewable history in cohorts/ and the member batch in the sandbox.
    toml = (project.root / "cohorts" / "k" / "cohort.toml").read_text()
    assert "[[amendment]]" in toml and "added = 10" in toml and 'add_file = "amendments/0001-add.txt"' in toml
    con = project.con(read_only=True)
    assert con.execute("SELECT count(*) FROM omop.sandbox.cohortsync_members WHERE cohort='k' AND batch=1").fetchall()[0][0] == 10
    con.close()


def test_two_amendments_without_a_new_load_between_them_lose_nothing(project: Project) -> None:
    """Both amendments land as the window (W, W] of an unchanged source: the second must not reuse
    the first one's file name (it once replaced that file, silently dropping its rows)."""
    ids = person_ids(project)
    members, first, second = ids[:300], ids[1500:1540], ids[1600:1640]
    assert project.cli("add-cohort", "k", "--patients", str(project.write_ids("k.csv", members))).exit_code == 0
    assert project.cli("sync", "-q").exit_code == 0
    for n, batch in enumerate((first, second)):
        r = project.cli("amend-cohort", "k", "--add", str(project.write_ids(f"add{n}.csv", batch)))
        assert r.exit_code == 0, r.output
        r = project.cli("sync", "-q")
        assert r.exit_code == 0, r.output
    with StateStore(project.root / "state") as st:
        names = [f["name"] for f in st.files("k", "condition_occurrence")]
    assert len(names) == len(set(names)) == 3, names
    for t in TABLES:
        assert landed_count(project, "k", t) == source_count(project, t, members + first + second), t
    assert project.cli("verify", "k").exit_code == 0


def test_withdrawn_patients_leave_every_landed_file(project: Project) -> None:
    structured_only(project)  # pseudonymized ids: the purge must find them through the key
    ids = person_ids(project)[:400]
    gone = ids[10:30]
    assert project.cli("add-cohort", "w", "--patients", str(project.write_ids("w.csv", ids))).exit_code == 0
    assert project.cli("sync", "-q").exit_code == 0
    keys = Keys.from_secret(TEST_KEY)
    pseudo = set(pseudonymize(keys, "person", pa.array(gone, pa.int64())).to_pylist())
    con = duckdb.connect()
    glob = lambda t: f"read_parquet('{project.landing}/w/{t}/*.parquet')"  # noqa: E731
    hits = lambda t: con.execute(f"SELECT count(*) FROM {glob(t)} WHERE person_id IN (SELECT unnest($p))", {"p": list(pseudo)}).fetchall()[0][0]  # noqa: E501,E731
    assert hits("condition_occurrence") > 0
    total_before = sum(landed_count(project, "w", t) for t in TABLES)
    r = project.cli("amend-cohort", "w", "--remove", str(project.write_ids("gone.csv", gone)))
    assert r.exit_code == 0, r.output
    assert "purged from the landing:" in r.output
    for t in TABLES:
        assert hits(t) == 0, t
    removed = total_before - sum(landed_count(project, "w", t) for t in TABLES)
    assert removed == sum(source_count(project, t, gone) for t in TABLES)
    # The state agrees with the rewritten files, and later syncs never bring them back.
    project.add_load(fraction_per_mille=50)
    assert project.cli("sync", "-q").exit_code == 0
    for t in TABLES:
        assert hits(t) == 0, t
    with StateStore(project.root / "state") as st:
        assert st.purged_amendments("w") == {1}


def test_a_purge_killed_half_way_is_finished_by_the_next_sync(project: Project) -> None:
    structured_only(project)
    ids = person_ids(project)[:300]
    gone = ids[:40]
    project.cli("add-cohort", "w", "--patients", str(project.write_ids("w.csv", ids)))
    assert project.cli("sync", "-q").exit_code == 0
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, "COHORTSYNC_FAULT_POINT": "mid_purge"}
    dead = subprocess.run(
        [sys.executable, "-m", "cohortsync.cli", "--config", str(project.config), "amend-cohort", "w", "--remove",
         str(project.write_ids("g.csv", gone))], env=env, capture_output=True, timeout=300,
    )
    assert dead.returncode == -9
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert "finished the purge of amendment 1" in r.output
    keys = Keys.from_secret(TEST_KEY)
    pseudo = pseudonymize(keys, "person", pa.array(gone, pa.int64())).to_pylist()
    con = duckdb.connect()
    for t in TABLES:
        n = con.execute(
            f"SELECT count(*) FROM read_parquet('{project.landing}/w/{t}/*.parquet') WHERE person_id IN (SELECT unnest($p))",
            {"p": pseudo},
        ).fetchall()[0][0]
        assert n == 0, t
    r = project.cli("verify", "w")  # the files the killed purge rewrote are recorded with their new checksums
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("add", "remove", "needle"),
    [
        ([1], None, "already members"),
        (None, [10**9], "not members"),
        ([10**9], [10**9], "both added and removed"),
    ],
)
def test_bad_amendments_change_nothing(project: Project, add: list[int] | None, remove: list[int] | None, needle: str) -> None:
    ids = person_ids(project)[:5]
    project.cli("add-cohort", "a", "--patients", str(project.write_ids("a.csv", ids)))
    before = snapshot(project.root / "cohorts")
    args = ["amend-cohort", "a"]
    if add:
        args += ["--add", str(project.write_ids("x.csv", [ids[0]] if add == [1] else add))]
    if remove:
        args += ["--remove", str(project.write_ids("y.csv", remove))]
    r = project.cli(*args)
    assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1
    assert snapshot(project.root / "cohorts") == before


def test_removing_everyone_and_adding_unknown_persons_are_refused(project: Project) -> None:
    ids = person_ids(project)[:5]
    project.cli("add-cohort", "a", "--patients", str(project.write_ids("a.csv", ids)))
    r = project.cli("amend-cohort", "a", "--remove", str(project.write_ids("all.csv", ids)))
    assert r.exit_code == 2 and "would leave a empty" in r.output
    r = project.cli("amend-cohort", "a", "--add", str(project.write_ids("u.csv", [10**11])))
    assert r.exit_code == 5 and "1 of 1 ids to add are not in omop.person" in r.output
    con = project.con(read_only=True)
    assert con.execute("SELECT count(*) FROM omop.sandbox.cohortsync_members WHERE cohort='a'").fetchall()[0][0] == 5
    con.close()


def test_remove_cohort_says_what_then_purges(project: Project) -> None:
    ids = person_ids(project)[:50]
    project.cli("add-cohort", "gone", "--patients", str(project.write_ids("g.csv", ids)))
    project.cli("sync", "-q")
    r = project.cli("remove-cohort", "gone")
    assert r.exit_code == 2 and "would delete" in r.output and "50 sandbox members" in r.output
    assert (project.landing / "gone").exists()
    r = project.cli("remove-cohort", "gone", "--purge")
    assert r.exit_code == 0, r.output
    assert not (project.landing / "gone").exists() and not (project.root / "cohorts" / "gone").exists()
    assert list((project.root / "cohorts" / ".retired").iterdir())
    con = project.con(read_only=True)
    assert con.execute("SELECT count(*) FROM omop.sandbox.cohortsync_members WHERE cohort='gone'").fetchall()[0][0] == 0
    con.close()
    with StateStore(project.root / "state") as st:
        assert not [k for k in st.watermarks() if k[0] == "gone"]
    assert project.cli("add-cohort", "gone", "--patients", str(project.write_ids("g2.csv", ids[:5]))).exit_code == 0


def test_lookback_catches_rows_loaded_late_with_an_old_load_dt(project: Project) -> None:
    ids = person_ids(project)[:200]
    project.cli("add-cohort", "l", "--patients", str(project.write_ids("l.csv", ids)))
    assert project.cli("sync", "-q").exit_code == 0
    with StateStore(project.root / "state") as st:
        wm = st.watermarks()[("l", "condition_occurrence")].wm
    late = wm - timedelta(days=3)  # arrives now, stamped before the watermark
    con = project.con()
    con.execute(
        f"INSERT INTO omop.omop.condition_occurrence SELECT * REPLACE (condition_occurrence_id + 10000000 AS "
        f"condition_occurrence_id, 'LATE' AS condition_source_value, TIMESTAMP '{late}' AS load_dt) "
        "FROM omop.omop.condition_occurrence "
        f"WHERE person_id = {ids[0]} LIMIT 2"
    )
    con.close()
    project.add_load()
    before = landed_count(project, "l", "condition_occurrence")
    r = project.cli("sync", "-q", env={"COHORTSYNC_SYNC__LOOKBACK_DAYS": "7"})
    assert r.exit_code == 0, r.output
    got = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{project.landing}/l/condition_occurrence/*.parquet') "
        "WHERE condition_source_value = 'LATE'"
    ).fetchall()[0][0]
    assert got == 2
    assert landed_count(project, "l", "condition_occurrence") > before


class Flaky(DuckDBSource):
    """A real DuckDB source whose first extraction of one table fails as an unreachable warehouse would."""

    failures = 1

    def stream(self, query, batch_rows):  # type: ignore[no-untyped-def]
        if "condition_occurrence" in self.render(query) and "__cohort" in self.render(query) and Flaky.failures:
            Flaky.failures -= 1
            raise TransientSourceError("warehouse unreachable (simulated)")
        return super().stream(query, batch_rows)


def test_transient_failures_are_retried(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTSYNC_DEID_KEY", TEST_KEY)
    monkeypatch.setattr("cohortsync.sync.backoff", lambda attempt: 0.0)
    ids = person_ids(project)[:100]
    project.cli("add-cohort", "t", "--patients", str(project.write_ids("t.csv", ids)))
    settings = project.settings()
    base = DuckDBSource.from_settings(settings)
    flaky = Flaky(base.con, base.names)
    Flaky.failures = 1
    report = api.sync(settings, source=flaky)
    flaky.close()
    assert not report.failed
    assert landed_count(project, "t", "condition_occurrence") == source_count(project, "condition_occurrence", ids)
    # More failures than retries: that table fails, the others commit.
    monkeypatch.setenv("COHORTSYNC_SOURCE__RETRIES", "1")
    project.add_load()
    base = DuckDBSource.from_settings(project.settings())
    flaky = Flaky(base.con, base.names)
    Flaky.failures = 5
    report = api.sync(project.settings(), source=flaky)
    flaky.close()
    assert [o.table for o in report.failed] == ["condition_occurrence"]
    assert "warehouse unreachable" in (report.failed[0].error or "")
    assert Flaky.failures == 3  # the first try and one retry, then it gave up


def test_verify_finds_missing_extra_and_duplicate_rows_and_repairs(project: Project) -> None:
    structured_only(project)
    ids = person_ids(project)[:300]
    project.cli("add-cohort", "v", "--patients", str(project.write_ids("v.csv", ids)))
    assert project.cli("sync", "-q").exit_code == 0
    r = project.cli("verify", "v")
    assert r.exit_code == 0, r.output
    assert "condition_occurrence   ok" in r.output
    # Upstream deletes rows and inserts some with an old load_dt: the landing now has extra rows and misses some.
    con = project.con()
    con.execute(f"DELETE FROM omop.omop.condition_occurrence WHERE person_id = {ids[3]}")
    con.execute(
        "INSERT INTO omop.omop.drug_exposure SELECT * REPLACE (drug_exposure_id + 90000000 AS drug_exposure_id) "
        f"FROM omop.omop.drug_exposure WHERE person_id = {ids[5]}"
    )
    con.close()
    # And a landed file appears twice under another name (e.g. copied by hand).
    files = sorted((project.landing / "v" / "measurement").glob("*.parquet"))
    (files[0].parent / files[0].name.replace("__0000", "__0099")).write_bytes(files[0].read_bytes())
    r = project.cli("verify", "v")
    assert r.exit_code == 5
    lines = {line.split()[0]: line for line in r.output.splitlines()}
    assert "mismatch" in lines["condition_occurrence"] and "extra 0" not in lines["condition_occurrence"]
    assert "mismatch" in lines["drug_exposure"] and "missing 0" not in lines["drug_exposure"]
    assert "mismatch" in lines["measurement"] and "1 file(s) in the folder that the state does not list" in r.output
    r = project.cli("verify", "v", "--repair")
    assert r.exit_code == 0, r.output
    assert "repaired" in r.output
    assert project.cli("verify", "v").exit_code == 0
    assert project.cli("sync", "-q").exit_code == 0


@pytest.mark.parametrize("tables", [["person", "note", "note_nlp"], ["person", "note_nlp"]], ids=["with-parent", "no-parent"])
def test_withdrawal_reaches_tables_linked_through_a_parent(tmp_path: Path, tables: list[str]) -> None:
    """note_nlp has no person_id: its rows go with the withdrawn persons' notes (or, when note itself
    is not landed, the table is dropped and backfilled again for the remaining members)."""
    from click.testing import CliRunner

    from cohortsync import synth
    from conftest import CONFIG

    synth.generate(tmp_path / "omop.duckdb", persons=80, seed=3, weeks=2)
    con = duckdb.connect(str(tmp_path / "omop.duckdb"))
    con.execute(
        "INSERT INTO omop.omop.note_nlp (note_nlp_id, note_id, note_nlp_concept_id, nlp_system, nlp_date, load_dt) "
        "SELECT note_id * 10 + k, note_id, 0, 'test', note_date, load_dt FROM omop.omop.note, range(2) t(k)"
    )
    con.close()
    (tmp_path / "cohortsync.toml").write_text(
        CONFIG.replace('policy = "keep_everything.toml"', 'policy = "structured_only.toml"')
        + f"\n[sync]\ntables = {tables!r}\n".replace("'", '"')
    )
    p = Project(tmp_path, CliRunner())
    structured_only(p)
    ids = list(range(1, 81))
    assert p.cli("add-cohort", "n", "--patients", str(p.write_ids("n.csv", ids))).exit_code == 0
    r = p.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    before = landed_count(p, "n", "note_nlp")
    assert before > 0
    gone = ids[:20]
    con = duckdb.connect(str(tmp_path / "omop.duckdb"), read_only=True)
    expected_gone = con.execute(
        "SELECT count(*) FROM omop.omop.note_nlp x JOIN omop.omop.note n USING (note_id) "
        "WHERE n.person_id IN (SELECT unnest($g::BIGINT[]))",
        {"g": gone},
    ).fetchall()[0][0]
    con.close()
    assert expected_gone > 0
    r = p.cli("amend-cohort", "n", "--remove", str(p.write_ids("g.csv", gone)))
    assert r.exit_code == 0, r.output
    if "note" not in tables:
        assert landed_count(p, "n", "note_nlp") == 0  # dropped; the next sync backfills the remaining members
        assert p.cli("sync", "-q").exit_code == 0
    assert landed_count(p, "n", "note_nlp") == before - expected_gone
    assert p.cli("verify", "n").exit_code == 0
