"""Connector tier (inner half): cohortsync's Databricks source, through the real
``databricks-sql-connector``, against the stock Spark Thrift Server.

Not collected by a plain ``pytest`` (the file name does not start with ``test_``):
``test_connector.py`` runs it in a private network namespace, as the server needs. Running it
directly in a shared network is refused by :func:`thrift_server.assert_private_network`.
"""

# ruff: noqa: F811  (fixtures imported from dbx_fixtures are parameters here)
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from compat import install
from dbx_env import require_java
from dbx_fixtures import omop_db, omop_parquet  # noqa: F401  (fixtures)
from omopdata import spark_ctas
from thrift_server import ThriftServer, free_port

from cohortsync import api, omop, plan
from cohortsync.config import Settings, settings_from_dict
from cohortsync.errors import CohortError, SourceError, TransientSourceError
from cohortsync.sources.databricks import DatabricksSource
from conftest import keep_everything_policy, structured_only_policy

REPO = Path(__file__).resolve().parents[2]
TABLES = ["person", "condition_occurrence", "drug_exposure", "note", "note_nlp"]
BIG = 250_000
DEID_KEY = "connector-tier-key-0123456789abcdef0123"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThriftServer]:
    require_java()
    s = ThriftServer(tmp_path_factory.mktemp("thrift"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def loaded(server: ThriftServer, omop_parquet: dict[str, Path]) -> ThriftServer:
    """The test OMOP tables, created on the server through the connector itself."""
    from databricks import sql as dbsql

    install()
    options = {"server_hostname": "127.0.0.1", "http_path": "cliservice", "enable_telemetry": False}
    with dbsql.connect(**options, **server.connect_options()) as c, c.cursor() as cur:
        cur.execute("CREATE SCHEMA IF NOT EXISTS `spark_catalog`.`omop`")
        for table, path in omop_parquet.items():
            cur.execute(spark_ctas("spark_catalog", table, path))
    return server


def settings_for(root: Path, server: ThriftServer, **source: Any) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    (root / "keep_everything.toml").write_text(keep_everything_policy(), encoding="utf-8")
    return settings_from_dict(
        {
            "source": {"kind": "databricks", "server_hostname": "127.0.0.1", "http_path": "cliservice",
                       "catalog": "spark_catalog", **source},
            "sync": {"tables": TABLES},
            "deid": {"policy": "keep_everything.toml"},
        },
        base_dir=root,
    )  # fmt: skip


def counts(src: DatabricksSource) -> list[tuple[object, object]]:
    """Members per cohort in the sandbox, from the digest query sync runs before every extraction."""
    return [(r[0], r[1]) for r in src.rows(plan.member_digests(src.names))]


def open_source(settings: Settings, server: ThriftServer) -> DatabricksSource:
    return DatabricksSource.from_settings(settings, connect_options=server.connect_options())


def test_a_result_larger_than_many_fetches_arrives_complete(loaded: ThriftServer, tmp_path: Path) -> None:
    src = open_source(settings_for(tmp_path, loaded), loaded)
    q = sqlglot.parse_one(
        f"SELECT id, CAST(id AS STRING) AS s, TIMESTAMP '2026-01-01 00:00:00' + make_interval(0, 0, 0, 0, 0, 0, id) AS t "
        f"FROM range(0, {BIG})",
        dialect="databricks",
    )
    sizes, total, ids = [], 0, 0
    try:
        with src.stream(q, 10_000) as reader:
            assert reader.schema.names == ["id", "s", "t"]
            for batch in reader:
                sizes.append(batch.num_rows)
                total += batch.num_rows
                ids += pa.compute.sum(batch.column("id")).as_py()
    finally:
        src.close()
    assert total == BIG and ids == BIG * (BIG - 1) // 2  # complete: every id exactly once
    assert max(sizes) <= 10_000 and len(sizes) >= BIG // 10_000  # bounded batches, many fetches


def duck_count(db: Path, table: str, ids: list[int], after: str | None = None) -> int:
    """Oracle for landed rows: plain SQL on the DuckDB reference, independent of cohortsync's SQL."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        id_list = ",".join(str(i) for i in ids)
        t = f"omop.{table}"
        if table == "note_nlp":
            frm = f"{t} x JOIN omop.note n ON x.note_id = n.note_id WHERE n.person_id IN ({id_list})"
        else:
            frm = f"{t} x WHERE x.person_id IN ({id_list})"
        if after:
            frm += f" AND x.load_dt > TIMESTAMP '{after}'"
        return int(con.sql(f"SELECT count(*) FROM {frm}").fetchall()[0][0])
    finally:
        con.close()


def landed_count(root: Path, cohort: str, table: str) -> int:
    files = list((root / "landing" / cohort / table).glob("*.parquet"))
    if not files:
        return 0
    return sum(pa.parquet.ParquetFile(f).metadata.num_rows for f in files)


def test_add_cohort_sync_and_incremental_sync(
    loaded: ThriftServer, omop_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet  # noqa: F401  (pa.parquet)

    monkeypatch.setenv("COHORTSYNC_DEID_KEY", DEID_KEY)
    settings = settings_for(tmp_path, loaded)
    con = duckdb.connect(str(omop_db), read_only=True)
    ids = [r[0] for r in con.sql("SELECT person_id FROM omop.person ORDER BY 1").fetchall()]
    con.close()
    alpha = ids[::3]
    (tmp_path / "alpha.txt").write_text("\n".join(map(str, alpha)) + "\n", encoding="ascii")

    src = open_source(settings, loaded)
    try:
        added = api.add_cohort(settings, "alpha", tmp_path / "alpha.txt", source=src)
        assert added.cohort.members == len(alpha) and added.missing == 0
        digests = {r[0]: tuple(r[1:]) for r in src.rows(plan.member_digests(src.names))}
        assert digests == {"alpha": plan.member_digest(sorted(alpha), [0] * len(alpha))}

        first = api.sync(settings, source=src)
        assert not first.failed, [(o.table, o.error) for o in first.failed]  # type: ignore[attr-defined]
        for table in TABLES:
            want = duck_count(omop_db, table, alpha)
            assert want > 0 and landed_count(tmp_path, "alpha", table) == want, table

        # A new weekly load arrives on the "warehouse": 1 in 40 condition rows again, new ids.
        ((last,),) = src.rows(plan.max_load_dt("condition_occurrence", src.names))
        new_load = last
        cols = omop.all_tables()["condition_occurrence"].column_names
        select = ", ".join(
            "condition_occurrence_id + 1000000000" if c == "condition_occurrence_id" else f"`{c}`" for c in cols
        )
        src.execute(
            sqlglot.parse_one(
                f"INSERT INTO spark_catalog.omop.condition_occurrence SELECT {select}, "
                f"TIMESTAMP '{new_load.isoformat(sep=' ')}' + INTERVAL 7 DAYS "
                f"FROM spark_catalog.omop.condition_occurrence WHERE condition_occurrence_id % 40 = 0",
                dialect="databricks",
            )
        )
        con = duckdb.connect(str(omop_db), read_only=True)
        (new_for_alpha,) = con.sql(
            "SELECT count(*) FROM omop.condition_occurrence WHERE condition_occurrence_id % 40 = 0 "
            f"AND person_id IN ({','.join(map(str, alpha))})"
        ).fetchall()[0]
        con.close()
        assert new_for_alpha > 0
        before = landed_count(tmp_path, "alpha", "condition_occurrence")

        second = api.sync(settings, source=src)
        assert not second.failed
        by_table = {o.table: o.rows for o in second.outcomes}  # type: ignore[attr-defined]
        assert by_table.get("condition_occurrence") == new_for_alpha
        assert sum(v for k, v in by_table.items() if k != "condition_occurrence") == 0
        assert landed_count(tmp_path, "alpha", "condition_occurrence") == before + new_for_alpha

        third = api.sync(settings, source=src)  # nothing new: nothing pulled
        assert third.rows == 0
    finally:
        src.close()


def test_upload_of_a_large_cohort_is_one_copy_after_a_rerun(loaded: ThriftServer, tmp_path: Path) -> None:
    src = open_source(settings_for(tmp_path, loaded, members_table="big_members"), loaded)
    ids = pa.array(range(1, 30_001), pa.int64())
    try:
        src.replace_members("big", ids)
        src.replace_members("big", ids)
        src.replace_members("small", pa.array([5, 6], pa.int64()), pa.array([0, 3], pa.int32()))
        assert sorted(counts(src)) == [("big", 30_000), ("small", 2)]
        q = sqlglot.parse_one(
            "SELECT person_id, batch FROM spark_catalog.sandbox.big_members WHERE cohort = 'small' ORDER BY 1",
            dialect="databricks",
        )
        assert src.rows(q) == [(5, 0), (6, 3)]
        src.delete_members("big")
        assert counts(src) == [("small", 2)]
    finally:
        src.close()


def test_a_refused_cohort_leaves_nothing_in_the_sandbox(loaded: ThriftServer, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, loaded, members_table="refused_members")
    (tmp_path / "ids.txt").write_text("1\n2\n900000000001\n", encoding="ascii")  # the last is not in person
    src = open_source(settings, loaded)
    try:
        with pytest.raises(CohortError, match=r"not in omop\.person"):
            api.add_cohort(settings, "refused", tmp_path / "ids.txt", source=src)
        assert counts(src) == []
    finally:
        src.close()


def test_missing_table_is_a_clear_error(loaded: ThriftServer, tmp_path: Path) -> None:
    src = open_source(settings_for(tmp_path, loaded, omop_schema="no_such_schema"), loaded)
    try:
        with pytest.raises(SourceError) as e:
            src.rows(plan.max_load_dt("person", src.names))
    finally:
        src.close()
    assert not isinstance(e.value, TransientSourceError)
    assert str(e.value).startswith("Databricks: table or view not found: `spark_catalog`.`no_such_schema`.`person`")
    assert "\n" not in str(e.value)


def test_query_timeout_cancels_and_says_so(loaded: ThriftServer, tmp_path: Path) -> None:
    src = open_source(settings_for(tmp_path, loaded, query_timeout_s=3), loaded)
    slow = sqlglot.parse_one(
        "SELECT count(*) FROM range(0, 400000) a CROSS JOIN range(0, 400000) b WHERE a.id + b.id = -1", dialect="databricks"
    )
    src.connection()  # the session opens before the clock starts: only the query is timed
    started = time.monotonic()
    try:
        with pytest.raises(SourceError) as e:
            src.rows(slow)
        waited = time.monotonic() - started
    finally:
        src.close()
    assert "query timed out" in str(e.value) and "query_timeout_s" in str(e.value)
    assert not isinstance(e.value, TransientSourceError)
    # Not before the 3 s timeout, and cancelled rather than left to run: the cross join never ends on
    # its own. The upper bound is a generous liveness guard (a cancel normally lands within one 5 s
    # status poll), loose enough for a busy machine yet below the 95 s a watchdog-thread cancel took
    # when it queued behind the polling thread's request lock.
    assert 3 <= waited < 60


def test_unreachable_warehouse_is_transient_and_retried(tmp_path: Path, loaded: ThriftServer) -> None:
    settings = settings_for(tmp_path, loaded, retries=2)
    options = {**loaded.connect_options(), "_connection_uri": f"http://127.0.0.1:{free_port()}/cliservice"}
    src = DatabricksSource.from_settings(settings, connect_options=options)
    src.backoff_s = 0.2
    started = time.monotonic()
    with pytest.raises(TransientSourceError) as e:
        src.rows(plan.max_load_dt("person", src.names))
    assert "unreachable (connection refused)" in str(e.value) and "gave up after 3 attempts" in str(e.value)
    assert time.monotonic() - started < 60


def structured_policy(root: Path) -> str:
    (root / "structured.toml").write_text(structured_only_policy(), encoding="utf-8")
    return "structured.toml"


def mirror_into_duckdb(src: DatabricksSource, db: Path) -> None:
    """Copy what the warehouse holds now (other tests add loads to it) into a DuckDB OMOP database."""
    con = duckdb.connect(str(db))
    try:
        con.execute("CREATE SCHEMA IF NOT EXISTS omop; CREATE SCHEMA IF NOT EXISTS sandbox")
        for table in TABLES:
            with src.stream(sqlglot.exp.select("*").from_(src.names.omop(table)), 50_000) as reader:
                data = reader.read_all()
            con.register("incoming", data)
            con.execute(f"CREATE TABLE omop.{table} AS SELECT * FROM incoming")
            con.unregister("incoming")
    finally:
        con.close()


def landed_rows(root: Path, cohort: str, table: str) -> list[tuple[Any, ...]]:
    files = sorted((root / "landing" / cohort / table).glob("*.parquet"))
    if not files:
        return []
    con = duckdb.connect()
    try:
        return sorted(con.execute("SELECT * FROM read_parquet($f)", {"f": [str(f) for f in files]}).fetchall(), key=repr)
    finally:
        con.close()


def test_the_same_scenario_lands_identical_rows_through_duckdb_and_databricks(
    loaded: ThriftServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cohorts, backfill, a new load, incremental: byte-for-byte the same rows in both landings
    (same key, so the same pseudonyms and date shifts), through two different engines."""
    monkeypatch.setenv("COHORTSYNC_DEID_KEY", DEID_KEY)
    dbx_root, duck_root = tmp_path / "dbx", tmp_path / "duck"
    dbx_root.mkdir()
    dbx = settings_from_dict(
        {"source": {"kind": "databricks", "server_hostname": "127.0.0.1", "http_path": "cliservice",
                    "catalog": "spark_catalog"},
         "sync": {"tables": TABLES}, "deid": {"policy": structured_policy(dbx_root)}},
        base_dir=dbx_root,
    )  # fmt: skip
    src = open_source(dbx, loaded)
    try:
        mirror_into_duckdb(src, tmp_path / "mirror.duckdb")
        duck_root.mkdir()
        duck = settings_from_dict(
            {"source": {"kind": "duckdb", "database": str(tmp_path / "mirror.duckdb")}, "sync": {"tables": TABLES},
             "deid": {"policy": structured_policy(duck_root)}},
            base_dir=duck_root,
        )  # fmt: skip
        con = duckdb.connect(str(tmp_path / "mirror.duckdb"), read_only=True)
        ids = [r[0] for r in con.execute("SELECT person_id FROM omop.person ORDER BY 1").fetchall()]
        con.close()
        cohorts = {"same-alpha": ids[::3], "same-beta": ids[::5]}
        for name, members in cohorts.items():
            f = tmp_path / f"{name}.txt"
            f.write_text("\n".join(map(str, members)) + "\n", encoding="ascii")
            api.add_cohort(dbx, name, f, source=src)
            api.add_cohort(duck, name, f)
        assert not api.sync(dbx, list(cohorts), source=src).failed
        assert not api.sync(duck, list(cohorts)).failed

        # A new weekly load on the warehouse, mirrored into DuckDB row for row.
        ((last,),) = src.rows(plan.max_load_dt("drug_exposure", src.names))
        new_load = (last + timedelta(days=7)).isoformat(sep=" ")
        cols = omop.all_tables()["drug_exposure"].column_names
        select = ", ".join("drug_exposure_id + 2000000000" if c == "drug_exposure_id" else f"`{c}`" for c in cols)
        src.execute(
            sqlglot.parse_one(
                f"INSERT INTO spark_catalog.omop.drug_exposure SELECT {select}, TIMESTAMP '{new_load}' "
                "FROM spark_catalog.omop.drug_exposure WHERE drug_exposure_id % 50 = 0 AND drug_exposure_id < 2000000000",
                dialect="databricks",
            )
        )
        mirror_new_rows(src, tmp_path / "mirror.duckdb", "drug_exposure", new_load)
        second_dbx = api.sync(dbx, list(cohorts), source=src)
        second_duck = api.sync(duck, list(cohorts))
        assert not second_dbx.failed and not second_duck.failed
        assert second_dbx.rows == second_duck.rows > 0
    finally:
        src.close()
    for name in cohorts:
        for table in TABLES:
            got, want = landed_rows(dbx_root, name, table), landed_rows(duck_root, name, table)
            assert got == want, (name, table, len(got), len(want))
            assert got or table in ("note_nlp",), (name, table)


def mirror_new_rows(src: DatabricksSource, db: Path, table: str, load_dt: str) -> None:
    q = sqlglot.exp.select("*").from_(src.names.omop(table)).where(f"load_dt = TIMESTAMP '{load_dt}'")
    with src.stream(q, 50_000) as reader:
        data = reader.read_all()
    assert data.num_rows > 0
    con = duckdb.connect(str(db))
    try:
        con.register("incoming", data)
        con.execute(f"INSERT INTO omop.{table} SELECT * FROM incoming")
    finally:
        con.close()
