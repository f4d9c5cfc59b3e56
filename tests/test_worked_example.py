"""The worked example of docs/architecture.md, run for real on Eunomia: its table is this test's output.

Eunomia's rows are spread over four Sunday loads (conftest); here each load *arrives* only when the
example's calendar reaches it, cohorts are added and amended in between, and a late-arriving row of an
old date comes with a fifth load. Every row of the doc's table must equal what the run printed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import duckdb

from cohortsync import omop
from conftest import FIRST_LOAD, REPO, Project, person_ids

TABLE = "measurement"


def hold_later_loads(project: Project) -> list[datetime]:
    """Move every row loaded after the first Sunday aside; return the later load times."""
    con = project.con()
    try:
        con.execute("CREATE SCHEMA omop.hold")
        loads: set[datetime] = set()
        for t in omop.all_tables():
            con.execute(f"CREATE TABLE omop.hold.{t} AS SELECT * FROM omop.omop.{t} WHERE load_dt > ?", [FIRST_LOAD])
            con.execute(f"DELETE FROM omop.omop.{t} WHERE load_dt > ?", [FIRST_LOAD])
            loads |= {r[0] for r in con.execute(f"SELECT DISTINCT load_dt FROM omop.hold.{t}").fetchall()}
        return sorted(loads)
    finally:
        con.close()


def arrive(project: Project, load: datetime) -> None:
    con = project.con()
    try:
        for t in omop.all_tables():
            con.execute(f"INSERT INTO omop.omop.{t} SELECT * FROM omop.hold.{t} WHERE load_dt = ?", [load])
    finally:
        con.close()


def fmt(d: datetime) -> str:
    return f"{d.day} {d:%b %H:%M}"


def window(t: dict[str, Any]) -> str:
    w = t["window"]
    if w["kind"] == "backfill":
        return f"backfill: `≤ {fmt(datetime.fromisoformat(w['upper']))}`"
    return f"increment: `({fmt(datetime.fromisoformat(w['lower']))}, {fmt(datetime.fromisoformat(w['upper']))}]`"


def run_example(project: Project) -> list[str]:
    loads = hold_later_loads(project)
    assert [d.date().isoformat() for d in loads] == ["2026-10-11", "2026-10-18", "2026-10-25"]
    ids = person_ids(project)
    cardio, diabetes = ids[:1200:3], ids[:1200:5]
    rows: list[str] = []

    def sync(day: str, what: str) -> None:
        r = project.cli("sync", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        first = True
        for t in doc["tables"]:
            if t["table"] != TABLE or t["status"] != "landed":
                continue
            day_what = f"| {day} | {what} |" if first else "| | |"
            rows.append(f"{day_what} {t['cohort']} | {window(t)} | {t['rows']:,} |")
            first = False

    def cli(*args: str) -> dict[str, Any]:
        r = project.cli(*args, "--json")
        assert r.exit_code == 0, r.output
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    cli("add-cohort", "cardio", "--patients", str(project.write_ids("cardio.csv", cardio)))
    rows.append(f"| Mon 5 Oct | `add-cohort cardio` ({len(cardio)} persons) | cardio | none yet | 0 |")
    arrive(project, loads[0])
    sync("Sun 11 Oct", "load L2 arrives; `sync`")
    cli("add-cohort", "diabetes", "--patients", str(project.write_ids("diabetes.csv", diabetes)))
    overlap = len(set(cardio) & set(diabetes))
    rows.append(
        f"| Wed 14 Oct | `add-cohort diabetes` ({len(diabetes)} persons, {overlap} also in cardio) | diabetes | none yet | 0 |"
    )
    arrive(project, loads[1])
    sync("Sun 18 Oct", "load L3 arrives; `sync`: one scan for both")
    outsiders = [i for i in ids[1200:] if i not in set(diabetes)][:50]
    amend = cli(
        "amend-cohort", "cardio", "--add", str(project.write_ids("add.csv", outsiders)),
        "--remove", str(project.write_ids("gone.csv", cardio[:3])),
    )
    purged = sum(t["rows_removed"] for t in amend["tables"] if t["table"] == TABLE)
    rows.append(
        f"| Tue 20 Oct | `amend-cohort cardio`: +50 persons, 3 withdraw | cardio | purge now, every landed file | −{purged:,} |"
    )
    arrive(project, loads[2])
    added_rows = source_rows(project, outsiders, loads[2])
    sync("Sun 25 Oct", "load L4 arrives; `sync`")
    # The cardio line of 25 Oct is one window: the increment of the earlier members plus the
    # backfill of the 50 added ones (the membership's batch column tells the query who is new).
    i = next(i for i, r in enumerate(rows) if r.startswith("| Sun 25 Oct"))
    head, total_text, _ = rows[i].rsplit("|", 2)
    assert "| cardio |" in head
    total = int(total_text.strip().replace(",", ""))
    earlier = f"{total - added_rows:,} new rows of {len(cardio) - 3} earlier members"
    rows[i] = f"{head}| {total:,}: {earlier} + {added_rows:,} backfilled for the 50 added |"
    # The fifth load (new rows for everyone), with a corrected result of 30 September for a cardio member.
    fifth = project.add_load()
    assert fifth == loads[2] + timedelta(days=7)
    late = late_row(project, cardio[3], fifth)
    rows.append("| Tue 27 Oct | a corrected 30 Sep result of a cardio member is loaded with L5 | | | |")
    sync("Sun 1 Nov", "load L5 arrives; `sync`")
    con = duckdb.connect()
    try:
        (hit,) = con.execute(
            f"SELECT count(*) FROM read_parquet('{project.landing}/cardio/{TABLE}/*.parquet') "
            "WHERE measurement_id = ? AND measurement_date = DATE '2026-09-30'",
            [late],
        ).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    assert hit == 1  # the late row of an old date landed with the increment
    return rows


def source_rows(project: Project, persons: list[int], upto: datetime) -> int:
    con = project.con(read_only=True)
    try:
        row = con.execute(
            f"SELECT count(*) FROM omop.omop.{TABLE} WHERE list_contains(?, person_id) AND load_dt <= ?", [persons, upto]
        ).fetchone()
        assert row is not None
        return int(row[0])
    finally:
        con.close()


def late_row(project: Project, person: int, load: datetime) -> int:
    con = project.con()
    try:
        (top,) = con.execute(f"SELECT max(measurement_id) FROM omop.omop.{TABLE}").fetchone()  # type: ignore[misc]
        con.execute(
            f"INSERT INTO omop.omop.{TABLE} SELECT * REPLACE (? AS measurement_id, DATE '2026-09-30' AS measurement_date, "
            f"? AS load_dt) FROM omop.omop.{TABLE} WHERE person_id = ? LIMIT 1",
            [top + 10**6, load, person],
        )
        return int(top + 10**6)
    finally:
        con.close()


def test_the_worked_example_in_the_architecture_page_is_what_a_run_prints(project: Project) -> None:
    rows = run_example(project)
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [r for r in rows if r not in doc]
    assert not missing, "docs/architecture.md's worked example differs from the run; the run printed:\n" + "\n".join(rows)
