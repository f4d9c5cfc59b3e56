"""Source values that are their own concept's code land as written; every other value is scrubbed.

Whole flows on Eunomia (with its concept.csv) through the real CLI, the shipped policy and the real
text scrubber; the SQL against real DuckDB and rendered for Databricks/Spark. No mocks.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from cohortsync import omop, plan
from cohortsync.deid.pipeline import Deidentifier, code_pairs
from cohortsync.deid.policy import Action, load_policy
from cohortsync.deid.structured import Keys
from conftest import TEST_KEY, Project, person_ids

COHORT = 60
# Rows planted for cohort members, each with a source value that must NOT land as written.
MRN = "408812345"  # an MRN-looking number next to a real source concept id
NAMED = "195662009 John Smith"  # the SNOMED code of concept 4112343 with a name next to it
UNDER_ZERO = "55822004"  # a code whose row says concept 0 ("No matching concept")
NO_CONCEPT = "195662009"  # the same code, but the row has no source concept id


def _default_policy(project: Project, tables: list[str]) -> None:
    text = project.config.read_text().replace('policy = "keep_everything.toml"\n', "")
    listed = ", ".join(f'"{t}"' for t in tables)
    project.config.write_text(text + f"\n[sync]\ntables = [{listed}]\n")


def _members(project: Project) -> list[int]:
    ids = person_ids(project)[:COHORT]
    r = project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", ids)))
    assert r.exit_code == 0, r.output
    return ids


def _plant(project: Project, person: int) -> None:
    """Four condition rows of a member, copied from one of hers, with the values above."""
    con = project.con()
    try:
        con.execute("INSERT INTO omop.omop.concept SELECT * REPLACE (0 AS concept_id) FROM omop.omop.concept "
                    "WHERE concept_id = 4112343 AND NOT EXISTS (SELECT 1 FROM omop.omop.concept WHERE concept_id = 0)")
        con.execute("UPDATE omop.omop.concept SET concept_code = ? WHERE concept_id = 0", [UNDER_ZERO])
        (top,) = con.execute("SELECT max(condition_occurrence_id) FROM omop.omop.condition_occurrence").fetchone()  # type: ignore[misc]
        for i, (value, concept) in enumerate([(MRN, 4112343), (NAMED, 4112343), (UNDER_ZERO, 0), (NO_CONCEPT, None)]):
            con.execute(
                "INSERT INTO omop.omop.condition_occurrence SELECT * REPLACE (? AS condition_occurrence_id, "
                "? AS condition_source_value, ?::BIGINT AS condition_source_concept_id) "
                "FROM omop.omop.condition_occurrence WHERE person_id = ? LIMIT 1",
                [top + 1 + i, value, concept, person],
            )
    finally:
        con.close()


def _vouched(project: Project, ids: list[int], table: str, value: str, concept: str) -> Counter[str]:
    """The source values of the cohort's rows that equal their own source concept's code (concept 0 excluded)."""
    con = project.con(read_only=True)
    try:
        rows = con.execute(
            f"SELECT s.{value} FROM omop.omop.{table} s JOIN omop.omop.concept k ON k.concept_id = s.{concept} "
            f"WHERE k.concept_id <> 0 AND k.concept_code = s.{value} AND s.person_id IN (SELECT unnest(?::BIGINT[]))",
            [ids],
        ).fetchall()
    finally:
        con.close()
    return Counter(str(v) for (v,) in rows)


def _landed(project: Project, table: str) -> pa.Table:
    return pq.read_table(project.landing / "c" / table)


def test_eunomia_codes_land_as_written_and_everything_else_is_scrubbed(project: Project) -> None:
    _default_policy(project, ["person", "condition_occurrence", "drug_exposure"])
    ids = _members(project)
    _plant(project, ids[0])
    r = project.cli("sync")
    assert r.exit_code == 0, r.output
    assert "concept table" not in r.output  # it is there: no fail-closed note

    landed = _landed(project, "condition_occurrence")
    values = Counter(landed.column("condition_source_value").to_pylist())
    want = _vouched(project, ids, "condition_occurrence", "condition_source_value", "condition_source_concept_id")
    assert sum(want.values()) > 500  # Eunomia's condition codes: nearly every row
    # Exactly the vouched values land as written, as many times as the source holds them: the planted
    # code without a concept id (NO_CONCEPT equals a vouched code) is not among them.
    assert Counter({v: n for v, n in values.items() if v in want}) == want
    assert MRN not in values and UNDER_ZERO not in values and NAMED not in values
    assert not any("Smith" in v or "John" in v for v in values if v)
    assert sum(values.values()) == landed.num_rows
    # Drugs: RxNorm and NDC codes of the drug's own source concept land as written too.
    drugs = Counter(_landed(project, "drug_exposure").column("drug_source_value").to_pylist())
    want_drugs = _vouched(project, ids, "drug_exposure", "drug_source_value", "drug_source_concept_id")
    assert want_drugs and Counter({v: n for v, n in drugs.items() if v in want_drugs}) == want_drugs
    # Person source values have concept 0 in Eunomia: scrubbed as before (closed vocabularies keep F/M).
    assert not _vouched(project, ids, "person", "gender_source_value", "gender_source_concept_id")

    # The flags never land, in any file of any table.
    for table in ("person", "condition_occurrence", "drug_exposure"):
        for f in (project.landing / "c" / table).glob("*.parquet"):
            assert not [n for n in pq.read_schema(f).names if n.startswith("__")], f
    # verify and export read the landing as before.
    v = project.cli("verify", "c")
    assert v.exit_code == 0, v.output
    out = project.root / "out"
    e = project.cli("export", "c", "--consumer", "acme", "--out", str(out))
    assert e.exit_code == 0, e.output
    exported = pq.read_table(sorted(out.rglob("condition_occurrence*.parquet"))).column("condition_source_value")
    assert Counter({v: n for v, n in Counter(exported.to_pylist()).items() if v in want}) == want


def test_a_missing_concept_table_keeps_nothing_fails_nothing_and_says_so_once(project: Project) -> None:
    _default_policy(project, ["condition_occurrence"])
    ids = _members(project)
    con = project.con()
    con.execute("DROP TABLE omop.omop.concept")
    con.close()
    r = project.cli("sync")
    assert r.exit_code == 0, r.output
    assert r.output.count("no readable concept table at omop.concept") == 1, r.output
    values = set(_landed(project, "condition_occurrence").column("condition_source_value").to_pylist())
    con = project.con(read_only=True)
    codes = {
        str(v) for (v,) in con.execute(
            "SELECT DISTINCT condition_source_value FROM omop.omop.condition_occurrence "
            "WHERE person_id IN (SELECT unnest(?::BIGINT[]))", [ids]
        ).fetchall()
    }
    con.close()
    numeric = {c for c in codes if c.isdigit()}  # SNOMED codes: the scrubber's [ID]; K92.2 passes it as text
    assert numeric and not values & numeric and "[ID]" in values
    # plan prints the SQL sync runs: without the check.
    p = project.cli("plan")
    assert p.exit_code == 0 and "EXISTS" not in p.output, p.output


def test_a_repair_lands_the_codes_as_a_sync_does(project: Project) -> None:
    """verify --repair extracts again through the same plan: codes kept, flags dropped."""
    _default_policy(project, ["condition_occurrence"])
    ids = _members(project)
    assert project.cli("sync", "-q").exit_code == 0
    synced = Counter(_landed(project, "condition_occurrence").column("condition_source_value").to_pylist())
    for f in (project.landing / "c" / "condition_occurrence").glob("*.parquet"):
        f.unlink()
    r = project.cli("verify", "c", "--repair")
    assert r.exit_code == 0 and "re-landed c/condition_occurrence" in r.output, r.output
    files = sorted((project.landing / "c" / "condition_occurrence").glob("*.parquet"))
    assert files and not [n for f in files for n in pq.read_schema(f).names if n.startswith("__")]
    repaired = Counter(_landed(project, "condition_occurrence").column("condition_source_value").to_pylist())
    want = _vouched(project, ids, "condition_occurrence", "condition_source_value", "condition_source_concept_id")
    assert want and repaired == synced and Counter({v: n for v, n in repaired.items() if v in want}) == want


def test_a_concept_table_in_its_own_schema(project: Project) -> None:
    """source.vocabulary_schema: a site keeping the vocabulary apart from the CDM tables."""
    _default_policy(project, ["condition_occurrence"])
    text = project.config.read_text().replace("[source]\n", '[source]\nvocabulary_schema = "vocab"\n')
    project.config.write_text(text)
    ids = _members(project)
    con = project.con()
    con.execute("CREATE SCHEMA omop.vocab; CREATE TABLE omop.vocab.concept AS SELECT * FROM omop.omop.concept")
    con.execute("DROP TABLE omop.omop.concept")
    con.close()
    p = project.cli("plan")
    assert p.exit_code == 0 and '"omop"."vocab"."concept"' in p.output, p.output
    r = project.cli("sync")
    assert r.exit_code == 0 and "concept table" not in r.output, r.output
    values = Counter(_landed(project, "condition_occurrence").column("condition_source_value").to_pylist())
    want = _vouched_in(project, ids, "vocab")
    assert want and Counter({v: n for v, n in values.items() if v in want}) == want


def _vouched_in(project: Project, ids: list[int], schema: str) -> Counter[str]:
    con = project.con(read_only=True)
    try:
        rows = con.execute(
            f"SELECT s.condition_source_value FROM omop.omop.condition_occurrence s JOIN omop.{schema}.concept k "
            "ON k.concept_id = s.condition_source_concept_id WHERE k.concept_id <> 0 "
            "AND k.concept_code = s.condition_source_value AND s.person_id IN (SELECT unnest(?::BIGINT[]))",
            [ids],
        ).fetchall()
    finally:
        con.close()
    return Counter(str(v) for (v,) in rows)


# -- the pairs and the SQL -------------------------------------------------------------------------


def test_pairs_come_from_the_spec() -> None:
    pairs = {t.name: omop.source_code_pairs(t) for t in omop.registry().values()}
    assert pairs["condition_occurrence"] == (("condition_source_value", "condition_source_concept_id"),)
    assert ("drug_source_value", "drug_source_concept_id") in pairs["drug_exposure"]
    assert not [p for p in pairs["drug_exposure"] if p[0] == "route_source_value"]  # no sibling concept id
    for table, found in pairs.items():
        for value, concept in found:
            assert omop.table(table).column(concept).fk_table == omop.CONCEPT_TABLE
            assert value.endswith("_source_value") and concept.endswith("_source_concept_id")
    concept = omop.vocabulary_tables()[omop.CONCEPT_TABLE]
    assert {omop.CONCEPT_ID, omop.CONCEPT_CODE} <= set(concept.column_names) and concept.primary_key == omop.CONCEPT_ID


def test_only_scrubbed_values_with_their_concept_id_in_the_source_are_checked() -> None:
    policy = load_policy()
    t = omop.table("condition_occurrence")
    cols = [c.upper() for c in t.column_names]  # the source's spelling is kept
    assert code_pairs(policy, t, cols) == [("CONDITION_SOURCE_VALUE", "CONDITION_SOURCE_CONCEPT_ID")]
    without = [c for c in cols if c != "CONDITION_SOURCE_CONCEPT_ID"]
    assert code_pairs(policy, t, without) == []
    # person_source_value is dropped by the policy and has no sibling: never checked.
    assert [v for v, _ in code_pairs(policy, omop.table("person"), list(omop.table("person").column_names))] == [
        "gender_source_value", "race_source_value", "ethnicity_source_value",
    ]


NAMES = plan.Names("cat", "omop", "sandbox", "cohortsync_members", "vocab")
UPPER = datetime(2026, 3, 1)


@pytest.mark.parametrize("dialect", ["duckdb", "databricks", "spark"])
def test_the_check_is_rendered_in_every_dialect(dialect: str) -> None:
    t = omop.table("condition_occurrence")
    q = plan.extraction(t, list(t.column_names), [plan.Slice("a", None)], UPPER, NAMES, omop.source_code_pairs(t))
    sql = plan.render(q, dialect)
    back = sqlglot.parse_one(sql, dialect=dialect)
    exists = list(back.find_all(exp.Exists))
    assert len(exists) == 1
    assert exists[0].find(exp.Table).name == "concept"  # type: ignore[union-attr]
    assert exists[0].find(exp.Table).db == "vocab"  # type: ignore[union-attr]
    aliases = [s.alias for s in back.expressions if isinstance(s, exp.Alias)]
    assert plan.code_flag("condition_source_value") in aliases
    # No OMOP column can be named like a flag.
    assert not [c for tb in omop.registry().values() for c in tb.column_names if c.startswith(plan.CODE_FLAG_PREFIX)]


_con = duckdb.connect()
_con.execute("CREATE SCHEMA omop; CREATE SCHEMA sandbox; CREATE SCHEMA vocab")
_con.execute(
    "CREATE TABLE omop.condition_occurrence (person_id BIGINT, condition_source_value VARCHAR, "
    "condition_source_concept_id BIGINT, load_dt TIMESTAMP)"
)
_con.execute("CREATE TABLE vocab.concept (concept_id BIGINT, concept_code VARCHAR)")
_con.execute("CREATE TABLE sandbox.cohortsync_members (cohort VARCHAR, person_id BIGINT, batch INT)")
_MEM = plan.Names("memory", "omop", "sandbox", "cohortsync_members", "vocab")
_codes = st.sampled_from(["72892002", "72892002 John Smith", "", "0"])


@settings(max_examples=60)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 4), st.one_of(st.none(), _codes), st.one_of(st.none(), st.integers(0, 2))), max_size=25
    ),
    concepts=st.lists(st.tuples(st.integers(0, 2), _codes), max_size=8),  # repeats allowed: no enforced key
    members=st.lists(st.integers(1, 4), min_size=1, max_size=4, unique=True),
)
def test_the_check_never_changes_the_rows_and_flags_exactly_the_equal_codes(
    rows: list[tuple[int, str | None, int | None]], concepts: list[tuple[int, str]], members: list[int]
) -> None:
    """Against a Python oracle, on generated data with repeated concept ids: the same rows (never
    more) come back with the check as without it, and a row's flag is true iff its value equals the
    code of a concept with its own non-zero id."""
    _con.execute("DELETE FROM omop.condition_occurrence; DELETE FROM vocab.concept; DELETE FROM sandbox.cohortsync_members")
    if rows:
        _con.executemany("INSERT INTO omop.condition_occurrence VALUES (?, ?, ?, TIMESTAMP '2026-01-04')", rows)
    if concepts:
        _con.executemany("INSERT INTO vocab.concept VALUES (?, ?)", concepts)
    _con.executemany("INSERT INTO sandbox.cohortsync_members VALUES ('a', ?, 0)", [(m,) for m in members])
    t = omop.table("condition_occurrence")
    cols = ["person_id", "condition_source_value", "condition_source_concept_id"]
    slices = [plan.Slice("a", None)]
    plain = sorted(_con.sql(plan.render(plan.extraction(t, cols, slices, UPPER, _MEM), "duckdb")).fetchall(), key=repr)
    checked = _con.sql(plan.render(plan.extraction(t, cols, slices, UPPER, _MEM, omop.source_code_pairs(t)), "duckdb"))
    got = checked.fetchall()
    assert sorted((r[:-1] for r in got), key=repr) == plain
    known = set(concepts)
    for _cohort, _p, value, concept, flag in got:
        assert flag is (value is not None and concept is not None and concept != 0 and (concept, value) in known)


# -- the de-identification step --------------------------------------------------------------------


class _Recording:
    """A stand-in scrubber that records what reaches it: the point is what is *not* passed."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def scrub(self, texts: pa.Array, shift_days: pa.Array, column: str | None = None) -> tuple[pa.Array, object]:
        assert len(texts) == len(shift_days)
        self.seen += texts.to_pylist()
        return pa.array(["[SCRUBBED]" if v is not None else None for v in texts.to_pylist()], texts.type), {}


