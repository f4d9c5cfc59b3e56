"""One sync run, start to commit: plan → source → land → state, table by table.

The protocol, per table (docs/sync.md walks through a crash at every step):
 1. the table's upper bound, ``max(load_dt)``, was fixed for every table when the run started;
 2. cohorts whose watermark is already at the bound are up to date and not queried;
 3. leftovers of a crashed run in the due cohorts' folders are removed (``Landing.reconcile``);
 4. one query scans the table for all due cohorts; batches stream into one writer per cohort;
 5. the files are fsynced and renamed into place;
 6. one state transaction records the files and advances every due cohort's watermark to the bound.
Steps 2-5 run on ``sync.parallel_tables`` worker threads; step 6 only on the calling thread, one
table at a time, as each table's files are durable. A table that fails stops at its own step; the
others still land and commit.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cohortsync import cohorts as cohort_files
from cohortsync import lifecycle, logs, omop, plan
from cohortsync.config import Settings
from cohortsync.deid.pipeline import Deidentifier, TablePlan, TextScrubber, order_key, prepare
from cohortsync.deid.policy import Action, ColumnRule, Policy, load_policy
from cohortsync.deid.structured import Keys, deid_keys, order_only
from cohortsync.errors import (
    CohortError,
    CohortsyncError,
    DeidError,
    LandingError,
    SchemaDriftError,
    SourceError,
    TamperedError,
    combined_exit_code,
    exit_code_for,
    safe_message,
)
from cohortsync.faults import fault_point
from cohortsync.landing import TMP_PREFIX, LandedFile, Landing, WindowWriter, dictionary_columns, open_landing
from cohortsync.sources import Source, open_source
from cohortsync.sources.base import batches, upper_bound, upper_bounds
from cohortsync.state import Mark, StateStore, TableOutcome, open_state

if TYPE_CHECKING:
    from cohortsync.deid.recognizers import DenyTerm


class Progress(Protocol):
    def table_started(self, table: str, cohorts: list[str]) -> None: ...
    def rows(self, table: str, rows: int) -> None: ...
    def table_finished(self, table: str, outcomes: list[TableOutcome]) -> None: ...
    def note(self, message: str) -> None: ...


log = logging.getLogger(__name__)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class LogProgress:
    """Progress as log events: the default, and what the CLI uses off a terminal (JSON lines).

    One event per table started, per (cohort, table) finished with its window and figures, and per
    note; the running row count at debug level, at most every ``every`` seconds a table.
    """

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def table_started(self, table: str, cohorts: list[str]) -> None:
        with self._lock:
            self._started[table] = self._last[table] = time.monotonic()
        logs.event(log, logging.INFO, "table.started", f"{table}: pulling for {', '.join(cohorts)}", table=table, cohorts=cohorts)

    def rows(self, table: str, rows: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(table, 0.0) < self.every:
                return
            self._last[table] = now
            elapsed = now - self._started.get(table, now)
        logs.event(
            log, logging.DEBUG, "table.progress", f"{table}: {rows:,} rows", table=table, rows=rows,
            rows_per_s=round(rows / max(elapsed, 1e-9)),
        )

    def table_finished(self, table: str, outcomes: list[TableOutcome]) -> None:
        with self._lock:
            self._started.pop(table, None)
        for o in outcomes:
            level = logging.ERROR if o.status == "failed" else logging.INFO
            text = f"{o.cohort}/{o.table}: {o.status}, {o.rows:,} rows" + (f": {o.error}" if o.error else "")
            logs.event(
                log, level, f"table.{o.status}", text, cohort=o.cohort, table=o.table, rows=o.rows,
                files=len(o.files), bytes=sum(f.bytes for f in o.files), seconds=round(o.seconds, 3),
                lower=_iso(o.lower), upper=_iso(o.upper), error=o.error, exit_code=o.exit_code or None,
            )

    def note(self, message: str) -> None:
        logs.event(log, logging.WARNING, "note", message)


@dataclass
class SyncReport:
    run_id: str
    outcomes: list[TableOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TableOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0, or what the failed tables mean together (errors.combined_exit_code)."""
        return combined_exit_code(o.exit_code or 1 for o in self.failed)


