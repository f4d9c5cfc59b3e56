"""Operable by a scheduler and a person (issue 12): exit codes, --json documents, logs without PHI.

Every exit code is driven through the real CLI (click's runner, and ``python -m cohortsync.cli``
in a subprocess where a terminal-less process matters); every --json document is validated against
docs/run.schema.json; the flows run at debug level with planted identifiers that must not appear
in anything the process prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import duckdb
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from cohortsync.cli import cli
from cohortsync.errors import ExitCode
from cohortsync.state import StateStore
from conftest import REPO, TEST_KEY, Project, person_ids

SCHEMA = json.loads((REPO / "docs" / "run.schema.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(text: str) -> dict[str, Any]:
    doc = json.loads(text)
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert isinstance(doc, dict)
    return doc


def process(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a process without a terminal (as cron or a container runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "cohortsync.cli", "--config", str(project.config), *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, **(env or {})},
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        doc = json.loads(line)  # every line off a terminal is one JSON object
        assert isinstance(doc, dict)
        out.append(doc)
    return out


def one_error_line(output: str, needle: str) -> None:
    assert output.startswith("error: ") and output.count("\n") == 1, output
    assert needle in output and "Traceback" not in output, output


def register(project: Project, name: str = "c", n: int = 40) -> list[int]:
    ids = person_ids(project)[:n]
    r = project.cli("add-cohort", name, "--patients", str(project.write_ids(f"{name}.csv", ids)))
    assert r.exit_code == 0, r.output
    return ids


# -- exit codes ------------------------------------------------------------------------------------


def test_exit_0_success(project: Project) -> None:
    register(project)
    r = project.cli("sync", "-q")
    assert r.exit_code == ExitCode.OK == 0, r.output
    assert project.cli("verify", "c").exit_code == 0


def test_exit_1_some_tables_failed_the_rest_committed(project: Project) -> None:
    register(project)
    (project.landing / "c").mkdir(parents=True)
    (project.landing / "c" / "measurement").write_text("a file where a folder must be")
    r = project.cli("sync", "-q")
    assert r.exit_code == ExitCode.PARTIAL == 1, r.output
    assert r.output.rstrip().splitlines()[-1] == "error: 1 cohort table(s) failed: c/measurement (see above)"
    with StateStore(project.root / "state") as st:
        marks = st.watermarks()
    assert ("c", "person") in marks and ("c", "measurement") not in marks


@pytest.mark.parametrize("path", sorted(
    [(name,) for name, c in cli.commands.items() if not isinstance(c, click.Group)]
    + [(g, name) for g, c in cli.commands.items() if isinstance(c, click.Group) for name in c.commands]
))
def test_exit_2_unknown_option_on_every_command_is_one_line(project: Project, path: tuple[str, ...]) -> None:
    r = project.cli(*path, "--no-such-option")
    assert r.exit_code == ExitCode.USAGE == 2
    one_error_line(r.output, "No such option '--no-such-option'")
    assert f"'cohortsync {' '.join(path)} --help'" in r.output


# Minimal valid arguments of every command that reads the configuration (demo writes its own).
MINIMAL_ARGS: dict[str, list[str]] = {
    "add-cohort": ["c", "--patients", "ids.csv"],
    "amend-cohort": ["c", "--add", "ids.csv"],
    "remove-cohort": ["c"],
    "verify": ["c"],
    "sync": [],
    "plan": [],
    "status": [],
    "policy show": [],
    "policy check": ["--offline"],
    "export": ["c", "--consumer", "acme", "--out", "x"],
    "state copy": ["--to", "postgresql://cohortsync@127.0.0.1:1/cohortsync"],
}


def test_every_command_reading_the_config_is_listed() -> None:
    from test_docs import commands

    # demo makes its own config; verify-export reads only the extract it is given
    assert set(commands()) - {"demo", "verify-export"} == set(MINIMAL_ARGS), "add the new command to MINIMAL_ARGS"


@pytest.mark.parametrize("command", sorted(MINIMAL_ARGS))
def test_exit_2_missing_or_mistyped_config_on_every_command(project: Project, command: str) -> None:
    args = [*command.split(), *MINIMAL_ARGS[command]]
    r = CliRunner().invoke(cli, ["--log-format", "text", "--config", str(project.root / "absent.toml"), *args])
    assert r.exit_code == 2, r.output
    one_error_line(r.output, "no config file")
    project.config.write_text(project.config.read_text().replace("[landing]\n", '[landing]\nwriter_threads = "two"\n'))
    r = project.cli(*args)
    assert r.exit_code == 2, r.output
    one_error_line(r.output, "landing.writer_threads: Input should be a valid integer")


def test_exit_2_without_a_terminal_the_error_is_one_json_line(project: Project) -> None:
    for args in (["sync", "--bogus"], ["--log-format", "xml", "sync"], ["add-cohort"]):
        p = process(project, *args)
        assert p.returncode == 2, p.stderr
        assert p.stdout == "" and "Traceback" not in p.stderr
        (line,) = json_lines(p.stderr)
        assert line["level"] == "error" and line["event"] == "command.failed" and line["figures"] == {"exit_code": 2}


def test_exit_2_configuration_errors(project: Project) -> None:
    register(project)
    r = project.cli("sync", env={"COHORTSYNC_DEID_KEY": ""})
    assert r.exit_code == 2
    one_error_line(r.output, "COHORTSYNC_DEID_KEY is not set")
    project.config.write_text(project.config.read_text() + '\n[sync]\nbatch_rows = "many"\n')
    p = process(project, "--log-format", "text", "status")
    assert p.returncode == 2
    one_error_line(p.stderr, "sync.batch_rows: Input should be a valid integer")
    r = CliRunner().invoke(cli, ["--log-format", "text", "--config", str(project.root / "none.toml"), "verify", "c"])
    assert r.exit_code == 2
    one_error_line(r.output, "no config file")
    # A schema the source does not have: every table fails on the configuration, nothing lands.
    project.config.write_text(project.config.read_text().replace('batch_rows = "many"\n', ""))
    r = project.cli("sync", "-q", env={"COHORTSYNC_SOURCE__OMOP_SCHEMA": "omop_typo"})
    assert r.exit_code == 2, r.output
    assert "FAILED: DuckDB: Catalog Error" in r.output and "error: 9 cohort table(s) failed" in r.output
    assert not list(project.landing.rglob("*.parquet"))


def test_exit_3_the_run_lock_is_held(project: Project) -> None:
    register(project)
    with StateStore(project.root / "state") as st:
        st.lock("sync (another run)")
        p = process(project, "--log-format", "text", "sync")
        r = project.cli("add-cohort", "d", "--patients", str(project.write_ids("d.csv", person_ids(project)[:5])))
    assert p.returncode == ExitCode.LOCKED == 3
    one_error_line(p.stderr, "another cohortsync run holds the lock (pid ")
    assert r.exit_code == 3 and not (project.root / "cohorts" / "d").exists()
    assert not project.landing.exists()


@contextmanager
def database_held(db: Path) -> Iterator[None]:
    """Another process holds the DuckDB file (as a loader would): the source is unreachable."""
    code = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


def test_exit_4_transient_failure_after_retries(project: Project) -> None:
    register(project)
    with database_held(project.db):
        p = process(project, "sync", "--json", env={"COHORTSYNC_SOURCE__RETRIES": "0"})
    assert p.returncode == ExitCode.RETRY_LATER == 4, p.stderr
    doc = validate(p.stdout)
    assert doc["status"] == "error" and doc["exit_code"] == 4 and "is in use by another process" in doc["error"]
    (line,) = [e for e in json_lines(p.stderr) if e["event"] == "command.failed"]
    assert line["figures"]["exit_code"] == 4 and "Traceback" not in p.stderr
    assert project.cli("sync", "-q").exit_code == 0  # and a retry later succeeds


def test_exit_5_refusals_that_need_a_person(project: Project) -> None:
    ids = register(project)
    # Schema drift against the policy: the table stops, the others commit, a person is paged.
    con = project.con()
    con.execute("ALTER TABLE omop.omop.observation ADD COLUMN patient_ssn VARCHAR")
    con.close()
    p = process(project, "sync", "--json")
    assert p.returncode == ExitCode.NEEDS_PERSON == 5, p.stderr
    doc = validate(p.stdout)
    failed = {t["table"] for t in doc["tables"] if t["status"] == "failed"}
    assert failed == {"observation"} and doc["status"] == "failed" and doc["exit_code"] == 5
    # A membership mismatch: ids the source does not know (and never echoed back).
    r = project.cli("add-cohort", "m", "--patients", str(project.write_ids("m.csv", [*ids[:3], 8_675_309_999])))
    assert r.exit_code == 5
    one_error_line(r.output, "1 of 4 ids are not in omop.person")
    assert "8675309999" not in r.output
    # A tampered landing: verify finds a file the state does not list.
    d = project.landing / "c" / "person"
    f = sorted(d.glob("*.parquet"))[0]
    (d / f.name.replace("__0000", "__0042")).write_bytes(f.read_bytes())
    r = project.cli("verify", "c", "--tables", "person")
    assert r.exit_code == 5 and "table(s) with findings: person" in r.output


def test_an_unexpected_error_is_one_line_without_its_values(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from cohortsync import api

    def broken(*_: object) -> None:
        raise ValueError("could not convert 'Jane Roe' to INTEGER\nsecond line")

    monkeypatch.setattr(api, "status", broken)
    r = project.cli("status")
    assert r.exit_code == 1
    one_error_line(r.output, "unexpected ValueError: could not convert '…' to INTEGER")
    assert "Jane" not in r.output
    r = project.cli("--log-level", "debug", "status")
    assert r.exit_code == 1 and "Jane" not in r.output and "Traceback" not in r.output
    assert "test_operations.py" in r.output  # at debug level: where it happened, as frames


# -- --json ----------------------------------------------------------------------------------------


def test_json_documents_validate_against_the_schema(project: Project) -> None:
    ids = person_ids(project)
    r = project.cli("add-cohort", "c", "--json", "--patients", str(project.write_ids("c.csv", ids[:60])))
    add = validate(r.stdout)
    assert add["command"] == "add-cohort" and add["cohorts"][0]["members"] == 60 and add["exit_code"] == 0
    first = validate(project.cli("sync", "--json").stdout)
    tables = {t["table"]: t for t in first["tables"]}
    assert tables["person"]["window"]["kind"] == "backfill" and tables["person"]["rows"] == 60
    assert tables["person"]["files"] >= 1 and tables["person"]["bytes"] > 0
    with StateStore(project.root / "state") as st:
        assert st.runs(1)[0]["run_id"] == first["run_id"]  # the run log and the document agree
    project.add_load(50)
    second = validate(project.cli("sync", "--json").stdout)
    kinds = {t["window"]["kind"] for t in second["tables"]}
    assert "incremental" in kinds and second["run_id"] != first["run_id"]
    amend = validate(project.cli("amend-cohort", "c", "--json", "--remove", str(project.write_ids("g.csv", ids[:5]))).stdout)
    assert amend["cohorts"][0]["removed"] == 5 and {t["status"] for t in amend["tables"]} == {"purged"}
    assert sum(t["rows_removed"] for t in amend["tables"]) > 0
    ver = validate(project.cli("verify", "c", "--json").stdout)
    assert ver["status"] == "ok" and {t["status"] for t in ver["tables"]} <= {"ok", "not synced"}
    r = project.cli("sync", "--json", "--cohort", "nope")
    err = validate(r.stdout)
    assert r.exit_code == 2 and err["status"] == "error" and err["exit_code"] == 2 and "unknown cohort" in err["error"]


# -- logs ------------------------------------------------------------------------------------------


def test_json_log_lines_carry_run_cohort_table_event_and_figures(project: Project) -> None:
    register(project)
    p = process(project, "sync")
    assert p.returncode == 0, p.stderr
    lines = json_lines(p.stderr)
    assert {"timestamp", "level", "run_id", "cohort", "table", "event", "figures", "message"} <= set(lines[0])
    (run_id,) = {e["run_id"] for e in lines}
    landed = [e for e in lines if e["event"] == "table.landed"]
    assert {e["table"] for e in landed} >= {"person", "measurement"} and {e["cohort"] for e in landed} == {"c"}
    person = next(e for e in landed if e["table"] == "person")
    assert person["figures"]["rows"] == 40 and person["figures"]["bytes"] > 0 and person["figures"]["files"] >= 1
    assert not [e for e in lines if e["level"] == "debug"]  # info by default
    assert f"run {run_id}:" in p.stdout


# Planted identifiers: a person, an MRN, a name and note phrases no log line may ever show.
PLANTED_ID = 8_675_309_123
PLANTED = ["8675309123", "MRN-77Q4410", "Zebulon", "Quackenbush", "purple elephant protocol", "Vexworth", "Nimbus Crescent"]


def plant(project: Project) -> None:
    con = project.con()
    try:
        load = "(SELECT min(load_dt) FROM omop.omop.person)"
        con.execute(
            "INSERT INTO omop.omop.person BY NAME SELECT ? AS person_id, 8507 AS gender_concept_id, 1960 AS year_of_birth, "
            f"0 AS race_concept_id, 0 AS ethnicity_concept_id, 'MRN-77Q4410' AS person_source_value, {load} AS load_dt",
            [PLANTED_ID],
        )
        con.execute(
            "INSERT INTO omop.omop.provider BY NAME SELECT 99000001 AS provider_id, 'Ottoline Vexworth' AS provider_name, "
            f"{load} AS load_dt"
        )
        con.execute(
            "INSERT INTO omop.omop.location BY NAME SELECT 99000001 AS location_id, '4417 Nimbus Crescent' AS address_1, "
            f"{load} AS load_dt"
        )
        for i, text in enumerate([
            "Zebulon Quackenbush (MRN-77Q4410) seen by Dr Ottoline Vexworth at 4417 Nimbus Crescent.",
            "Plan: continue the purple elephant protocol; Zebulon agrees.",
        ]):
            con.execute(
                "INSERT INTO omop.omop.note BY NAME SELECT ? AS note_id, ? AS person_id, DATE '2020-03-01' AS note_date, "
                "44814637 AS note_type_concept_id, 0 AS note_class_concept_id, 'Quackenbush follow-up' AS note_title, "
                "? AS note_text, 0 AS encoding_concept_id, 4180186 AS language_concept_id, "
                f"'purple elephant protocol' AS note_source_value, {load} AS load_dt",
                [99000001 + i, PLANTED_ID, text],
            )
    finally:
        con.close()


def assert_nothing_planted(outputs: list[str], planted: list[str]) -> None:
    text = "\n".join(outputs)
    leaks = [v for v in planted if re.search(rf"(?<![0-9A-Za-z]){re.escape(v)}(?![0-9A-Za-z])", text, re.I)]
    assert not leaks, f"planted identifiers in the output: {leaks}"


def test_eunomia_flow_at_debug_level_prints_no_planted_identifier(project: Project) -> None:
    """The whole lifecycle with the shipped policy (text scrubbing on), every command at debug level."""
    project.config.write_text(project.config.read_text().replace('policy = "keep_everything.toml"\n', ""))
    plant(project)
    ids = [*person_ids(project)[:30], PLANTED_ID]
    outputs: list[str] = []

    def run(*args: str, code: int = 0, fmt: str = "json") -> subprocess.CompletedProcess[str]:
        p = process(project, "--log-level", "debug", "--log-format", fmt, *args)
        outputs.extend([p.stdout, p.stderr])
        assert p.returncode == code, p.stderr[-3000:]
        return p

    run("add-cohort", "c", "--patients", str(project.write_ids("c.csv", ids)))
    run("add-cohort", "bad", "--patients", str(project.write_ids("bad.csv", [ids[0], PLANTED_ID + 1])), code=5)
    first = run("sync")
    project.add_load(50)
    run("sync", "--json", fmt="text")
    run("plan")
    run("amend-cohort", "c", "--json", "--remove", str(project.write_ids("gone.csv", [PLANTED_ID])))
    run("verify", "c", "--json")
    run("status", "--json")
    run("policy", "check")
    events = json_lines(first.stderr)
    assert {"state.locked", "table.landed", "state.committed", "run.finished"} <= {e["event"] for e in events}
    assert [e for e in events if e["level"] == "debug"]
    note = [e for e in events if e["event"] == "table.landed" and e["table"] == "note"]
    assert note and note[0]["figures"]["rows"] >= 2  # the planted notes went through the scrubber
    assert_nothing_planted(outputs, PLANTED)


def test_demo_flow_at_debug_level_prints_none_of_the_generated_phi(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "COHORTSYNC_DEID_KEY"}
    p = subprocess.run(
        [sys.executable, "-m", "cohortsync.cli", "--log-level", "debug", "demo", str(d), "--persons", "120"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert any(e["level"] == "debug" for e in json_lines(p.stderr))
    con = duckdb.connect(str(d / "omop.duckdb"), read_only=True)
    phi = [
        str(v) for (v,) in con.execute(
            "SELECT DISTINCT value FROM omop.demo_truth.note_phi WHERE kind IN ('patient_name', 'clinician_name', "
            "'facility', 'phone', 'fax', 'mrn', 'ssn', 'email', 'address', 'account') "
            "UNION SELECT DISTINCT value FROM omop.demo_truth.person_phi"
        ).fetchall()
        if len(str(v)) >= 6
    ]
    con.close()
    assert len(phi) > 100
    assert_nothing_planted([p.stdout, p.stderr], phi)
