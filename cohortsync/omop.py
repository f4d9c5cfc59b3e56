"""The OMOP CDM v5.3 table registry, derived from the official OHDSI specification CSVs.

The registry is generated once from ``OMOP_CDMv5.3_Field_Level.csv`` and ``..._Table_Level.csv``
(``python -m cohortsync.omop SPEC_DIR``) and shipped as ``omop_v53.json`` inside the package, so a
deployed wheel needs no spec files; ``tests/test_omop.py`` regenerates it from ``../shared/omop`` and
fails when the two disagree. Nothing here is typed by hand except the rule for how a table links to a
person and which tables are out of scope, both of which the spec does not state.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cohortsync.errors import ConfigError

REGISTRY_FILE = "omop_v53.json"
FIELD_CSV = "OMOP_CDMv5.3_Field_Level.csv"
TABLE_CSV = "OMOP_CDMv5.3_Table_Level.csv"
LOAD_DT = "load_dt"
"""The collaborator's load timestamp column, present on every table in addition to the spec."""

DEFAULT_TABLES: tuple[str, ...] = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "note",
)

# Vocabulary tables kept in the registry: concept, whose concept_code decides whether a source value
# is a code the collaborator's vocabulary vouches for (docs/deidentification.md). Never synced.
VOCABULARY_TABLES = ("concept",)

# Tables that reach a person only through another table. The spec lists foreign keys but not which
# one is "the" person link, so this one rule is stated here. fact_relationship links two arbitrary
# facts and cost links via a polymorphic cost_event_id: both are out of scope (docs/omop.md).
INDIRECT_LINKS: dict[str, tuple[str, str]] = {"note_nlp": ("note", "note_id")}


@dataclass(frozen=True)
class Column:
    name: str
    cdm_type: str  # as the spec spells it, lower-cased: integer, float, date, datetime, varchar(50)
    required: bool
    primary_key: bool
    fk_table: str | None

    @property
    def sql_type(self) -> str:
        """The SQL type used when cohortsync itself creates a table (demo, tests, Eunomia import).

        The spec's ``float`` is SQL Server's FLOAT, i.e. 53-bit, hence DOUBLE; varchar lengths are
        kept in the registry but not enforced, as both engines use unbounded strings.
        """
        t = self.cdm_type
        if t == "integer":
            return "BIGINT" if self.name.endswith("_id") else "INTEGER"
        if t == "float":
            return "DOUBLE"
        if t == "date":
            return "DATE"
        if t == "datetime":
            return "TIMESTAMP"
        if t.startswith("varchar"):
            return "STRING"
        raise ValueError(f"unknown OMOP type {t!r} for column {self.name}")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: str | None
    # False for health-system tables (location, care_site, provider, ...): kept for DDL and deny-lists.
    links_person: bool
    # None: the row carries person_id itself; else (parent_table, key) to reach the parent's person_id.
    via_parent: tuple[str, str] | None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name}")


