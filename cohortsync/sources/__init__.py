"""Sources: the engines cohortsync reads OMOP tables from and writes cohort membership into.

A source is deliberately small (see :class:`Source`): render a sqlglot tree in its dialect, stream a
query's result as Arrow record batches, run a statement, and replace a cohort's rows in the sandbox
membership table. Everything engine-specific stays behind it, so sync, plan and landing are shared.
"""

from __future__ import annotations

from cohortsync.config import Settings
from cohortsync.sources.base import Source
from cohortsync.sources.duckdb import DuckDBSource  # the embedded default; Databricks loads on demand


def open_source(settings: Settings) -> Source:
    """Open the source the configuration names."""
    if settings.source.kind == "duckdb":
        return DuckDBSource.from_settings(settings)
    if settings.source.kind == "databricks":
        from cohortsync.sources.databricks import DatabricksSource

        return DatabricksSource.from_settings(settings)
    raise AssertionError(f"unhandled source kind {settings.source.kind}")


__all__ = ["Source", "open_source"]
