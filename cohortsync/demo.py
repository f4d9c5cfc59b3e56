"""``cohortsync demo``: the whole weekly flow on a generated OMOP database, end to end.

It runs exactly what a user runs — add-cohort, sync, a new weekly load, sync again — through the
same library API, against a database :mod:`cohortsync.synth` generates from a seed. Synthetic data
only: this is the one place the tool may create its own source.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb

from cohortsync import api, synth
from cohortsync.config import CONFIG_NAME, load_settings
from cohortsync.errors import InputError
from cohortsync.sync import Progress, SyncReport

MARKER = ".cohortsync-demo"
KEY_ENV = "COHORTSYNC_DEID_KEY"
KEY_FILE = "demo-deid-key.txt"
CONFIG_TEMPLATE = """\
# Written by `cohortsync demo`: a local, synthetic OMOP database. Paths are relative to this file.
[source]
kind = "duckdb"
database = "omop.duckdb"
omop_schema = "omop"
sandbox_schema = "sandbox"

[landing]
path = "landing"

[state]
path = "state"

[cohorts]
path = "cohorts"
"""


def run(
    directory: Path,
    persons: int = 2000,
    seed: int = 7,
    progress: Progress | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[SyncReport, SyncReport]:
    """Generate, register two overlapping cohorts, sync, add a weekly load, sync again."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise InputError(f"demo directory {directory} is not empty and not a cohortsync demo; name another one")
        shutil.rmtree(directory)  # a previous demo's output: generated, safe to replace
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("created by cohortsync demo; the whole folder is replaced by the next demo\n")
    db = directory / "omop.duckdb"
    echo(f"generating a synthetic OMOP v5.3 database with {persons:,} persons (seed {seed}) -> {db}")
    counts = synth.generate(db, persons=persons, seed=seed, memory_limit="1GB")
    echo("  " + ", ".join(f"{t} {n:,}" for t, n in counts.items() if n))
    (directory / CONFIG_NAME).write_text(CONFIG_TEMPLATE, encoding="utf-8")
    if not os.environ.get(KEY_ENV):
        key_file = directory / KEY_FILE
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(48) + "\n", encoding="ascii")
        os.environ[KEY_ENV] = key_file.read_text(encoding="ascii").strip()
        echo(f"created a local demo de-identification key in {key_file} (demo only: real keys come from the environment)")
        echo(f"  to run cohortsync yourself on this demo: export {KEY_ENV}=$(cat {key_file})")
    settings = load_settings(directory / CONFIG_NAME)

    ids = _person_ids(db)
    # Two overlapping cohorts, as two data projects would approve them.
    cohorts = {
        "cardio-2026": [i for i in ids if i % 3 == 0],
        "diabetes-2026": [i for i in ids if i % 5 == 0],
    }
    for name, members in cohorts.items():
        f = directory / f"{name}.csv"
        f.write_text("person_id\n" + "".join(f"{i}\n" for i in members), encoding="ascii")
        r = api.add_cohort(settings, name, f)
        echo(f"added cohort {name}: {r.cohort.members:,} persons")

    echo("\nsync 1 (new cohorts: full backfill)")
    first = api.sync(settings, progress=progress)
    _summary(first, echo)

    load_dt, added = synth.append_load(db, seed=seed)
    echo(f"\nnew weekly load {load_dt:%Y-%m-%d %H:%M}: " + ", ".join(f"{t} +{n:,}" for t, n in added.items() if n))

    echo("\nsync 2 (existing cohorts: only rows past the watermark)")
    second = api.sync(settings, progress=progress)
    _summary(second, echo)
    echo(f"\nlanding: {settings.landing_path}   state: {settings.state_path}   cohorts: {settings.cohorts_path}")

    buyer, cohort = "demo-buyer", "cardio-2026"
    out = directory / "exports" / f"{cohort}-{buyer}"
    echo(f"\nexport of {cohort} for {buyer} (its own ids and dates; only the landing and the state are read)")
    ex = api.export(settings, cohort, buyer, out)
    echo("  " + ", ".join(f"{t} {m['rows']:,}" for t, m in ex.manifest["tables"].items()))
    echo(f"extract: {ex.out}  (manifest.json, README.md, ddl.sql, quality.json)")
    echo(f"try: cohortsync --config {directory / CONFIG_NAME} status")
    echo(f"     cohortsync verify-export {ex.out}")
    return first, second


def _person_ids(db: Path) -> list[int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        ((catalog,),) = con.sql("SELECT current_database()").fetchall()
        return [int(r[0]) for r in con.sql(f'SELECT person_id FROM "{catalog}"."omop"."person" ORDER BY 1').fetchall()]
    finally:
        con.close()


def _summary(report: SyncReport, echo: Callable[[str], None]) -> None:
    per: dict[str, dict[str, int]] = {}
    for o in report.outcomes:
        per.setdefault(o.cohort, {})[o.table] = o.rows
    tables = list(next(iter(per.values())).keys()) if per else []
    echo(f"{'table':<22}" + "".join(f"{c:>16}" for c in per))
    for t in tables:
        echo(f"{t:<22}" + "".join(f"{per[c].get(t, 0):>16,}" for c in per))
    if report.failed:
        echo("FAILED: " + ", ".join(f"{o.cohort}/{o.table}: {o.error}" for o in report.failed))
