"""``cohortsync verify``: does the landing hold exactly the source's cohort rows up to the watermark?

Per table, the cohort's (primary key, load_dt) pairs in the source — members covered by the
watermark, rows up to it — are compared with the pairs in the landed files. Source keys are
pseudonymized in process first (as the sync did), then both sides go into a local DuckDB that spills
to disk, so memory does not grow with the table. Reported: missing rows, extra rows (e.g. deleted
upstream), and duplicates beyond the source's own (a lookback lands some on purpose).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from cohortsync import cohorts as cohort_files
from cohortsync import logs, omop, plan
from cohortsync.config import Settings
from cohortsync.deid.policy import Action, load_policy
from cohortsync.deid.structured import pseudonymize
from cohortsync.errors import CohortError
from cohortsync.landing import Landing
from cohortsync.sources import Source, open_source
from cohortsync.sources.base import batches
from cohortsync.state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableCheck:
    table: str
    status: str  # "ok" | "mismatch" | "not synced" | "skipped"
    source_rows: int = 0
    landed_rows: int = 0
    missing: int = 0
    extra: int = 0
    duplicates: int = 0
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.status == "mismatch"


def verify(
    settings: Settings, cohort: str, tables: Sequence[str] | None = None, source: Source | None = None
) -> list[TableCheck]:
    from cohortsync.sync import deid_keys

    c = cohort_files.load(settings.cohorts_path, cohort_files.check_name(cohort))
    if c is None:
        raise CohortError(f"unknown cohort {cohort!r}")
    keys = deid_keys(settings)
    policy = load_policy(settings.policy_path)
    landing = Landing(settings.landing_path, settings.landing.compression)
    names = list(tables) if tables else list(settings.sync.tables)
    with StateStore(settings.state_path) as state:
        state.check_key_fingerprint(keys.fingerprint)
        marks = state.watermarks()
        listed = {t: [landing.table_dir(cohort, t) / f["name"] for f in state.files(cohort, t)] for t in names}
    src = source or open_source(settings)
    local = duckdb.connect(config={"memory_limit": "512MB", "threads": 2})
    out = []
    try:
        for t in names:
            table = omop.table(t)
            mark = marks.get((cohort, t))
            if mark is None:
                out.append(TableCheck(t, "not synced"))
                continue
            pk = table.primary_key
            if pk is None:
                out.append(TableCheck(t, "skipped", note="no primary key in OMOP v5.3"))
                continue
            rule = policy.rules(t).get(pk)
            if rule is None or rule.action is Action.DROP:
                out.append(TableCheck(t, "skipped", note=f"{pk} is not landed"))
                continue
            q = plan.extraction(table, [pk, omop.LOAD_DT], [plan.Slice(cohort, None, max_batch=mark.batch)], mark.wm, src.names)
            local.execute("CREATE OR REPLACE TABLE src_keys (k BIGINT, load_dt TIMESTAMP)")
            with src.stream(q, settings.sync.batch_rows) as reader:
                for b in batches(reader):
                    k = b.column(pk)
                    if rule.action is Action.PSEUDONYMIZE:
                        k = pseudonymize(keys, rule.domain or t, k)
                    chunk = pa.table({"k": k.cast(pa.int64()), "load_dt": b.column(omop.LOAD_DT)})
                    local.register("chunk", chunk)
                    local.execute("INSERT INTO src_keys SELECT k, load_dt FROM chunk")
                    local.unregister("chunk")
            files = [str(p) for p in listed[t]]
            if files:
                local.execute(
                    f'CREATE OR REPLACE TABLE landed_keys AS SELECT "{pk}"::BIGINT AS k, load_dt FROM read_parquet($f)',
                    {"f": files},
                )
            else:
                local.execute("CREATE OR REPLACE TABLE landed_keys (k BIGINT, load_dt TIMESTAMP)")
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
            unlisted = sorted({p.name for p in landing.files(cohort, t)} - {p.name for p in listed[t]})
            bad = bool(missing or extra or unlisted or (dupes and not lookback))
            notes = []
            if dupes and lookback:
                notes.append("duplicates expected: lookback is on")
            if unlisted:
                notes.append(f"{len(unlisted)} file(s) in the folder that the state does not list")
            note = "; ".join(notes)
            out.append(TableCheck(t, "mismatch" if bad else "ok", n_src, n_land, missing, extra, dupes, note))
            logs.event(
                log, logging.WARNING if bad else logging.DEBUG, "verify.table", f"{cohort}/{t}: {out[-1].status}",
                cohort=cohort, table=t, source_rows=n_src, landed_rows=n_land, missing=missing, extra=extra,
                duplicates=dupes, unlisted_files=len(unlisted),
            )
    finally:
        local.close()
        if source is None:
            src.close()
    return out


def repair(settings: Settings, cohort: str, checks: list[TableCheck]) -> list[str]:
    """Forget and delete what was landed for each mismatching table; the next sync backfills it."""
    landing = Landing(settings.landing_path, settings.landing.compression)
    fixed = []
    with StateStore(settings.state_path) as state:
        state.lock(f"verify --repair {cohort}")
        for ch in checks:
            if not ch.bad:
                continue
            for p in landing.files(cohort, ch.table):
                p.unlink()
            state.forget_table(cohort, ch.table)
            fixed.append(ch.table)
    return fixed