@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string(), pa.string_view()])
@pytest.mark.parametrize("flags", [[True, False, None, True], [True, True, True, True], [False, False, None, False]])
def test_kept_codes_never_reach_the_scrubber_and_the_flag_never_lands(flags: list[bool | None], text_type: pa.DataType) -> None:
    t = omop.table("condition_occurrence")
    values = ["72892002", "72892002 John Smith", "1234567", "444814009"]
    batch = pa.RecordBatch.from_arrays(
        [pa.array(["c"] * 4), pa.array([1, 2, 3, 4], pa.int64()), pa.array(values, text_type), pa.array(flags, pa.bool_())],
        names=[plan.COHORT_COLUMN, "person_id", "condition_source_value", plan.code_flag("condition_source_value")],
    )
    scrubber = _Recording()
    deid = Deidentifier(load_policy(), Keys.from_secret(TEST_KEY), scrubber)
    assert deid.policy.rules(t.name)["condition_source_value"].action is Action.SCRUB_TEXT
    out = deid.apply(t, batch, 2026)
    assert out.schema.names == [plan.COHORT_COLUMN, "person_id", "condition_source_value"]
    assert out.schema.field("condition_source_value").type == text_type
    kept = [bool(f) for f in flags]
    assert scrubber.seen == [v for v, k in zip(values, kept, strict=True) if not k]
    assert out.column("condition_source_value").to_pylist() == [
        v if k else "[SCRUBBED]" for v, k in zip(values, kept, strict=True)
    ]


def test_plan_prints_the_check_sync_runs(project: Project) -> None:
    _default_policy(project, ["condition_occurrence", "person"])
    _members(project)
    p = project.cli("plan")
    assert p.exit_code == 0, p.output
    assert p.output.count("EXISTS") == 4, p.output  # condition: 1; person: gender, race, ethnicity
    assert '"__code_condition_source_value"' in p.output

