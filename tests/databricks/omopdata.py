"""The test OMOP database both Databricks tiers load: Eunomia (as the DuckDB tests build it) plus
synthetic notes and note_nlp rows, since Eunomia ships those tables empty and note_nlp is the one
table that reaches a person through a parent row.

The DuckDB file is exported to Parquet and re-created on Spark with the OMOP types spelled out
(``CAST`` per column): DuckDB writes naive timestamps, which Spark would otherwise read as
TIMESTAMP_NTZ, while the collaborator's ``load_dt`` is a TIMESTAMP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from cohortsync import omop

NOTES = 600  # one note each for the first persons, spread over the weekly loads
NLP_PER_NOTE = 3


def add_notes(con: duckdb.DuckDBPyConnection, first_load: str, loads: int) -> None:
    """Deterministic notes and NLP rows; a note's NLP rows may arrive in a later load than the note."""
    con.execute(
        f"""
        INSERT INTO omop.note (note_id, person_id, note_date, note_datetime, note_type_concept_id,
            note_class_concept_id, note_title, note_text, encoding_concept_id, language_concept_id, load_dt)
        SELECT 1000 + rn, person_id, DATE '2020-01-01' + CAST(rn AS INTEGER), TIMESTAMP '2020-01-01 08:30:00.250000'
            + INTERVAL 1 HOUR * rn, 44814645, 0, 'note ' || rn, 'Seen in clinic, note number ' || rn || '.', 0, 4180186,
            TIMESTAMP '{first_load}' + INTERVAL 7 DAY * (rn % {loads})
        FROM (SELECT person_id, row_number() OVER (ORDER BY person_id) AS rn FROM omop.person) WHERE rn <= {NOTES}
        """
    )
    con.execute(
        f"""
        INSERT INTO omop.note_nlp (note_nlp_id, note_id, snippet, "offset", lexical_variant, note_nlp_concept_id,
            nlp_system, nlp_date, nlp_datetime, term_exists, load_dt)
        SELECT note_id * 10 + k, note_id, 'snippet ' || k, CAST(k * 7 AS VARCHAR), 'term' || k, 4000 + k,
            'test-nlp', note_date, note_datetime + INTERVAL 1 MINUTE * k, CASE WHEN k = 1 THEN 'N' ELSE 'Y' END,
            load_dt + INTERVAL 7 DAY * (k % 2)
                * CAST(load_dt < TIMESTAMP '{first_load}' + INTERVAL 7 DAY * {loads - 1} AS INTEGER)
        FROM omop.note, range(1, {NLP_PER_NOTE + 1}) AS r(k)
        """
    )


def build(eunomia: Path, target: Path) -> Path:
    """A private copy of the Eunomia DuckDB file with notes added over the same weekly loads."""
    shutil.copyfile(eunomia, target)
    con = duckdb.connect(str(target))
    try:
        ((first, loads),) = con.sql("SELECT min(load_dt), count(DISTINCT load_dt) FROM omop.condition_occurrence").fetchall()
        assert loads > 1, "the Eunomia fixture has no weekly loads"
        add_notes(con, first.isoformat(sep=" "), int(loads))
    finally:
        con.close()
    return target


def tables_with_rows_or_spec() -> list[str]:
    """Every CDM table (empty ones too, so a query touching them still resolves on Spark) and concept."""
    return [*omop.all_tables(), *omop.vocabulary_tables()]


def export_parquet(db: Path, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db), read_only=True)
    try:
        files = {}
        for t in tables_with_rows_or_spec():
            path = out / f"{t}.parquet"
            con.execute(f"COPY (SELECT * FROM omop.\"{t}\") TO '{path}' (FORMAT parquet)")
            files[t] = path
        return files
    finally:
        con.close()


def spark_type(c: omop.Column) -> str:
    return "INT" if c.sql_type == "INTEGER" else c.sql_type


def spark_ctas(catalog: str, table: str, parquet: Path) -> str:
    """CREATE TABLE ... AS SELECT with every column cast to its OMOP type (Spark SQL, trusted test input)."""
    t = omop.all_tables().get(table) or omop.vocabulary_tables()[table]
    cols = [f"CAST(`{c.name}` AS {spark_type(c)}) AS `{c.name}`" for c in t.columns]
    if table in omop.all_tables():  # vocabulary tables have no load_dt
        cols.append(f"CAST(`{omop.LOAD_DT}` AS TIMESTAMP) AS `{omop.LOAD_DT}`")
    return (
        f"CREATE TABLE `{catalog}`.`omop`.`{table}` USING parquet AS SELECT {', '.join(cols)} "
        f"FROM parquet.`{parquet}`"
    )


def load_dates(db: Path) -> list[object]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.sql("SELECT DISTINCT load_dt FROM omop.person ORDER BY 1").fetchall()]
    finally:
        con.close()

