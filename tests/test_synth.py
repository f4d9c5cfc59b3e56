"""The synthetic OMOP generator: determinism, referential integrity, weekly loads and PHI ground truth.

Runs the real generator on a few hundred persons; everything is checked with SQL over the file it wrote.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from cohortsync import omop, synth

PERSONS = 300
WEEKS = 4
FIRST = date(2026, 9, 6)
CLINICAL = omop.DEFAULT_TABLES
CHILDREN = ("condition_occurrence", "drug_exposure", "procedure_occurrence", "measurement", "observation", "note")
TRUTH = ("note_phi", "person_phi", "note_dates")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "omop.duckdb"  # catalog "omop", like the demo's file
    synth.generate(path, PERSONS, seed=11, weeks=WEEKS, first_load=FIRST)
    return path


@pytest.fixture
def con(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    c.execute(f"ATTACH '{db}' AS db (READ_ONLY)")
    yield c
    c.close()


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _tables(con: duckdb.DuckDBPyConnection, alias: str) -> list[tuple[str, str]]:
    rows = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1, 2", [alias]
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def _same_rows(con: duckdb.DuckDBPyConnection, a: str, b: str, where: str = "") -> None:
    for (schema, table) in _tables(con, a):
        x, y = f'{a}."{schema}"."{table}"', f'{b}."{schema}"."{table}"'
        only_a = _one(con, f"SELECT count(*) FROM (SELECT * FROM {x} {where} EXCEPT ALL SELECT * FROM {y} {where})")
        only_b = _one(con, f"SELECT count(*) FROM (SELECT * FROM {y} {where} EXCEPT ALL SELECT * FROM {x} {where})")
        assert (only_a, only_b) == (0, 0), f"{schema}.{table} differs"


def test_refuses_an_existing_path(db: Path) -> None:
    with pytest.raises(FileExistsError):
        synth.generate(db, 10)


def test_rejects_a_first_load_that_is_not_a_sunday(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Sunday"):
        synth.generate(tmp_path / "x.duckdb", 10, first_load=date(2026, 9, 7))


def test_same_seed_same_rows_whatever_the_threads(db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.duckdb"
    other = tmp_path / "other.duckdb"
    synth.generate(again, PERSONS, seed=11, weeks=WEEKS, first_load=FIRST, threads=1)
    synth.generate(other, 50, seed=12, weeks=1, first_load=FIRST)
    c = duckdb.connect()
    for alias, p in (("a", db), ("b", again), ("c", other)):
        c.execute(f"ATTACH '{p}' AS {alias} (READ_ONLY)")
    assert len(_tables(c, "a")) > 20 and _tables(c, "a") == _tables(c, "b")
    _same_rows(c, "a", "b")
    # a different seed gives different data, not just the same rows again
    diff = _one(c, "SELECT count(*) FROM (SELECT note_text FROM a.omop.note EXCEPT SELECT note_text FROM c.omop.note)")
    assert isinstance(diff, int) and diff > 0


def test_populated_tables_and_shape(con: duckdb.DuckDBPyConnection) -> None:
    counts = {t: _one(con, f"SELECT count(*) FROM db.omop.{t}") for t in synth.POPULATED}
    assert all(isinstance(n, int) and n > 0 for n in counts.values()), counts
    persons = counts["person"]
    assert isinstance(persons, int) and PERSONS < persons < PERSONS * 1.05
    rows = sum(int(n) for t, n in counts.items() if t in CLINICAL)  # type: ignore[call-overload]
    assert 120 * persons < rows < 300 * persons
    assert 1.0 <= int(counts["note"]) / persons <= 3.5  # type: ignore[call-overload]
    assert _one(con, "SELECT count(*) FROM db.omop.death") == 0  # other CDM tables exist but stay empty
    # source values look like what an EHR extract writes
    assert _one(con, "SELECT bool_and(regexp_full_match(person_source_value, '[0-9]{8}')) FROM db.omop.person")
    assert _one(
        con, "SELECT bool_and(regexp_full_match(condition_source_value, '[A-Z][0-9]{2}(\\.[0-9A-Z]{1,4})?')) "
        "FROM db.omop.condition_occurrence"
    )
    assert _one(con, "SELECT bool_and(regexp_full_match(measurement_source_value, '[0-9]+-[0-9]')) FROM db.omop.measurement")
    assert _one(
        con, "SELECT bool_and(value_as_number IS NOT NULL AND unit_source_value IS NOT NULL) FROM db.omop.measurement"
    )
    assert _one(con, "SELECT bool_and(sig LIKE '% daily%' OR sig LIKE '%hours%' OR sig LIKE '% bedtime' OR sig LIKE "
                "'%times daily%' OR sig LIKE '%every morning%') FROM db.omop.drug_exposure")
    share = _one(con, "SELECT avg((value_as_string IS NOT NULL)::INT) FROM db.omop.observation")
    assert isinstance(share, float) and 0.2 < share < 0.9
    for t in ("location", "care_site", "provider"):
        assert _one(con, f"SELECT count(*) FROM db.omop.{t} WHERE {t}_id IS NULL") == 0
    assert _one(con, "SELECT count(DISTINCT care_site_name) = count(*) FROM db.omop.care_site")


def test_primary_keys_unique(con: duckdb.DuckDBPyConnection) -> None:
    for t in synth.POPULATED:
        dupes = _one(con, f"SELECT count(*) - count(DISTINCT {t}_id) FROM db.omop.{t}")
        assert dupes == 0, t


def test_rows_link_to_existing_persons_visits_and_health_system(con: duckdb.DuckDBPyConnection) -> None:
    for t in CLINICAL[1:]:
        orphans = _one(con, f"SELECT count(*) FROM db.omop.{t} x ANTI JOIN db.omop.person p USING (person_id)")
        assert orphans == 0, t
    for t in CHILDREN:
        wrong = _one(
            con,
            f"SELECT count(*) FROM db.omop.{t} x LEFT JOIN db.omop.visit_occurrence v USING (visit_occurrence_id) "
            "WHERE v.person_id IS DISTINCT FROM x.person_id",
        )
        assert wrong == 0, t
    for t, col, parent in (
        ("person", "location_id", "location"),
        ("person", "provider_id", "provider"),
        ("person", "care_site_id", "care_site"),
        ("visit_occurrence", "provider_id", "provider"),
        ("visit_occurrence", "care_site_id", "care_site"),
        ("note", "provider_id", "provider"),
        ("measurement", "provider_id", "provider"),
        ("provider", "care_site_id", "care_site"),
        ("care_site", "location_id", "location"),
    ):
        missing = _one(
            con, f"SELECT count(*) FROM db.omop.{t} x ANTI JOIN db.omop.{parent} p ON p.{parent}_id = x.{col}"
        )
        assert missing == 0, (t, col)
    assert _one(con, "SELECT count(*) FROM db.omop.person WHERE location_id IS NULL OR provider_id IS NULL") == 0


def test_dates_are_consistent(con: duckdb.DuckDBPyConnection) -> None:
    checks = {
        "visit outside its person's observation period": """
            SELECT count(*) FROM db.omop.visit_occurrence v JOIN db.omop.observation_period o USING (person_id)
            WHERE v.visit_start_date < o.observation_period_start_date
               OR v.visit_end_date > o.observation_period_end_date""",
        "visit ends before it starts": """
            SELECT count(*) FROM db.omop.visit_occurrence
            WHERE visit_end_datetime < visit_start_datetime OR visit_end_date <> visit_end_datetime::DATE
               OR visit_start_date <> visit_start_datetime::DATE""",
        "visit after its load": """
            SELECT count(*) FROM db.omop.visit_occurrence WHERE visit_end_datetime >= load_dt""",
        "birth after observation start": """
            SELECT count(*) FROM db.omop.person p JOIN db.omop.observation_period o USING (person_id)
            WHERE p.birth_datetime::DATE > o.observation_period_start_date
               OR make_date(p.year_of_birth, p.month_of_birth, p.day_of_birth) <> p.birth_datetime::DATE""",
        "drug ends before it starts": """
            SELECT count(*) FROM db.omop.drug_exposure
            WHERE drug_exposure_end_date < drug_exposure_start_date OR days_supply < 1""",
        "event outside its visit": """
            SELECT count(*) FROM db.omop.measurement m JOIN db.omop.visit_occurrence v USING (visit_occurrence_id)
            WHERE m.measurement_datetime < v.visit_start_datetime OR m.measurement_datetime > v.visit_end_datetime""",
        "note not on its visit": """
            SELECT count(*) FROM db.omop.note n JOIN db.omop.visit_occurrence v USING (visit_occurrence_id)
            WHERE n.note_date NOT IN (v.visit_start_date, v.visit_end_date)""",
    }
    for what, sql in checks.items():
        assert _one(con, sql) == 0, what
    assert _one(con, "SELECT count(DISTINCT person_id) = count(*) FROM db.omop.observation_period")
    over_89 = _one(con, "SELECT count(*) FROM db.demo_truth.note_phi WHERE kind = 'age' AND value::INT > 89")
    assert isinstance(over_89, int) and over_89 > 0


def test_loads_are_weekly_sundays_and_grow_about_a_quarter_percent(con: duckdb.DuckDBPyConnection) -> None:
    loads = [r[0] for r in con.execute("SELECT DISTINCT load_dt FROM db.omop.person ORDER BY 1").fetchall()]
    assert loads == [datetime(2026, 9, 6, 2) + timedelta(days=7 * k) for k in range(WEEKS)]
    for t in synth.POPULATED:
        bad = _one(con, f"SELECT count(*) FROM db.omop.{t} WHERE dayofweek(load_dt) <> 0 OR load_dt::TIME <> '02:00'")
        assert bad == 0, t
    for t in CLINICAL:
        per_load = con.execute(
            f"SELECT load_dt, count(*) FROM db.omop.{t} GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in per_load] == loads, t  # every later load has rows in every clinical table
        total = per_load[0][1]
        for _, added in per_load[1:]:
            assert 1 <= added <= max(3, 0.02 * total), (t, added, total)
            total += added
    growth = _one(con, "SELECT count(*) FILTER (WHERE load_dt > DATE '2026-09-07') / count(*) FROM db.omop.measurement")
    assert isinstance(growth, float) and 0.0025 * (WEEKS - 1) * 0.5 < growth < 0.0025 * (WEEKS - 1) * 2
    # the new events of a later load are recent: in the week before it, unless they belong to a new person
    old = _one(
        con,
        """SELECT count(*) FROM db.omop.visit_occurrence v JOIN db.omop.person p USING (person_id)
           WHERE v.load_dt > p.load_dt AND v.visit_start_datetime < v.load_dt - INTERVAL 8 DAY""",
    )
    assert old == 0


def test_append_load_adds_one_sunday_and_leaves_older_rows_alone(db: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first.duckdb", tmp_path / "second.duckdb"
    shutil.copy(db, first)
    shutil.copy(db, second)
    load_dt, added = synth.append_load(first, seed=11)
    assert load_dt == datetime(2026, 9, 6, 2) + timedelta(days=7 * WEEKS)
    assert synth.append_load(second, seed=11) == (load_dt, added)
    c = duckdb.connect()
    for alias, p in (("orig", db), ("a", first), ("b", second)):
        c.execute(f"ATTACH '{p}' AS {alias} (READ_ONLY)")
    _same_rows(c, "a", "b")  # deterministic from (seed, load index)
    for t in synth.POPULATED:
        before = _one(c, f"SELECT count(*) FROM orig.omop.{t}")
        assert isinstance(before, int)
        assert _one(c, f"SELECT count(*) FROM a.omop.{t}") == before + added[t]
        assert _one(c, f"SELECT count(*) FROM a.omop.{t} WHERE load_dt = '{load_dt}'") == added[t]
        if t in CLINICAL:
            assert 1 <= added[t] <= max(3, 0.02 * before), (t, added[t], before)
    assert added["provider"] == added["care_site"] == 0
    for t in synth.POPULATED:  # older rows are untouched: the file minus the new load equals the original
        x, y = f"a.omop.{t}", f"orig.omop.{t}"
        assert _one(c, f"SELECT count(*) FROM (SELECT * FROM {y} EXCEPT ALL SELECT * FROM {x})") == 0, t
        extra = _one(c, f"SELECT count(*) FROM (SELECT * FROM {x} EXCEPT ALL SELECT * FROM {y})")
        assert extra == added[t], t
    truth_new = _one(c, "SELECT count(*) FROM a.demo_truth.note_phi ANTI JOIN orig.omop.note USING (note_id)")
    assert isinstance(truth_new, int) and truth_new >= 10


def test_truth_offsets_point_at_the_text(con: duckdb.DuckDBPyConnection) -> None:
    notes = dict(con.execute("SELECT note_id, note_text FROM db.omop.note").fetchall())
    assert all(t.isascii() for t in notes.values())
    lengths = sorted(len(t) for t in notes.values())
    assert lengths[0] >= 550 and lengths[-1] <= 2200, (lengths[0], lengths[-1])
    spans = con.execute("SELECT note_id, kind, value, start_offset, end_offset FROM db.demo_truth.note_phi").fetchall()
    assert len(spans) > 10 * len(notes)
    for note_id, kind, value, start, end in spans:
        assert value and notes[note_id][start:end] == value, (note_id, kind, value)
    dates = con.execute(
        "SELECT note_id, start_offset, end_offset, date_value, format FROM db.demo_truth.note_dates"
    ).fetchall()
    for note_id, start, end, day, fmt in dates:
        assert notes[note_id][start:end] == day.strftime(fmt), (note_id, fmt)
    assert {f for *_, f in dates} == set(synth.DATE_FORMATS)
    date_spans = {(n, s, e) for n, k, _, s, e in spans if k == "date"}
    assert date_spans == {(n, s, e) for n, s, e, *_ in dates}


def test_truth_covers_every_phi_kind(con: duckdb.DuckDBPyConnection) -> None:
    kinds = {r[0] for r in con.execute("SELECT DISTINCT kind FROM db.demo_truth.note_phi").fetchall()}
    assert kinds == set(synth.PHI_KINDS)
    per_person = con.execute(
        "SELECT count(DISTINCT person_id), count(*), count(DISTINCT kind) FROM db.demo_truth.person_phi"
    ).fetchone()
    persons = _one(con, "SELECT count(*) FROM db.omop.person")
    assert per_person == (persons, persons * len(synth.PERSON_PHI_KINDS), len(synth.PERSON_PHI_KINDS))
    # the first persons carry names that are also common words ("Rose Bush", "Will Hunter", "Hope", "Daisy")
    for pid, (first, last, _) in enumerate(synth.FIXED_NAMES, start=1):
        written = {
            r[0]
            for r in con.execute(
                "SELECT value FROM db.demo_truth.note_phi WHERE person_id = ? AND kind = 'patient_name'", [pid]
            ).fetchall()
        }
        assert written, (first, last)
        assert written <= {f"{first} {last}", f"{last.upper()}, {first.upper()}", first, last}, written
    text = "\n".join(r[0] for r in con.execute("SELECT note_text FROM db.omop.note").fetchall())
    for pattern in (
        r"\+1 \(\d{3}\) \d{3}-\d{4}",
        r"\b1-\d{3}-\d{3}-\d{4}",
        r"\b\d{3}\.\d{3}\.\d{4}\b",
        r"MRN: \d{8}",
        r"MRN \d{3}-\d{2}-\d{3}",
        r"SSN: \d{3}-\d{2}-\d{4}",
        r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{1,2}\b",
        r"BP \d{2,3}/\d{2}",
        r"Hgb \d+\.\d g/dL",
        r"WBC \d+\.\d",
        r"[A-Z]\d{2}\.\d+",
    ):
        assert re.search(pattern, text), pattern


def test_truth_matches_structured_phi_and_spares_clinical_values(con: duckdb.DuckDBPyConnection) -> None:
    # every MRN in a note is that person's MRN, however it is written
    wrong_mrn = _one(
        con,
        """SELECT count(*) FROM db.demo_truth.note_phi n JOIN db.demo_truth.person_phi p
                ON p.person_id = n.person_id AND p.kind = 'mrn'
           WHERE n.kind = 'mrn' AND replace(n.value, '-', '') <> p.value""",
    )
    assert wrong_mrn == 0
    names_in_notes = _one(
        con,
        """SELECT count(*) FROM db.demo_truth.note_phi n JOIN db.demo_truth.person_phi p
                ON p.person_id = n.person_id AND p.kind = 'name'
           WHERE n.kind = 'patient_name' AND n.value = p.value""",
    )
    assert isinstance(names_in_notes, int) and names_in_notes > 0
    # clinician names come from the provider table, so it works as a deny-list
    unknown = _one(
        con,
        """SELECT count(*) FROM db.demo_truth.note_phi n
           WHERE n.kind = 'clinician_name' AND NOT EXISTS (
               SELECT 1 FROM db.omop.provider p WHERE p.provider_name = n.value OR p.provider_name LIKE '% ' || n.value)""",
    )
    assert unknown == 0
    # "BP 120/80", lab values and ICD-10 codes are not inside any PHI span
    spans: dict[int, list[tuple[int, int]]] = {}
    for note_id, s, e in con.execute("SELECT note_id, start_offset, end_offset FROM db.demo_truth.note_phi").fetchall():
        spans.setdefault(note_id, []).append((s, e))
    clinical = re.compile(r"BP \d+/\d+|Hgb \d+\.\d g/dL|WBC \d+\.\d|\b[A-Z]\d{2}\.\d{1,3}\b|\d+ mg PO BID")
    seen = 0
    for note_id, text in con.execute("SELECT note_id, note_text FROM db.omop.note").fetchall():
        for m in clinical.finditer(text):
            seen += 1
            assert not any(s < m.end() and m.start() < e for s, e in spans.get(note_id, [])), m.group()
    assert seen > 100


def test_append_load_continues_generate_exactly(tmp_path: Path) -> None:
    short, long = tmp_path / "short.duckdb", tmp_path / "long.duckdb"
    synth.generate(short, 100, seed=5, weeks=2, first_load=FIRST)
    synth.generate(long, 100, seed=5, weeks=3, first_load=FIRST)
    synth.append_load(short, seed=5)
    c = duckdb.connect()
    c.execute(f"ATTACH '{short}' AS a (READ_ONLY)")
    c.execute(f"ATTACH '{long}' AS b (READ_ONLY)")
    _same_rows(c, "a", "b")


def test_large_seeds_do_not_overflow(tmp_path: Path) -> None:
    counts = synth.generate(tmp_path / "big-seed.duckdb", persons=20, seed=20240611, weeks=2)
    assert counts["person"] >= 20 and counts["note"] > 0
