"""The de-identification policy: one declared action for every column of every supported table.

The default policy is derived from the OMOP registry by the rules in :func:`default_action` and
shipped as ``default_policy.toml`` (generated, reviewable, diffable; a test fails when it drifts from
the rules or the registry). A user file may override single columns. A column the policy does not
name is an error, never a pass-through: the check runs against the source's actual columns before a
table is queried.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

from cohortsync import omop
from cohortsync.errors import ConfigError, PolicyDriftError, PolicyError

POLICY_FILE = "default_policy.toml"


class Action(StrEnum):
    KEEP = "keep"
    DROP = "drop"
    PSEUDONYMIZE = "pseudonymize"
    SHIFT_DATE = "shift_date"
    GENERALIZE = "generalize"
    SCRUB_TEXT = "scrub_text"
    ORDER_ONLY = "order_only"  # load_dt only: an opaque number that orders the versions of one row


# The column actions allowed on load_dt. A per-person date shift would not hide it: loads happen at
# a few global times (weekly), so ``min(shifted load_dt)`` of a person minus the first load date is
# that person's offset. Dropping it would leave versions of a row unordered and verify blind.
LOAD_DT_ACTIONS = (Action.ORDER_ONLY, Action.KEEP)


# Identifiers that are not surrogate keys of a CDM table: dropped, since no join needs them and a
# keyed hash of a device serial or a lab accession number is still a stable identifier of a thing.
DROPPED_IDS = {"unique_device_id", "specimen_source_id"}
# Source values that are identifiers themselves (MRNs, encounter UUIDs, plan and family ids).
DROPPED_SOURCE_VALUES = {
    "person_source_value",
    "visit_source_value",
    "visit_detail_source_value",
    "payer_source_value",
    "plan_source_value",
    "sponsor_source_value",
    "family_source_value",
}
# Birth details finer than the year (Safe Harbor: all elements of dates except year).
DROPPED_BIRTH = {"month_of_birth", "day_of_birth", "birth_datetime"}
# Free text that is not a *_source_value.
FREE_TEXT = {"note_text", "note_title", "sig", "value_as_string", "stop_reason", "snippet", "lexical_variant", "term_modifiers"}
# Other columns dropped: measurement_time is a varchar(10) that real extracts fill with dates or
# times (Eunomia: dates) which cannot be shifted reliably; lot_number identifies a batch of product.
DROPPED_OTHER = {"measurement_time", "lot_number"}


def id_domain(table: omop.Table, column: omop.Column) -> str | None:
    """The entity a surrogate key names, so the same id gets the same pseudonym in every table."""
    if column.name == table.primary_key:
        return table.name
    if column.fk_table and column.fk_table not in ("concept",):
        return column.fk_table
    base = column.name.removesuffix("_id")
    if column.name.endswith("_id") and base in omop.all_tables():
        return base  # e.g. note_nlp.note_id, which the spec leaves without a foreign key
    return None


def default_action(table: omop.Table, column: omop.Column) -> Action:
    """The rule behind every line of default_policy.toml (docs/deidentification.md explains each)."""
    name, t = column.name, column.cdm_type
    if name == omop.LOAD_DT:
        return Action.ORDER_ONLY
    if name.endswith("_concept_id"):
        return Action.KEEP
    if name in DROPPED_IDS or name in DROPPED_SOURCE_VALUES or name in DROPPED_BIRTH or name in DROPPED_OTHER:
        return Action.DROP
    if name == "year_of_birth":
        return Action.GENERALIZE
    if t in ("date", "datetime"):
        return Action.SHIFT_DATE
    if name.endswith("_id"):
        return Action.PSEUDONYMIZE if id_domain(table, column) else Action.DROP
    if name in FREE_TEXT or name.endswith("_source_value"):
        return Action.SCRUB_TEXT
    if t.startswith("varchar"):
        return Action.KEEP  # short coded flags (note_nlp.term_exists, nlp_system, offset)
    return Action.KEEP  # numbers: values, quantities, ranges, counts


@dataclass(frozen=True)
class ColumnRule:
    action: Action
    domain: str | None = None  # for pseudonymize: which entity's key space


@dataclass(frozen=True)
class Policy:
    tables: dict[str, dict[str, ColumnRule]]
    origin: str

    def rules(self, table: str) -> dict[str, ColumnRule]:
        try:
            return self.tables[table]
        except KeyError:
            raise PolicyError(f"the de-identification policy ({self.origin}) has no entry for table {table}") from None

    def check_columns(self, table: str, source_columns: list[str]) -> tuple[list[str], list[str]]:
        """Fail closed: every source column must have a rule. Returns (columns to select, policy
        columns the source lacks)."""
        rules = self.rules(table)
        uncovered = [c for c in source_columns if c.lower() not in rules]
        if uncovered:
            raise PolicyDriftError(
                f"{table}: column(s) {', '.join(uncovered)} not covered by the de-identification policy "
                f"({self.origin}); add a rule before this table can sync"
            )
        selected = [c for c in source_columns if rules[c.lower()].action is not Action.DROP]
        present = {c.lower() for c in source_columns}
        absent = [c for c in rules if c not in present]
        return selected, absent


def carries_source_time(table: omop.Table, column: str) -> bool:
    """Whether a column holds a source date or time that, kept as is, would reveal the person's shift."""
    if column == omop.LOAD_DT:
        return True
    found = next((c for c in table.columns if c.name == column), None)
    return found is not None and found.cdm_type in ("date", "datetime")


