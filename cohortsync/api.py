"""The library API: everything the CLI does, as functions a Python user (or a scheduler) can call.

The CLI in ``cli.py`` only parses options, calls these and prints what they return.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from cohortsync import cohorts as cohort_files
from cohortsync import logs, omop, plan
from cohortsync.config import Settings, redact_url, url_problem
from cohortsync.deid.policy import FREE_TEXT, Action, carries_source_time, load_policy
from cohortsync.errors import CohortError, CohortsyncError, ConfigError, PolicyError, StateError
from cohortsync.export import ExportResult, VerifyResult, export, verify_export
from cohortsync.lifecycle import AmendResult, RemovalPlan, amend_cohort, check_missing, remove_cohort
from cohortsync.sources import Source, open_source
from cohortsync.state import DB_NAME, CopyReport, StateStore, copy_state, open_state
from cohortsync.sync import Progress, SyncReport, inspect_tables, run_sync, vocabulary_check, windows

log = logging.getLogger(__name__)

__all__ = [
    "AmendResult",
    "ExportResult",
    "RemovalPlan",
    "VerifyResult",
    "add_cohort",
    "amend_cohort",
    "export",
    "plan_next",
    "policy_check",
    "policy_rows",
    "remove_cohort",
    "state_copy",
    "status",
    "sync",
    "verify_export",
]


@dataclass(frozen=True)
class AddCohortResult:
    cohort: cohort_files.Cohort
    ids_read: int
    duplicates: int
    missing: int
    unchanged: bool  # the same list was registered before; nothing changed but the sandbox copy


def add_cohort(
    settings: Settings, name: str, patients_file: Path, allow_missing: bool = False, source: Source | None = None
) -> AddCohortResult:
    """Register an approved cohort: validate, upload the membership, then record it under cohorts/.

    Order matters for "nothing half-written": the upload can be undone (the name was not in the
    sandbox before), the folder appears by an atomic rename last, and the state row follows it.
    """
    cohort_files.check_name(name)
    patients = cohort_files.read_patients(patients_file)
    existing = cohort_files.load(settings.cohorts_path, name)
    if existing is not None and existing.members_sha256 != patients.sha256:
        raise CohortError(
            f"cohort {name} is already registered with a different member list "
            f"({existing.members} ids, this file {len(patients.ids)}); amendments are not supported yet"
        )
    with open_state(settings) as state:
        state.lock(f"add-cohort {name}")
        src = source or open_source(settings)
        try:
            if existing is not None:  # the same list again: refresh the sandbox copy, amendment batches included
                ids, batches = existing.member_batches()
                src.replace_members(name, pa.array(ids, pa.int64()), pa.array(batches, pa.int32()))
                return AddCohortResult(existing, patients.lines, patients.duplicates, existing.missing_allowed, True)
            src.replace_members(name, pa.array(patients.ids, pa.int64()))
            try:
                missing = check_missing(src, name, patients.ids, allow_missing, settings.source.omop_schema)
                cohort = cohort_files.record(settings.cohorts_path, name, patients, str(patients_file), len(missing))
            except BaseException:
                src.delete_members(name)  # undo the upload of a refused cohort
                raise
            state.record_cohort(name, cohort.members, cohort.members_sha256, cohort.registered_at)
            logs.event(
                log, logging.INFO, "cohort.added", f"cohort {name} registered", cohort=name, members=cohort.members,
                ids_read=patients.lines, duplicates=patients.duplicates, missing_allowed=len(missing),
            )
            return AddCohortResult(cohort, patients.lines, patients.duplicates, len(missing), False)
        finally:
            if source is None:
                src.close()


def sync(
    settings: Settings, cohorts: Sequence[str] | None = None, progress: Progress | None = None, source: Source | None = None
) -> SyncReport:
    """One weekly sync: see :mod:`cohortsync.sync`."""
    return run_sync(settings, cohorts, progress, source)


@dataclass(frozen=True)
class PlannedTable:
    table: str
    upper: datetime | None
    windows: list[tuple[str, datetime | None]]  # (cohort, lower); lower None = backfill
    up_to_date: list[str]
    sql: str | None
    error: str | None = None  # the table cannot be synced as it stands (e.g. a column the policy lacks)


def plan_next(settings: Settings, cohorts: Sequence[str] | None = None, source: Source | None = None) -> list[PlannedTable]:
    """The exact SQL the next sync would run per table, with its windows, in the source's dialect."""
    known = {c.name: c for c in cohort_files.load_all(settings.cohorts_path)}
    names = list(dict.fromkeys(cohorts)) if cohorts else list(known)
    for n in names:
        if n not in known:
            raise CohortError(f"unknown cohort {n!r} (registered: {', '.join(known) or 'none'})")
    with open_state(settings) as state:
        marks = state.watermarks()
    policy = load_policy(settings.policy_path)
    src = source or open_source(settings)
    try:
        out = []
        vocabulary = vocabulary_check(src, policy, settings.sync.tables)
        if vocabulary is not None:
            logs.event(log, logging.WARNING, "note", vocabulary)
        found = inspect_tables(src, policy, list(settings.sync.tables), workers=settings.sync.parallel_tables,
                               vocabulary=vocabulary is None)
        chosen = [known[n] for n in names]
        for t in settings.sync.tables:
            checked = found[t]
            if isinstance(checked, CohortsyncError):  # the table the next sync would fail, and why
                out.append(PlannedTable(t, None, [], [], None, str(checked)))
                continue
            table_plan, upper = checked
            due, up_to_date = windows(chosen, t, upper, marks, timedelta(days=settings.sync.lookback_days))
            sql = None
            if due and upper is not None:
                q = plan.extraction(omop.table(t), table_plan.select, due, upper, src.names, table_plan.codes)
                sql = plan.render(q, src.dialect, pretty=True)
            out.append(PlannedTable(t, upper, [(s.cohort, s.lower) for s in due], [n for n, _ in up_to_date], sql))
        return out
    finally:
        if source is None:
            src.close()
        else:
            src.release_threads()  # the column checks ran on threads of their own