def run_sync(
    settings: Settings,
    cohort_names: Sequence[str] | None = None,
    progress: Progress | None = None,
    source: Source | None = None,
) -> SyncReport:
    """Bring every requested cohort (default: all) up to date for every configured table."""
    progress = progress or LogProgress()
    keys = deid_keys(settings)
    policy = load_policy(settings.policy_path)
    with open_state(settings) as state:
        state.lock("sync")
        state.check_key_fingerprint(keys.fingerprint)
        selected = _select_cohorts(settings, cohort_names)
        landing = open_landing(settings)
        state.finish_relandings(landing)  # before any reconcile: it would remove the files still to move
        for c in selected:  # a withdrawal whose purge a crash interrupted is finished before anything else
            for a in lifecycle.pending_purges(state, c):
                gone = lifecycle.purge(settings, state, keys, c, a)
                progress.note(f"{c.name}: finished the purge of amendment {a.number} ({sum(gone.values())} rows removed)")
        own_source = source is None
        src = source or open_source(settings)
        run_id = state.start_run("sync " + " ".join(c.name for c in selected))
        logs.event(log, logging.INFO, "run.started", f"sync of {len(selected)} cohort(s)", cohorts=[c.name for c in selected])
        report = SyncReport(run_id)
        d = settings.deid
        deid = Deidentifier(policy, keys, None, d.shift_min_days, d.shift_max_days, d.max_age)
        try:
            report.notes += restore_membership(src, selected)
            for n in report.notes:
                progress.note(n)
            vocabulary = vocabulary_check(src, policy, settings.sync.tables, settings.source.retries)
            if vocabulary is not None:
                report.notes.append(vocabulary)
                progress.note(vocabulary)
            # Fix every table's upper bound before reading any rows: what loads during the run waits.
            bounds = inspect_tables(
                src, policy, list(settings.sync.tables), settings.source.retries, settings.sync.parallel_tables,
                vocabulary is None,
            )
            marks = state.watermarks()
            if any(
                not isinstance(b, CohortsyncError) and b[0].text_columns and windows(selected, t, b[1], marks)[0]
                for t, b in bounds.items()
            ):
                deid.scrubber = start_text_scrubber(settings, src, keys)
            run = _Run(settings, src, landing, deid, selected, progress)
            jobs = []
            for table in settings.sync.tables:
                found = bounds[table]
                if isinstance(found, CohortsyncError):
                    failed = [
                        TableOutcome(c.name, table, None, None, 0, [], "failed", str(found), exit_code=found.exit_code)
                        for c in selected
                    ]
                    report.outcomes += _record(state, run_id, _TableResult(table, failed=failed), progress)
                    continue
                committed = {c.name: state.committed_files(c.name, table) for c in selected}
                damaged = _unbuildable(state, landing, policy, [c.name for c in selected], table)
                jobs.append(_TableJob(table, found[0], found[1], marks, committed, damaged))
            # Workers land; this thread alone commits, table by table, as each one's files are durable.
            _run_tables(run, jobs, lambda r: report.outcomes.extend(_record(state, run_id, r, progress)))
        except BaseException:
            state.end_run(run_id, "crashed")
            raise
        finally:
            _close(deid.scrubber)
            if own_source:
                src.close()
            else:
                # The next run's threads open fresh sessions. One kept from this run could miss rows
                # loaded since (Spark caches a Parquet table's file listing per session) while the
                # bounds, fixed on this thread, include them: those rows would be skipped for good.
                src.release_threads()
        order = {t: i for i, t in enumerate(settings.sync.tables)}
        report.outcomes.sort(key=lambda o: order[o.table])
        state.end_run(run_id, "failed" if report.failed else "ok")
        logs.event(
            log, logging.INFO, "run.finished", f"sync {'failed' if report.failed else 'ok'}: {report.rows:,} rows",
            rows=report.rows, failed=len(report.failed), exit_code=report.exit_code,
        )
        return report


@dataclass
class _Run:
    """What every table of one run shares. Workers read it; none of it is the state store."""

    settings: Settings
    src: Source
    landing: Landing
    deid: Deidentifier
    selected: list[cohort_files.Cohort]
    progress: Progress
    cancel: threading.Event = field(default_factory=threading.Event)
    # Backfills stream one at a time: one already keeps the engine and the encoders busy, and two
    # at once only add memory. A backfill's finish (last row groups, fsync, hash) overlaps the next.
    one_backfill: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _TableJob:
    """One table to land, with what the state said about it when the run started."""

    table: str
    table_plan: TablePlan
    upper: datetime | None
    marks: dict[tuple[str, str], Mark]
    committed: dict[str, set[str]]  # per cohort: the files the state lists
    damaged: dict[str, str] = field(default_factory=dict)  # per cohort: why its landing cannot be built on


@dataclass
class _TableResult:
    table: str
    fresh: list[TableOutcome] = field(default_factory=list)  # up to date: nothing to commit
    landed: list[TableOutcome] = field(default_factory=list)  # durable files, to commit
    failed: list[TableOutcome] = field(default_factory=list)  # to log