def render_default() -> str:
    """The text of default_policy.toml, generated from the registry and the rules above."""
    lines = [
        "# cohortsync default de-identification policy, generated by `python -m cohortsync.deid.policy`",
        "# from the OMOP v5.3 registry and the rules in cohortsync/deid/policy.py. Do not edit: override",
        '# single columns in your own file ([deid] policy = "my_policy.toml").',
        "# actions: keep | drop | pseudonymize | shift_date | generalize | scrub_text | order_only",
    ]
    for t in omop.registry().values():
        lines.append("")
        lines.append(f"[{t.name}]")
        for c in (*t.columns, omop.Column(omop.LOAD_DT, "datetime", True, False, None)):
            action = default_action(t, c)
            if action is Action.PSEUDONYMIZE:
                lines.append(f'{_key(c.name)} = {{ action = "pseudonymize", domain = "{id_domain(t, c)}" }}')
            else:
                lines.append(f'{_key(c.name)} = "{action.value}"')
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name if name.replace("_", "").isalnum() else f'"{name}"'


def _parse(doc: dict[str, object], origin: str) -> dict[str, dict[str, ColumnRule]]:
    out: dict[str, dict[str, ColumnRule]] = {}
    for table, cols in doc.items():
        if not isinstance(cols, dict):
            raise PolicyError(f"{origin}: [{table}] must be a table of column = action")
        if table not in omop.registry():
            raise PolicyError(f"{origin}: [{table}] is not a supported OMOP table")
        rules: dict[str, ColumnRule] = {}
        for col, spec in cols.items():
            if isinstance(spec, str):
                action_name, domain = spec, None
            elif isinstance(spec, dict) and set(spec) <= {"action", "domain"} and "action" in spec:
                action_name, domain = spec["action"], spec.get("domain")
            else:
                raise PolicyError(f"{origin}: {table}.{col}: expected an action or {{ action = ..., domain = ... }}")
            try:
                action = Action(action_name)
            except ValueError:
                choices = ", ".join(a.value for a in Action)
                raise PolicyError(f"{origin}: {table}.{col}: unknown action {action_name!r} ({choices})") from None
            if action is Action.PSEUDONYMIZE and not domain:
                domain = col.removesuffix("_id")
            if action is Action.GENERALIZE and col != "year_of_birth":
                raise PolicyError(f"{origin}: {table}.{col}: generalize is defined for year_of_birth only")
            if action is Action.ORDER_ONLY and col.lower() != omop.LOAD_DT:
                raise PolicyError(f"{origin}: {table}.{col}: order_only is defined for {omop.LOAD_DT} only")
            if col.lower() == omop.LOAD_DT and action not in LOAD_DT_ACTIONS:
                raise PolicyError(
                    f"{origin}: {table}.{col}: {action.value} is not allowed on {omop.LOAD_DT} "
                    f"(allowed: {', '.join(a.value for a in LOAD_DT_ACTIONS)}; see docs/deidentification.md)"
                )
            rules[col.lower()] = ColumnRule(action, domain if action is Action.PSEUDONYMIZE else None)
        out[table] = rules
    return out


def load_policy(override: Path | None = None) -> Policy:
    """The shipped default policy, with the columns an override file names replaced."""
    text = resources.files("cohortsync.deid").joinpath(POLICY_FILE).read_text("utf-8")
    tables = _parse(tomllib.loads(text), POLICY_FILE)
    origin = POLICY_FILE
    if override is not None:
        try:
            with override.open("rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"policy file {override} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"policy file {override}: {e}") from None
        for table, rules in _parse(doc, str(override)).items():
            tables.setdefault(table, {}).update(rules)
        origin = f"{POLICY_FILE} + {override}"
    return Policy(tables, origin)


def main(argv: list[str]) -> int:
    """Regenerate default_policy.toml from the registry and the rules."""
    target = Path(__file__).with_name(POLICY_FILE)
    target.write_text(render_default(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
