"""The ``cohortsync`` command: a thin shell over :mod:`cohortsync.api`.

Errors are handled in one place, :meth:`_Cli.main`: every failure, a click usage error included,
becomes one line (``error: ...`` on a terminal, a JSON log line elsewhere) and the exit code
:func:`cohortsync.errors.exit_code_for` gives it (table in docs/operations.md). No traceback
reaches the user; ``--log-level debug`` adds the frames of an unexpected error (never its values).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from cohortsync import api, logs
from cohortsync.config import Settings, load_settings
from cohortsync.errors import CohortsyncError, ExitCode, exit_code_for, safe_message
from cohortsync.state import TableOutcome
from cohortsync.sync import LogProgress, Progress, SyncReport

if TYPE_CHECKING:
    from cohortsync.verify import VerifyReport

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


log = logging.getLogger("cohortsync.cli")  # not __name__: under `python -m` that is __main__


class CommandFailed(CohortsyncError):
    """A command ran but its outcome is a failure (tables failed, verify disagrees); carries its code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def handle_errors(f: F) -> F:
    """Kept so every command reads alike; errors are handled once, in :meth:`_Cli.main`."""
    return f


def _fail(message: str, code: int, exc: BaseException | None = None) -> int:
    """Report a failure as one line through the log (text: ``error: ...``; json: one object)."""
    exc_info = None
    if exc is not None and log.isEnabledFor(logging.DEBUG):
        exc_info = (type(exc), exc, exc.__traceback__)
    extra = {"event": "command.failed", "cohort": None, "table": None, "figures": {"exit_code": code}}
    log.error(message, exc_info=exc_info, extra=extra)
    return code


class _Cli(click.Group):
    """The command group, with the one place that turns exceptions into exit codes."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        logs.start_invocation()
        logs.setup("auto", "warning")  # until the global options are parsed (a usage error may come first)
        try:
            rv = super().main(args, prog_name or "cohortsync", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0  # click returns the code of --help / --version
        except click.UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            code = _fail(where + " ".join(e.format_message().split()) + hint, ExitCode.USAGE)
        except click.ClickException as e:  # a bad file argument and the like
            code = _fail(" ".join(e.format_message().split()), ExitCode.USAGE)
        except (click.Abort, KeyboardInterrupt) as e:
            code = _fail("interrupted; re-running is safe (docs/sync.md)", 130, e)
        except CohortsyncError as e:
            code = _fail(str(e), exit_code_for(e), e)
        except Exception as e:  # a bug: one line, and no value of the data in it
            code = _fail(
                f"unexpected {type(e).__name__}: {safe_message(e)} (a bug; --log-level debug shows where)",
                exit_code_for(e),
                e,
            )
        if not standalone_mode:
            return code
        sys.exit(code)


@click.group(name="cohortsync", cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: ./cohortsync.toml, or $COHORTSYNC_CONFIG).",
)
@click.option(
    "--log-format",
    "log_format",
    type=click.Choice(["auto", "text", "json"]),
    default="auto",
    show_default=True,
    help="Log lines: text (human) or json (one object a line); auto picks text on a terminal.",
)
@click.option(
    "--log-level",
    "log_level",
    type=click.Choice(list(logs.LEVELS)),
    default=None,
    help="Least severe level logged [default: info for json, warning for text].",
)
@click.version_option(package_name="cohortsync")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, log_format: str, log_level: str | None) -> None:
    """Sync approved OMOP cohorts from a data collaborator into a Parquet landing zone.

    Settings come from cohortsync.toml; any key can be overridden by an environment variable
    COHORTSYNC_<SECTION>__<KEY> (e.g. COHORTSYNC_SOURCE__DATABASE). See docs/configuration.md.
    Exit codes: 0 ok, 1 partial failure, 2 usage or configuration, 3 locked, 4 retry later,
    5 needs a person (docs/operations.md).
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    fmt = logs.resolve_format(log_format)
    logs.setup(fmt, log_level or ("info" if fmt == "json" else "warning"))


def _progress(quiet: bool) -> Progress:
    """Human lines and live progress in text mode; log events (JSON lines) in json mode."""
    if logs.current_format() == "json":
        return LogProgress()
    return Reporter(sys.stderr, live=sys.stderr.isatty() and not quiet)


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


