"""`cohortsync export` on Eunomia: per-buyer extracts that cannot be linked, newest versions, a verifiable
manifest, safe writes (issue 10)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohortsync import export as ex
from cohortsync.deid import structured
from cohortsync.deid.recognizers import shift_date_text
from cohortsync.state import StateStore
from conftest import TEST_KEY, Project, person_ids
from test_deid_structured import structured_only

KEYS = structured.Keys.from_secret(TEST_KEY)
ID_COLUMNS = {
    "person": ["person_id"],
    "visit_occurrence": ["visit_occurrence_id", "person_id"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "visit_occurrence_id"],
    "drug_exposure": ["drug_exposure_id", "person_id", "visit_occurrence_id"],
    "measurement": ["measurement_id", "person_id"],
    "observation_period": ["observation_period_id", "person_id"],
}


def synced(project: Project, every: int = 3) -> list[int]:
    structured_only(project)
    cohort = person_ids(project)[::every]
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", cohort))).exit_code == 0
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    return cohort


def exported(project: Project, consumer: str, *extra: str) -> Path:
    out = project.root / f"x-{consumer}"
    r = project.cli("export", "c", "--consumer", consumer, "--out", str(out), *extra)
    assert r.exit_code == 0, r.output
    return out


def rel(out: Path, table: str) -> str:
    return f"read_parquet('{out}/{table}/*.parquet')"


@pytest.fixture
def two_buyers(project: Project) -> tuple[Project, Path, Path]:
    synced(project)
    return project, exported(project, "acme"), exported(project, "globex")


def test_two_buyers_share_no_ids_and_no_dates_while_joins_stay_complete(two_buyers: tuple[Project, Path, Path]) -> None:
    project, a, b = two_buyers
    con = duckdb.connect()
    for t, cols in ID_COLUMNS.items():
        for c in cols:
            shared = con.execute(
                f"SELECT count(*) FROM (SELECT {c} FROM {rel(a, t)} INTERSECT SELECT {c} FROM {rel(b, t)}) WHERE {c} IS NOT NULL"
            ).fetchall()[0][0]
            assert shared == 0, (t, c)
    # No identical (person, date) pairs, and no event keeps its date across the two extracts even for
    # someone who knows which rows are the same: map each buyer's keys back to the landed ones.
    for t, pk, d in (("condition_occurrence", "condition_occurrence_id", "condition_start_date"),
                     ("visit_occurrence", "visit_occurrence_id", "visit_start_date"),
                     ("drug_exposure", "drug_exposure_id", "drug_exposure_start_date"),
                     ("measurement", "measurement_id", "measurement_date")):  # fmt: skip
        pairs = con.execute(
            f"SELECT count(*) FROM (SELECT person_id, {d} FROM {rel(a, t)} INTERSECT SELECT person_id, {d} FROM {rel(b, t)})"
        ).fetchall()[0][0]
        assert pairs == 0, t
        landed = con.execute(f"SELECT DISTINCT {pk} FROM read_parquet('{project.landing}/c/{t}/*.parquet')").fetchall()
        ids = pa.array([r[0] for r in landed], pa.int64())
        m = pa.table({"a": ex.buyer_ids(TEST_KEY, "acme", t, ids), "b": ex.buyer_ids(TEST_KEY, "globex", t, ids)})
        con.register("m", m)
        n, same = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE x.{d} = y.{d}) FROM m JOIN {rel(a, t)} x ON x.{pk} = m.a "
            f"JOIN {rel(b, t)} y ON y.{pk} = m.b"
        ).fetchall()[0]
        con.unregister("m")
        assert n > 0 and same == 0, t
    for out in (a, b):
        orphans = con.execute(
            f"SELECT count(*) FROM {rel(out, 'condition_occurrence')} c "
            f"LEFT JOIN {rel(out, 'visit_occurrence')} v USING (visit_occurrence_id) "
            f"LEFT JOIN {rel(out, 'person')} p ON p.person_id = c.person_id "
            f"WHERE p.person_id IS NULL OR (c.visit_occurrence_id IS NOT NULL AND v.visit_occurrence_id IS NULL)"
        ).fetchall()[0][0]
        landed_orphans = con.execute(
            f"SELECT count(*) FROM read_parquet('{project.landing}/c/condition_occurrence/*.parquet') c "
            f"LEFT JOIN read_parquet('{project.landing}/c/visit_occurrence/*.parquet') v USING (visit_occurrence_id) "
            f"WHERE c.visit_occurrence_id IS NOT NULL AND v.visit_occurrence_id IS NULL"
        ).fetchall()[0][0]
        assert orphans == landed_orphans  # the extract loses no join the landing has
        q = json.loads((out / "quality.json").read_text())
        assert q["tables"]["condition_occurrence"]["orphan_foreign_keys"]["visit_occurrence_id -> visit_occurrence"] == orphans
        # Rows dated outside the person's observation periods: as in the landing (one offset per person).
        for t, d in (("condition_occurrence", "condition_start_date"), ("visit_occurrence", "visit_start_date")):
            lt, lo = (f"read_parquet('{project.landing}/c/{x}/*.parquet')" for x in (t, "observation_period"))
            expected = con.execute(
                f"SELECT count(*) FROM {lt} x WHERE x.{d} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {lo} o WHERE "
                f"o.person_id = x.person_id AND x.{d} BETWEEN o.observation_period_start_date AND o.observation_period_end_date)"
            ).fetchall()[0][0]
            assert q["tables"][t]["rows_outside_observation"] == {"date_column": d, "rows": expected}
        # Intervals within a person survive (one offset per person and buyer).
        cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel(out, 'person')}").fetchall()]
        assert "load_dt" not in cols


def test_verify_export_passes_then_fails_after_any_byte_changes(two_buyers: tuple[Project, Path, Path]) -> None:
    project, a, _ = two_buyers
    r = project.cli("verify-export", str(a))
    assert r.exit_code == 0 and r.output.startswith("ok: "), r.output
    files = sorted(p for p in a.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"manifest.json", "manifest.sha256", "README.md", "quality.json", "ddl.sql"}
    for p in files:
        data = p.read_bytes()
        for pos in (0, len(data) // 2, len(data) - 1):
            p.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
            r = project.cli("verify-export", str(a))
            assert r.exit_code == 5, (p, pos)
            assert str(p.relative_to(a)) in r.output or p.name in r.output, r.output
            p.write_bytes(data)
    assert project.cli("verify-export", str(a)).exit_code == 0
    (a / "person" / "extra.parquet").write_bytes(b"x")
    r = project.cli("verify-export", str(a))
    assert r.exit_code == 5 and "person/extra.parquet is not in the manifest" in r.output


def test_the_extract_loads_into_duckdb_through_its_ddl(project: Project) -> None:
    synced(project, every=7)
    for fmt in ("parquet", "csv"):
        out = exported(project, f"buyer-{fmt}", "--format", fmt)
        manifest = json.loads((out / "manifest.json").read_text())
        con = duckdb.connect()
        con.execute((out / "ddl.sql").read_text())
        for t, m in manifest["tables"].items():
            for f in m["files"]:
                path = out / f["name"]
                src = f"read_parquet('{path}')" if fmt == "parquet" else f"read_csv('{path}', header = true)"
                con.execute(f"INSERT INTO {t} SELECT * FROM {src}")
            assert con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] == m["rows"] > 0, t
            types = {r[0]: r[1] for r in con.execute(f"DESCRIBE {t}").fetchall()}
            assert list(types) == [c["name"] for c in m["columns"]]
        assert "person_id" in types and "load_dt" not in types


def test_a_reloaded_row_appears_once_newest_and_same_load_repeats_are_kept(project: Project) -> None:
    cohort = synced(project)
    con = project.con()
    # Re-load 25 condition rows of members with a changed concept: newer load_dt, same key.
    (mx,) = con.execute("SELECT max(load_dt) FROM omop.omop.condition_occurrence").fetchone()  # type: ignore[misc]
    new = mx + timedelta(days=7)
    ids = [r[0] for r in con.execute(
        "SELECT condition_occurrence_id FROM omop.omop.condition_occurrence WHERE person_id IN (SELECT unnest($p)) "
        "ORDER BY 1 LIMIT 25", {"p": cohort}).fetchall()]  # fmt: skip
    con.execute(
        "UPDATE omop.omop.condition_occurrence SET condition_concept_id = 4242, load_dt = $n "
        "WHERE condition_occurrence_id IN (SELECT unnest($i))", {"n": new, "i": ids},
    )
    dupes = con.execute(
        "SELECT count(drug_exposure_id) - count(DISTINCT drug_exposure_id) FROM omop.omop.drug_exposure "
        "WHERE person_id IN (SELECT unnest($p))", {"p": cohort},
    ).fetchall()[0][0]
    con.close()
    assert dupes > 0
    assert project.cli("sync", "-q").exit_code == 0
    out = exported(project, "acme", "--load-seq")
    d = duckdb.connect()
    landed_files = f"read_parquet('{project.landing}/c/condition_occurrence/*.parquet')"
    landed = d.execute(f"SELECT count(*), count(DISTINCT condition_occurrence_id) FROM {landed_files}").fetchall()[0]
    assert landed[0] == landed[1] + 25  # both versions landed
    n, distinct, newest, seq2 = d.execute(
        f"SELECT count(*), count(DISTINCT condition_occurrence_id), count(*) FILTER (WHERE condition_concept_id = 4242), "
        f"count(*) FILTER (WHERE load_seq = 2) FROM {rel(out, 'condition_occurrence')}"
    ).fetchall()[0]
    assert n == distinct == landed[1] and newest == 25 and seq2 == 25
    rows, distinct_drugs = d.execute(
        f"SELECT count(*), count(DISTINCT drug_exposure_id) FROM {rel(out, 'drug_exposure')}"
    ).fetchall()[0]
    assert rows - distinct_drugs == dupes
    q = json.loads((out / "quality.json").read_text())["tables"]
    assert q["drug_exposure"]["repeated_key_rows_kept"] == dupes
    assert q["condition_occurrence"]["superseded_versions_dropped"] == 25
    assert f"repeated keys kept {dupes:,}" in project.cli(
        "export", "c", "--consumer", "acme", "--out", str(out), "--overwrite"
    ).output
    # --as-of the first sync: the old version, and nothing of the second window.
    with StateStore(project.root / "state") as state:
        first = min(datetime.fromisoformat(f["upper"]) for f in state.files("c", "condition_occurrence"))
    old = exported(project, "acme-old", "--as-of", str(first + timedelta(days=1)))
    n_old, changed = d.execute(
        f"SELECT count(*), count(*) FILTER (WHERE condition_concept_id = 4242) FROM {rel(old, 'condition_occurrence')}"
    ).fetchall()[0]
    assert (n_old, changed) == (landed[1], 0)
    assert json.loads((old / "manifest.json").read_text())["watermarks"]["condition_occurrence"] == first.isoformat(
        timespec="microseconds"
    )


def test_a_changed_landing_file_stops_the_export(project: Project) -> None:
    synced(project, every=9)
    f = next((project.landing / "c" / "measurement").glob("*.parquet"))
    data = f.read_bytes()
    f.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    r = project.cli("export", "c", "--consumer", "acme", "--out", str(project.root / "x"))
    assert r.exit_code == 5
    assert "does not match its SHA-256 in the state store" in r.output and r.output.count("\n") == 1
    assert not (project.root / "x").exists()
    assert [p for p in project.root.iterdir() if p.name.startswith(".x.")] == []


def test_status_shows_the_last_exports(two_buyers: tuple[Project, Path, Path]) -> None:
    project, a, _ = two_buyers
    r = project.cli("status", "--json")
    exports = json.loads(r.output)["exports"]
    assert [e["consumer"] for e in exports] == ["globex", "acme"]
    e = exports[1]
    assert e["status"] == "done" and e["cohort"] == "c" and e["rows"] > 0 and e["os_user"]
    assert e["manifest_sha256"] == (a / "manifest.sha256").read_text().split()[0]
    assert "export " in project.cli("status").output and "c for acme done" in project.cli("status").output
    r = project.cli("export", "c", "--consumer", "acme", "--out", str(a), "--overwrite", "--json")
    m = json.loads(r.output)
    assert m["manifest_sha256"] == (a / "manifest.sha256").read_text().split()[0] and m["consumer"] == "acme"
    assert set(m["watermarks"]) == set(m["tables"]) and m["deid_policy_sha256"] and m["tool_version"]
    assert json.loads(project.cli("verify-export", str(a), "--json").output) == {
        "ok": True, "files_checked": len(list(a.rglob("*.*"))), "problem": None,
    }


# -- dates inside note text -------------------------------------------------------------------------------

@settings(max_examples=200)
@given(st.dates(date(1950, 1, 1), date(2040, 12, 31)), st.integers(-400, 400),
       st.sampled_from(["%m/%d/%Y", "%Y-%m-%d", "%B %-d, %Y", "%-d %B %Y", "%m/%d/%y", "%d-%B-%Y"]))  # fmt: skip
def test_a_date_written_in_text_moves_like_the_date_column(day: date, days: int, fmt: str) -> None:
    text = f"Seen on {day.strftime(fmt)} for follow-up."
    assert ex.shift_text(text, days) == f"Seen on {(day + timedelta(days=days)).strftime(fmt)} for follow-up."


def test_text_without_dates_is_untouched() -> None:
    texts = pa.array(["BP 120/80", "5/5 strength", None, "no dates here", "250.00"])
    days = pa.array([3, 4, 5, None, 7], pa.int32())
    assert ex.reshift_text(texts, days).to_pylist() == ["BP 120/80", "5/5 strength", None, "no dates here", "250.00"]
    assert ex.reshift_text(pa.array(["on 03/04/2020"]), pa.array([None], pa.int32())).to_pylist() == ["on [DATE]"]
    assert shift_date_text("03/04/2020", 1) == "03/05/2020"


@given(st.lists(st.integers(1, 2**62), min_size=1, max_size=40, unique=True), st.integers(0, 358), st.integers(0, 358))
def test_two_slots_never_give_a_person_the_same_offset(persons: list[int], s1: int, s2: int) -> None:
    scheme = ex.OffsetScheme.create(TEST_KEY, 1, 182)
    assert scheme.slots == 359
    a = scheme.days(pa.array(persons, pa.int64()), s1).to_pylist()
    b = scheme.days(pa.array(persons, pa.int64()), s2).to_pylist()
    assert all(x is not None and 1 <= abs(x) <= 182 for x in a)
    if s1 != s2:
        assert all(x != y for x, y in zip(a, b, strict=True))
    else:
        assert a == b


# -- safe writes ----------------------------------------------------------------------------------------


def run_killed(project: Project, point: str, out: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, "COHORTSYNC_FAULT_POINT": point}
    return subprocess.run(
        [sys.executable, "-m", "cohortsync.cli", "--config", str(project.config), "export", "c", "--consumer", "acme",
         "--out", str(out), *extra], env=env, capture_output=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "point", ["export_mid_table@1", "export_mid_table@3", "export_table_done@2", "export_before_rename"]
)
def test_an_export_killed_leaves_nothing_and_the_next_one_is_whole(project: Project, point: str) -> None:
    synced(project, every=5)
    out = project.root / "x"
    dead = run_killed(project, point, out)
    assert dead.returncode == -9, dead.stderr
    assert not out.exists()
    r = project.cli("export", "c", "--consumer", "acme", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert project.cli("verify-export", str(out)).exit_code == 0
    assert [p.name for p in project.root.iterdir() if p.name.startswith(".x.")] == []


@pytest.mark.parametrize("point", ["export_mid_table@2", "export_before_rename", "export_between_renames"])
def test_an_overwrite_killed_leaves_the_old_extract_or_none(project: Project, point: str) -> None:
    synced(project, every=5)
    out = exported(project, "acme")
    before = (out / "manifest.sha256").read_text()
    dead = run_killed(project, point, out, "--overwrite")
    assert dead.returncode == -9, dead.stderr
    if out.exists():  # either the old, whole extract, or nothing at DIR
        assert (out / "manifest.sha256").read_text() == before
        assert project.cli("verify-export", str(out)).exit_code == 0
    else:
        assert point == "export_between_renames"
    r = project.cli("export", "c", "--consumer", "acme", "--out", str(out), "--overwrite")
    assert r.exit_code == 0, r.output
    assert project.cli("verify-export", str(out)).exit_code == 0
    with StateStore(project.root / "state") as state:
        statuses = [e["status"] for e in state.exports()]
    assert statuses[0] == "done"


def test_the_same_buyer_gets_the_same_ids_every_time(project: Project) -> None:
    synced(project, every=11)
    a = exported(project, "acme")
    a2 = project.root / "again"
    assert project.cli("export", "c", "--consumer", "acme", "--out", str(a2)).exit_code == 0
    t1 = pq.read_table(a / "person").sort_by("person_id")
    t2 = pq.read_table(a2 / "person").sort_by("person_id")
    assert t1.equals(t2)


@given(
    st.lists(st.one_of(st.none(), st.integers(1, 2**62)), min_size=1, max_size=60),
    st.lists(st.one_of(st.none(), st.dates(date(1900, 1, 1), date(2100, 1, 1))), min_size=180, max_size=180),
    st.integers(0, 358),
)
def test_the_fast_transforms_equal_the_landing_ones(persons: list[int | None], dates: list[date | None], slot: int) -> None:
    clustered = [x for x in sorted(persons, key=lambda x: x or 0) for _ in range(5)]  # runs: computed once per run
    for ps in (persons, clustered):
        fast_equals_landing(ps, (dates * 5)[: len(ps)], slot)


def fast_equals_landing(persons: list[int | None], dates: list[date | None], slot: int) -> None:
    p = pa.array(persons, pa.int64())
    assert ex.rekey(KEYS, "person", p).equals(structured.pseudonymize(KEYS, "person", p))
    scheme = ex.OffsetScheme.create(TEST_KEY, 1, 182)
    days = scheme.days(p, slot)
    d = pa.array(dates, pa.date32())
    ts = d.cast(pa.timestamp("us"))
    valid = pc.is_valid(p) if p.null_count else None
    for col in (d, ts):
        assert ex.shift(col, scheme.days_np(p, slot), valid).equals(structured.shift_dates(col, days))


def test_lookback_repeats_appear_once_and_repeats_split_over_part_files_are_all_kept(project: Project) -> None:
    """A window written as many part files is one load; a row landed again by lookback is one version."""
    extra = "\n[sync]\nlookback_days = 30\nfile_rows = 1024\nbatch_rows = 1024\n"
    project.config.write_text(project.config.read_text() + extra)
    cohort = synced(project, every=4)
    project.add_load(fraction_per_mille=20)
    assert project.cli("sync", "-q").exit_code == 0
    con = project.con(read_only=True)
    dupes = con.execute(
        "SELECT count(drug_exposure_id) - count(DISTINCT drug_exposure_id) FROM omop.omop.drug_exposure "
        "WHERE person_id IN (SELECT unnest($p))", {"p": cohort},
    ).fetchall()[0][0]
    con.close()
    d = duckdb.connect()
    landed = f"read_parquet('{project.landing}/c/condition_occurrence/*.parquet')"
    n_landed, distinct, files = d.execute(
        f"SELECT count(*), count(DISTINCT condition_occurrence_id), count(DISTINCT filename) FROM read_parquet("
        f"'{project.landing}/c/condition_occurrence/*.parquet', filename = true)"
    ).fetchall()[0]
    assert n_landed > distinct and files > 2, landed  # lookback landed some rows twice, over many parts
    out = exported(project, "acme")
    q = f"SELECT count(*), count(DISTINCT condition_occurrence_id) FROM {rel(out, 'condition_occurrence')}"
    assert d.execute(q).fetchall()[0] == (distinct, distinct)
    q = f"SELECT count(*), count(DISTINCT drug_exposure_id) FROM {rel(out, 'drug_exposure')}"
    rows, distinct_drugs = d.execute(q).fetchall()[0]
    assert rows - distinct_drugs == dupes > 0


def test_note_nlp_gets_its_persons_offset_through_the_note_and_loads_through_the_ddl(tmp_path: Path) -> None:
    """note_nlp has no person_id (and a column named offset): its dates move with its note's person."""
    from click.testing import CliRunner

    from cohortsync import synth
    from conftest import CONFIG

    synth.generate(tmp_path / "omop.duckdb", persons=60, seed=3, weeks=2)
    con = duckdb.connect(str(tmp_path / "omop.duckdb"))
    con.execute(
        "INSERT INTO omop.omop.note_nlp (note_nlp_id, note_id, note_nlp_concept_id, nlp_system, nlp_date, \"offset\", load_dt) "
        "SELECT note_id * 10 + k, note_id, 0, 'test', note_date + k::INT, 'o' || k, load_dt FROM omop.omop.note, range(2) t(k)"
    )
    con.close()
    tables = ["person", "note", "note_nlp"]
    (tmp_path / "cohortsync.toml").write_text(
        CONFIG.replace('policy = "keep_everything.toml"', 'policy = "structured_only.toml"')
        + f"\n[sync]\ntables = {tables!r}\n".replace("'", '"')
    )
    p = Project(tmp_path, CliRunner())
    structured_only(p)
    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("n.csv", list(range(1, 61))))).exit_code == 0
    assert p.cli("sync", "-q").exit_code == 0
    full, alone = exported(p, "acme"), tmp_path / "alone"
    assert p.cli("export", "c", "--consumer", "acme", "--out", str(alone), "--tables", "note_nlp").exit_code == 0
    d = duckdb.connect()
    n, same, later = d.execute(
        f"SELECT count(*), count(*) FILTER (WHERE x.nlp_date - n.note_date IN (0, 1)), "
        f"count(*) FILTER (WHERE x.nlp_date - n.note_date = 1) FROM {rel(full, 'note_nlp')} x "
        f"JOIN {rel(full, 'note')} n USING (note_id)"
    ).fetchall()[0]
    assert n > 0 and same == n and later * 2 == n  # the note's date and its NLP row's date moved alike
    assert d.execute(f"SELECT count(*) FROM {rel(alone, 'note_nlp')} WHERE nlp_date IS NULL").fetchall()[0][0] == 0
    q = f"SELECT note_nlp_id, nlp_date FROM {rel(full, 'note_nlp')} EXCEPT "
    q += f"SELECT note_nlp_id, nlp_date FROM {rel(alone, 'note_nlp')}"
    assert d.execute(q).fetchall() == []  # without note in the extract, note_nlp still finds its person
    d.execute((full / "ddl.sql").read_text())
    d.execute(f"INSERT INTO note_nlp SELECT * FROM {rel(full, 'note_nlp')}")
    assert d.execute('SELECT count(DISTINCT "offset") FROM note_nlp').fetchall()[0][0] == 2


@pytest.mark.parametrize("seed", range(6))
def test_an_export_killed_at_a_random_moment_leaves_nothing_or_a_whole_extract(project: Project, seed: int) -> None:
    """SIGKILL at a random moment (seeded: reproducible), wherever the export then is: DIR is absent
    or a whole, verifiable extract, and the next export cleans up and is whole."""
    synced(project, every=5)
    out = project.root / "x"
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cohortsync.cli", "--config", str(project.config), "export", "c", "--consumer", "acme",
         "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(random.Random(seed).uniform(0.2, 3.0))  # where the kill lands varies; any moment must be safe
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    if out.exists():
        assert project.cli("verify-export", str(out)).exit_code == 0
    r = project.cli("export", "c", "--consumer", "acme", "--out", str(out), "--overwrite")
    assert r.exit_code == 0, r.output
    assert project.cli("verify-export", str(out)).exit_code == 0
    assert [p.name for p in project.root.iterdir() if p.name.startswith(".x.")] == []
