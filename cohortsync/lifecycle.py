"""A cohort after registration: amendments, withdrawals (purged from the landing) and retirement.

The order of every operation is chosen so a crash leaves something a re-run completes:
 - amend: upload the new membership, then swap the cohort folder (the record), then purge. A purge
   the crash interrupted is found again from the record (an amendment with removals that the state
   does not list as purged) and finished by the next ``sync`` before it pulls anything;
 - remove: sandbox rows, landing files and state go first, the cohort folder last, so a crashed
   removal is still visible and can simply be run again.
Withdrawn persons are found in the landing by their pseudonyms (computed in process with the key).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cohortsync import cohorts as cohort_files
from cohortsync import logs, omop, plan
from cohortsync.config import Settings
from cohortsync.deid.policy import Action, Policy, load_policy
from cohortsync.deid.structured import Keys, deid_keys, pseudonymize
from cohortsync.errors import CohortError, MembershipError, PolicyError, StateError
from cohortsync.faults import fault_point
from cohortsync.landing import LandedFile, Landing, dictionary_columns, open_landing
from cohortsync.sources import Source, open_source
from cohortsync.state import StateStore, open_state

log = logging.getLogger(__name__)


def check_missing(
    src: Source, cohort: str, ids: list[int], allow: bool, omop_schema: str, what: str = "ids"
) -> list[int]:
    """Which of ``ids`` (already uploaded for ``cohort``) are not in the source's person table;
    refused, with a count and a few examples, unless ``allow``."""
    among = set(ids)
    missing = [m for m in (int(str(r[0])) for r in src.rows(plan.missing_persons(cohort, src.names))) if m in among]
    if missing and not allow:  # counts only: a person id never goes into a message (docs/architecture.md)
        raise MembershipError(
            f"{len(missing)} of {len(ids)} {what} are not in {omop_schema}.person; "
            "check the file against the source, or pass --allow-missing"
        )
    return missing


@dataclass(frozen=True)
class AmendResult:
    cohort: cohort_files.Cohort
    amendment: cohort_files.Amendment
    purged_rows: dict[str, int]


def amend_cohort(
    settings: Settings,
    name: str,
    add_file: Path | None,
    remove_file: Path | None,
    allow_missing: bool = False,
    source: Source | None = None,
) -> AmendResult:
    """Add and/or withdraw patients. Added ones get their own backfill at the next sync; withdrawn
    ones leave the sandbox now and their rows leave every file of the cohort's landing."""

    cohort_files.check_name(name)
    if add_file is None and remove_file is None:
        raise CohortError("nothing to amend: give --add FILE and/or --remove FILE")
    cohort = cohort_files.load(settings.cohorts_path, name)
    if cohort is None:
        raise CohortError(f"unknown cohort {name!r}")
    add = cohort_files.read_patients(add_file).ids if add_file else []
    remove = cohort_files.read_patients(remove_file).ids if remove_file else []
    current = set(cohort.member_ids())
    both = set(add) & set(remove)
    if both:
        raise CohortError(f"{len(both)} id(s) are both added and removed; amend in two steps")
    already = [i for i in add if i in current]
    if already:
        raise CohortError(f"{len(already)} of the ids to add are already members of {name} (e.g. {already[0]})")
    strangers = [i for i in remove if i not in current]
    if strangers:
        raise CohortError(f"{len(strangers)} of the ids to remove are not members of {name} (e.g. {strangers[0]})")
    if len(current) - len(remove) + len(add) == 0:
        raise CohortError(f"the amendment would leave {name} empty; use 'cohortsync remove-cohort {name} --purge'")
    keys = deid_keys(settings) if remove else None
    with open_state(settings) as state:
        state.lock(f"amend-cohort {name}")
        if keys is not None:
            state.check_key_fingerprint(keys.fingerprint)
            state.finish_relandings(open_landing(settings))
        src = source or open_source(settings)
        try:
            old_ids, old_batches = cohort.member_batches()
            number = len(cohort.amendments) + 1
            batch_of = dict(zip(old_ids, old_batches, strict=True))
            batch_of.update(dict.fromkeys(add, number))
            for i in remove:
                batch_of.pop(i)
            ids = sorted(batch_of)
            src.replace_members(name, pa.array(ids, pa.int64()), pa.array([batch_of[i] for i in ids], pa.int32()))
            try:
                if add:
                    check_missing(src, name, add, allow_missing, settings.source.omop_schema, "ids to add")
                new, amendment = cohort_files.amend(settings.cohorts_path, cohort, add, remove)
            except BaseException:
                src.replace_members(name, pa.array(old_ids, pa.int64()), pa.array(old_batches, pa.int32()))
                raise
            state.record_cohort(name, new.members, new.members_sha256, new.registered_at)
            purged: dict[str, int] = {}
            if remove and keys is not None:
                purged = purge(settings, state, keys, new, amendment)
            return AmendResult(new, amendment, purged)
        finally:
            if source is None:
                src.close()


