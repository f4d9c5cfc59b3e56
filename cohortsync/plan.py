"""SQL generation: readable templates parsed by sqlglot, filled in as trees, rendered per dialect.

Databricks SQL is the canonical dialect of the templates; each source renders the finished tree in
its own dialect. Values never reach SQL as text: identifiers are quoted ``exp.Identifier`` nodes and
the only literals are cohort names (validated slugs) and window bounds (``datetime`` objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from cohortsync import omop
from cohortsync.cohorts import check_name

CANONICAL_DIALECT = "databricks"
# sqlglot imports a dialect (and its parents: spark, hive) on first use, ~25 ms for this one; pay it
# when the module loads, not inside the first sync or plan.
Dialect.get_or_raise(CANONICAL_DIALECT)
COHORT_COLUMN = "__cohort"
CODE_FLAG_PREFIX = "__code_"
"""Prefix of the per-pair booleans ``__code_<x_source_value>`` (sql_templates/source_code.sql): no
OMOP column starts with an underscore, and sync refuses a source column that starts with this."""


def code_flag(value_column: str) -> str:
    """The name of the boolean saying ``value_column`` equals its source concept's code."""
    return CODE_FLAG_PREFIX + value_column.lower()


@dataclass(frozen=True)
class Names:
    """Where things live in the source: ``catalog.schema.table`` for every name we render."""

    catalog: str | None
    omop_schema: str
    sandbox_schema: str
    members_table: str
    vocabulary_schema: str | None = None  # where the concept table lives; None: the OMOP schema

    def omop(self, table: str) -> exp.Table:
        return _table(self.catalog, self.omop_schema, table)

    def concept(self) -> exp.Table:
        return _table(self.catalog, self.vocabulary_schema or self.omop_schema, omop.CONCEPT_TABLE)

    def members(self) -> exp.Table:
        return _table(self.catalog, self.sandbox_schema, self.members_table)


@dataclass(frozen=True)
class Slice:
    """One cohort's share of a table scan: rows with ``lower < load_dt <= upper`` (no lower: backfill).

    ``new_after_batch``: members added by an amendment after this batch number get their own
    backfill in the same scan (``members.batch > n`` needs no lower bound).
    """

    cohort: str
    lower: datetime | None
    new_after_batch: int | None = None
    max_batch: int | None = None  # only members added up to this amendment (verify compares those)


def _table(catalog: str | None, schema: str, name: str) -> exp.Table:
    return exp.Table(
        this=exp.to_identifier(name, quoted=True),
        db=exp.to_identifier(schema, quoted=True),
        catalog=exp.to_identifier(catalog, quoted=True) if catalog else None,
    )


def _template_dir() -> Path:
    """Templates ship inside the wheel; in a source checkout they are read from ``sql_templates/``."""
    packaged = resources.files("cohortsync").joinpath("sql_templates")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql_templates"


@cache
def template(name: str) -> exp.Expression:
    text = (_template_dir() / f"{name}.sql").read_text(encoding="utf-8")
    parsed = sqlglot.parse_one(text, dialect=CANONICAL_DIALECT)
    assert isinstance(parsed, exp.Expression)
    for node in parsed.walk():
        node.comments = None  # the templates' comments are for readers of sql_templates/, not the engine
    return parsed


def column(name: str, table: str) -> exp.Column:
    """A quoted column reference; built from parts so a name like ``offset`` is never re-parsed."""
    return exp.Column(this=exp.Identifier(this=name, quoted=True), table=exp.Identifier(this=table, quoted=False))


_TIMESTAMP = exp.DataType.build("TIMESTAMP")  # built once: DataType.build parses its argument


def timestamp(value: datetime) -> exp.Expression:
    """A typed TIMESTAMP literal with microseconds, from a ``datetime`` (never from user text)."""
    if value.tzinfo is not None:
        raise ValueError("window bounds are naive UTC datetimes")
    literal = exp.Literal.string(value.isoformat(sep=" ", timespec="microseconds"))
    return exp.Cast(this=literal, to=_TIMESTAMP.copy())


def cohort_literal(name: str) -> exp.Literal:
    return exp.Literal.string(check_name(name))