def _run_tables(run: _Run, jobs: list[_TableJob], on_result: Callable[[_TableResult], None]) -> None:
    """Land up to ``sync.parallel_tables`` tables at a time; hand each result over as it is ready.

    An incremental window is small and its time is mostly waiting (planning, a round trip, two
    fsyncs), so such tables overlap well; backfills take turns for their streaming part (see
    ``_Run.one_backfill``; two at once were no faster and peaked 60 MB higher, docs/design.md).
    If this thread stops (a crash, Ctrl-C), the workers stop at their next batch and nothing of
    theirs is committed.
    """
    with ThreadPoolExecutor(run.settings.sync.parallel_tables, thread_name_prefix="cohortsync-table") as pool:
        futures = [pool.submit(_land_with_retries, run, job) for job in jobs]
        try:
            for f in as_completed(futures):
                on_result(f.result())
        finally:
            run.cancel.set()
            for f in futures:
                f.cancel()


def _record(state: StateStore, run_id: str, result: _TableResult, progress: Progress) -> list[TableOutcome]:
    """Commit a landed table (files and watermarks in one transaction) or log its failure."""
    out = result.fresh + result.failed
    if result.landed:
        try:
            state.commit_table(run_id, result.landed)
            fault_point("after_commit")
            out += result.landed
        except Exception as e:  # the files stay uncommitted; the next sync of the table replaces them
            msg = str(e) if isinstance(e, CohortsyncError) else f"{type(e).__name__}: {safe_message(e)}"
            failed = [
                TableOutcome(o.cohort, o.table, o.lower, o.upper, 0, [], "failed", msg, o.seconds, exit_code=exit_code_for(e))
                for o in result.landed
            ]
            result.failed += failed
            out += failed
    for o in result.failed:
        state.log_outcome(run_id, o)
    progress.table_finished(result.table, out)
    return out


def _unbuildable(state: StateStore, landing: Landing, policy: Policy, cohorts: list[str], table: str) -> dict[str, str]:
    """Per cohort, why its landing of ``table`` must not be built on: a listed file missing or
    resized (a cheap check), or a landing that still holds the raw load_dt, which new order_only
    files would join into one table of two schemas. Each reason points to ``verify --repair``."""
    ordered = policy.rules(table).get(omop.LOAD_DT, ColumnRule(Action.KEEP)).action is Action.ORDER_ONLY
    out = {}
    for c in cohorts:
        records = state.files(c, table)
        msg = landing.first_damaged(c, table, records)
        if msg is None and ordered and landing.holds_raw_load_dt(c, table, records):
            msg = (
                f"{c}/{table} holds the raw source load_dt (landed before load_dt became order_only); "
                f"run 'cohortsync verify {c} --repair'"
            )
        if msg:
            out[c] = msg
    return out


@dataclass(frozen=True)
class Relanded:
    table: str
    rows: int
    files: int
    set_aside: str | None = None  # where files the state did not list were moved
    set_aside_files: int = 0
    how: str = "re-landed"  # or "rewrote load_dt of": converted in place, from the landing alone


def rewrite_load_dt(settings: Settings, cohort_name: str, tables: Sequence[str]) -> list[Relanded]:
    """Turn the raw load_dt of landings made before it became order_only into its order_only form,
    from the landing alone (the map is keyed on the landed key; no source query, no re-extraction).

    Each file holding a raw load_dt is rewritten under a temporary name and fsynced; then the same
    state swap and moves as :func:`reland` (a crash anywhere is finished or undone the same way).
    """
    keys = deid_keys(settings)
    landing = open_landing(settings)
    out: list[Relanded] = []
    with open_state(settings) as state:
        state.lock(f"verify --repair {cohort_name}")
        state.check_key_fingerprint(keys.fingerprint)
        state.finish_relandings(landing)
        marks = state.watermarks()
        todo = [t for t in tables if (cohort_name, t) in marks]
        if not todo:
            return out
        run_id = state.start_run(f"verify --repair {cohort_name} (load_dt) " + " ".join(todo))
        try:
            for t in todo:
                out.append(_rewrite_table(state, run_id, landing, keys, cohort_name, omop.table(t), marks[(cohort_name, t)].wm))
        except BaseException:
            state.end_run(run_id, "crashed")
            raise
        state.end_run(run_id, "ok")
    return out


