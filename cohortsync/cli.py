"""The ``cohortsync`` command: a thin shell over :mod:`cohortsync.api`.

Every command turns a :class:`~cohortsync.errors.CohortsyncError` into one line on stderr and its
exit code (2 for bad input or configuration, 75 when a retry later may help, 1 otherwise).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from cohortsync import api
from cohortsync.config import Settings, load_settings
from cohortsync.errors import CohortsyncError
from cohortsync.state import TableOutcome
from cohortsync.sync import SyncReport

F = TypeVar("F", bound=Callable[..., Any])


def _settings(ctx: click.Context) -> Settings:
    path: Path | None = ctx.obj.get("config")
    return load_settings(path)


def _fmt_dt(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.isoformat(sep=" ", timespec="seconds")


class Reporter:
    """Progress for a sync: one live line for the tables in flight on a terminal, plain lines otherwise.

    Tables land on several threads at once, so every call takes the lock before it writes.
    """

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self._lock = threading.Lock()
        self._active: dict[str, tuple[float, int]] = {}  # table -> (started, rows so far)
        self._last = 0.0

    def table_started(self, table: str, cohorts: list[str]) -> None:
        with self._lock:
            self._active[table] = (time.monotonic(), 0)
            if not self.live:
                self.out.write(f"{table}: pulling for {', '.join(cohorts)}\n")
                self.out.flush()

    def rows(self, table: str, rows: int) -> None:
        with self._lock:
            now = time.monotonic()
            started = self._active.get(table, (now, 0))[0]
            self._active[table] = (started, rows)
            if self.live and now - self._last >= 0.2:
                self._draw(now)

    def _draw(self, now: float) -> None:
        parts = [f"{t}: {n:,} rows ({n / max(now - t0, 1e-9):,.0f} rows/s)" for t, (t0, n) in self._active.items()]
        self.out.write("\r" + " | ".join(parts) + "\033[K")
        self.out.flush()
        self._last = now

    def table_finished(self, table: str, outcomes: list[TableOutcome]) -> None:
        with self._lock:
            self._active.pop(table, None)
            if self.live:
                self.out.write("\r\033[K")
            rows = sum(o.rows for o in outcomes)
            failed = [o for o in outcomes if o.status == "failed"]
            secs = max((o.seconds for o in outcomes), default=0.0)
            if failed:
                self.out.write(f"{table}: FAILED: {failed[0].error}\n")
            elif any(o.status == "landed" for o in outcomes):
                self.out.write(f"{table}: {rows:,} rows in {secs:.1f}s ({rows / max(secs, 1e-9):,.0f} rows/s)\n")
            else:
                self.out.write(f"{table}: up to date\n")
            if self.live and self._active:
                self._draw(time.monotonic())
            self.out.flush()

    def note(self, message: str) -> None:
        with self._lock:
            if self.live:
                self.out.write("\r\033[K")
            self.out.write(f"note: {message}\n")
            self.out.flush()


def _outcome_line(o: TableOutcome) -> str:
    if o.upper is None:
        window = "(table is empty)"
    else:
        window = f"({'backfill' if o.lower is None else _fmt_dt(o.lower)} .. {_fmt_dt(o.upper)}]"
    line = f"  {o.cohort:<20} {o.table:<22} {o.status:<10} {o.rows:>12,} rows {len(o.files):>3} files  {window}"
    if o.notes:
        line += "  odd: " + ", ".join(f"{k}={v}" for k, v in sorted(o.notes.items()))
    if o.error:
        line += f"  error: {o.error}"
    return line


def handle_errors(f: F) -> F:
    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except CohortsyncError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: ./cohortsync.toml, or $COHORTSYNC_CONFIG).",
)
@click.version_option(package_name="cohortsync")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Sync approved OMOP cohorts from a data collaborator into a Parquet landing zone.

    Settings come from cohortsync.toml; any key can be overridden by an environment variable
    COHORTSYNC_<SECTION>__<KEY> (e.g. COHORTSYNC_SOURCE__DATABASE). See docs/configuration.md.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@cli.command("add-cohort")
@click.argument("name")
@click.option(
    "--patients",
    "patients",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV with a person_id column, or one id a line.",
)
@click.option("--allow-missing", is_flag=True, help="Register even if some ids are not in omop.person.")
@click.pass_context
@handle_errors
def add_cohort_cmd(ctx: click.Context, name: str, patients: Path, allow_missing: bool) -> None:
    """Register an approved cohort NAME (a lowercase slug) from a patient file.

    The list is validated (positive integer ids; duplicates collapsed and counted), uploaded to the
    sandbox membership table and recorded under cohorts/NAME/. Ids absent from omop.person are
    refused unless --allow-missing. On any error nothing is recorded and nothing stays uploaded.
    """
    r = api.add_cohort(_settings(ctx), name, patients, allow_missing)
    c = r.cohort
    if r.unchanged:
        click.echo(f"cohort {c.name} is already registered with this list ({c.members} ids); sandbox copy refreshed")
        return
    click.echo(
        f"registered cohort {c.name}: {c.members} ids ({r.ids_read} read, {r.duplicates} duplicates collapsed"
        f"{f', {r.missing} not in omop.person (allowed)' if r.missing else ''}) -> {c.folder}"
    )


@cli.command("amend-cohort")
@click.argument("name")
@click.option("--add", "add", type=click.Path(path_type=Path), help="Patients to add (same formats as add-cohort).")
@click.option("--remove", "remove", type=click.Path(path_type=Path), help="Patients who withdraw.")
@click.option("--allow-missing", is_flag=True, help="Add ids even if some are not in omop.person.")
@click.pass_context
@handle_errors
def amend_cohort_cmd(ctx: click.Context, name: str, add: Path | None, remove: Path | None, allow_missing: bool) -> None:
    """Amend an approved cohort: add patients and/or withdraw patients.

    Added patients get a backfill of their own history at the next sync (existing members still
    pull only new rows). Withdrawn patients leave the sandbox now and their rows are purged from
    every file of the cohort's landing. The amendment is recorded under cohorts/NAME/.
    """
    r = api.amend_cohort(_settings(ctx), name, add, remove, allow_missing)
    a = r.amendment
    click.echo(f"amended cohort {name} (amendment {a.number}): +{a.added} -{a.removed} -> {r.cohort.members} members")
    if r.purged_rows:
        click.echo("purged from the landing: " + ", ".join(f"{t} {n:,}" for t, n in r.purged_rows.items()))


@cli.command("remove-cohort")
@click.argument("name")
@click.option("--purge", "purge", is_flag=True, help="Really delete: landing files, sandbox membership, watermarks.")
@click.pass_context
@handle_errors
def remove_cohort_cmd(ctx: click.Context, name: str, purge: bool) -> None:
    """Retire cohort NAME. Without --purge nothing is deleted: it says what would be.

    With --purge: deletes the cohort's landing data, its sandbox membership and its watermarks, and
    moves its record to cohorts/.retired/ (the act is also logged in the state store).
    """
    p = api.remove_cohort(_settings(ctx), name, purge)
    what = (
        f"{p.files} landing files ({p.rows:,} rows, {p.bytes / 2**20:.1f} MiB), {p.members:,} sandbox members, "
        f"{p.watermarks} watermarks"
    )
    if not purge:
        click.echo(f"error: would delete {what} of cohort {name}; run again with --purge to do it", err=True)
        sys.exit(2)
    click.echo(f"removed cohort {name}: deleted {what}")


@cli.command("verify")
@click.argument("cohort")
@click.option("--tables", "tables", multiple=True, help="Only this table (repeatable). Default: the configured tables.")
@click.option("--repair", is_flag=True, help="Re-backfill every table whose landing disagrees with the source.")
@click.pass_context
@handle_errors
def verify_cmd(ctx: click.Context, cohort: str, tables: tuple[str, ...], repair: bool) -> None:
    """Compare the source and the landing of COHORT, table by table; exit 1 on any disagreement.

    For rows up to each watermark: missing rows, extra rows (e.g. deleted upstream) and duplicates.
    With --repair, a disagreeing table's landing is deleted and backfilled again by a sync.
    """
    from cohortsync import verify as verifying

    settings = _settings(ctx)
    checks = verifying.verify(settings, cohort, list(tables) or None)
    for c in checks:
        click.echo(
            f"{c.table:<22} {c.status:<10} source {c.source_rows:>10,}  landed {c.landed_rows:>10,}  "
            f"missing {c.missing:,}  extra {c.extra:,}  duplicates {c.duplicates:,}{'  ' + c.note if c.note else ''}"
        )
    bad = [c for c in checks if c.bad]
    if bad and repair:
        fixed = verifying.repair(settings, cohort, bad)
        click.echo(f"repairing {', '.join(fixed)}: backfilling again")
        report = api.sync(settings, [cohort], Reporter(sys.stderr, live=False))
        bad = [c for c in verifying.verify(settings, cohort, fixed) if c.bad]
        if report.failed or bad:
            click.echo(f"error: still disagreeing: {', '.join(sorted({c.table for c in bad}))}", err=True)
            sys.exit(1)
        click.echo("repaired")
        return
    if bad:
        sys.exit(1)


@cli.command("sync")
@click.option("--cohort", "cohorts", multiple=True, help="Only this cohort (repeatable). Default: all registered.")
@click.option("--quiet", "-q", is_flag=True, help="Plain lines, no live progress.")
@click.pass_context
@handle_errors
def sync_cmd(ctx: click.Context, cohorts: tuple[str, ...], quiet: bool) -> None:
    """Pull what each cohort has not seen yet, for every configured table.

    A cohort new to a table gets a full backfill (load_dt <= upper); one with watermark W gets
    W < load_dt <= upper, where upper is the table's max(load_dt) when the run started. Files land
    first; only then does the watermark move. Exit 1 if any table failed (the others committed).
    """
    settings = _settings(ctx)
    reporter = Reporter(sys.stderr, live=sys.stderr.isatty() and not quiet)
    report = api.sync(settings, list(cohorts) or None, reporter)
    _print_summary(report)
    if report.failed:
        failed = sorted({f"{o.cohort}/{o.table}" for o in report.failed})
        click.echo(f"error: {len(failed)} cohort table(s) failed: {', '.join(failed)} (see above)", err=True)
        sys.exit(1)


def _print_summary(report: SyncReport) -> None:
    click.echo(f"run {report.run_id}: {report.rows:,} rows landed")
    by_cohort: dict[str, list[TableOutcome]] = {}
    for o in report.outcomes:
        by_cohort.setdefault(o.cohort, []).append(o)
    for cohort, outs in by_cohort.items():
        pulled = sum(o.rows for o in outs)
        click.echo(f"{cohort}: {pulled:,} rows")
        for o in outs:
            click.echo(_outcome_line(o))


@cli.command("plan")
@click.option("--cohort", "cohorts", multiple=True, help="Only this cohort (repeatable).")
@click.pass_context
@handle_errors
def plan_cmd(ctx: click.Context, cohorts: tuple[str, ...]) -> None:
    """Print, per table, the exact SQL the next sync would run and its windows (nothing is run)."""
    for p in api.plan_next(_settings(ctx), list(cohorts) or None):
        if p.error:
            click.echo(f"-- {p.table}: would fail: {p.error}\n")
            continue
        click.echo(f"-- {p.table}: upper bound {_fmt_dt(p.upper)}")
        for cohort, lower in p.windows:
            click.echo(f"--   {cohort}: {'backfill' if lower is None else f'after {_fmt_dt(lower)}'}")
        if p.up_to_date:
            click.echo(f"--   up to date: {', '.join(p.up_to_date)}")
        click.echo((p.sql + ";") if p.sql else "-- nothing to pull")
        click.echo("")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handle_errors
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show cohorts x tables: watermark, rows landed, last run and last error."""
    s = api.status(_settings(ctx))
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
        return
    for c in s["cohorts"]:
        click.echo(f"{c['name']}: {c['members']} members, registered {c['registered_at']}")
    click.echo(f"{'cohort':<20} {'table':<22} {'watermark':<20} {'rows':>12} {'last':<10} error")
    for t in s["tables"]:
        click.echo(
            f"{t['cohort']:<20} {t['table']:<22} {_fmt_dt(t['watermark']):<20} {t['rows_landed']:>12,} "
            f"{t['last_status'] or '-':<10} {t['last_error'] or ''}"
        )
    if s["last_run"]:
        r = s["last_run"]
        click.echo(f"last run {r['run_id']}: {r['status']} (started {r['started']}, ended {r['ended'] or '-'})")
    for e in s["exports"]:
        rows = f"{e['rows']:,} rows" if e["rows"] is not None else "-"
        click.echo(
            f"export {e['export_id']}: {e['cohort']} for {e['consumer']} {e['status']} ({rows}, {len(e['tables'])} tables, "
            f"by {e['os_user']}, started {e['started']}) -> {e['out_dir']}"
        )