def pending_purges(state: StateStore, cohort: cohort_files.Cohort) -> list[cohort_files.Amendment]:
    done = state.purged_amendments(cohort.name)
    return [a for a in cohort.amendments if a.remove_file and a.number not in done]


def purge(
    settings: Settings, state: StateStore, keys: Keys, cohort: cohort_files.Cohort, amendment: cohort_files.Amendment
) -> dict[str, int]:
    """Rewrite every landed file of the cohort that holds a row of the amendment's withdrawn persons.

    Each file is rewritten to a temporary name, fsynced and renamed over the original; the state's
    record of the table's files follows in one transaction. Idempotent: running it again finds
    nothing left to remove and records the purge as done.
    """
    assert amendment.remove_file is not None
    withdrawn = pa.array(cohort_files._read_ids(cohort.folder / amendment.remove_file), pa.int64())
    policy = load_policy(settings.policy_path)
    landing = open_landing(settings)
    marks = state.watermarks()
    tables = [t for t in omop.registry() if (cohort.name, t) in marks or landing.files(cohort.name, t)]
    removed: dict[str, int] = {}
    parent_keys: dict[str, pa.Array] = {}
    # Parents first, so a child linked through them (note_nlp -> note) knows which keys to drop.
    for table in sorted(tables, key=lambda t: omop.table(t).via_parent is not None):
        t = omop.table(table)
        if t.via_parent is None:
            column, values = "person_id", _as_landed(policy, keys, table, "person_id", "person", withdrawn)
        else:
            parent, column = t.via_parent
            if state.files(cohort.name, table) and not state.files(cohort.name, parent):
                # Without the parent landed we cannot tell which rows were the withdrawn persons': drop the
                # table's landing, so the next sync backfills it for the remaining members only.
                removed[table] = sum(f["rows"] for f in state.files(cohort.name, table))
                for n in landing.files(cohort.name, table):
                    landing.delete(cohort.name, table, n)
                state.forget_table(cohort.name, table)
                continue
            values = parent_keys.get(parent) or _keys_of(landing, state, cohort.name, parent, column, policy, keys, withdrawn)
        if any(t2.via_parent and t2.via_parent[0] == table for t2 in omop.registry().values()):
            parent_keys[table] = _keys_of(landing, state, cohort.name, table, t.primary_key or "", policy, keys, withdrawn)
        removed[table] = _purge_table(landing, state, cohort.name, table, column, values)
    state.record_purge(cohort.name, amendment.number, sum(removed.values()))
    return {t: n for t, n in removed.items() if n}


def _as_landed(policy: Policy, keys: Keys, table: str, column: str, domain: str, raw: pa.Array) -> pa.Array:
    rule = policy.rules(table).get(column)
    if rule is None or rule.action is Action.DROP:
        raise PolicyError(f"{table}.{column} is not landed, so withdrawn persons' rows cannot be found in {table}")
    if rule.action is Action.PSEUDONYMIZE:
        return pseudonymize(keys, rule.domain or domain, raw)
    return raw


def _keys_of(
    landing: Landing,
    state: StateStore,
    cohort: str,
    table: str,
    key: str,
    policy: Policy,
    keys: Keys,
    withdrawn: pa.Array,
) -> pa.Array:
    """The landed ``key`` values of the withdrawn persons' rows in ``table`` (e.g. their note_ids)."""
    persons = _as_landed(policy, keys, table, "person_id", "person", withdrawn)
    _check_present(landing, state, cohort, table)
    out: list[pa.Array] = []
    for f in state.files(cohort, table):
        pf = landing.parquet_file(cohort, table, f["name"])
        for b in pf.iter_batches(batch_size=65_536, columns=[key, "person_id"]):
            out.append(b.column(0).filter(pc.is_in(b.column(1), value_set=persons)))
    return pa.concat_arrays(out) if out else pa.array([], pa.int64())