def _rewrite_table(
    state: StateStore, run_id: str, landing: Landing, keys: Keys, cohort: str, table: omop.Table, upper: datetime
) -> Relanded:
    landing.remove_temporaries(cohort, table.name)
    key = order_key(table)
    sealed: list[tuple[str, LandedFile]] = []
    unchanged: set[str] = set()
    written: list[str] = []
    try:
        for f in state.files(cohort, table.name):
            pf = landing.parquet_file(cohort, table.name, f["name"])
            schema = pf.schema_arrow
            i = schema.get_field_index(omop.LOAD_DT)
            if i < 0 or not pa.types.is_timestamp(schema.field(i).type):
                unchanged.add(f["name"])
                continue
            if key not in schema.names:
                raise DeidError(f"{cohort}/{table.name}: {key} is not landed, so load_dt cannot be made order_only in place")
            new_schema = schema.set(i, pa.field(omop.LOAD_DT, pa.int64()))
            tmp = f"{TMP_PREFIX}{os.getpid()}-{f['name']}"
            written.append(tmp)
            rows = 0
            comp = None if landing.compression == "none" else landing.compression
            target, seal = landing.create(cohort, table.name, tmp)
            with pq.ParquetWriter(target, new_schema, compression=comp, write_statistics=True,
                                  use_dictionary=dictionary_columns(new_schema)) as w:
                for b in pf.iter_batches(batch_size=65_536):
                    ordered = order_only(keys, table.name, b.column(key), b.column(i))
                    w.write_batch(b.set_column(i, pa.field(omop.LOAD_DT, pa.int64()), ordered))
                    rows += b.num_rows
            digest, size = seal()
            sealed.append((tmp, LandedFile(f["name"], rows, size, digest)))
    except (OSError, pa.ArrowException) as e:
        for p in written:
            landing.delete(cohort, table.name, p)
        what = type(e).__name__
        raise LandingError(f"cannot rewrite {cohort}/{table.name}: {what}; run 'cohortsync verify {cohort}'") from None
    except BaseException:
        for p in written:
            landing.delete(cohort, table.name, p)
        raise
    fault_point("relanding_sealed")
    state.swap_table(run_id, cohort, table.name, upper, sealed, frozenset(unchanged))
    fault_point("relanding_swapped")
    landing.finish_relanding(cohort, table.name, state.relandings().get((cohort, table.name), []))
    state.relanded(cohort, table.name)
    return Relanded(table.name, sum(f.rows for _, f in sealed), len(sealed), how="rewrote load_dt of")


def reland(
    settings: Settings, cohort_name: str, tables: Sequence[str], progress: Progress | None = None, source: Source | None = None
) -> list[Relanded]:
    """Land each table of a cohort again, whole, up to its current watermark (``verify --repair``).

    Crash-safe like a sync: the new files are written and fsynced under temporary names; one state
    transaction swaps the table's file list and records the moves still to do (``relanding``); then
    the files move into place and the old ones go. A crash before the swap leaves temporary files
    (removed by the next repair or sync); after it, the next command that opens the landing finishes
    the moves. The watermark does not move, so the next sync goes on from where it was. Files in the
    folder that the state does not list are moved aside into ``.unlisted/``, never deleted.
    """
    progress = progress or LogProgress()
    keys = deid_keys(settings)
    policy = load_policy(settings.policy_path)
    landing = open_landing(settings)
    cohort = _select_cohorts(settings, [cohort_name])[0]
    out: list[Relanded] = []
    with open_state(settings) as state:
        state.lock(f"verify --repair {cohort_name}")
        state.check_key_fingerprint(keys.fingerprint)
        state.finish_relandings(landing)
        marks = state.watermarks()
        todo = [t for t in tables if (cohort_name, t) in marks]
        if not todo:
            return out
        src = source or open_source(settings)
        run_id = state.start_run(f"verify --repair {cohort_name} " + " ".join(todo))
        d = settings.deid
        deid = Deidentifier(policy, keys, None, d.shift_min_days, d.shift_max_days, d.max_age)
        try:
            for n in restore_membership(src, [cohort]):
                progress.note(n)
            vocabulary = vocabulary_check(src, policy, todo, settings.source.retries)
            if vocabulary is not None:
                progress.note(vocabulary)
            plans = {t: prepare(policy, omop.table(t), _source_columns(src, omop.table(t)), vocabulary is None) for t in todo}
            if any(p.text_columns for p in plans.values()):
                deid.scrubber = start_text_scrubber(settings, src, keys)
            for t in todo:
                mark = marks[(cohort_name, t)]
                out.append(_reland_table(settings, state, run_id, landing, src, deid, cohort_name, t, mark, plans[t]))
        except BaseException:
            state.end_run(run_id, "crashed")
            raise
        finally:
            _close(deid.scrubber)
            if source is None:
                src.close()
        state.end_run(run_id, "ok")
    return out