@cli.command("export")
@click.argument("cohort")
@click.option("--consumer", "consumer", required=True, help="The buyer: a lowercase slug; its ids and dates are its own.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to create (DIR).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="Parquet (zstd) or CSV.")
@click.option("--tables", "tables", default=None, help="Comma-separated tables (default: every landed table).")
@click.option("--as-of", "as_of", default=None, help="The extract as it was at this earlier watermark (timestamp).")
@click.option("--overwrite", is_flag=True, help="Replace an existing DIR (only once the new extract is complete).")
@click.option("--load-seq", "load_seq", is_flag=True, help="Ship a load sequence number per row (never load_dt).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_context
@handle_errors
def export_cmd(
    ctx: click.Context, cohort: str, consumer: str, out: Path, fmt: str, tables: str | None, as_of: str | None,
    overwrite: bool, load_seq: bool, as_json: bool,
) -> None:
    """Export COHORT for one buyer as a de-identified OMOP v5.3 extract in DIR, with a manifest.

    Reads only the landing files the state store lists (each checked against its SHA-256), keeps
    the newest version of every row, re-keys ids and shifts dates per buyer, and writes DIR by a
    rename once complete. Nothing is read from the source. See docs/export.md.
    """
    names = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    r = api.export(_settings(ctx), cohort, consumer, out, fmt, names, as_of, overwrite, load_seq)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps({**r.manifest, "manifest_sha256": r.manifest_sha256, "out": str(r.out)}, indent=2))
        return
    for t, m in r.manifest["tables"].items():
        q = r.quality["tables"][t]
        extra = f"  repeated keys kept {q['repeated_key_rows_kept']:,}" if q["repeated_key_rows_kept"] else ""
        click.echo(f"  {t:<22} {m['rows']:>12,} rows{extra}")
    click.echo(f"exported {cohort} for {consumer}: {r.rows:,} rows in {r.seconds:.1f}s -> {r.out}")


@cli.command("verify-export")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def verify_export_cmd(directory: Path, as_json: bool) -> None:
    """Recompute the checksums of an extract against its manifest; exit 1 naming the first file that differs."""
    r = api.verify_export(directory)
    if as_json:
        click.echo(json.dumps({"ok": r.ok, "files_checked": r.files_checked, "problem": r.problem}))
    elif r.ok:
        click.echo(f"ok: {r.files_checked} files match {directory / 'manifest.json'}")
    else:
        click.echo(f"error: {r.problem}", err=True)
    if not r.ok:
        sys.exit(1)


@cli.group("policy")
def policy_group() -> None:
    """Show or check the de-identification policy (shipped default plus [deid] policy override)."""


@policy_group.command("show")
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@click.pass_context
@handle_errors
def policy_show_cmd(ctx: click.Context, tables: tuple[str, ...]) -> None:
    """Print the effective policy: one line per table and column with its action."""
    for t, col, action, domain in api.policy_rows(_settings(ctx), list(tables) or None):
        click.echo(f"{t:<22} {col:<32} {action}{f' ({domain})' if domain else ''}")


@policy_group.command("check")
@click.option("--offline", is_flag=True, help="Check against the OMOP registry only, not the live source.")
@click.pass_context
@handle_errors
def policy_check_cmd(ctx: click.Context, offline: bool) -> None:
    """Lint the policy against the registry and the source's actual columns; exit 1 on any error."""
    findings = api.policy_check(_settings(ctx), live=not offline)
    for f in findings:
        click.echo(f"{f.level}: {f.table}: {f.message}")
    errors = sum(f.level == "error" for f in findings)
    click.echo(f"{errors} error(s), {sum(f.level == 'warning' for f in findings)} warning(s)")
    if errors:
        sys.exit(1)


@cli.command("demo")
@click.argument("directory", required=False, default="cohortsync-demo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--persons", default=2000, show_default=True, type=click.IntRange(100, 10_000_000), help="Synthetic persons.")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the synthetic data (same seed, same data).")
@click.option("--quiet", "-q", is_flag=True, help="Plain lines, no live progress.")
@handle_errors
def demo_cmd(directory: Path, persons: int, seed: int, quiet: bool) -> None:
    """Run the whole flow on a generated OMOP database in DIRECTORY (default ./cohortsync-demo).

    Generates a DuckDB OMOP v5.3 database with several weekly loads, writes cohortsync.toml, adds
    two overlapping cohorts, syncs, appends one more weekly load, syncs again, and prints what each
    sync pulled. Synthetic data only.
    """
    from cohortsync import demo

    reporter = Reporter(sys.stderr, live=sys.stderr.isatty() and not quiet)
    demo.run(directory, persons=persons, seed=seed, progress=reporter, echo=click.echo)


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
