"""SQL generation: trees, not text. Properties checked against a real DuckDB and sqlglot's parser."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from cohortsync import omop, plan

NAMES = plan.Names("cat", "omop", "sandbox", "cohortsync_members")
BASE = datetime(2026, 1, 4, 2, 0)
slugs = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)
bounds = st.one_of(st.none(), st.integers(0, 6).map(lambda w: BASE + timedelta(days=7 * w)))


@given(st.dictionaries(slugs, bounds, min_size=1, max_size=4), st.sampled_from(sorted(omop.registry())))
def test_extraction_renders_in_both_dialects_and_parses_back(windows: dict[str, datetime | None], table: str) -> None:
    t = omop.table(table)
    upper = BASE + timedelta(days=70)
    q = plan.extraction(t, [*t.column_names, "load_dt"], [plan.Slice(c, lo) for c, lo in windows.items()], upper, NAMES)
    for dialect in ("databricks", "duckdb", "spark"):
        sql = plan.render(q, dialect)
        back = sqlglot.parse_one(sql, dialect=dialect)
        # Every cohort name appears exactly as a string literal, never as SQL text.
        literals = {lit.this for lit in back.find_all(exp.Literal) if lit.is_string}
        assert set(windows) <= literals
        # The upper bound is a bare comparison on load_dt, so engines can prune files and row groups.
        assert any(
            isinstance(n, exp.LTE) and isinstance(n.this, exp.Column) and n.this.name == "load_dt"
            for n in back.find_all(exp.LTE)
        )
        if all(lo is not None for lo in windows.values()):
            floor = min(lo for lo in windows.values() if lo is not None)
            assert floor.isoformat(sep=" ", timespec="microseconds") in sql
        # No membership list is pasted in: the join does the filtering.
        assert not list(back.find_all(exp.In))


def test_cohort_names_are_validated_before_they_reach_sql() -> None:
    with pytest.raises(Exception, match="invalid cohort name"):
        plan.extraction(omop.table("person"), ["person_id"], [plan.Slice("x' OR '1'='1", None)], BASE, NAMES)


_con = duckdb.connect()
_con.execute("CREATE SCHEMA omop; CREATE SCHEMA sandbox")
_con.execute("CREATE TABLE omop.person (person_id BIGINT, load_dt TIMESTAMP)")
_con.execute("CREATE TABLE sandbox.cohortsync_members (cohort VARCHAR, person_id BIGINT, batch INT)")
MEM = plan.Names("memory", "omop", "sandbox", "cohortsync_members")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(1, 8), st.integers(0, 9)), max_size=40),
    members=st.dictionaries(slugs, st.sets(st.integers(1, 8), max_size=8), min_size=1, max_size=3),
    lowers=st.lists(st.one_of(st.none(), st.integers(0, 9)), min_size=3, max_size=3),
    upper=st.integers(0, 9),
)
def test_extraction_returns_exactly_each_cohorts_window(
    rows: list[tuple[int, int]], members: dict[str, set[int]], lowers: list[int | None], upper: int
) -> None:
    """Against a Python oracle: a row reaches cohort c iff its person is a member and lower_c < load_dt <= upper."""
    _con.execute("DELETE FROM omop.person; DELETE FROM sandbox.cohortsync_members")
    week = lambda k: BASE + timedelta(days=7 * k)  # noqa: E731
    if rows:
        _con.executemany("INSERT INTO omop.person VALUES (?, ?)", [(p, week(w)) for p, w in rows])
    for c, ids in members.items():
        for i in ids:
            _con.execute("INSERT INTO sandbox.cohortsync_members VALUES (?, ?, 0)", (c, i))
    slices = [plan.Slice(c, None if lo is None else week(lo)) for c, lo in zip(members, lowers, strict=False)]
    q = plan.extraction(omop.table("person"), ["person_id", "load_dt"], slices, week(upper), MEM)
    got = sorted(_con.sql(plan.render(q, "duckdb")).fetchall())
    want = sorted(
        (s.cohort, p, week(w))
        for s in slices
        for p, w in rows
        if p in members[s.cohort] and (s.lower is None or week(w) > s.lower) and week(w) <= week(upper)
    )
    assert got == want
