"""Spark SQL tier: every statement cohortsync generates for Databricks runs on a real Spark engine
and answers what DuckDB answers on the same data.

Spark parses the Databricks dialect (Databricks SQL is Spark SQL plus extensions we do not use), so
a statement that Spark rejects or answers differently would fail on a warehouse too. Values are
compared, not Arrow schemas: Spark and DuckDB differ in integer widths and time zone annotations.
"""

# ruff: noqa: F811  (fixtures imported from dbx_fixtures are parameters here)
from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from dbx_fixtures import omop_db, omop_parquet, spark  # noqa: F401  (fixtures)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortsync import omop, plan
from cohortsync.sources import databricks as dbx
from cohortsync.sources.duckdb import DuckDBSource

SPARK_NAMES = plan.Names("spark_catalog", "omop", "sandbox", "cohortsync_members")
MISSING_IDS = [900_000_000_001, 900_000_000_002]
EXTRACTED = ["person", "condition_occurrence", "measurement", "note", "note_nlp"]


def spark_rows(spark: Any, q: Any) -> list[tuple[object, ...]]:
    table = spark.sql(plan.render(q, "databricks")).toArrow()
    return [tuple(r.values()) for r in dbx._naive_utc(table).to_pylist()]


def spark_run(spark: Any, statement: Any) -> None:
    spark.sql(plan.render(statement, "databricks")).collect()


def duck_rows(duck: DuckDBSource, q: Any) -> list[tuple[object, ...]]:
    with duck.stream(q, 4096) as reader:
        return [tuple(r.values()) for r in reader.read_all().to_pylist()]


