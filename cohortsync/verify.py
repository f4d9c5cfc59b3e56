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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cohortsync import cohorts as cohort_files
from cohortsync import omop, plan
from cohortsync.config import Settings
from cohortsync.deid.policy import Action, ColumnRule, load_policy
from cohortsync.deid.structured import Keys, order_only, pseudonymize
from cohortsync.errors import CohortError
from cohortsync.landing import Landing
from cohortsync.sources import Source, open_source
from cohortsync.sources.base import batches
from cohortsync.state import StateStore


@dataclass(frozen=True)
class TableCheck:
    table: str
    status: str  # "ok" | "mismatch" | "raw load_dt" | "not synced" | "skipped"
    source_rows: int = 0
    landed_rows: int = 0
    missing: int = 0
    extra: int = 0
    duplicates: int = 0
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("mismatch", "raw load_dt")


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
            ordered = policy.rules(t).get(omop.LOAD_DT, ColumnRule(Action.KEEP)).action is Action.ORDER_ONLY
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
            raw, unordered = _load_landed(local, listed[t], pk, ordered, ldt_type, keys, t, settings.sync.batch_rows)
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
            note = "; ".join(notes)
            status = "mismatch" if bad else "raw load_dt" if raw else "ok"
            out.append(TableCheck(t, status, n_src, n_land, missing, extra, dupes, note))
    finally:
        local.close()
        if source is None:
            src.close()
    return out


def _insert(local: duckdb.DuckDBPyConnection, table: str, k: pa.Array, ldt: pa.Array) -> None:
    local.register("chunk", pa.table({"k": k, "load_dt": ldt}))
    try:
        local.execute(f"INSERT INTO {table} SELECT k, load_dt FROM chunk")
    finally:
        local.unregister("chunk")


def _load_landed(
    local: duckdb.DuckDBPyConnection,
    files: list[Path],
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
    for path in files:
        pf = pq.ParquetFile(path)
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
