"""The embedded default source: an OMOP database in a DuckDB file.

Names are always three-part (``"catalog"."schema"."table"``): a file called ``omop.duckdb`` has the
catalog ``omop``, which would make ``omop.person`` ambiguous. Results stream through
``con.sql(q).to_arrow_reader(n)``, which hands DuckDB's batches over without an extra copy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from cohortsync import logs, omop, plan
from cohortsync.config import Settings
from cohortsync.errors import SourceConfigError, SourceError, TransientSourceError, safe_message

log = logging.getLogger(__name__)

# sqlglot builds a dialect's generator on first use (~70 ms); do it when the module loads, not mid-run.
Dialect.get_or_raise("duckdb")


class DuckDBSource:
    dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection, names: plan.Names) -> None:
        self.con = con
        self.names = names
        self._lock = threading.RLock()  # the connection object is not thread-safe; its cursors are

    @classmethod
    def from_settings(cls, settings: Settings) -> DuckDBSource:
        s = settings.source
        return cls.open(
            settings.database_path, s.omop_schema, s.sandbox_schema, s.members_table, s.threads, s.memory_limit,
            s.vocabulary_schema,
        )

    @classmethod
    def open(
        cls,
        path: Path,
        omop_schema: str = "omop",
        sandbox_schema: str = "sandbox",
        members_table: str = "cohortsync_members",
        threads: int | None = None,
        memory_limit: str | None = "128MB",
        vocabulary_schema: str | None = None,
    ) -> DuckDBSource:
        if not path.is_file():
            raise SourceConfigError(f"no DuckDB database at {path} (run 'cohortsync demo' to generate one)")
        config: dict[str, str | bool | int | float | list[str]] = {}
        if threads:
            config["threads"] = threads
        if memory_limit:
            config["memory_limit"] = memory_limit
        try:
            con = duckdb.connect(str(path), config=config)
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise TransientSourceError(f"DuckDB database {path} is in use by another process") from None
            raise SourceError(f"cannot open DuckDB database {path}: {safe_message(e)}") from None
        except duckdb.Error as e:
            raise SourceError(f"cannot open DuckDB database {path}: {safe_message(e)}") from None
        ((catalog,),) = con.sql("SELECT current_database()").fetchall()
        return cls(con, plan.Names(catalog, omop_schema, sandbox_schema, members_table, vocabulary_schema))

    def render(self, q: exp.Expression) -> str:
        return plan.render(q, self.dialect)

    @contextmanager
    def stream(self, query: exp.Expression, batch_rows: int) -> Iterator[pa.RecordBatchReader]:
        with self._lock:
            cur = self.con.cursor()  # a cursor of its own, so tables on several threads never share one
        try:
            sql = self.render(query)
            logs.event(log, logging.DEBUG, "source.query", "DuckDB query", sql=sql)  # names and bounds; no row values
            with _errors():
                reader = cur.sql(sql).to_arrow_reader(batch_rows)
            yield reader
        finally:
            cur.close()

    def columns(self, table: str) -> list[str]:
        # Binding the query is enough to name its columns: 0.2 ms, where running it with LIMIT 0
        # and reading the Arrow schema took ~1 ms a table.
        with self._lock, _errors():
            return list(self.con.sql(self.render(plan.select_nothing(table, self.names))).columns)

    def rows(self, query: exp.Expression) -> list[tuple[object, ...]]:
        with self._lock, _errors():
            return self.con.sql(self.render(query)).fetchall()

    def execute(self, statement: exp.Expression) -> None:
        with self._lock, _errors():
            self.con.execute(self.render(statement))

    def replace_members(self, cohort: str, person_ids: pa.Array, batch: int | pa.Array = 0) -> None:
        names = self.names
        batches = batch if isinstance(batch, pa.Array) else pa.array([int(batch)] * len(person_ids), pa.int32())
        upload = pa.table({"person_id": person_ids.cast(pa.int64()), "batch": batches.cast(pa.int32())})
        insert = exp.insert(
            exp.select(plan.cohort_literal(cohort), exp.column("person_id"), exp.column("batch")).from_(
                "__cohortsync_upload"
            ),
            names.members(),
        )
        with _errors():
            self.execute(plan.create_schema(names.catalog, names.sandbox_schema))
            self.execute(plan.members_ddl(names))
            self.con.register("__cohortsync_upload", upload)
            try:
                self.con.execute("BEGIN TRANSACTION")
                self.execute(plan.members_delete(cohort, names))
                self.execute(insert)
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            finally:
                self.con.unregister("__cohortsync_upload")

    def delete_members(self, cohort: str) -> None:
        self.execute(plan.members_delete(cohort, self.names))

    def release_threads(self) -> None:
        pass  # every stream's cursor is closed with the stream

    def close(self) -> None:
        self.con.close()


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except duckdb.CatalogException as e:  # a schema or table the configuration names is not there
        raise SourceConfigError(f"DuckDB: {safe_message(e)}") from None
    except duckdb.IOException as e:
        raise TransientSourceError(f"DuckDB I/O: {safe_message(e)}") from None
    except duckdb.Error as e:
        raise SourceError(f"DuckDB: {safe_message(e)}") from None


def create_omop_tables(con: duckdb.DuckDBPyConnection, omop_schema: str = "omop", sandbox_schema: str = "sandbox") -> None:
    """Create every CDM table of the registry, plus ``load_dt``, the concept table and the sandbox schema.

    Used by the demo generator, the Eunomia import and the tests: the columns come from the spec,
    never from a hand-typed list.
    """
    cat = _catalog(con)
    con.execute(f'CREATE SCHEMA IF NOT EXISTS {cat}."{omop_schema}"')
    con.execute(f'CREATE SCHEMA IF NOT EXISTS {cat}."{sandbox_schema}"')
    for t in omop.all_tables().values():
        cols = ", ".join(f'"{c.name}" {_duck_type(c)}' for c in t.columns)
        con.execute(
            f'CREATE TABLE IF NOT EXISTS {cat}."{omop_schema}"."{t.name}" ({cols}, "{omop.LOAD_DT}" TIMESTAMP NOT NULL)'
        )
    for t in omop.vocabulary_tables().values():  # in the CDM schema, as OMOP keeps them; no load_dt
        cols = ", ".join(f'"{c.name}" {_duck_type(c)}' for c in t.columns)
        con.execute(f'CREATE TABLE IF NOT EXISTS {cat}."{omop_schema}"."{t.name}" ({cols})')


def _catalog(con: duckdb.DuckDBPyConnection) -> str:
    """The quoted catalog name: a file omop.duckdb has catalog omop, so two-part names are ambiguous."""
    row = con.execute("SELECT current_database()").fetchone()
    assert row is not None
    return '"' + str(row[0]).replace('"', '""') + '"'


def _duck_type(c: omop.Column) -> str:
    return "VARCHAR" if c.sql_type == "STRING" else c.sql_type


def import_csv_table(
    con: duckdb.DuckDBPyConnection, csv_path: Path, table: str, load_dt_sql: str | None, omop_schema: str = "omop"
) -> int:
    """Load one OMOP CSV (header row, as OHDSI publishes them) into a table made by create_omop_tables.

    Types come from the spec, not from sniffing: every column is read as text and cast to its
    OMOP type, so a value of odd shape fails loudly instead of changing a column's type.
    ``load_dt_sql`` is a SQL expression over the CSV's columns assigning each row its weekly load;
    it is trusted code from the caller (tests, demo), not user input; None for a vocabulary table
    (``concept``), which has no load_dt.
    """
    t = omop.all_tables()[table] if load_dt_sql is not None else omop.vocabulary_tables()[table]
    src = "read_csv('{}', header=true, all_varchar=true)".format(str(csv_path).replace("'", "''"))
    header = con.sql(f"SELECT * FROM {src} LIMIT 0").columns
    unknown = [h for h in header if h.lower() not in t.column_names]
    if unknown:
        raise ValueError(f"{csv_path.name}: columns not in the OMOP v5.3 spec for {table}: {unknown}")
    present = {h.lower(): h for h in header}
    exprs = []
    for c in t.columns:
        exprs.append(f'CAST(NULLIF("{present[c.name]}", \'\') AS {_duck_type(c)})' if c.name in present else "NULL")
    target = f'{_catalog(con)}."{omop_schema}"."{table}"'
    before = con.execute(f"SELECT count(*) FROM {target}").fetchone()
    con.execute(
        f'INSERT INTO {target} SELECT {", ".join(exprs)}{"" if load_dt_sql is None else ", " + load_dt_sql} '
        f"FROM {src}"
    )
    after = con.execute(f"SELECT count(*) FROM {target}").fetchone()
    assert before is not None and after is not None
    return int(after[0]) - int(before[0])