def same_rows(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    return sorted(a, key=repr) == sorted(b, key=repr)


@pytest.fixture(scope="module")
def duck(omop_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDBSource]:
    path = tmp_path_factory.mktemp("duck-ref") / "reference.duckdb"
    shutil.copyfile(omop_db, path)
    source = DuckDBSource.open(path)
    yield source
    source.close()


@pytest.fixture(scope="module")
def cohorts(spark: Any, duck: DuckDBSource) -> dict[str, list[int]]:
    """Three cohorts, uploaded to both engines: Spark through the Databricks upload statements
    (in chunks of 97 ids, so every cohort takes several INSERTs), DuckDB through its source."""
    ids = [r[0] for r in duck.rows(exp_select_person_ids(duck.names))]
    groups = {
        "alpha": ids[::3] + MISSING_IDS,
        "beta": ids[::5],
        "gamma-1": ids[:50],
    }
    for name, members in groups.items():
        array = pa.array(members, pa.int64())
        for statement in dbx.upload_statements(name, array, 0, SPARK_NAMES, 97):
            spark_run(spark, statement)
        duck.replace_members(name, array)
    return groups


def exp_select_person_ids(names: plan.Names) -> Any:
    from sqlglot import exp

    return exp.select(exp.column("person_id")).from_(names.omop("person")).order_by("person_id")


def load_dates(duck: DuckDBSource) -> list[datetime]:
    from sqlglot import exp

    q = exp.select(exp.column("load_dt")).distinct().from_(duck.names.omop("condition_occurrence")).order_by("load_dt")
    return [r[0] for r in duck.rows(q)]  # type: ignore[misc]


def columns(table: str) -> list[str]:
    return [*omop.all_tables()[table].column_names, omop.LOAD_DT]


def test_upload_gives_each_cohort_exactly_its_members(spark: Any, cohorts: dict[str, list[int]]) -> None:
    got = spark.sql("SELECT cohort, person_id, batch FROM spark_catalog.sandbox.cohortsync_members").collect()
    by_cohort: dict[str, list[int]] = {}
    for cohort, person_id, batch in got:
        assert batch == 0
        by_cohort.setdefault(cohort, []).append(person_id)
    assert {k: sorted(v) for k, v in by_cohort.items()} == {k: sorted(v) for k, v in cohorts.items()}
    staged = spark.sql("SELECT count(*) FROM spark_catalog.sandbox.cohortsync_members_upload").collect()[0][0]
    assert staged == 0, "the staging partitions are emptied after each upload"


def test_member_digests_equal_duckdb_and_python(spark: Any, duck: DuckDBSource, cohorts: dict[str, list[int]]) -> None:
    got = spark_rows(spark, plan.member_digests(SPARK_NAMES))
    assert same_rows(got, duck.rows(plan.member_digests(duck.names)))
    assert {r[0]: tuple(r[1:]) for r in got} == {k: plan.member_digest(v, [0] * len(v)) for k, v in cohorts.items()}


@pytest.mark.parametrize("cohort", ["alpha", "beta"])
def test_missing_persons_equal_duckdb(spark: Any, duck: DuckDBSource, cohorts: dict[str, list[int]], cohort: str) -> None:
    got = spark_rows(spark, plan.missing_persons(cohort, SPARK_NAMES))
    assert got == duck.rows(plan.missing_persons(cohort, duck.names))  # ordered by the template
    assert got == ([(i,) for i in MISSING_IDS] if cohort == "alpha" else [])


@pytest.mark.parametrize("table", [*omop.DEFAULT_TABLES, "note_nlp", "death"])
def test_max_load_dt_equals_duckdb(spark: Any, duck: DuckDBSource, table: str) -> None:
    got = spark_rows(spark, plan.max_load_dt(table, SPARK_NAMES))
    assert got == duck.rows(plan.max_load_dt(table, duck.names))
    assert table == "death" or isinstance(got[0][0], datetime)


def test_all_upper_bounds_in_one_query_equal_duckdb(spark: Any, duck: DuckDBSource) -> None:
    tables = list(omop.DEFAULT_TABLES)
    got = spark_rows(spark, plan.max_load_dts(tables, SPARK_NAMES))
    assert sorted(got) == sorted(duck.rows(plan.max_load_dts(tables, duck.names)))
    assert sorted(i for i, _ in got) == list(range(len(tables)))  # one row per table, tagged by position
    assert dict(got)[0] is not None


def test_select_columns_and_select_nothing(spark: Any, duck: DuckDBSource) -> None:
    cols = ["person_id", "year_of_birth", "load_dt"]
    got = spark_rows(spark, plan.select_columns("person", cols, SPARK_NAMES))
    assert same_rows(got, duck_rows(duck, plan.select_columns("person", cols, duck.names)))
    empty = spark.sql(plan.render(plan.select_nothing("note_nlp", SPARK_NAMES), "databricks"))
    assert empty.columns == columns("note_nlp") and empty.count() == 0


def extraction_cases(dates: list[datetime]) -> dict[str, tuple[str, list[plan.Slice], datetime]]:
    first, second, last = dates[0], dates[1], dates[-1]
    return {
        "new cohort (backfill)": ("condition_occurrence", [plan.Slice("alpha", None)], last),
        "existing cohorts": ("measurement", [plan.Slice("alpha", first), plan.Slice("beta", second)], last),
        "new and existing": ("person", [plan.Slice("alpha", first), plan.Slice("gamma-1", None)], last),
        "earlier upper bound": ("note", [plan.Slice("beta", None), plan.Slice("gamma-1", first)], second),
        "via note_nlp, existing": ("note_nlp", [plan.Slice("alpha", first), plan.Slice("beta", second)], last),
        "via note_nlp, new": ("note_nlp", [plan.Slice("gamma-1", None)], last),
    }


CASES = [
    "new cohort (backfill)",
    "existing cohorts",
    "new and existing",
    "earlier upper bound",
    "via note_nlp, existing",
    "via note_nlp, new",
]


@pytest.mark.parametrize("case", CASES)
def test_extraction_equals_duckdb(spark: Any, duck: DuckDBSource, cohorts: dict[str, list[int]], case: str) -> None:
    table, slices, upper = extraction_cases(load_dates(duck))[case]
    spark_q = plan.extraction(omop.table(table), columns(table), slices, upper, SPARK_NAMES)
    got = spark_rows(spark, spark_q)
    want = duck_rows(duck, plan.extraction(omop.table(table), columns(table), slices, upper, duck.names))
    assert want, f"{case}: the reference extraction is empty, so the comparison would prove nothing"
    assert len(got) == len(want) and same_rows(got, want)
    by_cohort = {c for c, *_ in got}
    assert by_cohort == {s.cohort for s in slices}


@pytest.mark.parametrize("table", ["condition_occurrence", "drug_exposure", "person"])
def test_the_source_code_check_equals_duckdb(spark: Any, duck: DuckDBSource, cohorts: dict[str, list[int]], table: str) -> None:
    """The EXISTS per (source value, source concept id) pair: Spark answers what DuckDB answers, row
    for row, and returns exactly the rows of the extraction without it (it can never multiply rows)."""
    t = omop.table(table)
    pairs = omop.source_code_pairs(t)
    slices, upper = [plan.Slice("alpha", None), plan.Slice("beta", None)], load_dates(duck)[-1]
    got = spark_rows(spark, plan.extraction(t, columns(table), slices, upper, SPARK_NAMES, pairs))
    want = duck_rows(duck, plan.extraction(t, columns(table), slices, upper, duck.names, pairs))
    plain = duck_rows(duck, plan.extraction(t, columns(table), slices, upper, duck.names))
    assert want and len(got) == len(want) == len(plain) and same_rows(got, want)
    assert same_rows([r[: -len(pairs)] for r in want], plain)
    flags = [r[-len(pairs):] for r in got]
    if table == "person":  # Eunomia's person source values have concept 0: nothing is vouched for
        assert not any(f for fs in flags for f in fs)
    else:
        assert sum(fs[0] for fs in flags) > 0.9 * len(flags)  # Eunomia: nearly every code is its concept's


@st.composite
def windows(draw: st.DrawFn, dates: list[datetime]) -> tuple[str, list[plan.Slice], datetime]:
    table = draw(st.sampled_from(EXTRACTED))
    names = draw(st.lists(st.sampled_from(["alpha", "beta", "gamma-1"]), min_size=1, max_size=3, unique=True))
    bounds = [None, *dates, dates[0] - timedelta(microseconds=1), dates[1] + timedelta(hours=5, microseconds=7)]
    slices = [plan.Slice(n, draw(st.sampled_from(bounds))) for n in names]
    upper = draw(st.sampled_from(dates[1:]))
    return table, slices, upper


def test_extraction_property_equals_duckdb(spark: Any, duck: DuckDBSource, cohorts: dict[str, list[int]]) -> None:
    """Any cohorts, any watermarks (on, between and before the loads), any upper bound: same rows."""
    dates = load_dates(duck)

    @settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(windows(dates))
    def check(case: tuple[str, list[plan.Slice], datetime]) -> None:
        table, slices, upper = case
        got = spark_rows(spark, plan.extraction(omop.table(table), columns(table), slices, upper, SPARK_NAMES))
        want = duck_rows(duck, plan.extraction(omop.table(table), columns(table), slices, upper, duck.names))
        assert same_rows(got, want)

    check()


def test_reupload_replaces_only_that_cohort(spark: Any) -> None:
    """Idempotent and isolated: uploading twice leaves one copy; another cohort is untouched."""
    names = plan.Names("spark_catalog", "omop", "sandbox", "reupload_members")

    def upload(cohort: str, ids: list[int], batch: int = 0) -> None:
        for statement in dbx.upload_statements(cohort, pa.array(ids, pa.int64()), batch, names, 4):
            spark_run(spark, statement)

    def members() -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for c, p, b in spark.sql("SELECT cohort, person_id, batch FROM spark_catalog.sandbox.reupload_members").collect():
            out.setdefault(c, []).append((p, b))
        return {k: sorted(v) for k, v in out.items()}

    upload("keep", [1, 2, 3])
    upload("redo", list(range(10, 21)))
    upload("redo", list(range(10, 21)))
    assert members() == {"keep": [(1, 0), (2, 0), (3, 0)], "redo": [(i, 0) for i in range(10, 21)]}
    upload("redo", [7, 2**62], batch=1)
    assert members() == {"keep": [(1, 0), (2, 0), (3, 0)], "redo": [(7, 1), (2**62, 1)]}
    upload("redo", [])
    assert members() == {"keep": [(1, 0), (2, 0), (3, 0)]}
    for statement in dbx.upload_statements("amended", pa.array([4, 5, 6, 8, 9]), pa.array([0, 2, 0, 1, 2]), names, 2):
        spark_run(spark, statement)  # one batch number per id (amendments)
    assert members()["amended"] == [(4, 0), (5, 2), (6, 0), (8, 1), (9, 2)]
    digests = {r[0]: tuple(r[1:]) for r in spark_rows(spark, plan.member_digests(names))}
    assert digests["amended"] == plan.member_digest([4, 5, 6, 8, 9], [0, 2, 0, 1, 2])
    assert digests["keep"] == plan.member_digest([1, 2, 3], [0, 0, 0])
    spark_run(spark, dbx.members_clear("amended", names))  # what delete_members runs
    spark_run(spark, dbx.members_clear("never-uploaded", names))
    assert members() == {"keep": [(1, 0), (2, 0), (3, 0)]}


def test_upload_property(spark: Any) -> None:
    """Whatever the ids and chunk size, the partition holds exactly the uploaded set."""
    names = plan.Names("spark_catalog", "omop", "sandbox", "property_members")

    @settings(max_examples=6)
    @given(
        st.lists(st.integers(min_value=1, max_value=2**63 - 1), max_size=40, unique=True),
        st.integers(min_value=1, max_value=15),
    )
    def check(ids: list[int], chunk: int) -> None:
        for statement in dbx.upload_statements("prop", pa.array(ids, pa.int64()), 0, names, chunk):
            spark_run(spark, statement)
        got = spark.sql("SELECT person_id FROM spark_catalog.sandbox.property_members WHERE cohort = 'prop'").collect()
        assert sorted(r[0] for r in got) == sorted(ids)
        digests = {r[0]: tuple(r[1:]) for r in spark_rows(spark, plan.member_digests(names))}
        assert digests.get("prop") == (plan.member_digest(ids, [0] * len(ids)) if ids else None)  # 63-bit ids: no overflow

    check()
