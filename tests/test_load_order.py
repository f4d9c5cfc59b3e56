"""load_dt lands order_only (issue 14): it orders the versions of a row and says nothing about a
person's date shift; old landings with the raw load_dt are found by verify and rewritten by --repair."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohortsync import omop
from cohortsync.deid import structured
from cohortsync.deid.policy import Action, carries_source_time, load_policy
from cohortsync.errors import PolicyError
from cohortsync.state import StateStore
from conftest import TEST_KEY, Project, person_ids
from test_deid_structured import STRUCTURED_ONLY, structured_only

KEYS = structured.Keys.from_secret(TEST_KEY)
stamps = st.datetimes(datetime(1971, 1, 1), datetime(2250, 1, 1))


@given(st.integers(-(2**63), 2**63 - 1), st.lists(stamps, min_size=2, max_size=20))
def test_order_only_is_strictly_increasing_per_key_and_deterministic(key: int, times: list[datetime]) -> None:
    k = pa.array([key] * len(times), pa.int64())
    t = pa.array(times, pa.timestamp("us"))
    out = structured.order_only(KEYS, "condition_occurrence", k, t).to_pylist()
    assert out == structured.order_only(KEYS, "condition_occurrence", k, t).to_pylist()
    for (t1, o1), (t2, o2) in zip(zip(times, out, strict=True), zip(times[1:], out[1:], strict=True), strict=False):
        assert (t1 < t2) == (o1 < o2) and (t1 == t2) == (o1 == o2)
    assert all(o is not None and o >= 0 for o in out)


@given(st.lists(st.integers(1, 2**62), min_size=2, max_size=20, unique=True), stamps)
def test_order_only_values_of_different_keys_are_unrelated(keys: list[int], when: datetime) -> None:
    """One load time gives a different value for every key: rows cannot be grouped by load."""
    out = structured.order_only(KEYS, "measurement", pa.array(keys, pa.int64()), pa.array([when] * len(keys), pa.timestamp("us")))
    assert len(set(out.to_pylist())) == len(keys)


def test_order_only_keeps_nulls_and_refuses_times_it_cannot_order() -> None:
    when = pa.array([datetime(2026, 1, 1), datetime(2026, 1, 1), None], pa.timestamp("us"))
    out = structured.order_only(KEYS, "x", pa.array([1, None, 3], pa.int64()), when)
    assert out.to_pylist()[1:] == [None, None] and out[0].as_py() is not None
    with pytest.raises(Exception, match="before 1970"):
        structured.order_only(KEYS, "x", pa.array([1], pa.int64()), pa.array([datetime(1960, 1, 1)], pa.timestamp("us")))


def test_the_default_policy_keeps_no_source_timestamp_unshifted() -> None:
    policy = load_policy()
    for t in omop.registry().values():
        rules = policy.rules(t.name)
        assert rules[omop.LOAD_DT].action is Action.ORDER_ONLY, t.name
        for c, rule in rules.items():
            if carries_source_time(t, c):
                assert rule.action in (Action.SHIFT_DATE, Action.DROP, Action.ORDER_ONLY), (t.name, c)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('load_dt = "shift_date"', "shift_date is not allowed on load_dt"),
        ('load_dt = "drop"', "drop is not allowed on load_dt"),
        ('condition_start_date = "order_only"', "order_only is defined for load_dt only"),
    ],
)
def test_the_policy_refuses_actions_that_would_not_hide_or_order_load_dt(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(f"[condition_occurrence]\n{line}\n")
    with pytest.raises(PolicyError, match=message):
        load_policy(f)


def add_rules(p: Project, rules: dict[str, str]) -> None:
    """Add column rules to the structured-only override (its tables are declared already)."""
    f = p.root / STRUCTURED_ONLY
    text = f.read_text()
    for table, lines in rules.items():
        text = text.replace(f"[{table}]\n", f"[{table}]\n{lines}", 1)
    f.write_text(text)


def test_policy_check_flags_an_override_that_keeps_a_source_timestamp(project: Project) -> None:
    structured_only(project)
    clean = project.cli("policy", "check", "--offline")
    assert clean.exit_code == 0 and "source timestamp" not in clean.output, clean.output
    add_rules(project, {"visit_occurrence": 'load_dt = "keep"\nvisit_start_date = "keep"\n'})
    r = project.cli("policy", "check", "--offline")
    assert "warning: visit_occurrence: load_dt is kept as is: a source timestamp lands unshifted" in r.output
    assert "warning: visit_occurrence: visit_start_date is kept as is: a source timestamp lands unshifted" in r.output


RECENT_DAYS = 6  # events of the new load happened up to this many days before it was loaded


def add_recent_load(p: Project) -> datetime:
    """One new weekly load in which every person's events are a few days old, as in real incremental
    loads: the situation in which a raw load_dt gives each person's shift away."""
    con = p.con()
    try:
        (mx,) = con.execute("SELECT max(load_dt) FROM omop.omop.condition_occurrence").fetchone()  # type: ignore[misc]
        new = mx + timedelta(days=7)
        for t, pk, dates in [
            ("condition_occurrence", "condition_occurrence_id", ["condition_start_date", "condition_end_date"]),
            ("visit_occurrence", "visit_occurrence_id", ["visit_start_date", "visit_end_date"]),
        ]:
            (top,) = con.execute(f"SELECT max({pk}) FROM omop.omop.{t}").fetchone()  # type: ignore[misc]
            moved = ", ".join(f"DATE '{new.date()}' - CAST(abs(hash({pk})) % {RECENT_DAYS} AS INTEGER) AS {d}" for d in dates)
            con.execute(
                f"INSERT INTO omop.omop.{t} SELECT * REPLACE ({pk} + {top} AS {pk}, {moved}, TIMESTAMP '{new}' AS load_dt) "
                f"FROM omop.omop.{t} WHERE {pk} IN (SELECT min({pk}) FROM omop.omop.{t} GROUP BY person_id)"
            )
        return new
    finally:
        con.close()


