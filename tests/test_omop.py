"""The packaged registry is the spec: regenerating it from ../shared/omop must give the same document."""

from __future__ import annotations

import json
from importlib import resources

from cohortsync import omop
from conftest import SPEC


def test_packaged_registry_matches_the_spec_csvs() -> None:
    packaged = json.loads(resources.files("cohortsync").joinpath(omop.REGISTRY_FILE).read_text("utf-8"))
    assert packaged == omop.build_registry(SPEC), "run: python -m cohortsync.omop ../shared/omop"


def test_every_person_linked_cdm_table_is_supported() -> None:
    reg = omop.registry()
    for name in omop.DEFAULT_TABLES:
        assert name in reg
    assert reg["note_nlp"].via_parent == ("note", "note_id")
    assert reg["condition_occurrence"].via_parent is None
    assert "fact_relationship" not in reg and "location" not in reg and "cost" not in reg
    assert reg["person"].primary_key == "person_id"
    assert reg["death"].primary_key is None  # death has no primary key in v5.3


def test_columns_come_from_the_spec() -> None:
    person = omop.table("person")
    assert person.column_names[:3] == ("person_id", "gender_concept_id", "year_of_birth")
    assert len(omop.table("drug_exposure").columns) == 23
    assert "offset" in omop.table("note_nlp").column_names  # the spec writes it quoted
    assert omop.table("measurement").column("value_as_number").sql_type == "DOUBLE"
