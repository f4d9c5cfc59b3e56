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


@settings(max_examples=60)
@given(
    rows=st.lists(st.tuples(st.integers(1, 8), st.integers(0, 9)), max_size=40),
    members=st.dictionaries(slugs, st.dictionaries(st.integers(1, 8), st.integers(0, 2), max_size=8), min_size=1, max_size=3),
    lowers=st.lists(st.one_of(st.none(), st.integers(0, 9)), min_size=3, max_size=3),
    synced=st.lists(st.one_of(st.none(), st.integers(0, 2)), min_size=3, max_size=3),
    upper=st.integers(0, 9),
)
def test_extraction_returns_exactly_each_cohorts_window(
    rows: list[tuple[int, int]],
    members: dict[str, dict[int, int]],
    lowers: list[int | None],
    synced: list[int | None],
    upper: int,
) -> None:
    """Against a Python oracle: a row reaches cohort c iff its person is a member and either
    lower_c < load_dt <= upper, or the member was added after batch b_c (its own backfill)."""
    _con.execute("DELETE FROM omop.person; DELETE FROM sandbox.cohortsync_members")
    week = lambda k: BASE + timedelta(days=7 * k)  # noqa: E731
    if rows:
        _con.executemany("INSERT INTO omop.person VALUES (?, ?)", [(p, week(w)) for p, w in rows])
    for c, ids in members.items():
        for i, b in ids.items():
            _con.execute("INSERT INTO sandbox.cohortsync_members VALUES (?, ?, ?)", (c, i, b))
    slices = [
        plan.Slice(c, None if lo is None else week(lo), None if lo is None else nb)
        for c, lo, nb in zip(members, lowers, synced, strict=False)
    ]
    q = plan.extraction(omop.table("person"), ["person_id", "load_dt"], slices, week(upper), MEM)
    got = sorted(_con.sql(plan.render(q, "duckdb")).fetchall())

    def due(s: plan.Slice, p: int, w: int) -> bool:
        if p not in members[s.cohort] or week(w) > week(upper):
            return False
        if s.lower is None or week(w) > s.lower:
            return True
        return s.new_after_batch is not None and members[s.cohort][p] > s.new_after_batch

    want = sorted((s.cohort, p, week(w)) for s in slices for p, w in rows if due(s, p, w))
    assert got == want


_BOUND_TABLES = ["person", "note", "measurement"]
for _t in _BOUND_TABLES[1:]:
    _con.execute(f"CREATE TABLE omop.{_t} (person_id BIGINT, load_dt TIMESTAMP)")


@settings(max_examples=40)
@given(
    weeks=st.lists(st.lists(st.integers(0, 9), max_size=6), min_size=3, max_size=3),
    order=st.permutations(_BOUND_TABLES),
)
def test_upper_bounds_in_one_query_equal_each_tables_max(weeks: list[list[int]], order: list[str]) -> None:
    """The one-statement bounds (a UNION ALL tagged by position) give each table its own max, an
    empty table None, whatever the order the tables are asked in."""
    from cohortsync.sources.base import upper_bound, upper_bounds
    from cohortsync.sources.duckdb import DuckDBSource

    src = DuckDBSource(_con, MEM)
    for t, ws in zip(_BOUND_TABLES, weeks, strict=True):
        _con.execute(f"DELETE FROM omop.{t}")
        if ws:
            _con.executemany(f"INSERT INTO omop.{t} VALUES (1, ?)", [(BASE + timedelta(days=7 * w),) for w in ws])
    want = {t: (BASE + timedelta(days=7 * max(ws)) if ws else None) for t, ws in zip(_BOUND_TABLES, weeks, strict=True)}
    assert upper_bounds(src, list(order)) == want
    assert {t: upper_bound(src, t) for t in order} == want


@settings(max_examples=60)
@given(
    st.dictionaries(
        slugs,
        st.lists(st.tuples(st.integers(1, 2**63 - 1), st.integers(0, 2**31 - 2)), min_size=1, max_size=30),
        max_size=3,
    )
)
def test_member_digests_in_sql_equal_the_python_digest(cohorts: dict[str, list[tuple[int, int]]]) -> None:
    """The sandbox check compares what DuckDB computes over the members table with what Python
    computes from cohorts/: equal for any ids and batches, extremes included (no overflow)."""
    con = duckdb.connect()
    try:
        con.execute("CREATE SCHEMA sandbox; CREATE TABLE sandbox.m (cohort VARCHAR, person_id BIGINT, batch INTEGER)")
        rows = [(c, p, b) for c, members in cohorts.items() for p, b in members]
        if rows:
            con.executemany("INSERT INTO sandbox.m VALUES (?, ?, ?)", rows)
        q = plan.member_digests(plan.Names("memory", "omop", "sandbox", "m"))
        got = {r[0]: tuple(r[1:]) for r in con.sql(plan.render(q, "duckdb")).fetchall()}
    finally:
        con.close()
    want = {c: plan.member_digest([p for p, _ in m], [b for _, b in m]) for c, m in cohorts.items()}
    assert got == want


def test_member_digest_tells_a_swapped_id_or_batch_from_the_recorded_list() -> None:
    ids, batches = [3, 10, 2**40 + 7], [0, 1, 0]
    digest = plan.member_digest(ids, batches)
    assert plan.member_digest([3, 11, 2**40 + 7], batches) != digest
    assert plan.member_digest([3, 10, 2**41 + 7], batches) != digest  # differs only above 2^31
    assert plan.member_digest(ids, [0, 0, 1]) != digest
    assert plan.member_digest(list(reversed(ids)), list(reversed(batches))) == digest  # order-free