def status(settings: Settings) -> dict[str, Any]:
    """Cohorts × tables: watermark, rows landed, last run, last verify and last error (for humans and --json)."""
    registered = cohort_files.load_all(settings.cohorts_path)
    with open_state(settings) as state:
        rows = {(r["cohort"], r["tbl"]): r for r in state.status_rows()}
        checks = state.verify_results()
        runs = state.runs(1)
        exports = state.exports(5)
    tables = []
    for c in registered:
        for t in settings.sync.tables:
            r = rows.get((c.name, t), {})
            v = checks.get((c.name, t), {})
            tables.append(
                {
                    "cohort": c.name,
                    "table": t,
                    "watermark": r.get("watermark"),
                    "rows_landed": r.get("rows_landed", 0),
                    "files": r.get("files", 0),
                    "last_run": r.get("last_run"),
                    "last_status": r.get("last_status"),
                    "last_error": r.get("last_error"),
                    "last_verify": v.get("status"),  # e.g. "damaged": the last verify found a missing or altered file
                    "last_verify_at": v.get("checked_at"),
                    "last_verify_detail": v.get("detail") if v.get("status") not in (None, "ok") else None,
                }
            )
    return {
        "cohorts": [{"name": c.name, "members": c.members, "registered_at": c.registered_at} for c in registered],
        "tables": tables,
        "last_run": runs[0] if runs else None,
        "exports": exports,
    }


def policy_rows(settings: Settings, tables: Sequence[str] | None = None) -> list[tuple[str, str, str, str | None]]:
    """The effective policy as (table, column, action, domain) rows, shipped default plus override."""
    policy = load_policy(settings.policy_path)
    names = list(tables) if tables else list(omop.registry())
    out = []
    for t in names:
        omop.table(t)
        for col, rule in policy.rules(t).items():
            out.append((t, col, rule.action.value, rule.domain))
    return out


@dataclass(frozen=True)
class PolicyFinding:
    level: str  # "error" | "warning" | "info"
    table: str
    message: str


def policy_check(settings: Settings, live: bool = True, source: Source | None = None) -> list[PolicyFinding]:
    """Lint the policy against the registry and, with ``live``, against the source's actual columns."""
    policy = load_policy(settings.policy_path)
    findings: list[PolicyFinding] = []
    for t in settings.sync.tables:
        table = omop.table(t)
        rules = policy.rules(t)
        for c in (*table.column_names, omop.LOAD_DT):
            if c not in rules:
                findings.append(PolicyFinding("error", t, f"column {c} (OMOP v5.3) has no rule"))
        for c, rule in rules.items():
            if rule.action is Action.KEEP and (c == "person_id" or c == table.primary_key or c in FREE_TEXT):
                findings.append(PolicyFinding("warning", t, f"{c} is kept as is: identified data will land"))
            elif rule.action is Action.KEEP and carries_source_time(table, c):
                findings.append(
                    PolicyFinding("warning", t, f"{c} is kept as is: a source timestamp lands unshifted and reveals "
                                  "each person's date shift")
                )
    if live:
        src = source or open_source(settings)
        try:
            for t in settings.sync.tables:
                try:
                    cols = src.columns(t)
                except CohortsyncError as e:
                    findings.append(PolicyFinding("error", t, f"cannot read the source table: {e}"))
                    continue
                try:
                    _, absent = policy.check_columns(t, cols)
                except PolicyError as e:
                    findings.append(PolicyFinding("error", t, str(e)))
                    continue
                if absent:
                    findings.append(PolicyFinding("info", t, f"policy columns not in the source: {', '.join(absent)}"))
        finally:
            if source is None:
                src.close()
    return findings


def state_copy(settings: Settings, url: str) -> tuple[str, str, CopyReport]:
    """Copy the SQLite state under ``state.path`` into the empty PostgreSQL database at ``url``
    (password from COHORTSYNC_STATE_PASSWORD) and verify it; returns (from, to, report).

    Both stores hold the run lock throughout, so no sync changes the source mid-copy. The source
    stays as it was: keep it until the first sync against the new state succeeded.
    """
    problem = url_problem(url)
    if problem:
        raise ConfigError(f"state copy --to: {problem}")
    folder = settings.state_path
    if not (folder / DB_NAME).is_file():
        raise StateError(f"state copy: no SQLite state in {folder} (state.path) to copy")
    password = settings.state_password.get_secret_value() if settings.state_password else None
    with StateStore(folder) as source, StateStore.postgres(url, password) as target:
        source.lock("state copy")
        target.lock("state copy")
        report = copy_state(source, target)
    logs.event(log, logging.INFO, "state.copied", f"state copied to {redact_url(url)}", rows=report.rows)
    return str(folder), redact_url(url), report
