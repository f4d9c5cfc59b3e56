"""The README's first command, end to end: `cohortsync demo` on a generated database with PHI in notes.

After it, no name, phone, MRN, SSN, e-mail or street address the generator wrote appears anywhere in
the landing (every string of every Parquet file is scanned), the dates inside each note are the
original dates moved by that person's offset, and the landed tables join on their pseudonymous ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohortsync.deid.structured import Keys, pseudonymize, shift_days

PERSONS = 150


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo") / "run"
    env = {k: v for k, v in os.environ.items() if k != "COHORTSYNC_DEID_KEY"}
    r = subprocess.run(
        [sys.executable, "-m", "cohortsync.cli", "demo", str(d), "--persons", str(PERSONS), "--quiet"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "created a local demo de-identification key" in r.stdout
    assert "sync 2 (existing cohorts: only rows past the watermark)" in r.stdout
    assert "FAILED" not in r.stdout
    assert f"extract: {d / 'exports' / 'cardio-2026-demo-buyer'}" in r.stdout
    return d


def strings_in_landing(root: Path) -> list[str]:
    out: list[str] = []
    for f in sorted((root / "landing").rglob("*.parquet")):
        t = pq.read_table(f)
        for col in t.columns:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                out += [v for v in col.to_pylist() if v]
    return out


def test_no_phi_the_generator_wrote_reaches_the_landing(demo: Path) -> None:
    con = duckdb.connect(str(demo / "omop.duckdb"), read_only=True)
    phi = con.execute(
        "SELECT DISTINCT kind, value FROM omop.demo_truth.note_phi "
        "WHERE kind IN ('patient_name', 'clinician_name', 'phone', 'fax', 'mrn', 'ssn', 'email', 'address') "
        "UNION SELECT DISTINCT kind, value FROM omop.demo_truth.person_phi"
    ).fetchall()
    con.close()
    assert {k for k, _ in phi} >= {"patient_name", "phone", "mrn", "ssn", "email", "address"}
    text = "\n".join(strings_in_landing(demo)).lower()
    assert len(text) > 10_000  # notes did land
    leaks = sorted({f"{k}: {v}" for k, v in phi if len(v) >= 6 and v.lower() in text})
    assert not leaks, f"{len(leaks)} PHI values found in the landing, e.g. {leaks[:5]}"


def test_dates_in_notes_move_by_the_persons_offset(demo: Path) -> None:
    key = (demo / "demo-deid-key.txt").read_text().strip()
    keys = Keys.from_secret(key)
    con = duckdb.connect(str(demo / "omop.duckdb"), read_only=True)
    truth = con.execute(
        "SELECT note_id, person_id, date_value, format FROM omop.demo_truth.note_dates ORDER BY note_id"
    ).fetchall()
    con.close()
    landed = {}
    for f in (demo / "landing").glob("*/note/*.parquet"):
        t = pq.read_table(f, columns=["note_id", "note_text"])
        landed.update(zip(t.column("note_id").to_pylist(), t.column("note_text").to_pylist(), strict=True))
    note_ids = pa.array([n for n, *_ in truth], pa.int64())
    pseudo = pseudonymize(keys, "note", note_ids).to_pylist()
    offsets = shift_days(keys, pa.array([p for _, p, *_ in truth], pa.int64())).to_pylist()
    checked = wrong = 0
    examples = []
    for (note_id, _, value, fmt), pn, off in zip(truth, pseudo, offsets, strict=True):
        text = landed.get(pn)
        if text is None:
            continue  # the note's person is in neither demo cohort
        checked += 1
        if not any(e in text for e in acceptable(value, fmt, off)):
            wrong += 1
            examples.append((note_id, value.strftime(fmt), (value + timedelta(days=off)).strftime(fmt)))
    assert checked > 50
    assert wrong == 0, f"{wrong} of {checked} dates not shifted as expected, e.g. {examples[:5]}"


def acceptable(value: date, fmt: str, days: int) -> set[str]:
    """The shifted date in the note's format, allowing only for what the text cannot tell: a format
    that writes the original identically ('11/10/23' is %m/%d/%y and %-m/%-d/%y; 'May' is %b and %B),
    and, without a year, a leap day the shift may or may not cross."""
    variants = {fmt}
    for a, b in (("%-m", "%m"), ("%-d", "%d"), ("%b", "%B")):
        variants |= {v.replace(a, b) for v in variants} | {v.replace(b, a) for v in variants}
    formats = {f for f in variants if value.strftime(f) == value.strftime(fmt)}
    shifted = [value + timedelta(days=days)]
    if "%Y" not in fmt and "%y" not in fmt:
        shifted += [shifted[0] - timedelta(days=1), shifted[0] + timedelta(days=1)]
    return {d.strftime(f) for d in shifted for f in formats}


def test_landed_tables_join_on_pseudonymous_ids(demo: Path) -> None:
    con = duckdb.connect()
    g = lambda t: f"read_parquet('{demo}/landing/cardio-2026/{t}/*.parquet')"  # noqa: E731
    n = con.execute(
        f"SELECT count(*) FROM {g('condition_occurrence')} c JOIN {g('visit_occurrence')} v USING (visit_occurrence_id) "
        f"JOIN {g('person')} p ON p.person_id = c.person_id"
    ).fetchall()[0][0]
    total = con.execute(f"SELECT count(*) FROM {g('condition_occurrence')}").fetchall()[0][0]
    assert n == total > 0
    notes = con.execute(f"SELECT count(*) FROM {g('note')} n JOIN {g('person')} p USING (person_id)").fetchall()[0][0]
    assert notes > 0


def test_the_demo_export_verifies_and_a_notes_date_equals_its_rows_date_per_buyer(demo: Path) -> None:
    """Inside one extract, a date written in a note equals the note's note_date; across two buyers it differs."""
    from cohortsync import api
    from cohortsync import export as ex
    from cohortsync.config import load_settings

    key = (demo / "demo-deid-key.txt").read_text().strip()
    first = demo / "exports" / "cardio-2026-demo-buyer"
    assert api.verify_export(first).ok
    os.environ["COHORTSYNC_DEID_KEY"] = key
    try:
        other = api.export(load_settings(demo / "cohortsync.toml"), "cardio-2026", "other-buyer", demo / "exports" / "other").out
    finally:
        del os.environ["COHORTSYNC_DEID_KEY"]
    keys = Keys.from_secret(key)
    con = duckdb.connect(str(demo / "omop.duckdb"), read_only=True)
    truth = con.execute(
        "SELECT d.note_id, d.format FROM omop.demo_truth.note_dates d JOIN omop.omop.note n USING (note_id) "
        "WHERE d.date_value = n.note_date AND d.format LIKE '%Y%' ORDER BY 1"
    ).fetchall()
    con.close()
    landed = pseudonymize(keys, "note", pa.array([n for n, _ in truth], pa.int64()))
    checked = 0
    per_buyer = {}
    for out, buyer in ((first, "demo-buyer"), (other, "other-buyer")):
        t = pq.read_table(out / "note", columns=["note_id", "note_date", "note_text"])
        notes = {i: (d, x) for i, d, x in zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True)}
        ids = ex.buyer_ids(key, buyer, "note", landed).to_pylist()
        dates = {}
        for (_, fmt), nid in zip(truth, ids, strict=True):
            if nid not in notes:
                continue  # the note's person is not in the cohort
            note_date, text = notes[nid]
            # A written "May" reads as a full month name, so the landing writes its shift in full ("June").
            ok = acceptable(note_date, fmt, 0) | acceptable(note_date, fmt.replace("%b", "%B"), 0)
            assert any(v in text for v in ok), (fmt, note_date)
            dates[nid] = note_date
            checked += 1
        per_buyer[buyer] = list(dates.values())
    assert checked > 20
    assert all(a != b for a, b in zip(per_buyer["demo-buyer"], per_buyer["other-buyer"], strict=True))
