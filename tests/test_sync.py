"""The watermark sync on real DuckDB and real Parquet: backfill, incremental, fan-out, crash, lock."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohortsync import omop
from cohortsync.state import StateStore
from conftest import TEST_KEY, Project, person_ids, snapshot

TABLES = [t for t in omop.DEFAULT_TABLES if t != "note"]  # Eunomia has no notes


LOCAL = duckdb.connect()  # the "plain duckdb read" of the landing a user would do


def landed(project: Project, cohort: str, table: str) -> duckdb.DuckDBPyRelation:
    glob = project.landing / cohort / table / "*.parquet"
    return LOCAL.sql(f"SELECT * FROM read_parquet('{glob}')")


def landed_count(project: Project, cohort: str, table: str) -> int:
    if not list((project.landing / cohort / table).glob("*.parquet")):
        return 0
    return int(landed(project, cohort, table).aggregate("count(*)").fetchall()[0][0])


def source_count(project: Project, table: str, ids: list[int], after: str | None = None) -> int:
    """The oracle: a direct SQL count of the cohort's rows, written independently of cohortsync's SQL."""
    con = project.con(read_only=True)
    try:
        con.execute("CREATE TEMP TABLE m AS SELECT unnest($ids::BIGINT[]) AS person_id", {"ids": ids})
        cond = f" AND t.load_dt > TIMESTAMP '{after}'" if after else ""
        q = f"SELECT count(*) FROM omop.omop.{table} t WHERE t.person_id IN (SELECT person_id FROM m){cond}"
        row = con.execute(q).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


@pytest.fixture
def two_cohorts(project: Project) -> tuple[list[int], list[int]]:
    ids = person_ids(project)
    a = ids[::3]
    b = ids[::5]  # overlaps a on every 15th person
    assert project.cli("add-cohort", "alpha", "--patients", str(project.write_ids("a.csv", a))).exit_code == 0
    assert project.cli("add-cohort", "beta", "--patients", str(project.write_ids("b.txt", b, header=False))).exit_code == 0
    return a, b


def test_backfill_then_incremental(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    a, b = two_cohorts
    r = project.cli("sync", "--quiet")
    assert r.exit_code == 0, r.output
    for t in TABLES:
        assert landed_count(project, "alpha", t) == source_count(project, t, a), t
        assert landed_count(project, "beta", t) == source_count(project, t, b), t
    nonmembers = set(person_ids(project)) - set(a)
    for t in TABLES:
        got = {r[0] for r in landed(project, "alpha", t).select("person_id").fetchall()}
        assert got <= set(a) and not (got & nonmembers)

    before = {t: landed_count(project, "alpha", t) for t in TABLES}
    with StateStore(project.root / "state") as st:
        wm = st.watermarks()[("alpha", "drug_exposure")].wm
    new_load = project.add_load()
    r = project.cli("sync", "--quiet")
    assert r.exit_code == 0, r.output
    for t in TABLES:
        new_rows = source_count(project, t, a, after=wm.isoformat(sep=" "))
        assert landed_count(project, "alpha", t) - before[t] == new_rows, t
    # The new rows carry the new load_dt and only members' ids.
    got = landed(project, "alpha", "condition_occurrence").filter(f"load_dt = TIMESTAMP '{new_load}'").select("person_id")
    ids = {r[0] for r in got.fetchall()}
    assert ids and ids <= set(a)


def test_a_cohort_added_later_backfills_while_the_first_pulls_nothing(project: Project) -> None:
    ids = person_ids(project)
    project.cli("add-cohort", "alpha", "--patients", str(project.write_ids("a.csv", ids[::2])))
    assert project.cli("sync", "-q").exit_code == 0
    alpha_before = snapshot(project.landing / "alpha")
    project.cli("add-cohort", "gamma", "--patients", str(project.write_ids("g.csv", ids[1::4])))
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert snapshot(project.landing / "alpha") == alpha_before
    for t in TABLES:
        assert landed_count(project, "gamma", t) == source_count(project, t, ids[1::4])
    assert "alpha: 0 rows" in r.output


def test_a_rerun_without_new_loads_changes_nothing(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    assert project.cli("sync", "-q").exit_code == 0
    before = snapshot(project.landing)
    with StateStore(project.root / "state") as st:
        marks = st.watermarks()
    r = project.cli("sync", "-q")
    assert r.exit_code == 0 and "0 rows landed" in r.output
    assert snapshot(project.landing) == before
    with StateStore(project.root / "state") as st:
        assert st.watermarks() == marks


def test_only_requested_cohorts_sync(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    r = project.cli("sync", "-q", "--cohort", "beta")
    assert r.exit_code == 0, r.output
    assert not (project.landing / "alpha").exists() and (project.landing / "beta").exists()
    r = project.cli("sync", "--cohort", "nope")
    assert r.exit_code == 2 and "unknown cohort 'nope'" in r.output


def run_cli_process(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cohortsync.cli", "--log-format", "text", "--config", str(project.config), *args],
        capture_output=True, text=True, env={**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, **(env or {})}, timeout=300,
    )


def rows_by_file(project: Project) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    for cohort in ("alpha", "beta"):
        for t in TABLES:
            out[f"{cohort}/{t}"] = sorted(landed(project, cohort, t).fetchall(), key=repr)
    return out


@pytest.mark.parametrize("point", ["before_finish", "after_land"])
def test_killed_between_landing_and_commit_leaves_no_duplicates(
    project: Project, two_cohorts: tuple[list[int], list[int]], point: str
) -> None:
    assert run_cli_process(project, "sync", "-q").returncode == 0
    project.add_load()
    dead = run_cli_process(project, "sync", "-q", env={"COHORTSYNC_FAULT_POINT": point})
    assert dead.returncode == -9  # SIGKILL, as a power cut would
    if point == "after_land":  # files of the first table are in place, its watermark is not
        assert any(f.name.endswith(".parquet") for f in (project.landing / "alpha" / "person").iterdir())
    ok = run_cli_process(project, "sync", "-q")
    assert ok.returncode == 0, ok.stderr
    for cohort, ids in (("alpha", two_cohorts[0]), ("beta", two_cohorts[1])):
        for t in TABLES:
            rel = landed(project, cohort, t)
            pk = omop.table(t).primary_key
            n, distinct = rel.aggregate(f"count(*), count(DISTINCT ({pk}, load_dt))").fetchall()[0]
            assert n == source_count(project, t, ids), (cohort, t)
            dupes_in_source = source_count(project, t, ids) - distinct
            assert dupes_in_source >= 0
    # Nothing temporary is left behind.
    assert not [p for p in project.landing.rglob(".tmp-*")]


def test_a_second_concurrent_sync_is_refused(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    with StateStore(project.root / "state") as st:
        st.lock("sync")
        r = project.cli("sync", "-q")
    assert r.exit_code == 3
    assert r.output.startswith("error: another cohortsync run holds the lock")
    assert not project.landing.exists()


def test_a_failing_table_does_not_stop_the_others(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    con = project.con()
    con.execute("ALTER TABLE omop.omop.observation RENAME COLUMN load_dt TO loaded")
    con.close()
    r = project.cli("sync", "-q")
    assert r.exit_code == 5  # schema drift: a person must look
    assert "observation has no load_dt column" in r.output
    assert "error: 2 cohort table(s) failed: alpha/observation, beta/observation" in r.output
    assert landed_count(project, "alpha", "measurement") > 0
    with StateStore(project.root / "state") as st:
        marks = st.watermarks()
    assert ("alpha", "measurement") in marks and ("alpha", "observation") not in marks
    s = project.cli("status")
    assert "observation" in s.output and "failed" in s.output


def test_sandbox_membership_is_restored_from_cohorts(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    con = project.con()
    con.execute("DELETE FROM omop.sandbox.cohortsync_members WHERE cohort = 'alpha'")
    con.close()
    r = project.cli("sync", "-q")
    assert r.exit_code == 0
    assert "sandbox membership of alpha re-uploaded" in r.output
    assert landed_count(project, "alpha", "person") == source_count(project, "person", two_cohorts[0])


def test_a_sandbox_with_the_right_count_of_wrong_ids_is_restored(
    project: Project, two_cohorts: tuple[list[int], list[int]]
) -> None:
    """A count check alone would pass this sandbox and land a non-member's rows."""
    alpha = set(two_cohorts[0])
    outsider = next(p for p in person_ids(project) if p not in alpha and p not in two_cohorts[1])
    con = project.con()
    con.execute(
        "UPDATE omop.sandbox.cohortsync_members SET person_id = ? WHERE cohort = 'alpha' AND person_id = ?",
        [outsider, min(alpha)],
    )
    con.close()
    r = project.cli("sync", "-q")
    assert r.exit_code == 0
    assert "sandbox membership of alpha re-uploaded" in r.output
    for t in TABLES:
        got = {r[0] for r in landed(project, "alpha", t).select("person_id").fetchall()}
        assert outsider not in got and got <= alpha, t
    assert {r[0] for r in landed(project, "alpha", "person").select("person_id").fetchall()} == alpha


