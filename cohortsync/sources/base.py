"""The source interface shared by every engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

import pyarrow as pa
from sqlglot import exp

from cohortsync import plan
from cohortsync.errors import SourceError


class Source(Protocol):
    dialect: str
    names: plan.Names

    def stream(self, query: exp.Expression, batch_rows: int) -> AbstractContextManager[pa.RecordBatchReader]:
        """Run a query and stream its result; memory is bounded by the batch, not the result."""
        ...

    def columns(self, table: str) -> list[str]:
        """The OMOP table's actual column names, as the engine reports them (no rows are read)."""
        ...

    def rows(self, query: exp.Expression) -> list[tuple[object, ...]]:
        """Run a query whose result is small (a max, a count, a few examples) and return it."""
        ...

    def execute(self, statement: exp.Expression) -> None:
        """Run a statement that returns nothing (DDL, DELETE)."""
        ...

    def replace_members(self, cohort: str, person_ids: pa.Array, batch: int | pa.Array = 0) -> None:
        """Make the sandbox hold exactly ``person_ids`` for ``cohort`` (idempotent; creates the table).

        ``batch`` numbers the amendment that added each member (one number for all, or one per id).
        """
        ...

    def release_threads(self) -> None:
        """Close what other threads opened: sync calls it when its table workers are done, so each
        run's workers start fresh sessions (a warehouse session may cache a table's file listing)."""
        ...

    def delete_members(self, cohort: str) -> None:
        """Remove every sandbox row of ``cohort`` (undoing a refused registration, retiring a cohort)."""
        ...

    def close(self) -> None: ...


def upper_bound(source: Source, table: str) -> datetime | None:
    """The table's current ``max(load_dt)``: the fixed upper end of this run's windows."""
    ((value,),) = source.rows(plan.max_load_dt(table, source.names))
    if value is not None and not isinstance(value, datetime):
        raise SourceError(f"{table}.load_dt is not a TIMESTAMP column")
    return value


def upper_bounds(source: Source, tables: list[str]) -> dict[str, datetime | None]:
    """All tables' ``max(load_dt)`` in one query; raises if any table cannot be read."""
    if not tables:
        return {}
    found = {int(str(i)): value for i, value in source.rows(plan.max_load_dts(tables, source.names))}
    if sorted(found) != list(range(len(tables))):
        raise SourceError("the upper-bound query did not return one row per table")
    out = {}
    for i, t in enumerate(tables):
        value = found[i]
        if value is not None and not isinstance(value, datetime):
            raise SourceError(f"{t}.load_dt is not a TIMESTAMP column")
        out[t] = value
    return out


def batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