class RunDocument:
    """The one JSON document of ``--json`` (schema: docs/run.schema.json)."""

    def __init__(self, command: str) -> None:
        self.doc: dict[str, Any] = {
            "schema": "cohortsync-run/1",
            "command": command,
            "run_id": logs.current_run_id(),
            "started": datetime.now(UTC).isoformat(),
            "finished": None,
            "status": "ok",
            "exit_code": 0,
            "error": None,
            "cohorts": [],
            "tables": [],
            "notes": [],
        }

    def add_outcomes(self, report: SyncReport) -> None:
        self.doc["run_id"] = report.run_id
        self.doc["notes"] += report.notes
        for o in report.outcomes:
            self.doc["tables"].append(
                {
                    "cohort": o.cohort,
                    "table": o.table,
                    "window": {
                        "lower": _iso(o.lower),
                        "upper": _iso(o.upper),
                        "kind": "none" if o.upper is None else ("backfill" if o.lower is None else "incremental"),
                    },
                    "rows": o.rows,
                    "files": len(o.files),
                    "bytes": sum(f.bytes for f in o.files),
                    "seconds": round(o.seconds, 3),
                    "status": o.status,
                    "error": o.error,
                }
            )

    def add_table(self, cohort: str, table: str, status: str, rows: int = 0, **figures: Any) -> None:
        entry = {"cohort": cohort, "table": table, "window": None, "rows": rows, "files": 0, "bytes": 0,
                 "seconds": 0.0, "status": status, "error": None}
        self.doc["tables"].append({**entry, **figures})

    def finish(self, error: BaseException | None = None) -> str:
        self.doc["finished"] = datetime.now(UTC).isoformat()
        if isinstance(error, CohortsyncError):
            self.doc["status"] = "failed" if isinstance(error, CommandFailed) else "error"
            self.doc["error"], self.doc["exit_code"] = str(error), exit_code_for(error)
        elif error is not None:
            self.doc["status"], self.doc["exit_code"] = "error", exit_code_for(error)
            self.doc["error"] = f"unexpected {type(error).__name__}: {safe_message(error)}"
        return json.dumps(self.doc, indent=2, default=str)


def _doc(ctx: click.Context) -> RunDocument | None:
    doc = ctx.obj.get("doc")
    return doc if isinstance(doc, RunDocument) else None


