"""Patient files and cohort names: every bad input is a one-line error that changes nothing."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohortsync.cohorts import NAME_RE, check_name, read_patients
from cohortsync.errors import InputError
from conftest import Project, person_ids, snapshot


@given(ids=st.lists(st.integers(min_value=1, max_value=2**63 - 1), min_size=1, max_size=50), header=st.booleans())
def test_any_list_of_positive_ids_round_trips(ids: list[int], header: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = tmp_path_factory.mktemp("ids") / "p.csv"
    p.write_text(("person_id\n" if header else "") + "\n".join(map(str, ids)) + "\n", encoding="ascii")
    r = read_patients(p)
    assert r.ids == sorted(set(ids))
    assert r.duplicates == len(ids) - len(set(ids))


@given(st.text(max_size=70))
def test_names_are_slugs_or_refused(name: str) -> None:
    if NAME_RE.fullmatch(name):
        assert check_name(name) == name
    else:
        with pytest.raises(InputError):
            check_name(name)


def test_csv_with_other_columns(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text("mrn_hash,person_id,site\nx,5,a\ny,3,b\nz,5,c\n", encoding="utf-8")
    r = read_patients(p)
    assert (r.ids, r.duplicates, r.lines) == ([3, 5], 1, 3)


BAD_FILES = [
    ("one id a line with junk", "1\n2\nabc\n", "line 3: not a positive integer"),
    ("negative", "person_id\n4\n-5\n", "line 3: not a positive integer"),
    ("zero", "0\n", "line 1: person_id must be positive"),
    ("decimal", "1\n2.0\n", "line 2: not a positive integer"),
    ("too big for BIGINT", "9223372036854775808\n", "line 1: person_id exceeds the 64-bit range"),
    ("leading zeros", "1\n007\n", "line 2: person_id has leading zeros"),
    ("empty", "", "holds no person_id"),
    ("header only", "person_id\n", "holds no person_id"),
    ("csv without person_id", "id,name\n1,a\n", "CSV header has no person_id column"),
    ("ragged csv", "person_id,site\n1,a\n2\n", "line 3: 1 fields where the header has 2"),
    ("unicode digits", "1\n١٢\n", "line 2: not a positive integer"),
    ("sql in the file", "1\n1; DROP TABLE omop.person\n", "line 2: not a positive integer"),
]


@pytest.mark.parametrize(("case", "content", "needle"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_patient_file_changes_nothing(project: Project, case: str, content: str, needle: str) -> None:
    f = project.root / "bad.txt"
    f.write_text(content, encoding="utf-8")
    before_cohorts, before_state = snapshot(project.root / "cohorts"), snapshot(project.root / "state")
    r = project.cli("add-cohort", "good-name", "--patients", str(f))
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert snapshot(project.root / "cohorts") == before_cohorts
    assert snapshot(project.root / "state") == before_state
    assert sandbox_rows(project.db) == 0


@pytest.mark.parametrize("name", ["Upper", "1abc", "a" * 64, "x'; DROP TABLE omop.person; --", "ünï", "", "a b"])
def test_bad_cohort_name_is_refused(project: Project, name: str) -> None:
    f = project.write_ids("ok.csv", person_ids(project)[:3])
    r = project.cli("add-cohort", name, "--patients", str(f))
    assert r.exit_code == 2 and r.output.startswith("error: invalid cohort name")
    assert not (project.root / "cohorts").exists()
    assert sandbox_rows(project.db) == 0


def test_missing_ids_are_refused_unless_allowed(project: Project) -> None:
    ids = [*person_ids(project)[:10], 10**12, 10**12 + 1]
    f = project.write_ids("m.csv", ids)
    r = project.cli("add-cohort", "m", "--patients", str(f))
    assert r.exit_code == 5  # a membership mismatch: a person must look
    assert "2 of 12 ids are not in omop.person; check the file" in r.output
    assert "1000000000000" not in r.output  # never a person id in a message
    assert not (project.root / "cohorts" / "m").exists()
    assert sandbox_rows(project.db) == 0
    r = project.cli("add-cohort", "m", "--patients", str(f), "--allow-missing")
    assert r.exit_code == 0, r.output
    assert "2 not in omop.person (allowed)" in r.output
    assert sandbox_rows(project.db) == 12


def test_missing_patient_file(project: Project) -> None:
    r = project.cli("add-cohort", "x", "--patients", str(project.root / "nope.csv"))
    assert r.exit_code == 2 and "does not exist" in r.output


def test_add_is_recorded_for_review_and_idempotent(project: Project) -> None:
    ids = person_ids(project)[:50]
    f = project.write_ids("a.csv", ids + ids[:5])
    r = project.cli("add-cohort", "alpha", "--patients", str(f))
    assert r.exit_code == 0, r.output
    assert "50 ids (55 read, 5 duplicates collapsed" in r.output
    folder = project.root / "cohorts" / "alpha"
    assert (folder / "members.txt").read_text().split() == [str(i) for i in sorted(ids)]
    assert 'members = 50' in (folder / "cohort.toml").read_text()
    before = snapshot(project.root / "cohorts")
    r = project.cli("add-cohort", "alpha", "--patients", str(f))
    assert r.exit_code == 0 and "already registered with this list" in r.output
    assert snapshot(project.root / "cohorts") == before
    assert sandbox_rows(project.db) == 50  # replaced, not appended
    g = project.write_ids("b.csv", ids[:49])
    r = project.cli("add-cohort", "alpha", "--patients", str(g))
    assert r.exit_code == 2 and "already registered with a different member list" in r.output
    assert snapshot(project.root / "cohorts") == before
    assert sandbox_rows(project.db) == 50


def sandbox_rows(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema='sandbox' AND table_name='cohortsync_members'"
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = con.execute("SELECT count(*) FROM omop.sandbox.cohortsync_members").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def test_members_file_is_checked_against_its_recorded_checksum(project: Project) -> None:
    """Line ends a checkout may rewrite (CRLF) still match; a changed id is refused before any sync."""
    from cohortsync.cohorts import load_all
    from cohortsync.errors import CohortError

    ids = person_ids(project)[:20]
    assert project.cli("add-cohort", "crlf", "--patients", str(project.write_ids("c.txt", ids))).exit_code == 0
    members = project.root / "cohorts" / "crlf" / "members.txt"
    members.write_bytes(members.read_bytes().replace(b"\n", b"\r\n"))
    (cohort,) = load_all(project.root / "cohorts")
    assert cohort.member_ids() == sorted(ids)
    members.write_bytes(members.read_bytes().replace(b"%d\r\n" % sorted(ids)[0], b"%d\r\n" % (sorted(ids)[0] + 1), 1))
    with pytest.raises(CohortError, match=r"members\.txt does not match the checksum"):
        cohort.member_ids()
    r = project.cli("sync", "-q")
    assert r.exit_code == 5 and "members.txt does not match the checksum" in r.output