def attacker_rho(files: list[Path], date_col: str, members: list[int]) -> tuple[float, int]:
    """Spearman correlation, over persons, between the true offset and the reader's estimate from
    load_dt: the median of (shifted event date - landed load_dt), read as a time whatever it holds."""
    true = dict(
        zip(
            structured.pseudonymize(KEYS, "person", pa.array(members, pa.int64())).to_pylist(),
            structured.shift_days(KEYS, pa.array(members, pa.int64())).to_pylist(),
            strict=True,
        )
    )
    con = duckdb.connect()
    land = f"read_parquet({[str(f) for f in files]!r})"
    kind = con.execute(f"SELECT typeof(load_dt) FROM {land} LIMIT 1").fetchone()
    ldt_us = "epoch_us(load_dt)" if kind == ("TIMESTAMP",) else "load_dt"
    rows = con.execute(
        f"SELECT person_id, median(epoch_us({date_col}::TIMESTAMP)::HUGEINT - {ldt_us}::HUGEINT)::DOUBLE FROM {land} "
        f"WHERE {date_col} IS NOT NULL GROUP BY person_id"
    ).fetchall()
    est = np.array([r[1] for r in rows])
    off = np.array([true[r[0]] for r in rows], dtype=float)
    rank = lambda a: np.argsort(np.argsort(a)).astype(float)  # noqa: E731
    return float(np.corrcoef(rank(est), rank(off))[0, 1]), len(rows)


def synced_with_recent_load(p: Project, extra_rules: dict[str, str] | None = None) -> list[int]:
    structured_only(p)
    add_rules(p, extra_rules or {})
    members = person_ids(p)[::3]
    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", members))).exit_code == 0
    assert p.cli("sync", "-q").exit_code == 0
    add_recent_load(p)
    r = p.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    return members


