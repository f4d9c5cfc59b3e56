"""Structured de-identification: keyed pseudonyms, per-person date shifts, top-coding, fail-closed policy."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohortsync import omop
from cohortsync.deid import structured
from cohortsync.deid.policy import Action, default_action, load_policy, render_default
from cohortsync.deid.structured import Keys
from cohortsync.errors import DeidError
from conftest import TEST_KEY, Project, person_ids, structured_only_policy

KEYS = Keys.from_secret(TEST_KEY)
OTHER = Keys.from_secret("another-key-" + "x" * 40)
ids = st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=60)


@given(ids)
def test_pseudonyms_are_positive_63_bit_deterministic_and_keep_nulls(values: list[int | None]) -> None:
    arr = pa.array(values, pa.int64())
    a = structured.pseudonymize(KEYS, "person", arr).to_pylist()
    assert a == structured.pseudonymize(KEYS, "person", arr).to_pylist()
    for v, p in zip(values, a, strict=True):
        assert (v is None) == (p is None)
        assert p is None or 0 < p < 2**63
    # Distinct ids get distinct pseudonyms (a collision among a few ids would be a defect).
    non_null = {v: p for v, p in zip(values, a, strict=True) if v is not None}
    assert len(set(non_null.values())) == len(non_null)


@given(st.integers(1, 2**62))
def test_pseudonyms_depend_on_key_and_domain(v: int) -> None:
    arr = pa.array([v], pa.int64())
    p = structured.pseudonymize(KEYS, "person", arr)[0].as_py()
    assert p != v
    assert p != structured.pseudonymize(OTHER, "person", arr)[0].as_py()
    assert p != structured.pseudonymize(KEYS, "visit_occurrence", arr)[0].as_py()
    assert p == structured.pseudonymize(KEYS, "person", pa.array([v], pa.int32() if v < 2**31 else pa.int64()))[0].as_py()


@given(st.lists(st.integers(1, 2**40), min_size=1, max_size=50), st.integers(1, 30), st.integers(31, 400))
def test_shifts_are_whole_nonzero_days_in_range(persons: list[int], lo: int, hi: int) -> None:
    days = structured.shift_days(KEYS, pa.array(persons, pa.int64()), hi, lo).to_pylist()
    for d in days:
        assert d is not None and lo <= abs(d) <= hi
    assert days == structured.shift_days(KEYS, pa.array(persons, pa.int64()), hi, lo).to_pylist()


@given(
    st.integers(1, 10**9),
    st.lists(st.dates(date(1900, 1, 1), date(2100, 1, 1)), min_size=2, max_size=10),
)
def test_date_shift_preserves_intervals_within_a_person(person: int, dates: list[date]) -> None:
    persons = pa.array([person] * len(dates), pa.int64())
    days = structured.shift_days(KEYS, persons)
    shifted = structured.shift_dates(pa.array(dates, pa.date32()), days).to_pylist()
    stamps = [datetime.combine(d, datetime.min.time()) + timedelta(hours=7) for d in dates]
    shifted_ts = structured.shift_dates(pa.array(stamps, pa.timestamp("us")), days).to_pylist()
    offset = shifted[0] - dates[0]
    assert offset.days != 0
    assert all(s - d == offset for s, d in zip(shifted, dates, strict=True))
    assert all(s - d == offset for s, d in zip(shifted_ts, stamps, strict=True))


def _prf_one(key: bytes, domain: str, v: int) -> int:
    """The keyed function for one value, written out with the AES primitive (the spec the vectorised code must meet)."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    tag = hashlib.sha256(domain.encode()).digest()[:8]
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    block = enc.update(tag + (v % 2**64).to_bytes(8, "little")) + enc.finalize()
    return int.from_bytes(block[:8], "little")


