"""cohortsync: weekly, de-identified, watermark-based sync of approved OMOP cohorts.

The data's path through the package: ``cohorts`` (approved lists) → ``plan`` (sqlglot) → ``sources``
(DuckDB, Databricks) → ``deid`` (policy, keyed transforms, free text) → ``landing`` (Parquet) →
``state`` (SQLite); ``sync`` runs one sync start to commit and ``api`` is what the CLI calls.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cohortsync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
