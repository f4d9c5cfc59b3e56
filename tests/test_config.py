"""Configuration: file + environment, unknown keys and wrong types are errors, secrets only from env."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortsync.config import load_settings
from cohortsync.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cohortsync.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[source]\ndatabase = "db/x.duckdb"\n[landing]\npath = "/abs/landing"\n'))
    assert s.database_path == tmp_path / "db" / "x.duckdb"
    assert s.landing_path == Path("/abs/landing")
    assert s.state_path == tmp_path / "state"


def test_environment_overrides_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTSYNC_SOURCE__DATABASE", "other.duckdb")
    monkeypatch.setenv("COHORTSYNC_SYNC__BATCH_ROWS", "4096")
    monkeypatch.setenv("COHORTSYNC_SYNC__TABLES", '["person", "note"]')
    s = load_settings(write(tmp_path, '[source]\ndatabase = "x.duckdb"\n'))
    assert s.database_path == tmp_path / "other.duckdb"
    assert s.sync.batch_rows == 4096
    assert s.sync.tables == ("person", "note")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[source]\ndatabse = 'x'\n", "source.databse: unknown key"),
        ("[sorce]\n", "sorce: unknown key"),
        ("[sync]\nbatch_rows = 'many'\n", "sync.batch_rows"),
        ("[sync]\ntables = ['person', 'bogus']\n", "'bogus' is not a supported"),
        ("[source]\nkind = 'oracle'\n", "source.kind"),
        ("deid_key = 'secret'\n", "may not be set in a file"),
        ("state_password = 'secret'\n", "'state_password' may not be set in a file"),
        ("[state]\nurl = 'postgresql://u:secret@h/db'\n", "state.url: Value error, must not carry a password"),
        ("[state]\nurl = 'postgresql://u@h/db?password=secret'\n", "must not carry a password"),
        ("[state]\nurl = 'mysql://u@h/db'\n", "state.url: Value error, must start with postgresql://"),
        ("[state]\nurl = 'postgresql://u@h'\n", "state.url: Value error, names no database"),
        ("[source\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)
    assert "secret" not in str(e.value)


def test_the_state_password_comes_from_the_environment_and_the_url_prints_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cohortsync.config import redact_url

    monkeypatch.setenv("COHORTSYNC_STATE_PASSWORD", "pw-from-env")
    s = load_settings(write(tmp_path, "[state]\nurl = 'postgresql://cohortsync@db.example:5432/cs?sslmode=require'\n"))
    assert s.state.url and s.state_password and s.state_password.get_secret_value() == "pw-from-env"
    assert "pw-from-env" not in repr(s) and "pw-from-env" not in str(s.model_dump())
    assert redact_url("postgresql://u:pw@h:5/db?password=x&sslmode=require") == "postgresql://u@h:5/db?sslmode=require"


def test_unknown_environment_override_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTSYNC_SOURCE__DATABSE", "x")
    with pytest.raises(ConfigError, match=r"source\.databse"):
        load_settings(write(tmp_path, ""))
    monkeypatch.delenv("COHORTSYNC_SOURCE__DATABSE")
    monkeypatch.setenv("COHORTSYNC_LANDNG__PATH", "x")
    with pytest.raises(ConfigError, match="COHORTSYNC_LANDNG__PATH matches no setting"):
        load_settings(write(tmp_path, ""))


def test_secret_comes_from_the_environment_and_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTSYNC_DEID_KEY", "hunter2-very-secret")
    s = load_settings(write(tmp_path, ""))
    assert s.deid_key is not None and s.deid_key.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        load_settings(tmp_path / "nope.toml")