def _sliced(values: list[int | None], cut: int, typ: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array, behind ``cut`` leading values sliced off (a non-zero offset)."""
    return pa.array([0] * cut + values, typ).slice(cut)


@given(ids, st.integers(0, 3))
def test_pseudonyms_and_shifts_match_the_one_value_definition(values: list[int | None], cut: int) -> None:
    """Whole-column results (nulls, sliced arrays, in-place reads) equal the keyed function value by value."""
    arr = _sliced(values, cut, pa.int64())
    pseudo = structured.pseudonymize(KEYS, "visit_occurrence", arr).to_pylist()
    days = structured.shift_days(KEYS, arr, 182, 1).to_pylist()
    for v, p, d in zip(values, pseudo, days, strict=True):
        if v is None:
            assert p is None and d is None
            continue
        expect = _prf_one(KEYS.pseudonym, "visit_occurrence", v) & (2**63 - 1)
        assert p == (expect or 1)
        r = _prf_one(KEYS.shift, "person", v)
        magnitude = (r >> 1) % 182 + 1
        assert d == (magnitude if r & 1 else -magnitude)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.dates(date(1900, 1, 1), date(2100, 1, 1))), st.one_of(st.none(), st.integers(-400, 400))
        ),
        max_size=40,
    ),
    st.integers(0, 3),
)
def test_date_shifts_with_nulls_on_either_side_and_offsets(rows: list[tuple[date | None, int | None]], cut: int) -> None:
    """A date moves by its row's days; a null date or a null offset gives a null (never the real date)."""
    dates = [d for d, _ in rows]
    days = _sliced([n for _, n in rows], cut, pa.int32())
    stamps = [None if d is None else datetime.combine(d, datetime.min.time()) + timedelta(hours=5) for d in dates]
    for arr, originals in ((_sliced(dates, cut, pa.date32()), dates), (_sliced(stamps, cut, pa.timestamp("ms")), stamps)):  # type: ignore[arg-type]
        out = structured.shift_dates(arr, days)
        assert out.type == arr.type
        for o, d, (_, n) in zip(out.to_pylist(), originals, rows, strict=True):
            assert o == (None if d is None or n is None else d + timedelta(days=n))


@given(st.lists(st.one_of(st.none(), st.integers(1, 2**62)), max_size=30), st.integers(0, 2))
def test_order_only_matches_the_one_value_definition(keys: list[int | None], cut: int) -> None:
    t0 = datetime(2026, 10, 4, 2)
    stamps = [t0 + timedelta(days=7 * i, microseconds=i) for i in range(len(keys))]
    loads = pa.array(stamps, pa.timestamp("us"))
    out = structured.order_only(KEYS, "condition_occurrence", _sliced(keys, cut, pa.int64()), loads)
    for k, t, o in zip(keys, stamps, out.to_pylist(), strict=True):
        if k is None:
            assert o is None
            continue
        r = _prf_one(KEYS.order, "condition_occurrence", k)
        us = (t - datetime(1970, 1, 1)) // timedelta(microseconds=1)
        assert o == ((r >> 55) + 1) * us + (r & (2**60 - 1))


def test_year_of_birth_is_top_coded() -> None:
    out = structured.top_code_year_of_birth(pa.array([1920, 1935, 1936, 2000, None], pa.int32()), 2026)
    assert out.to_pylist() == [1936, 1936, 1936, 2000, None]


def test_short_keys_are_refused_and_keys_never_print() -> None:
    with pytest.raises(DeidError, match="too short"):
        Keys.from_secret("short")
    assert TEST_KEY not in repr(KEYS) and KEYS.pseudonym.hex() not in repr(KEYS)


def test_the_shipped_policy_is_generated_from_the_registry() -> None:
    from importlib import resources

    shipped = resources.files("cohortsync.deid").joinpath("default_policy.toml").read_text("utf-8")
    assert shipped == render_default(), "run: python -m cohortsync.deid.policy"
    policy = load_policy()
    for t in omop.registry().values():
        assert set(policy.rules(t.name)) == {*t.column_names, omop.LOAD_DT}
    person = omop.table("person")
    assert default_action(person, person.column("person_source_value")) is Action.DROP
    assert default_action(person, person.column("year_of_birth")) is Action.GENERALIZE
    assert policy.rules("note")["note_text"].action is Action.SCRUB_TEXT
    assert policy.rules("note_nlp")["note_id"].domain == "note"
    assert policy.rules("visit_occurrence")["preceding_visit_occurrence_id"].domain == "visit_occurrence"


STRUCTURED_ONLY = "structured_only.toml"


def structured_only(project: Project) -> None:
    """The default policy with free text dropped: the structured path alone, without Presidio."""
    (project.root / STRUCTURED_ONLY).write_text(structured_only_policy())
    text = project.config.read_text().replace('policy = "keep_everything.toml"', f'policy = "{STRUCTURED_ONLY}"')
    project.config.write_text(text)


def test_joins_work_and_intervals_survive_in_the_landing(project: Project) -> None:
    structured_only(project)
    cohort = person_ids(project)[::4]
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", cohort))).exit_code == 0
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    con = duckdb.connect()
    con.execute(f"ATTACH '{project.db}' AS src (READ_ONLY)")
    land = lambda t: f"read_parquet('{project.landing}/c/{t}/*.parquet')"  # noqa: E731
    # No original person id lands; dropped columns are not even there.
    raw = {r[0] for r in con.execute("SELECT person_id FROM src.omop.person").fetchall()}
    landed_ids = {r[0] for r in con.execute(f"SELECT person_id FROM {land('person')}").fetchall()}
    assert len(landed_ids) == len(cohort) and not (landed_ids & raw)
    cols = [c[0] for c in con.execute(f"DESCRIBE SELECT * FROM {land('person')}").fetchall()]
    assert "person_source_value" not in cols and "month_of_birth" not in cols and "year_of_birth" in cols
    # Conditions join to visits and persons on the pseudonymous ids, as in the source.
    joined = con.execute(
        f"SELECT count(*) FROM {land('condition_occurrence')} c JOIN {land('visit_occurrence')} v "
        f"USING (visit_occurrence_id) JOIN {land('person')} p ON p.person_id = c.person_id"
    ).fetchall()[0][0]
    expected = con.execute(
        "SELECT count(*) FROM src.omop.condition_occurrence c JOIN src.omop.visit_occurrence v USING (visit_occurrence_id) "
        "WHERE c.person_id IN (SELECT unnest($ids::BIGINT[]))",
        {"ids": cohort},
    ).fetchall()[0][0]
    assert joined == expected > 0
    # Every person's dates moved by one offset: the condition-to-visit interval is unchanged.
    diffs = con.execute(
        f"SELECT c.condition_start_date - v.visit_start_date FROM {land('condition_occurrence')} c "
        f"JOIN {land('visit_occurrence')} v USING (visit_occurrence_id) ORDER BY ALL"
    ).fetchall()
    src_diffs = con.execute(
        "SELECT c.condition_start_date - v.visit_start_date FROM src.omop.condition_occurrence c "
        "JOIN src.omop.visit_occurrence v USING (visit_occurrence_id) WHERE c.person_id IN (SELECT unnest($ids::BIGINT[])) "
        "ORDER BY ALL",
        {"ids": cohort},
    ).fetchall()
    assert diffs == src_diffs
    moved = con.execute(
        f"SELECT count(*) FROM {land('observation_period')} WHERE observation_period_start_date IN "
        "(SELECT observation_period_start_date FROM src.omop.observation_period)"
    ).fetchall()[0][0]
    total = con.execute(f"SELECT count(*) FROM {land('observation_period')}").fetchall()[0][0]
    assert moved < total / 4  # dates really moved (a few may coincide with someone else's date)


def test_an_uncovered_column_stops_only_its_table_before_anything_lands(project: Project) -> None:
    structured_only(project)
    con = project.con()
    con.execute("ALTER TABLE omop.omop.measurement ADD COLUMN patient_ssn VARCHAR DEFAULT '123-45-6789'")
    con.close()
    cohort = person_ids(project)[::4]
    project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", cohort)))
    r = project.cli("sync", "-q")
    assert r.exit_code == 5  # schema drift against the policy
    assert "measurement: column(s) patient_ssn not covered by the de-identification policy" in r.output
    assert not (project.landing / "c" / "measurement").exists()
    assert list((project.landing / "c" / "condition_occurrence").glob("*.parquet"))
    check = project.cli("policy", "check")
    assert check.exit_code == 5 and "patient_ssn" in check.output


def test_sync_refuses_without_the_key_and_with_another_key(project: Project) -> None:
    structured_only(project)
    project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[:20])))
    r = project.runner.invoke(
        __import__("cohortsync.cli", fromlist=["cli"]).cli,
        ["--log-format", "text", "--config", str(project.config), "sync"], obj={},
        env={"COHORTSYNC_DEID_KEY": None},
    )
    assert r.exit_code == 2 and r.output.startswith("error: COHORTSYNC_DEID_KEY is not set")
    assert not project.landing.exists()
    assert project.cli("sync", "-q").exit_code == 0
    r = project.cli("sync", "-q", env={"COHORTSYNC_DEID_KEY": "a-different-key-" + "y" * 40})
    assert r.exit_code == 2 and "is not the key this landing was written with" in r.output
    assert TEST_KEY not in r.output and "y" * 40 not in r.output


def test_plan_prints_the_sql_sync_runs_dropped_columns_included_nowhere(project: Project) -> None:
    project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[:20])))
    raw = project.cli("plan").output
    assert '"person_source_value"' in raw  # the keep-everything policy selects it
    structured_only(project)
    planned = project.cli("plan").output
    assert '"person_source_value"' not in planned and '"month_of_birth"' not in planned
    assert '"year_of_birth"' in planned
    con = project.con()
    con.execute("ALTER TABLE omop.omop.measurement ADD COLUMN patient_ssn VARCHAR")
    con.close()
    planned = project.cli("plan").output
    assert "-- measurement: would fail: measurement: column(s) patient_ssn not covered" in planned