def test_no_landed_table_lets_a_reader_estimate_the_offset_from_load_dt(project: Project) -> None:
    members = synced_with_recent_load(project)
    checked = set()
    for d in sorted((project.landing / "c").iterdir()):
        table = omop.table(d.name)
        files = sorted(d.glob("*.parquet"))
        landed = pq.read_schema(files[0]).names
        dates = [c.name for c in table.columns if c.cdm_type == "date" and c.name in landed]
        # All of it, and the incremental files alone (whose events are days old: the strongest case).
        for chosen in (files, [f for f in files if "__backfill__" not in f.name]):
            for col in dates[:1]:
                rho, n = attacker_rho(chosen, col, members) if chosen else (0.0, 0)
                if n < 30:
                    continue
                checked.add((d.name, len(chosen) < len(files)))
                assert abs(rho) < 4 / np.sqrt(n), (d.name, col, rho, n)  # four standard errors of a null correlation
    assert len(checked) >= 6 and (("condition_occurrence", True) in checked), checked


def test_the_same_reader_recovers_the_offset_from_a_raw_load_dt(project: Project) -> None:
    """The estimate above is a real attack: on a landing that keeps load_dt it finds the offsets."""
    members = synced_with_recent_load(project, {"condition_occurrence": 'load_dt = "keep"\n'})
    # Only the incremental file: its events are days old, as most incremental rows are.
    inc = [f for f in (project.landing / "c" / "condition_occurrence").glob("*.parquet") if "__backfill__" not in f.name]
    assert inc and pa.types.is_timestamp(pq.read_schema(inc[0]).field("load_dt").type)
    rho, n = attacker_rho(inc, "condition_start_date", members)
    assert n > 100 and rho > 0.95


def test_newest_version_stays_recognisable_and_repeats_are_identical(project: Project) -> None:
    structured_only(project)
    members = person_ids(project)[::5]
    project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", members)))
    assert project.cli("sync", "-q").exit_code == 0
    con = project.con()
    (mx,) = con.execute("SELECT max(load_dt) FROM omop.omop.condition_occurrence").fetchone()  # type: ignore[misc]
    new = mx + timedelta(days=7)
    # The upstream re-loads some members' rows with a new version: same key, later load_dt, new concept.
    con.execute(
        f"INSERT INTO omop.omop.condition_occurrence SELECT * REPLACE (condition_concept_id + 1 AS condition_concept_id, "
        f"TIMESTAMP '{new}' AS load_dt) FROM omop.omop.condition_occurrence "
        f"WHERE person_id IN (SELECT unnest($ids::BIGINT[])) AND condition_occurrence_id % 7 = 0",
        {"ids": members},
    )
    con.close()
    assert project.cli("sync", "-q").exit_code == 0
    with StateStore(project.root / "state") as st:  # watermarks stay in source time
        assert st.watermarks()[("c", "condition_occurrence")].wm == new
    land = duckdb.connect()
    rows = land.execute(
        f"SELECT condition_occurrence_id, arg_max(condition_concept_id, load_dt), arg_min(condition_concept_id, load_dt), "
        f"count(*) FROM read_parquet('{project.landing}/c/condition_occurrence/*.parquet') GROUP BY 1 HAVING count(*) > 1"
    ).fetchall()
    assert len(rows) > 20
    assert all(newest == oldest + 1 for _, newest, oldest, _ in rows)
    # A lookback lands repeats with identical (key, load_dt): verify counts them as expected duplicates.
    cfg = project.config.read_text() + "\n[sync]\nlookback_days = 14\n"
    project.config.write_text(cfg)
    add_recent_load(project)
    assert project.cli("sync", "-q").exit_code == 0
    r = project.cli("verify", "c", "--tables", "condition_occurrence")
    assert r.exit_code == 0, r.output
    assert "duplicates expected: lookback is on" in r.output