def build_registry(spec_dir: Path) -> dict[str, Any]:
    """Derive the registry document from the two spec CSVs (the generator behind omop_v53.json)."""
    tables_csv = _read_csv(spec_dir / TABLE_CSV)
    fields_csv = _read_csv(spec_dir / FIELD_CSV)
    schema_of = {r["cdmTableName"].lower(): r["schema"] for r in tables_csv}
    by_table: dict[str, list[dict[str, Any]]] = {}
    for r in fields_csv:
        table = r["cdmTableName"].lower()
        by_table.setdefault(table, []).append(
            {
                # The spec quotes reserved words (note_nlp."offset"); the column is named offset.
                "name": r["cdmFieldName"].strip().strip('"').lower(),
                "cdm_type": re.sub(r"\s+", "", r["cdmDatatype"].lower()),
                "required": r["isRequired"].strip().lower() == "yes",
                "primary_key": r["isPrimaryKey"].strip().lower() == "yes",
                "fk_table": None if r["fkTableName"] in ("", "NA") else r["fkTableName"].lower(),
            }
        )
    out: dict[str, Any] = {}
    vocabulary: dict[str, Any] = {}
    for table, cols in by_table.items():
        if schema_of.get(table) == "VOCAB" and table in VOCABULARY_TABLES:
            keys = [c["name"] for c in cols if c["primary_key"]]
            vocabulary[table] = {"columns": cols, "primary_key": keys[0] if len(keys) == 1 else None,
                                 "links_person": False, "via_parent": None}
            continue
        if schema_of.get(table) != "CDM":
            continue
        names = [c["name"] for c in cols]
        via: list[str] | None = list(INDIRECT_LINKS[table]) if table in INDIRECT_LINKS else None
        pks = [c["name"] for c in cols if c["primary_key"]]
        out[table] = {
            "columns": cols,
            "primary_key": pks[0] if len(pks) == 1 else None,
            "links_person": "person_id" in names or via is not None,
            "via_parent": via,
        }
    return {"cdm_version": "5.3", "source": [TABLE_CSV, FIELD_CSV], "tables": out, "vocabulary": vocabulary}


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"cannot read OMOP specification {path}: {e.strerror}") from e


@cache
def _document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("cohortsync").joinpath(REGISTRY_FILE).read_text("utf-8"))
    return doc


@cache
def all_tables() -> dict[str, Table]:
    """Every CDM-schema table of the spec (vocabulary tables excluded), in the spec's order."""
    return {name: _table(name, t) for name, t in _document()["tables"].items()}


@cache
def vocabulary_tables() -> dict[str, Table]:
    """The vocabulary tables cohortsync reads (``concept`` only), as the spec defines them: the demo
    and the tests create them from here, never from a hand-typed column list."""
    return {name: _table(name, t) for name, t in _document()["vocabulary"].items()}


@cache
def registry() -> dict[str, Table]:
    """The clinical tables cohortsync can sync: those whose rows lead to a person."""
    return {n: t for n, t in all_tables().items() if t.links_person}


def _table(name: str, t: dict[str, Any]) -> Table:
    cols = tuple(Column(**c) for c in t["columns"])
    via = t["via_parent"]
    return Table(name, cols, t["primary_key"], t["links_person"], (via[0], via[1]) if via else None)


CONCEPT_TABLE = "concept"
"""The vocabulary table whose ``concept_code`` vouches for a source value (a VOCAB table of the spec)."""
CONCEPT_ID = "concept_id"
CONCEPT_CODE = "concept_code"
SOURCE_VALUE = "_source_value"
SOURCE_CONCEPT_ID = "_source_concept_id"


def source_code_pairs(table: Table) -> tuple[tuple[str, str], ...]:
    """``(x_source_value, x_source_concept_id)`` for every source value whose sibling column in the
    same table is a foreign key to the concept table, in the spec's column order.

    Derived from the registry (the spec's foreign keys), never listed by hand: condition_source_value
    pairs with condition_source_concept_id, while e.g. route_source_value has no sibling and no pair.
    """
    out = []
    names = set(table.column_names)
    for c in table.columns:
        if not c.name.endswith(SOURCE_VALUE):
            continue
        sibling = c.name.removesuffix(SOURCE_VALUE) + SOURCE_CONCEPT_ID
        if sibling in names and table.column(sibling).fk_table == CONCEPT_TABLE:
            out.append((c.name, sibling))
    return tuple(out)


def table(name: str) -> Table:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(registry())
        raise ConfigError(f"{name!r} is not a supported OMOP v5.3 clinical table (supported: {known})") from None


def main(argv: list[str]) -> int:
    """Regenerate the packaged registry: ``python -m cohortsync.omop ../shared/omop``."""
    if len(argv) != 1:
        print("usage: python -m cohortsync.omop SPEC_DIR", file=sys.stderr)
        return 2
    doc = build_registry(Path(argv[0]))
    target = Path(__file__).with_name(REGISTRY_FILE)
    target.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target} ({len(doc['tables'])} tables)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