def json_output(command: str) -> Callable[[F], F]:
    """Add ``--json`` to a command: one JSON document on stdout, also when the command fails."""

    def deco(f: F) -> F:
        @wraps(f)
        def wrapper(*args: Any, as_json: bool = False, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            doc = RunDocument(command) if as_json else None
            ctx.obj["doc"] = doc
            try:
                rv = f(*args, **kwargs)
            except Exception as e:
                if doc is not None:
                    click.echo(doc.finish(e))
                raise
            if doc is not None:
                click.echo(doc.finish())
            return rv

        opt = click.option(
            "--json", "as_json", is_flag=True, help="Print one JSON document (docs/run.schema.json) instead of lines."
        )
        return opt(wrapper)  # type: ignore[return-value]

    return deco


@cli.command("add-cohort")
@json_output("add-cohort")
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
    if doc := _doc(ctx):
        doc.doc["cohorts"].append(
            {"cohort": c.name, "members": c.members, "ids_read": r.ids_read, "duplicates": r.duplicates,
             "missing": r.missing, "unchanged": r.unchanged}
        )
        return
    if r.unchanged:
        click.echo(f"cohort {c.name} is already registered with this list ({c.members} ids); sandbox copy refreshed")
        return
    click.echo(
        f"registered cohort {c.name}: {c.members} ids ({r.ids_read} read, {r.duplicates} duplicates collapsed"
        f"{f', {r.missing} not in omop.person (allowed)' if r.missing else ''}) -> {c.folder}"
    )


@cli.command("amend-cohort")
@json_output("amend-cohort")
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
    if doc := _doc(ctx):
        doc.doc["cohorts"].append(
            {"cohort": name, "members": r.cohort.members, "amendment": a.number, "added": a.added, "removed": a.removed}
        )
        for t, n in r.purged_rows.items():
            doc.add_table(name, t, "purged", rows_removed=n)
        return
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
        raise CommandFailed(f"would delete {what} of cohort {name}; run again with --purge to do it", ExitCode.USAGE)
    click.echo(f"removed cohort {name}: deleted {what}")


@cli.command("verify")
@json_output("verify")
@click.argument("cohort")
@click.option("--tables", "tables", multiple=True, help="Only this table (repeatable). Default: the configured tables.")
@click.option("--repair", is_flag=True, help="Land again every table with a damaged or missing file or that disagrees.")
@click.pass_context
@handle_errors
def verify_cmd(ctx: click.Context, cohort: str, tables: tuple[str, ...], repair: bool) -> None:
    """Check the landing of COHORT: its files, then its rows against the source; exit 5 on any finding.

    Every file the state lists must be present with its recorded size and SHA-256 and be readable;
    each that is not is one line. For the tables whose files are sound, rows up to each watermark are
    compared: missing rows, extra rows (e.g. deleted upstream), duplicates, a raw load_dt. With
    --repair, a table whose only finding is a raw load_dt is rewritten in place; every other table
    with a finding is landed again from the source up to its watermark; both crash-safe. Files the
    state does not list are moved into TABLE/.unlisted/, never deleted.
    """
    from cohortsync import verify as verifying

    settings = _settings(ctx)
    doc = _doc(ctx)
    report = verifying.verify(settings, cohort, list(tables) or None)
    _show_verify(report, doc)
    if report.bad and repair:
        done = verifying.repair(settings, cohort, report)
        for r in done:
            aside = f"; {r.set_aside_files} file(s) the state did not list moved to {r.set_aside}" if r.set_aside else ""
            line = f"{r.how} {cohort}/{r.table}: {r.rows:,} rows in {r.files} file(s){aside}"
            if doc:
                doc.doc["notes"].append(line)
            else:
                click.echo(line)
        after = verifying.verify(settings, cohort, [r.table for r in done] or list(tables) or None)
        if after.bad:
            _show_verify(after, doc)
            failed = sorted({c.table for c in after.tables if c.bad} | {f.table for f in after.files})
            raise CommandFailed(f"still disagreeing after the repair: {', '.join(failed)}", ExitCode.NEEDS_PERSON)
        if doc:
            doc.doc["notes"].append("repaired")
        else:
            click.echo("repaired")
        return
    if report.bad:
        bad = sorted({c.table for c in report.tables if c.bad} | {f.table for f in report.files})
        raise CommandFailed(
            f"{len(bad)} table(s) with findings: {', '.join(bad)} (see above; 'verify --repair' lands them again)",
            ExitCode.NEEDS_PERSON,
        )


def _show_verify(report: VerifyReport, doc: RunDocument | None) -> None:
    """The findings as lines, or into the --json document."""
    if doc:
        for f in report.files:
            doc.doc["notes"].append(f"damaged: {f.cohort} {f.table} {f.file}: {f.problem}")
            doc.doc.setdefault("damaged_files", []).append(
                {"cohort": f.cohort, "table": f.table, "file": f.file, "problem": f.problem}
            )
        for c in report.tables:
            doc.add_table(
                report.cohort, c.table, c.status, rows=c.landed_rows, source_rows=c.source_rows, missing=c.missing,
                extra=c.extra, duplicates=c.duplicates, note=c.note or None,
            )
        return
    for f in report.files:
        click.echo(f"damaged: {f.cohort} {f.table} {f.file}: {f.problem}")
    for c in report.tables:
        if c.status in ("damaged", "not synced", "skipped") or "rows not compared" in c.note:  # no counts to show
            click.echo(f"{c.table:<22} {c.status:<11} {c.note}".rstrip())
            continue
        click.echo(
            f"{c.table:<22} {c.status:<11} source {c.source_rows:>10,}  landed {c.landed_rows:>10,}  "
            f"missing {c.missing:,}  extra {c.extra:,}  duplicates {c.duplicates:,}{'  ' + c.note if c.note else ''}"
        )


@cli.command("sync")
@json_output("sync")
@click.option("--cohort", "cohorts", multiple=True, help="Only this cohort (repeatable). Default: all registered.")
@click.option("--quiet", "-q", is_flag=True, help="Plain lines, no live progress.")
@click.pass_context
@handle_errors
def sync_cmd(ctx: click.Context, cohorts: tuple[str, ...], quiet: bool) -> None:
    """Pull what each cohort has not seen yet, for every configured table.

    A cohort new to a table gets a full backfill (load_dt <= upper); one with watermark W gets
    W < load_dt <= upper, where upper is the table's max(load_dt) when the run started. Files land
    first; only then does the watermark move. If a table fails the others still commit; the exit
    code says what the failures need (1, 4 retry later, 5 a person; docs/operations.md).
    """
    settings = _settings(ctx)
    report = api.sync(settings, list(cohorts) or None, _progress(quiet))
    if doc := _doc(ctx):
        doc.add_outcomes(report)
    else:
        _print_summary(report)
    if report.failed:
        failed = sorted({f"{o.cohort}/{o.table}" for o in report.failed})
        raise CommandFailed(f"{len(failed)} cohort table(s) failed: {', '.join(failed)} (see above)", report.exit_code)


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
    """Show cohorts x tables: watermark, rows landed, last run, last verify and last error."""
    s = api.status(_settings(ctx))
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
        return
    for c in s["cohorts"]:
        click.echo(f"{c['name']}: {c['members']} members, registered {c['registered_at']}")
    click.echo(f"{'cohort':<20} {'table':<22} {'watermark':<20} {'rows':>12} {'last':<10} {'verify':<11} error")
    for t in s["tables"]:
        click.echo(
            f"{t['cohort']:<20} {t['table']:<22} {_fmt_dt(t['watermark']):<20} {t['rows_landed']:>12,} "
            f"{t['last_status'] or '-':<10} {t['last_verify'] or '-':<11} {t['last_error'] or ''}"
            f"{'  verify: ' + t['last_verify_detail'] if t['last_verify_detail'] else ''}"
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
    """Recompute the checksums of an extract against its manifest; exit 5 naming the first file that differs."""
    r = api.verify_export(directory)
    if as_json:
        click.echo(json.dumps({"ok": r.ok, "files_checked": r.files_checked, "problem": r.problem}))
    elif r.ok:
        click.echo(f"ok: {r.files_checked} files match {directory / 'manifest.json'}")
    if not r.ok:
        raise CommandFailed(str(r.problem), ExitCode.NEEDS_PERSON)


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
    """Lint the policy against the registry and the source's actual columns; exit 5 on any error."""
    findings = api.policy_check(_settings(ctx), live=not offline)
    for f in findings:
        click.echo(f"{f.level}: {f.table}: {f.message}")
    errors = sum(f.level == "error" for f in findings)
    click.echo(f"{errors} error(s), {sum(f.level == 'warning' for f in findings)} warning(s)")
    if errors:
        raise CommandFailed(f"the policy does not cover the source: {errors} error(s) (see above)", ExitCode.NEEDS_PERSON)


@cli.group("state")
def state_group() -> None:
    """Manage the state store itself (watermarks, files, runs): move it from SQLite to PostgreSQL."""


@state_group.command("copy")
@click.option("--to", "to", required=True, metavar="URL",
              help="postgresql://USER@HOST:PORT/DATABASE of an empty database; password from COHORTSYNC_STATE_PASSWORD.")
@click.pass_context
@handle_errors
def state_copy_cmd(ctx: click.Context, to: str) -> None:
    """Copy the SQLite state (state.path) into an empty PostgreSQL database and verify it.

    Every table is copied in one transaction and compared on both sides (row count and a content
    digest) before it commits; a non-empty target is refused. The SQLite state stays untouched.
    Then set state.url to the URL. See docs/operations.md ("Moving the state to PostgreSQL").
    """
    source, target, report = api.state_copy(_settings(ctx), to)
    for table, (rows, digest) in report.tables.items():
        click.echo(f"  {table:<16} {rows:>10,} rows  digest {digest[:16]} equal")
    click.echo(f"copied {report.rows:,} rows in {len(report.tables)} tables from {source} to {target}; set state.url to use it")


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

    demo.run(directory, persons=persons, seed=seed, progress=_progress(quiet), echo=click.echo)


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