def _fill(
    tree: exp.Expression,
    tables: dict[str, exp.Table] | None = None,
    values: dict[str, exp.Expression] | None = None,
    rename_columns: dict[str, str] | None = None,
) -> exp.Expression:
    """Replace placeholder tables, ``:name`` placeholders and placeholder columns in a copy of ``tree``."""
    tables = tables or {}
    values = values or {}
    rename_columns = rename_columns or {}

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and not node.args.get("db") and node.name in tables:
            new = tables[node.name].copy()
            if node.alias:
                new.set("alias", node.args["alias"].copy())
            return new
        if isinstance(node, exp.Placeholder) and node.name in values:
            return values[node.name].copy()
        if isinstance(node, exp.Column) and node.name in rename_columns:
            return column(rename_columns[node.name], node.table)
        return node

    out = tree.copy().transform(swap)
    left = [p.name for p in out.find_all(exp.Placeholder)]
    if left:
        raise ValueError(f"unfilled SQL placeholders: {left}")
    return out


def extraction(
    table: omop.Table,
    columns: list[str],
    slices: list[Slice],
    upper: datetime,
    names: Names,
    codes: Sequence[tuple[str, str]] = (),
) -> exp.Select:
    """The one-scan extraction of ``table`` for ``slices``; columns are the source's, in its order.

    ``codes``: ``(x_source_value, x_source_concept_id)`` pairs, as the source spells them, for which
    a boolean :func:`code_flag` column is appended (sql_templates/source_code.sql).
    """
    if not slices:
        raise ValueError("no cohort is due")
    src_cols: list[exp.Expression] = [column(c, "src") for c in columns]
    load_dt = column(omop.LOAD_DT, "src")
    known = [s.lower for s in slices if s.lower is not None and s.new_after_batch is None]
    # A bare-column lower bound lets engines skip files and row groups; only valid if nobody backfills.
    floor = min(known) if len(known) == len(slices) else None
    lower: exp.Expression = exp.GT(this=load_dt, expression=timestamp(floor)) if floor else exp.true()
    windows: list[exp.Expression] = []
    for s in sorted(slices, key=lambda s: s.cohort):
        cond: exp.Expression = exp.EQ(this=column("cohort", "members"), expression=cohort_literal(s.cohort))
        if s.lower is not None and s.lower != floor:
            since: exp.Expression = exp.GT(this=load_dt.copy(), expression=timestamp(s.lower))
            if s.new_after_batch is not None:
                added = exp.GT(this=column("batch", "members"), expression=exp.Literal.number(int(s.new_after_batch)))
                since = exp.Paren(this=exp.Or(this=since, expression=added))
            cond = exp.And(this=cond, expression=since)
        if s.max_batch is not None:
            limit = exp.LTE(this=column("batch", "members"), expression=exp.Literal.number(int(s.max_batch)))
            cond = exp.And(this=cond, expression=limit)
        windows.append(cond)
    tables = {"omop_table": names.omop(table.name), "members_table": names.members()}
    rename: dict[str, str] = {}
    if table.via_parent is None:
        tpl = template("extract")
    else:
        parent, key = table.via_parent
        tpl = template("extract_via_parent")
        tables["parent_table"] = names.omop(parent)
        rename["parent_key"] = key
    filled = _fill(
        tpl,
        tables=tables,
        values={
            "columns": exp.Tuple(expressions=src_cols),  # unpacked below
            "upper": timestamp(upper),
            "lower": lower,
            "windows": _or(windows),
        },
        rename_columns=rename,
    )
    assert isinstance(filled, exp.Select)
    # Expand the column tuple into individual select items.
    items: list[exp.Expression] = []
    for e in filled.expressions:
        items.extend(e.expressions if isinstance(e, exp.Tuple) else [e])
    for value_column, concept_column in codes:
        flag = _fill(
            template("source_code"),
            tables={"concept_table": names.concept()},
            rename_columns={"value_column": value_column, "concept_column": concept_column},
        )
        items.append(exp.Alias(this=flag, alias=exp.to_identifier(code_flag(value_column), quoted=True)))
    filled.set("expressions", items)
    return _simplify_true(filled)


def concept_probe(names: Names) -> exp.Select:
    """``SELECT concept_id, concept_code ... LIMIT 0``: fails unless both columns can be read."""
    cols = [column(omop.CONCEPT_ID, "vocab"), column(omop.CONCEPT_CODE, "vocab")]
    return exp.select(*cols).from_(names.concept().as_("vocab"), copy=False).limit(exp.Literal.number(0), copy=False)


