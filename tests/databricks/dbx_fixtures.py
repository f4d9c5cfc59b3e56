"""Fixtures of the Databricks tiers: the shared test OMOP data and a local SparkSession.

Imported by name into the test modules that use them, not kept in a ``conftest.py``: the repository's
tests do ``from conftest import ...``, which a second conftest module would shadow.

Both tiers need Java 17 (Spark 4). Where it is missing the tiers are skipped with that reason on a
developer's machine and fail under CI (``CI=true``), so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import omopdata
import pytest
from dbx_env import require_java


@pytest.fixture(scope="session")
def omop_db(eunomia_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eunomia plus notes: the DuckDB reference both Spark tiers are compared against (read-only use)."""
    return omopdata.build(eunomia_db, tmp_path_factory.mktemp("dbx") / "dbx_omop.duckdb")


@pytest.fixture(scope="session")
def omop_parquet(omop_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return omopdata.export_parquet(omop_db, tmp_path_factory.mktemp("dbx-parquet"))


@pytest.fixture(scope="session")
def spark(omop_parquet: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local SparkSession (2 threads, UTC, UI off, fresh warehouse) holding the test OMOP tables."""
    require_java()
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import SparkSession

    work = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("cohortsync-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(work / "warehouse"))
        .config("spark.driver.memory", "1g")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={work}")
        .getOrCreate()
    )
    try:
        session.sql("CREATE SCHEMA IF NOT EXISTS `spark_catalog`.`omop`")
        for table, path in omop_parquet.items():
            session.sql(omopdata.spark_ctas("spark_catalog", table, path))
        yield session
    finally:
        session.stop()