def _reland_table(
    settings: Settings,
    state: StateStore,
    run_id: str,
    landing: Landing,
    src: Source,
    deid: Deidentifier,
    cohort: str,
    table_name: str,
    mark: Mark,
    table_plan: TablePlan,
) -> Relanded:
    table = omop.table(table_name)
    landing.remove_temporaries(cohort, table_name)
    slices = [plan.Slice(cohort, None, max_batch=mark.batch)]
    query = plan.extraction(table, table_plan.select, slices, mark.wm, src.names, table_plan.codes)
    key = table.primary_key if table.primary_key in table_plan.select else None
    lanes = settings.landing.writer_threads
    writer = WindowWriter(landing, cohort, table_name, None, mark.wm, settings.sync.file_rows, lanes, key, rewrite=True)
    try:
        with src.stream(query, settings.sync.batch_rows) as reader:
            for raw in batches(reader):
                writer.write(deid.apply(table, raw, mark.wm.year).drop_columns([plan.COHORT_COLUMN]))
        sealed = writer.seal()
    except BaseException:
        writer.abort()
        raise
    fault_point("relanding_sealed")
    listed = state.committed_files(cohort, table_name)
    unlisted = [n for n in landing.files(cohort, table_name) if n not in listed]
    aside = landing.set_aside(cohort, table_name, unlisted, run_id) if unlisted else None
    state.swap_table(run_id, cohort, table_name, mark.wm, sealed)
    fault_point("relanding_swapped")
    landing.finish_relanding(cohort, table_name, state.relandings().get((cohort, table_name), []))
    state.relanded(cohort, table_name)
    rows = sum(f.rows for _, f in sealed)
    state.log_outcome(run_id, TableOutcome(cohort, table_name, None, mark.wm, rows, [f for _, f in sealed], "relanded"))
    return Relanded(table_name, rows, len(sealed), aside, len(unlisted))


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Bounded exponential backoff between retries of a transient failure: 1, 2, 4, ... 60 s."""
    return float(min(cap, base * 2**attempt))


T = TypeVar("T")


def retrying(call: Callable[[], T], retries: int, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``call``; retry transient errors (unreachable, starting, throttled) up to ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            return call()
        except CohortsyncError as e:
            if not e.transient or attempt == retries:
                raise
            sleep(backoff(attempt))
    raise AssertionError("unreachable")


def start_text_scrubber(settings: Settings, src: Source, keys: Keys) -> TextScrubber:
    """The run's free-text scrubber, with the collaborator's known PHI as deny-lists.

    Called only when a table with free-text columns has a window due. The deny-lists are read here,
    on the calling thread; the workers start only when a value needs analysis (lazy), so a window
    whose text is null or already known clean never starts them.
    """
    from cohortsync.deid.text import TextScrubber, TextSettings

    d = settings.deid
    text_settings = TextSettings(model=d.text_model, workers=d.text_workers, batch_size=d.text_batch_size)
    return TextScrubber(text_settings, key=keys.text, deny_list=known_phi(src), lazy=True)


# Where the collaborator keeps known PHI, and what each column holds (the entity decides the
# replacement: clinician names get keyed surrogates like other names; the rest becomes a tag).
KNOWN_PHI_COLUMNS: dict[str, dict[str, str]] = {
    "location": {"address_1": "ADDRESS", "address_2": "ADDRESS", "city": "LOCATION", "zip": "ZIP",
                 "county": "LOCATION", "location_source_value": "KNOWN_PHI"},
    "care_site": {"care_site_name": "FACILITY", "care_site_source_value": "KNOWN_PHI"},
    "provider": {"provider_name": "PERSON", "npi": "ID", "dea": "ID", "provider_source_value": "KNOWN_PHI"},
}


def known_phi(src: Source) -> list[DenyTerm]:
    """Addresses, facility and clinician names from location, care_site and provider (read once a run)."""
    from cohortsync.deid.recognizers import DenyTerm  # Presidio loads only when text is scrubbed

    out: set[DenyTerm] = set()
    for table, columns in KNOWN_PHI_COLUMNS.items():
        try:
            present = [c for c in src.columns(table) if c.lower() in columns]
            if not present:
                continue
            with src.stream(plan.select_columns(table, present, src.names), 65_536) as reader:
                for batch in batches(reader):
                    for name, col in zip(batch.schema.names, batch.columns, strict=True):
                        entity = columns[name.lower()]
                        out.update(DenyTerm(v, entity) for v in col.to_pylist() if isinstance(v, str) and len(v.strip()) >= 3)
        except SourceError:
            continue  # a collaborator without the table (or column) gives no deny-list from it
    return sorted(out)


def _close(scrubber: object) -> None:
    close = getattr(scrubber, "close", None)
    if callable(close):
        close()


def windows(
    selected: Sequence[cohort_files.Cohort],
    table: str,
    upper: datetime | None,
    marks: dict[tuple[str, str], Mark],
    lookback: timedelta = timedelta(0),
) -> tuple[list[plan.Slice], list[tuple[str, Mark | None]]]:
    """Which cohorts are due for ``table`` and from where; the rest are up to date.

    New cohort: full backfill. Existing: ``(watermark - lookback, upper]``, plus a backfill of the
    members an amendment added since its last sync. Nothing, if the watermark reached ``upper`` and
    no member was added.
    """
    due: list[plan.Slice] = []
    fresh: list[tuple[str, Mark | None]] = []
    for c in selected:
        m = marks.get((c.name, table))
        if upper is None:
            fresh.append((c.name, m))
        elif m is None:
            due.append(plan.Slice(c.name, None))
        elif m.wm >= upper and c.batch <= m.batch:
            fresh.append((c.name, m))
        else:
            due.append(plan.Slice(c.name, m.wm - lookback, m.batch if c.batch > m.batch else None))
    return due, fresh


def vocabulary_check(src: Source, policy: Policy, tables: Sequence[str], retries: int = 0) -> str | None:
    """None if the source's concept table can be read (source values equal to their own source
    concept's code may then land as written); else the note saying why every source value is scrubbed.

    Checked once a run, and only if a table to sync has a scrubbed source value with a source
    concept id beside it. Fail closed: a missing or unreadable table keeps nothing and fails nothing.
    """
    if not any(
        policy.rules(t).get(v) is not None and policy.rules(t)[v].action is Action.SCRUB_TEXT
        for t in tables
        for v, _ in omop.source_code_pairs(omop.table(t))
    ):
        return None
    try:
        retrying(lambda: src.rows(plan.concept_probe(src.names)), retries)
    except CohortsyncError as e:
        where = f"{src.names.vocabulary_schema or src.names.omop_schema}.{omop.CONCEPT_TABLE}"
        logs.event(log, logging.DEBUG, "vocabulary.unreadable", type(e).__name__, table=where)
        return (
            f"no readable concept table at {where} (source.vocabulary_schema): every *_source_value is "
            "scrubbed as free text this run, codes included"
        )
    return None


def inspect_tables(
    src: Source, policy: Policy, tables: list[str], retries: int = 0, workers: int = 1, vocabulary: bool = False
) -> dict[str, tuple[TablePlan, datetime | None] | CohortsyncError]:
    """Each table's policy-checked columns and upper bound, or the error that fails that table only.

    The columns are checked table by table (drift in one must not stop the others), ``workers`` at
    a time (on a warehouse each check is a round trip); the upper bounds of the tables that passed
    come from one query, falling back to one per table if it fails. ``vocabulary``: the concept
    table is readable (:func:`vocabulary_check`), so the plans check source values against codes.
    """
    out: dict[str, tuple[TablePlan, datetime | None] | CohortsyncError] = {}

    def check(table: str) -> TablePlan | CohortsyncError:
        t = omop.table(table)
        try:
            return retrying(lambda: prepare(policy, t, _source_columns(src, t), vocabulary), retries)
        except CohortsyncError as e:
            return e

    if workers > 1 and len(tables) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="cohortsync-inspect") as pool:
            checked = dict(zip(tables, pool.map(check, tables), strict=True))
    else:
        checked = {t: check(t) for t in tables}
    plans: dict[str, TablePlan] = {}
    for table, found in checked.items():
        if isinstance(found, CohortsyncError):
            out[table] = found
        else:
            plans[table] = found
    try:
        uppers = retrying(lambda: upper_bounds(src, list(plans)), retries)
    except CohortsyncError:
        uppers = {}
        for table in plans:
            try:
                uppers[table] = retrying(lambda table=table: upper_bound(src, table), retries)  # type: ignore[misc]
            except CohortsyncError as e:
                out[table] = e
    for table, p in plans.items():
        if table in uppers:
            out[table] = (p, uppers[table])
    return {t: out[t] for t in tables}


def _select_cohorts(settings: Settings, names: Sequence[str] | None) -> list[cohort_files.Cohort]:
    known = {c.name: c for c in cohort_files.load_all(settings.cohorts_path)}
    if not names:
        if not known:
            raise CohortError(f"no cohorts registered under {settings.cohorts_path} (use 'cohortsync add-cohort')")
        return list(known.values())
    out = []
    for n in dict.fromkeys(names):
        cohort_files.check_name(n)
        if n not in known:
            raise CohortError(f"unknown cohort {n!r} (registered: {', '.join(known) or 'none'})")
        out.append(known[n])
    return out


def restore_membership(src: Source, selected: list[cohort_files.Cohort]) -> list[str]:
    """Make the sandbox agree with ``cohorts/`` before extracting: a wiped or partial table would
    make a sync silently pull nothing for some members, and wrong ids would land non-members' rows.
    Compared by count and digest (:func:`plan.member_digest`), so the ids themselves stay put."""
    try:
        found = {str(row[0]): tuple(int(str(v)) for v in row[1:]) for row in src.rows(plan.member_digests(src.names))}
    except SourceError:
        found = {}  # the table does not exist yet: every cohort is uploaded below
    notes = []
    for c in selected:
        ids, batches = c.member_batches()
        if found.get(c.name) != plan.member_digest(ids, batches):
            src.replace_members(c.name, pa.array(ids, pa.int64()), pa.array(batches, pa.int32()))
            notes.append(f"sandbox membership of {c.name} re-uploaded from {cohort_files.MEMBERS} ({c.members} ids)")
    return notes


def _land_with_retries(run: _Run, job: _TableJob) -> _TableResult:
    """Land one table; a transient failure is retried after a backoff, any other fails the table only."""
    retries = run.settings.source.retries
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            try:
                return _land_table(run, job)
            except (OSError, pa.ArrowException) as e:  # the landing's storage; on Azure maybe transient
                failure = run.landing.failure(e, f"{job.table}")
                if type(failure) is LandingError:
                    raise
                raise failure from None
        except CohortsyncError as e:
            if e.transient and attempt < retries and not run.cancel.is_set():
                logs.event(log, logging.DEBUG, "table.retry", str(e), table=job.table, attempt=attempt + 1)
                run.progress.note(f"{job.table}: {e}; retrying in {backoff(attempt):.0f}s")
                run.cancel.wait(backoff(attempt))
                attempt += 1
                continue
            msg, code = str(e), exit_code_for(e)
        except Exception as e:  # an engine or file error we did not anticipate: still only this table fails
            msg, code = f"{type(e).__name__}: {safe_message(e)}", exit_code_for(e)
        due, fresh = _windows(run, job)
        elapsed = time.monotonic() - started
        failed = [
            TableOutcome(s.cohort, job.table, s.lower, job.upper, 0, [], "failed", msg, elapsed, exit_code=code) for s in due
        ]
        return _TableResult(job.table, fresh=_up_to_date(job, fresh), failed=failed)


def _up_to_date(job: _TableJob, fresh: list[tuple[str, Mark | None]]) -> list[TableOutcome]:
    return [TableOutcome(c, job.table, m.wm if m else None, job.upper, 0, [], "up-to-date") for c, m in fresh]


def _windows(run: _Run, job: _TableJob) -> tuple[list[plan.Slice], list[tuple[str, Mark | None]]]:
    lookback = timedelta(days=run.settings.sync.lookback_days)
    return windows(run.selected, job.table, job.upper, job.marks, lookback)


def _land_table(run: _Run, job: _TableJob) -> _TableResult:
    """Steps 2-5 of the protocol for one table: everything up to, not including, the commit."""
    started = time.monotonic()
    settings, landing, progress, table_name = run.settings, run.landing, run.progress, job.table
    table, table_plan, upper = omop.table(table_name), job.table_plan, job.upper
    due, fresh = _windows(run, job)
    done = _up_to_date(job, fresh)
    for c, _ in fresh:  # nothing to build on this run, but the operator should know before the next load
        if c in job.damaged:
            run.progress.note(job.damaged[c])
    refused = [
        TableOutcome(
            s.cohort, table_name, s.lower, upper, 0, [], "failed", job.damaged[s.cohort], exit_code=TamperedError.exit_code
        )
        for s in due
        if s.cohort in job.damaged
    ]
    due = [s for s in due if s.cohort not in job.damaged]
    if not due:
        return _TableResult(table_name, fresh=done, failed=refused)
    assert upper is not None
    batch_of = {c.name: c.batch for c in run.selected}
    progress.table_started(table_name, [s.cohort for s in due])
    writers: dict[str, WindowWriter] = {}
    try:
        for s in due:
            removed = landing.reconcile(s.cohort, table_name, job.committed[s.cohort], s.lower)
            if removed:
                progress.note(f"{s.cohort}/{table_name}: removed {len(removed)} uncommitted file(s) of a crashed run")
        query = plan.extraction(table, table_plan.select, due, upper, run.src.names, table_plan.codes)
        writers = {
            s.cohort: WindowWriter(
                landing, s.cohort, table_name, s.lower, upper, settings.sync.file_rows, settings.landing.writer_threads,
                table.primary_key if table.primary_key in table_plan.select else None,
                taken=job.committed[s.cohort],
            )
            for s in due
        }
        total = 0
        backfill = any(s.lower is None or s.new_after_batch is not None for s in due)
        with run.one_backfill if backfill else nullcontext(), run.src.stream(query, settings.sync.batch_rows) as reader:
            for raw in _prefetch(reader):
                if run.cancel.is_set():
                    raise CohortsyncError(f"{table_name}: stopped, the run is ending")
                _fan_out(run.deid.apply(table, raw, upper.year), writers)
                total += raw.num_rows
                fault_point("mid_stream")
                progress.rows(table_name, total)
        fault_point("before_finish")
        landed: dict[str, list[LandedFile]] = {c: w.finish() for c, w in writers.items()}
        fault_point("after_land")
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    elapsed = time.monotonic() - started
    outcomes = [
        TableOutcome(
            s.cohort, table_name, s.lower, upper, writers[s.cohort].rows, landed[s.cohort], "landed",
            seconds=elapsed, notes=_notes(landing, s.cohort, table, writers[s.cohort], landed[s.cohort], table_plan),
            batch=batch_of[s.cohort],
        )
        for s in due
    ]
    return _TableResult(table_name, fresh=done, landed=outcomes, failed=refused)


def _source_columns(src: Source, table: omop.Table) -> list[str]:
    """The columns to select: what the source really has, so nothing is silently left behind."""
    names = src.columns(table.name)
    lowered = [n.lower() for n in names]
    if omop.LOAD_DT not in lowered:
        raise SchemaDriftError(f"{table.name} has no {omop.LOAD_DT} column")
    link = "person_id" if table.via_parent is None else table.via_parent[1]
    if link not in lowered:
        raise SchemaDriftError(f"{table.name} has no {link} column to reach a person")
    if plan.COHORT_COLUMN in lowered:
        raise SchemaDriftError(f"{table.name} has a column named {plan.COHORT_COLUMN}, which cohortsync reserves")
    flags = [n for n in names if n.lower().startswith(plan.CODE_FLAG_PREFIX)]
    if flags:
        raise SchemaDriftError(f"{table.name} has a column named {flags[0]}; names starting {plan.CODE_FLAG_PREFIX} are reserved")
    return list(names)


def _fan_out(batch: pa.RecordBatch, writers: dict[str, WindowWriter]) -> None:
    """Split a batch of the shared scan into each cohort's writer (a person may be in several)."""
    tag = batch.column(0)
    rows = batch.drop_columns([plan.COHORT_COLUMN])
    if len(writers) == 1:
        (w,) = writers.values()
        w.write(rows)
        return
    for cohort, w in writers.items():
        mask = pc.equal(tag, pa.scalar(cohort, tag.type))
        part = rows.filter(mask)
        if part.num_rows:
            w.write(part)