def _or(conds: list[exp.Expression]) -> exp.Expression:
    out = conds[0]
    for c in conds[1:]:
        out = exp.Or(this=out, expression=c)
    return out


def _simplify_true(q: exp.Select) -> exp.Select:
    """Drop ``AND TRUE`` left by a backfill so the rendered SQL reads as a person would write it."""

    def strip(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.And):
            left: exp.Expression = node.this
            right: exp.Expression = node.expression
            if isinstance(right, exp.Boolean) and right.this is True:
                return left
            if isinstance(left, exp.Boolean) and left.this is True:
                return right
        return node

    return q.transform(strip)  # type: ignore[return-value]


def max_load_dt(table: str, names: Names) -> exp.Expression:
    return _fill(template("max_load_dt"), tables={"omop_table": names.omop(table)})


def max_load_dts(tables: list[str], names: Names) -> exp.Expression:
    """Every table's upper bound in one statement (one round trip; on a warehouse, one query to bill).

    A ``UNION ALL`` of one aggregate per table, each row tagged with the table's position: DuckDB
    answers each branch from its column statistics (0.3 ms a table on 36 M rows), where the same
    aggregates as scalar subqueries of one ``SELECT`` were planned as cross products (20 ms).
    """
    branches = []
    for i, t in enumerate(tables):
        one = _fill(template("max_load_dt"), tables={"omop_table": names.omop(t)})
        assert isinstance(one, exp.Select)
        branches.append(one.select(exp.alias_(exp.Literal.number(i), "i"), append=False).select(*one.expressions, copy=False))
    out: exp.Expression = branches[0]
    for b in branches[1:]:
        out = exp.union(out, b, distinct=False, copy=False)
    return out


def missing_persons(cohort: str, names: Names) -> exp.Expression:
    return _fill(
        template("missing_persons"),
        tables={"members_table": names.members(), "person_table": names.omop("person")},
        values={"cohort": cohort_literal(cohort)},
    )


def member_digests(names: Names) -> exp.Expression:
    return _fill(template("member_digests"), tables={"members_table": names.members()})


DIGEST_PRIME = 2_147_483_647  # 2^31 - 1, as in member_digests.sql


def member_digest(person_ids: Sequence[int], batches: Sequence[int]) -> tuple[int, int, int, int]:
    """What ``member_digests`` returns for a cohort whose sandbox rows are exactly these (id, batch)
    pairs: count, sum of id mod p, sum of (id div p) mod p, sum of (id mod p)(batch + 1) mod p."""
    ids = np.asarray(person_ids, dtype=np.int64)
    low = ids % DIGEST_PRIME
    with_batch = low * (np.asarray(batches, dtype=np.int64) + 1) % DIGEST_PRIME
    return len(ids), int(low.sum()), int((ids // DIGEST_PRIME % DIGEST_PRIME).sum()), int(with_batch.sum())


def members_ddl(names: Names) -> exp.Expression:
    return _fill(template("members_ddl"), tables={"members_table": names.members()})


def members_delete(cohort: str, names: Names) -> exp.Expression:
    return _fill(template("members_delete"), tables={"members_table": names.members()}, values={"cohort": cohort_literal(cohort)})


def create_schema(catalog: str | None, schema: str) -> exp.Expression:
    target = exp.Table(
        this=exp.to_identifier(schema, quoted=True),
        db=exp.to_identifier(catalog, quoted=True) if catalog else None,
    )
    return exp.Create(this=target, kind="SCHEMA", exists=True)


def select_columns(table: str, columns: list[str], names: Names) -> exp.Select:
    return exp.select(*[column(c, "t") for c in columns]).from_(names.omop(table).as_("t"))


def select_nothing(table: str, names: Names) -> exp.Select:
    """``SELECT * ... LIMIT 0``: the source's actual columns and types, at no scan cost."""
    return exp.Select(expressions=[exp.Star()]).from_(names.omop(table), copy=False).limit(exp.Literal.number(0), copy=False)


def render(q: exp.Expression, dialect: str, pretty: bool = False) -> str:
    return q.sql(dialect=dialect, pretty=pretty, identify=False)

