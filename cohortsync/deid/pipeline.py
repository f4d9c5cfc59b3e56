"""Applying the policy to a stream: the step between the source and the landing.

Every batch of every table passes through :meth:`Deidentifier.apply` before it is fanned out to the
cohorts' writers; nothing reaches a Parquet writer any other way. Keyed work happens here, in
cohortsync's own process, never in SQL sent to the source (its query history would keep the key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from cohortsync import omop, plan
from cohortsync.deid import structured
from cohortsync.deid.policy import Action, Policy
from cohortsync.errors import DeidError

PERSON_COLUMN = "__person_id"  # the parent's person_id, selected for tables linked through a parent


class TextScrubber(Protocol):
    def scrub(self, texts: pa.Array, shift_days: pa.Array, column: str | None = None) -> tuple[pa.Array, object]: ...


@dataclass(frozen=True)
class TablePlan:
    """What the policy makes of one source table: the columns to select and what it reported."""

    table: str
    select: list[str]
    absent: list[str]  # policy columns the source does not have (reported, not an error)
    text_columns: list[str]
    # (x_source_value, x_source_concept_id) as the source spells them: source values that land as
    # written where they equal their own source concept's code (plan.code_flag says which rows).
    codes: list[tuple[str, str]] = field(default_factory=list)


def prepare(policy: Policy, table: omop.Table, source_columns: list[str], vocabulary: bool = False) -> TablePlan:
    """Fail closed on schema drift; decide what to select (dropped columns never leave the source).

    ``vocabulary``: the source has a readable concept table, so each scrubbed source value with a
    source concept id beside it is checked against its concept's code in the query.
    Used by sync and by ``cohortsync plan``, so the SQL that plan prints is the SQL sync runs.
    """
    select, absent = policy.check_columns(table.name, source_columns)
    rules = policy.rules(table.name)
    text = [c for c in select if rules[c.lower()].action is Action.SCRUB_TEXT]
    return TablePlan(table.name, select, absent, text, code_pairs(policy, table, source_columns) if vocabulary else [])


def code_pairs(policy: Policy, table: omop.Table, source_columns: list[str]) -> list[tuple[str, str]]:
    """The spec's (source value, source concept id) pairs of ``table`` whose value the policy scrubs
    and whose two columns the source has, in the source's spelling (a kept or dropped value needs no
    check; a value without its concept id cannot be vouched for)."""
    rules = policy.rules(table.name)
    spelled = {c.lower(): c for c in source_columns}
    return [
        (spelled[value], spelled[concept])
        for value, concept in omop.source_code_pairs(table)
        if value in spelled and concept in spelled and rules.get(value) is not None
        and rules[value].action is Action.SCRUB_TEXT
    ]


def order_key(table: omop.Table) -> str:
    """The column whose landed value keys a table's load_dt order map: the primary key, or for a
    table without one (death) the person."""
    return table.primary_key or "person_id"


@dataclass
class Deidentifier:
    policy: Policy
    keys: structured.Keys
    scrubber: TextScrubber | None = None
    shift_min_days: int = 1
    shift_max_days: int = 182
    max_age: int = 89

    def prepare(self, table: omop.Table, source_columns: list[str]) -> TablePlan:
        return prepare(self.policy, table, source_columns)

    def apply(self, table: omop.Table, batch: pa.RecordBatch, reference_year: int) -> pa.RecordBatch:
        rules = self.policy.rules(table.name)
        names = batch.schema.names
        person_col = PERSON_COLUMN if PERSON_COLUMN in names else "person_id"
        days: pa.Array | None = None
        out_cols: list[pa.Array] = []
        out_names: list[str] = []
        ordered: list[int] = []  # positions of order_only columns, filled once the row keys are landed
        prefix = plan.CODE_FLAG_PREFIX
        codes = {n.removeprefix(prefix): batch.column(i) for i, n in enumerate(names) if n.startswith(prefix)}
        for name, col in zip(names, batch.columns, strict=True):
            if name == PERSON_COLUMN or name.startswith(prefix):
                continue  # read above or below; never landed
            if name == plan.COHORT_COLUMN:
                out_cols.append(col)
                out_names.append(name)
                continue
            rule = rules[name.lower()]  # prepare() guaranteed a rule for every selected column
            if rule.action is Action.KEEP:
                new = col
            elif rule.action is Action.ORDER_ONLY:
                ordered.append(len(out_cols))
                new = col
            elif rule.action is Action.PSEUDONYMIZE:
                assert rule.domain is not None
                new = structured.pseudonymize(self.keys, rule.domain, col)
            elif rule.action is Action.GENERALIZE:
                new = structured.top_code_year_of_birth(col, reference_year, self.max_age)
            elif rule.action in (Action.SHIFT_DATE, Action.SCRUB_TEXT):
                if days is None:
                    days = self._days(batch, person_col)
                if rule.action is Action.SHIFT_DATE:
                    new = structured.shift_dates(col, days)
                else:
                    if self.scrubber is None:
                        raise DeidError(f"{table.name}.{name} needs text scrubbing but no text scrubber is running")
                    new = _scrub(self.scrubber, col, days, f"{table.name}.{name.lower()}", codes.get(name.lower()))
            else:  # DROP: never selected, so never here
                raise DeidError(f"{table.name}.{name} is dropped by the policy but was selected")
            out_cols.append(new)
            out_names.append(name)
        if ordered:
            row_key = order_key(table)
            if row_key not in out_names:
                raise DeidError(f"{table.name}: load_dt is order_only, which needs {row_key} landed")
            k = out_cols[out_names.index(row_key)]
            for i in ordered:
                out_cols[i] = structured.order_only(self.keys, table.name, k, out_cols[i])
        return pa.RecordBatch.from_arrays(out_cols, names=out_names)

    def _days(self, batch: pa.RecordBatch, person_col: str) -> pa.Array:
        if person_col not in batch.schema.names:
            raise DeidError("date shifting needs the row's person_id, which the query did not select")
        return structured.shift_days(self.keys, batch.column(person_col), self.shift_max_days, self.shift_min_days)


def _scrub(scrubber: TextScrubber, col: pa.Array, days: pa.Array, column: str, is_code: pa.Array | None) -> pa.Array:
    """Scrub a text column, except the values the query found equal to their own source concept's
    code (``is_code`` true): those land as written and never reach the scrubber. A null flag is
    false, so a value is kept only on the query's explicit word."""
    text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type)
    if is_code is None or not text:  # a source value typed as a number: scrubbed as it always was
        return scrubber.scrub(col, days, column)[0]
    keep = pc.fill_null(is_code, False)
    if not pc.any(keep).as_py():
        return scrubber.scrub(col, days, column)[0]
    rest = pc.invert(keep)
    if not pc.any(rest).as_py():
        return col
    # filter and replace_with_mask have no kernels for string_view: such a column is split as large_string
    plain = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    work = col if plain else col.cast(pa.large_string())
    scrubbed, _stats = scrubber.scrub(work.filter(rest), days.filter(rest), column)
    merged = pc.replace_with_mask(work, rest, scrubbed.cast(work.type))
    return merged if plain else merged.cast(col.type)