_END = object()


def _prefetch(reader: pa.RecordBatchReader, depth: int = 2) -> Iterator[pa.RecordBatch]:
    """Read the next batches on a thread while this one is written: the engine and the Parquet
    encoder then work at the same time instead of taking turns. Memory stays at ``depth`` batches."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for b in iter(reader.read_next_batch, None):
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except StopIteration:
            pass
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
            return
        q.put(_END)

    t = threading.Thread(target=pump, name="cohortsync-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, pa.RecordBatch)
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _notes(
    landing: Landing,
    cohort: str,
    table: omop.Table,
    writer: WindowWriter,
    files: list[LandedFile],
    table_plan: TablePlan,
) -> dict[str, int | str] | None:
    stats = writer.key_stats()
    if stats is not None:
        odd = {"repeated_primary_key_rows": stats[0], "null_primary_key_rows": stats[1]}
        notes: dict[str, int | str] = {k: v for k, v in odd.items() if v}
    else:
        notes = dict(_oddities(landing, cohort, table, files) or {})
    if table_plan.absent:
        notes["policy_columns_absent_in_source"] = ",".join(table_plan.absent)
    return notes or None


def _oddities(landing: Landing, cohort: str, table: omop.Table, files: list[LandedFile]) -> dict[str, int] | None:
    """Count what real extracts hold and a reader should know: repeated or missing primary keys.

    Nothing is dropped or deduplicated; the counts go to the run log and the sync summary. Read back
    from the landed files (one column, in DuckDB) so memory does not grow with the window.
    """
    if not files or table.primary_key is None:
        return None
    pk = table.primary_key.replace('"', '""')
    with duckdb.connect(config={"memory_limit": "256MB", "threads": 2}) as con:  # one per call: tables land on threads
        rel = landing.register(con, "landed", cohort, table.name, [f.name for f in files])
        row = con.execute(f'SELECT count("{pk}") - count(DISTINCT "{pk}"), count(*) - count("{pk}") FROM {rel}').fetchone()
    assert row is not None
    notes = {"repeated_primary_key_rows": int(row[0]), "null_primary_key_rows": int(row[1])}
    return {k: v for k, v in notes.items() if v} or None
