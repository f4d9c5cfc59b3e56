"""Docs that must not drift from the code: every setting, command, option and exit code is documented."""

from __future__ import annotations

import re
import shutil
import subprocess

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from cohortsync import errors
from cohortsync.cli import cli
from cohortsync.config import Settings
from conftest import REPO


def all_settings() -> list[str]:
    out = []
    for name, field in Settings.model_fields.items():
        if name == "base_dir":
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [f"{name}.{k}" for k in ann.model_fields]
        else:
            out.append(name)
    return out


def test_every_setting_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [s for s in all_settings() if f"`{s}`" not in doc]
    assert not missing, f"undocumented settings in docs/configuration.md: {missing}"


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for name, cmd in cli.commands.items():
        r = runner.invoke(cli, [name, "--help"], obj={})
        assert r.exit_code == 0, name
        assert cmd.help and len(cmd.help) > 40, f"{name} needs a real --help"
        for p in cmd.params:
            if p.name != "help" and hasattr(p, "help") and p.param_type_name == "option":
                assert p.help, f"{name} {p.name} has no help"


def test_the_loaded_hypothesis_profile_has_no_deadline() -> None:
    """A per-example deadline fails a true property at random on a busy machine (issue 13)."""
    from hypothesis import settings

    assert settings.default is not None
    assert settings.default.deadline is None
    assert settings.default.print_blob is True


OPERATIONS = REPO / "docs" / "operations.md"


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(commands(cmd, (*path, name)))
        else:
            out[" ".join((*path, name))] = cmd
    return out


def long_options(cmd: click.Command) -> list[str]:
    return [o for p in cmd.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")]


def table_rows(doc: str) -> list[str]:
    return [line for line in doc.splitlines() if line.startswith("| `")]


def test_every_command_and_option_is_in_the_command_table() -> None:
    """A command or option added to cli.py without a row in docs/operations.md fails here."""
    rows = table_rows(OPERATIONS.read_text(encoding="utf-8"))
    missing = []
    for path, cmd in {**commands(), "": cli}.items():
        head = f"| `cohortsync {path}" if path else "| `cohortsync` (global"
        found = [r for r in rows if r.startswith(head) and (not path or re.match(rf"{re.escape(head)}[ `]", r))]
        if not found:
            missing.append(f"command {path or '(global)'}")
            continue
        missing += [f"{path or '(global)'} {o}" for o in long_options(cmd) if f"`{o}" not in found[0]]
    assert not missing, f"undocumented in docs/operations.md, 'Commands and options': {missing}"
    # And the README's command table names every command.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert not [p for p in commands() if f"`cohortsync {p}" not in readme], "a command is missing from README.md"


def all_error_classes() -> list[type[errors.CohortsyncError]]:
    out: list[type[errors.CohortsyncError]] = []
    todo: list[type[errors.CohortsyncError]] = [errors.CohortsyncError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo += c.__subclasses__()
    return out


def test_every_exit_code_and_error_class_is_in_the_exit_code_table() -> None:
    doc = OPERATIONS.read_text(encoding="utf-8")
    rows = {int(m.group(1)): line for line in table_rows(doc) if (m := re.match(r"\| `(\d)` \| `([A-Z_]+)` \|", line))}
    assert set(rows) == {int(c) for c in errors.ExitCode}, f"exit code table rows: {sorted(rows)}"
    for code in errors.ExitCode:
        assert f"`{code.name}`" in rows[int(code)], code
    for cls in all_error_classes():
        assert cls.exit_code in rows, f"{cls.__name__} exits {cls.exit_code}, which the table does not document"
        if cls.__module__ == errors.__name__ and cls is not errors.CohortsyncError:
            assert f"`{cls.__name__}`" in doc, f"{cls.__name__} is not named in docs/operations.md"


def test_the_architecture_page_comes_first_and_keeps_its_sections() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_link = re.search(r"\]\((docs/[^)]+)\)", readme)
    assert first_link and first_link.group(1) == "docs/architecture.md"
    arch = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert arch.count("```mermaid") >= 1
    for heading in ("## Where PHI is", "## New cohorts vs newly loaded data", "## Technology choices"):
        assert heading in arch, heading
    for tool in ("databricks-sql-connector", "sqlglot", "Presidio", "Parquet", "SQLite", "DuckDB", "click", "pydantic-settings"):
        assert tool in arch, tool


def test_mermaid_diagrams_parse() -> None:
    """With the Mermaid CLI installed (tools/check_mermaid.sh, once), every diagram must render."""
    if not (REPO / "tools" / ".mermaid" / "node_modules" / ".bin" / "mmdc").exists():
        pytest.skip("Mermaid CLI not installed: run tools/check_mermaid.sh once (docs/operations.md)")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no Chromium for the Mermaid CLI (Debian: apt-get install chromium)")
    r = subprocess.run(["bash", str(REPO / "tools" / "check_mermaid.sh")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all parse" in r.stdout
