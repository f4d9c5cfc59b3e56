"""Docs that must not drift from the code: every setting is documented, every command has help."""

from __future__ import annotations

from click.testing import CliRunner
from pydantic import BaseModel

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