def _check_present(landing: Landing, state: StateStore, cohort: str, table: str) -> None:
    """A withdrawal must reach every file: refuse rather than skip a missing or unreadable one (the
    next sync retries the purge). Only presence and readability: a purge that a crash interrupted
    leaves rewritten files whose size the state does not know yet, and finishing it records them."""
    for f in state.files(cohort, table):
        try:
            if landing.store.size(landing.rel(cohort, table, f["name"])) is None:
                raise FileNotFoundError
            landing.parquet_file(cohort, table, f["name"])
        except FileNotFoundError:
            problem = "missing"
        except (OSError, pa.ArrowException):
            problem = "not readable as Parquet"
        else:
            continue
        raise StateError(
            f"cannot purge the withdrawn persons: landed file {cohort}/{table}/{f['name']} is {problem}; "
            f"run 'cohortsync verify {cohort} --repair'"
        )


def _purge_table(landing: Landing, state: StateStore, cohort: str, table: str, column: str, values: pa.Array) -> int:
    _check_present(landing, state, cohort, table)
    updates: list[LandedFile] = []
    removed = 0
    for f in state.files(cohort, table):
        pf = landing.parquet_file(cohort, table, f["name"])
        hits = sum(pc.sum(pc.is_in(b.column(0), value_set=values)).as_py() or 0 for b in pf.iter_batches(columns=[column]))
        if not hits:
            rel = landing.rel(cohort, table, f["name"])
            if landing.store.size(rel) != f["bytes"]:  # rewritten by a purge killed before its record: record it now
                digest, size = landing.store.sha256(rel)
                updates.append(LandedFile(f["name"], pf.metadata.num_rows, size, digest))
                removed += f["rows"] - pf.metadata.num_rows
            continue
        tmp = f".tmp-purge-{os.getpid()}-{f['name']}"
        rows = 0
        target, seal = landing.create(cohort, table, tmp)
        schema = pf.schema_arrow
        with pq.ParquetWriter(target, schema, compression="zstd", use_dictionary=dictionary_columns(schema)) as w:
            for b in pf.iter_batches(batch_size=65_536):
                keep = b.filter(pc.invert(pc.is_in(b.column(column), value_set=values)))
                rows += keep.num_rows
                w.write_batch(keep)
        digest, size = seal()
        landing.replace(cohort, table, tmp, f["name"])
        updates.append(LandedFile(f["name"], rows, size, digest))
        removed += hits
        fault_point("mid_purge")
    if updates:
        landing.store.sync_dir(landing.rel(cohort, table))
        state.update_files(cohort, table, updates, removed)
    logs.event(
        log, logging.INFO, "cohort.purged", f"{cohort}/{table}: {removed:,} withdrawn rows purged",
        cohort=cohort, table=table, rows_removed=removed, files_rewritten=len(updates),
    )
    return removed


@dataclass(frozen=True)
class RemovalPlan:
    cohort: str
    files: int
    rows: int
    bytes: int
    members: int
    watermarks: int


def remove_cohort(settings: Settings, name: str, purge_data: bool, source: Source | None = None) -> RemovalPlan:
    """Retire a cohort. Without ``purge_data`` nothing happens: the plan says what would be deleted."""
    cohort_files.check_name(name)
    cohort = cohort_files.load(settings.cohorts_path, name)
    if cohort is None:
        raise CohortError(f"unknown cohort {name!r}")
    with open_state(settings) as state:
        state.lock(f"remove-cohort {name}")
        files = [f for t in omop.registry() for f in state.files(name, t)]
        marks = [k for k in state.watermarks() if k[0] == name]
        what = RemovalPlan(name, len(files), sum(f["rows"] for f in files), sum(f["bytes"] for f in files), cohort.members,
                           len(marks))
        if not purge_data:
            return what
        src = source or open_source(settings)
        try:
            src.delete_members(name)
        finally:
            if source is None:
                src.close()
        open_landing(settings).delete_cohort(name)
        state.forget_cohort(name)
        cohort_files.retire(settings.cohorts_path, cohort)
        return what
