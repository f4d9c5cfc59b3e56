"""Shared fixtures: real DuckDB OMOP databases (Eunomia, public synthetic data) and real config files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result
from hypothesis import settings as hypothesis_settings

from cohortsync import omop
from cohortsync.cli import cli
from cohortsync.config import Settings, load_settings
from cohortsync.sources.duckdb import create_omop_tables, import_csv_table

# Real servers the tests start once per session (tests/servers/): PostgreSQL for the state, Azurite
# for a landing on Azure storage.
pytest_plugins = ["servers.postgres", "servers.azurite"]

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
EUNOMIA = SHARED / "eunomia"
SPEC = SHARED / "omop"
FIRST_LOAD = datetime(2026, 10, 4, 2, 0)  # a Sunday
LOADS = 4  # weekly loads the Eunomia rows are spread over

# No per-example deadline anywhere: a first example that loads a sqlglot dialect or a spaCy
# pipeline on a busy 2-core CI machine must not fail a property that holds. print_blob lets a
# failure found in CI be replayed exactly (@reproduce_failure).
hypothesis_settings.register_profile("cohortsync", deadline=None, print_blob=True)
hypothesis_settings.load_profile("cohortsync")


def eunomia_load_dt_sql(table: str) -> str:
    """Spread Eunomia's rows over LOADS Sundays: ~97 % in the first load, ~1 % in each later one.

    Keyed on a hash of the row's first column (its key), so it is deterministic and independent of
    row order.
    """
    first = FIRST_LOAD.isoformat(sep=" ")
    key = omop.all_tables()[table].columns[0].name
    bucket = f"(hash(\"{key}\") % 100)"
    return (
        f"TIMESTAMP '{first}' + INTERVAL 7 DAY * (CASE WHEN {bucket} < 97 THEN 0 "
        f"ELSE {bucket} - 96 END)"
    )


def build_eunomia(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path))
    try:
        create_omop_tables(con)
        counts = {}
        for t in omop.all_tables():
            csv = EUNOMIA / f"{t}.csv"
            if csv.exists():
                counts[t] = import_csv_table(con, csv, t, eunomia_load_dt_sql(t))
        for t in omop.vocabulary_tables():  # Eunomia ships the concepts its rows use: codes then land as written
            counts[t] = import_csv_table(con, EUNOMIA / f"{t}.csv", t, None)
        return counts
    finally:
        con.close()


@pytest.fixture(scope="session")
def eunomia_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not EUNOMIA.is_dir():
        pytest.fail(f"{EUNOMIA} is missing: tests expect ../shared beside the repository")
    path = tmp_path_factory.mktemp("eunomia") / "omop.duckdb"
    build_eunomia(path)
    return path


TEST_KEY = "test-key-0123456789abcdef0123456789abcdef"  # tests only; real keys come from a vault


def keep_everything_policy() -> str:
    """A policy override that keeps every column: for tests of the sync mechanics, which compare
    landed rows with source rows. (Landing identified data needs exactly this explicit act.)"""
    lines = []
    for t in omop.registry().values():
        lines.append(f"[{t.name}]")
        lines += [f'"{c}" = "keep"' for c in (*t.column_names, omop.LOAD_DT)]
    return "\n".join(lines) + "\n"


def structured_only_policy() -> str:
    """The shipped policy with free text dropped: keyed pseudonyms and date shifts on, Presidio off."""
    from cohortsync.deid.policy import Action, load_policy

    policy = load_policy()
    lines = []
    for t in omop.registry():
        lines.append(f"[{t}]")
        lines += [f'"{c}" = "drop"' for c, r in policy.rules(t).items() if r.action is Action.SCRUB_TEXT]
    return "\n".join(lines) + "\n"


CONFIG = """\
[source]
kind = "duckdb"
database = "omop.duckdb"

[deid]
policy = "keep_everything.toml"

[landing]
path = "landing"

[state]
path = "state"

[cohorts]
path = "cohorts"
"""


@dataclass
class Project:
    """A working directory with a private copy of the OMOP database and a cohortsync.toml."""

    root: Path
    runner: CliRunner

    @property
    def config(self) -> Path:
        return self.root / "cohortsync.toml"

    @property
    def db(self) -> Path:
        return self.root / "omop.duckdb"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    def settings(self) -> Settings:
        return load_settings(self.config)

    def cli(self, *args: str, env: dict[str, str | None] | None = None) -> Result:
        return self.runner.invoke(
            cli, ["--log-format", "text", "--config", str(self.config), *args], obj={}, catch_exceptions=False,
            env={"COHORTSYNC_DEID_KEY": TEST_KEY, **(env or {})},
        )

    def con(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.db), read_only=read_only)

    def write_ids(self, name: str, ids: list[int], header: bool = True) -> Path:
        p = self.root / name
        p.write_text(("person_id\n" if header else "") + "".join(f"{i}\n" for i in ids), encoding="ascii")
        return p

    def add_load(self, fraction_per_mille: int = 3) -> datetime:
        """Append one weekly load: new rows (new primary keys) copied from a deterministic sample."""
        con = self.con()
        try:
            (mx,) = con.execute("SELECT max(load_dt) FROM omop.omop.person").fetchone()  # type: ignore[misc]
            new = max(
                con.execute(f"SELECT max(load_dt) FROM omop.omop.{t}").fetchone()[0] or mx  # type: ignore[index]
                for t in omop.DEFAULT_TABLES
            ) + timedelta(days=7)
            for t in omop.DEFAULT_TABLES:
                pk = omop.table(t).primary_key
                assert pk is not None
                if t == "person":
                    continue  # new persons would not be cohort members; events of existing ones matter
                (top,) = con.execute(f"SELECT coalesce(max({pk}), 0) FROM omop.omop.{t}").fetchone()  # type: ignore[misc]
                con.execute(
                    f"INSERT INTO omop.omop.{t} SELECT * REPLACE ({pk} + {top} AS {pk}, TIMESTAMP '{new}' AS load_dt) "
                    f"FROM omop.omop.{t} WHERE abs(hash({pk})) % 1000 < {fraction_per_mille}"
                )
            return new
        finally:
            con.close()


@pytest.fixture
def project(tmp_path: Path, eunomia_db: Path) -> Project:
    shutil.copy(eunomia_db, tmp_path / "omop.duckdb")
    (tmp_path / "cohortsync.toml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "keep_everything.toml").write_text(keep_everything_policy(), encoding="utf-8")
    return Project(tmp_path, CliRunner())


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its content: to assert that a refused command changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def person_ids(project: Project) -> list[int]:
    con = project.con(read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT person_id FROM omop.omop.person ORDER BY 1").fetchall()]
    finally:
        con.close()


IdsFn = Callable[[Project], list[int]]