def test_verify_finds_a_landing_with_raw_load_dt_and_repair_lands_it_again(project: Project) -> None:
    """A landing made before load_dt became order_only (simulated by a sync that kept it)."""
    structured_only(project)
    policy = project.root / STRUCTURED_ONLY
    original = policy.read_text()
    add_rules(project, {t: 'load_dt = "keep"\n' for t in omop.registry()})
    # death has no primary key: verify cannot compare its rows but must still see its raw load_dt.
    tables = [*omop.DEFAULT_TABLES, "death"]
    project.config.write_text(project.config.read_text() + f"\n[sync]\ntables = {json.dumps(tables)}\n")
    con = project.con()
    con.execute(
        "INSERT INTO omop.omop.death (person_id, death_date, death_type_concept_id, load_dt) "
        "SELECT person_id, DATE '2019-05-01', 0, TIMESTAMP '2026-10-04 02:00' FROM omop.omop.person WHERE person_id % 4 = 0"
    )
    con.close()
    project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[::4])))
    assert project.cli("sync", "-q").exit_code == 0
    assert list((project.landing / "c" / "death").glob("*.parquet"))
    policy.write_text(original)
    project.add_load()
    r = project.cli("sync", "-q")  # new order_only files must not join a raw landing: one schema per table
    assert r.exit_code == 5
    assert "condition_occurrence: FAILED: c/condition_occurrence holds the raw source load_dt" in r.output, r.output
    assert "run 'cohortsync verify c --repair'" in r.output
    r = project.cli("verify", "c")
    assert r.exit_code == 5
    assert "raw load_dt" in r.output and "reveals the persons' date shifts" in r.output
    assert next(x for x in r.output.splitlines() if x.startswith("death ")).split()[1:3] == ["raw", "load_dt"]
    line = next(x for x in r.output.splitlines() if x.startswith("condition_occurrence"))
    assert "missing 0  extra 0" in line  # still compared exactly, row for row
    with StateStore(project.root / "state") as st:
        windows = {(t, f["name"]): (f["lower"], f["upper"], f["rows"]) for t in omop.registry() for f in st.files("c", t)}
    r = project.cli("verify", "c", "--repair")
    assert r.exit_code == 0, r.output
    assert "rewrote load_dt of c/condition_occurrence:" in r.output and "re-landed" not in r.output
    assert "rewrote load_dt of c/death:" in r.output
    assert project.cli("verify", "c").exit_code == 0
    with StateStore(project.root / "state") as st:  # the same files, windows and rows: only load_dt changed
        assert windows == {(t, f["name"]): (f["lower"], f["upper"], f["rows"]) for t in omop.registry() for f in st.files("c", t)}
    for f in project.landing.glob("c/*/*.parquet"):
        assert pa.types.is_int64(pq.read_schema(f).field("load_dt").type), f
    assert project.cli("sync", "-q").exit_code == 0  # the load that waited
    assert project.cli("verify", "c").exit_code == 0


def test_the_load_dt_rewrite_needs_only_the_landing(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Converting an old landing reads no source: it works with the source database gone, and its
    result equals what a sync with order_only lands."""
    from cohortsync import sync

    structured_only(project)
    project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[::6])))
    assert project.cli("sync", "-q").exit_code == 0
    rows_of = lambda t: duckdb.connect().execute(  # noqa: E731
        f"SELECT * FROM read_parquet('{project.landing}/c/{t}/*.parquet') ORDER BY ALL"
    ).fetchall()
    fresh = {t: rows_of(t) for t in ("person", "condition_occurrence")}
    shutil.rmtree(project.landing)
    shutil.rmtree(project.root / "state")
    policy = project.root / STRUCTURED_ONLY
    original = policy.read_text()
    add_rules(project, {t: 'load_dt = "keep"\n' for t in omop.registry()})
    assert project.cli("sync", "-q").exit_code == 0
    policy.write_text(original)
    project.db.rename(project.root / "gone.duckdb")
    monkeypatch.setenv("COHORTSYNC_DEID_KEY", TEST_KEY)
    done = sync.rewrite_load_dt(project.settings(), "c", ["person", "condition_occurrence"])
    assert [r.table for r in done] == ["person", "condition_occurrence"]
    for t, rows in fresh.items():
        assert rows_of(t) == rows, t
