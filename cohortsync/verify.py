"""``cohortsync verify``: does the landing hold exactly the source's cohort rows up to the watermark?

Per table, the cohort's (primary key, load_dt) pairs in the source — members covered by the
watermark, rows up to it — are compared with the pairs in the landed files. Source pairs are turned
into their landed form in process first (the key pseudonymized, load_dt made order_only, as the sync
did), then both sides go into a local DuckDB that spills to disk, so memory does not grow with the
table. Reported: missing rows, extra rows (e.g. deleted upstream), duplicates beyond the source's own
(a lookback lands some on purpose), and files landed before load_dt was made order_only (their raw
load_dt reveals the persons' date shifts; ``--repair`` lands them again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from cohortsync import cohorts as cohort_files
from cohortsync import logs, omop, plan
from cohortsync.config import Settings
from cohortsync.deid.policy import Action, ColumnRule, Policy, load_policy
from cohortsync.deid.structured import Keys, deid_keys, order_only, pseudonymize
from cohortsync.errors import CohortError
from cohortsync.landing import Landing, open_landing
from cohortsync.sources import Source, open_source
from cohortsync.sources.base import batches
from cohortsync.state import Mark, open_state

if TYPE_CHECKING:
    from cohortsync.sync import Relanded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableCheck:
    table: str
    status: str  # "ok" | "mismatch" | "raw load_dt" | "damaged" | "not synced" | "skipped"
    source_rows: int = 0
    landed_rows: int = 0
    missing: int = 0
    extra: int = 0
    duplicates: int = 0
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("mismatch", "raw load_dt", "damaged")


@dataclass(frozen=True)
class FileFinding:
    """A file the state lists that is missing or not what was landed: one line for the operator."""

    cohort: str
    table: str
    file: str
    problem: str


@dataclass
class VerifyReport:
    cohort: str
    files: list[FileFinding] = field(default_factory=list)
    tables: list[TableCheck] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return bool(self.files) or any(c.bad for c in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cohort": self.cohort,
            "ok": not self.bad,
            "files": [asdict(f) for f in self.files],
            "tables": [{**asdict(c), "bad": c.bad} for c in self.tables],
        }


def verify(
    settings: Settings, cohort: str, tables: Sequence[str] | None = None, source: Source | None = None
) -> VerifyReport:
    """First every file the state lists (present, size, SHA-256, readable), then, for the tables
    whose files are sound, the row comparison with the source. The result per table is recorded
    for ``status``."""

    c = cohort_files.load(settings.cohorts_path, cohort_files.check_name(cohort))
    if c is None:
        raise CohortError(f"unknown cohort {cohort!r}")
    keys = deid_keys(settings)
    policy = load_policy(settings.policy_path)
    landing = open_landing(settings)
    report = VerifyReport(cohort)
    with open_state(settings) as state:
        state.check_key_fingerprint(keys.fingerprint)
        if state.relandings():  # a repair died after its state swap: finish it, as the next sync would
            state.lock(f"verify {cohort}")
            state.finish_relandings(landing)
            state.unlock()
        marks = state.watermarks()
        if tables:
            names = list(tables)
        else:  # the configured tables, and any other the state holds for the cohort
            held = {t for (co, t) in marks if co == cohort}
            names = [t for t in omop.registry() if t in settings.sync.tables or t in held]
        records = {t: state.files(cohort, t) for t in names}
    damaged: dict[str, int] = {}
    for t in names:
        for f in records[t]:
            problem = landing.check_file(cohort, t, f, thorough=True)
            if problem:
                report.files.append(FileFinding(cohort, t, f["name"], problem))
                damaged[t] = damaged.get(t, 0) + 1
    listed = {t: [f["name"] for f in records[t]] for t in names}
    src = source or open_source(settings)
    local = duckdb.connect(config={"memory_limit": "512MB", "threads": 2})
    try:
        for t in names:
            if t in damaged:
                note = f"{damaged[t]} damaged or missing file(s): rows not compared; 'verify --repair' lands the table again"
                report.tables.append(TableCheck(t, "damaged", note=note))
                continue
            try:
                report.tables.append(_compare(settings, policy, keys, local, src, landing, cohort, t, marks, listed[t]))
            except (duckdb.Error, pa.ArrowException, OSError) as e:  # a file that passed its checksum yet cannot be read
                report.tables.append(TableCheck(t, "damaged", note=f"cannot read the landed files ({type(e).__name__})"))
            chk = report.tables[-1]
            logs.event(
                log, logging.WARNING if chk.bad else logging.DEBUG, "verify.table", f"{cohort}/{t}: {chk.status}",
                cohort=cohort, table=t, source_rows=chk.source_rows, landed_rows=chk.landed_rows, missing=chk.missing,
                extra=chk.extra, duplicates=chk.duplicates,
            )
    finally:
        local.close()
        if source is None:
            src.close()
    with open_state(settings) as state:
        state.record_verify(cohort, {ch.table: (ch.status, ch.note or None) for ch in report.tables})
    return report


def _compare(
    settings: Settings,
    policy: Policy,
    keys: Keys,
    local: duckdb.DuckDBPyConnection,
    src: Source,
    landing: Landing,
    cohort: str,
    t: str,
    marks: dict[tuple[str, str], Mark],
    files: list[str],
) -> TableCheck:
    """The row comparison of one table: (key, load_dt) pairs of source and landing."""
    table = omop.table(t)
    mark = marks.get((cohort, t))
    if mark is None:
        return TableCheck(t, "not synced")
    ordered = policy.rules(t).get(omop.LOAD_DT, ColumnRule(Action.KEEP)).action is Action.ORDER_ONLY
    pk = table.primary_key
    rule = policy.rules(t).get(pk) if pk else None
    if pk is None or rule is None or rule.action is Action.DROP:
        why = "no primary key in OMOP v5.3" if pk is None else f"{pk} is not landed"
        raw = sum(
            pa.types.is_timestamp(landing.parquet_file(cohort, t, f).schema_arrow.field(omop.LOAD_DT).type) for f in files
        ) if ordered else 0
        if raw:
            return TableCheck(t, "raw load_dt", note=f"{raw} file(s) hold the raw source load_dt ({why}: rows not compared)")
        return TableCheck(t, "skipped", note=why)
    ldt_type = "BIGINT" if ordered else "TIMESTAMP"
    q = plan.extraction(table, [pk, omop.LOAD_DT], [plan.Slice(cohort, None, max_batch=mark.batch)], mark.wm, src.names)
    local.execute(f"CREATE OR REPLACE TABLE src_keys (k BIGINT, load_dt {ldt_type})")
    with src.stream(q, settings.sync.batch_rows) as reader:
        for b in batches(reader):
            k = b.column(pk)
            if rule.action is Action.PSEUDONYMIZE:
                k = pseudonymize(keys, rule.domain or t, k)
            k = k.cast(pa.int64())
            ldt = order_only(keys, t, k, b.column(omop.LOAD_DT)) if ordered else b.column(omop.LOAD_DT)
            _insert(local, "src_keys", k, ldt)
    raw, unordered = _load_landed(local, landing, cohort, files, pk, ordered, ldt_type, keys, t, settings.sync.batch_rows)
    row = local.execute(
        """
        WITH s AS (SELECT k, load_dt, count(*) AS n FROM src_keys GROUP BY ALL),
             l AS (SELECT k, load_dt, count(*) AS n FROM landed_keys GROUP BY ALL)
        SELECT
          (SELECT count(*) FROM src_keys),
          (SELECT count(*) FROM landed_keys),
          (SELECT coalesce(sum(s.n), 0) FROM s ANTI JOIN l USING (k, load_dt)),
          (SELECT coalesce(sum(l.n), 0) FROM l ANTI JOIN s USING (k, load_dt)),
          (SELECT coalesce(sum(l.n - s.n), 0) FROM l JOIN s USING (k, load_dt) WHERE l.n > s.n)
        """
    ).fetchall()[0]
    n_src, n_land, missing, extra, dupes = (int(x) for x in row)
    lookback = settings.sync.lookback_days > 0
    unlisted = sorted(set(landing.files(cohort, t)) - set(files))
    bad = bool(missing or extra or unlisted or unordered or (dupes and not lookback))
    notes = []
    if raw:
        notes.append(
            f"{raw} file(s) hold the raw source load_dt, which reveals the persons' date shifts: "
            f"run 'cohortsync verify {cohort} --repair'"
        )
    if unordered:
        notes.append(f"{unordered} file(s) hold an order_only load_dt but the policy keeps it: not compared")
    if dupes and lookback:
        notes.append("duplicates expected: lookback is on")
    if unlisted:
        notes.append(f"{len(unlisted)} file(s) in the folder that the state does not list")
    status = "mismatch" if bad else "raw load_dt" if raw else "ok"
    return TableCheck(t, status, n_src, n_land, missing, extra, dupes, "; ".join(notes))


def _insert(local: duckdb.DuckDBPyConnection, table: str, k: pa.Array, ldt: pa.Array) -> None:
    local.register("chunk", pa.table({"k": k, "load_dt": ldt}))
    try:
        local.execute(f"INSERT INTO {table} SELECT k, load_dt FROM chunk")
    finally:
        local.unregister("chunk")


def _load_landed(
    local: duckdb.DuckDBPyConnection,
    landing: Landing,
    cohort: str,
    files: list[str],
    pk: str,
    ordered: bool,
    ldt_type: str,
    keys: Keys,
    table: str,
    batch_rows: int,
) -> tuple[int, int]:
    """The landed (key, load_dt) pairs into ``landed_keys``, file by file; returns (files holding a
    raw load_dt, files holding an order_only one the policy does not expect).

    A raw load_dt (landed before order_only existed) is turned into its order_only form here, from
    the landed key, so the comparison with the source still counts every row exactly.
    """
    local.execute(f"CREATE OR REPLACE TABLE landed_keys (k BIGINT, load_dt {ldt_type})")
    raw = unordered = 0
    for name in files:
        pf = landing.parquet_file(cohort, table, name)
        is_raw = pa.types.is_timestamp(pf.schema_arrow.field(omop.LOAD_DT).type)
        if is_raw and ordered:
            raw += 1
        elif not is_raw and not ordered:
            unordered += 1
            continue
        for b in pf.iter_batches(batch_size=batch_rows, columns=[pk, omop.LOAD_DT]):
            k = b.column(0).cast(pa.int64())
            ldt = order_only(keys, table, k, b.column(1)) if is_raw and ordered else b.column(1)
            _insert(local, "landed_keys", k, ldt)
    return raw, unordered


def repair(settings: Settings, cohort: str, report: VerifyReport, source: Source | None = None) -> list[Relanded]:
    """A table whose only finding is a raw load_dt is rewritten in place from the landing
    (:func:`cohortsync.sync.rewrite_load_dt`); every other table with a finding (a damaged or
    missing file, a disagreement with the source) is landed again (:func:`cohortsync.sync.reland`).
    Both go through the same crash-safe state swap."""
    from cohortsync.sync import reland, rewrite_load_dt

    raw_only = [c.table for c in report.tables if c.status == "raw load_dt"]
    again = [c.table for c in report.tables if c.bad and c.status != "raw load_dt"]
    done = rewrite_load_dt(settings, cohort, raw_only) if raw_only else []
    return done + (reland(settings, cohort, again, source=source) if again else [])