def test_an_unrecorded_landing_file_stops_that_table(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    assert project.cli("sync", "-q").exit_code == 0
    project.add_load()
    name = "condition_occurrence__20200101T000000000000__20200108T000000000000__0000.parquet"
    stray = project.landing / "alpha" / "condition_occurrence" / name
    stray.write_bytes(b"not really parquet")
    r = project.cli("sync", "-q")
    assert r.exit_code == 5  # a tampered landing needs a person
    assert "is not recorded in the state store" in r.output
    assert stray.exists()  # never deleted: it may be data


def test_plan_prints_the_sql_and_windows(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    r = project.cli("plan")
    assert r.exit_code == 0, r.output
    assert "-- person: upper bound 2026-10-25 02:00:00" in r.output
    assert "--   alpha: backfill" in r.output
    assert 'FROM "omop"."omop"."person" AS src' in r.output
    project.cli("sync", "-q", "--cohort", "alpha")
    r = project.cli("plan", "--cohort", "alpha")
    assert "up to date: alpha" in r.output and "-- nothing to pull" in r.output
    project.add_load()
    r = project.cli("plan")
    assert "--   alpha: after 2026-10-25 02:00:00" in r.output and "--   beta: backfill" in r.output


def test_status_json(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    project.cli("sync", "-q")
    import json

    s = json.loads(project.cli("status", "--json").output)
    rows = {(t["cohort"], t["table"]): t for t in s["tables"]}
    assert rows[("alpha", "person")]["rows_landed"] == landed_count(project, "alpha", "person")
    assert rows[("alpha", "note")]["watermark"] is None
    assert s["last_run"]["status"] == "ok"
    assert {c["name"] for c in s["cohorts"]} == {"alpha", "beta"}


def test_missing_database_is_a_clear_error(project: Project, two_cohorts: tuple[list[int], list[int]]) -> None:
    Path(project.db).rename(project.root / "moved.duckdb")
    r = project.cli("sync")
    assert r.exit_code == 2 and r.output.startswith("error: no DuckDB database at")  # configuration


class _Overlap:
    """Wraps the source's ``stream`` to record how many extractions were streaming at once.

    Each stream is held open until ``want`` streams have been open together (at most 60 s; it wakes
    as soon as they are), so a slow or busy machine cannot make allowed overlap look absent; with
    ``want=1`` each is held up to 50 ms, waking at once if another joins it.
    """

    def __init__(self, stream: Callable[..., Any], want: int) -> None:
        self.stream = stream
        self.want = want
        self.changed = threading.Condition()
        self.open = 0
        self.most = 0

    @contextlib.contextmanager
    def __call__(self, src: Any, query: Any, batch_rows: int) -> Iterator[Any]:
        with self.changed:
            self.open += 1
            self.most = max(self.most, self.open)
            self.changed.notify_all()
            if self.want > 1:
                self.changed.wait_for(lambda: self.most >= self.want, timeout=60)
        try:
            if self.want == 1:
                # Give others a chance to join, waking at once if one does: this only bounds how
                # hard the test looks for a forbidden overlap, it can never fail a correct sync.
                with self.changed:
                    self.changed.wait_for(lambda: self.most > 1, timeout=0.05)
            with self.stream(src, query, batch_rows) as reader:
                yield reader
        finally:
            with self.changed:
                self.open -= 1


def landed_rows(project: Project, cohort: str, table: str) -> list[tuple[object, ...]]:
    return sorted(landed(project, cohort, table).fetchall(), key=repr)


def test_parallel_tables_land_what_one_at_a_time_lands(
    project: Project,
    two_cohorts: tuple[list[int], list[int]],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four tables at a time vs one: the same rows land; backfills stream one at a time,
    incremental windows side by side."""
    from cohortsync import api
    from cohortsync.sources.duckdb import DuckDBSource

    serial = Project(tmp_path_factory.mktemp("serial"), project.runner)
    shutil.copytree(project.root, serial.root, dirs_exist_ok=True)
    monkeypatch.setenv("COHORTSYNC_DEID_KEY", TEST_KEY)
    stream = DuckDBSource.stream
    for p, n in ((project, 4), (serial, 1)):
        monkeypatch.setenv("COHORTSYNC_SYNC__PARALLEL_TABLES", str(n))
        seen = _Overlap(stream, 1)
        monkeypatch.setattr(DuckDBSource, "stream", lambda src, q, n, seen=seen: seen(src, q, n))
        assert not api.sync(p.settings()).failed  # every table a backfill
        assert seen.most == 1
        p.add_load(fraction_per_mille=50)
        seen = _Overlap(stream, n)
        monkeypatch.setattr(DuckDBSource, "stream", lambda src, q, n, seen=seen: seen(src, q, n))
        assert not api.sync(p.settings()).failed
        assert seen.most == n  # eight incremental tables: n of them stream at once
    for cohort in ("alpha", "beta"):
        for t in TABLES:
            assert landed_rows(project, cohort, t) == landed_rows(serial, cohort, t), (cohort, t)


@settings(max_examples=200)
@given(st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 5)), max_size=60))
def test_repeated_keys_match_a_counter(keys: list[int]) -> None:
    """Keys equal to an earlier one, against collections.Counter."""
    from collections import Counter

    from cohortsync.landing import repeats

    assert repeats(np.array(keys, dtype=np.int64)) == sum(n - 1 for n in Counter(keys).values())


def test_a_window_counts_repeats_from_copies_of_its_keys(tmp_path: Path) -> None:
    """Keys kept to count repeats are copies: an engine's Arrow batch is freed as a whole, so keeping
    its key column would keep every column of every batch of the window (RSS grew with the window)."""
    from collections import Counter

    from cohortsync.landing import Landing, WindowWriter

    con = duckdb.connect()
    w = WindowWriter(Landing(tmp_path), "c", "measurement", None, datetime(2026, 1, 4), 10_000_000, 2, "measurement_id")
    q = (
        "SELECT CASE WHEN i % 7 = 0 THEN NULL ELSE i % 50000 END AS measurement_id, repeat('x', 100) AS wide "
        "FROM range(200000) t(i)"
    )
    for b in con.sql(q).to_arrow_reader(20_000):
        w.write(b)
    w.finish()
    assert w._keys and all(k.flags.owndata for k in w._keys)
    ids = [i % 50000 for i in range(200000) if i % 7]
    assert w.key_stats() == (sum(n - 1 for n in Counter(ids).values()), 200000 - len(ids))


def test_live_progress_shows_every_table_in_flight_on_one_line() -> None:
    import io

    from cohortsync.cli import Reporter
    from cohortsync.state import TableOutcome

    out = io.StringIO()
    r = Reporter(out, live=True)
    r.table_started("measurement", ["alpha"])
    r.table_started("observation", ["alpha"])
    r._last = 0.0  # draw now, not 0.2 s after the last drawing
    r.rows("measurement", 1000)
    line = out.getvalue().split("\r")[-1]
    assert line.startswith("measurement: 1,000 rows (") and " | observation: 0 rows (0 rows/s)" in line
    r.table_finished("measurement", [TableOutcome("alpha", "measurement", None, None, 1000, [], "landed", seconds=0.5)])
    done, redrawn = out.getvalue().split("\r\033[K")[-1].split("\n")
    assert done.startswith("measurement: 1,000 rows in 0.5s")
    assert redrawn == "\robservation: 0 rows (0 rows/s)\033[K"  # the one still in flight, alone
