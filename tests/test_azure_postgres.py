"""Issue 11's deployed shape in one place: the landing on Azure storage (a real Azurite) AND the state
in PostgreSQL (a real server), through the whole flow and the SIGKILL trials.

The flow and the trials are the ones of tests/test_azure_landing.py and tests/test_azure_crash.py,
imported here with the state fixtures overridden: each project's ``[state]`` names its own PostgreSQL
database, and a cloned project (a crash trial starts from a copy) gets a copy of its source's database
(``CREATE DATABASE … TEMPLATE``), just as the clone copies the project folder and the blobs.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cohortsync.landing import open_landing
from servers.azurite import AzureLanding
from servers.postgres import PASSWORD_ENV, PostgresServer, PostgresState
from test_azure_crash import (  # noqa: F401  (fixtures and tests collected again here, on PostgreSQL)
    az_env,
    prepared,
    test_a_repair_killed_midway_on_azurite_is_finished_by_the_next_command,
    test_a_withdrawal_killed_mid_purge_on_azurite_is_finished_by_the_next_sync,
    test_killed_sync_on_azurite_then_rerun_equals_an_uninterrupted_run,
)
from test_azure_landing import StateEnv, flow_projects, landing_rows_of, open_state, run_flow

MARKER = ".pgdb"  # which database holds this project folder's state; copied along with the folder


def point_state_at(root: Path, url: str) -> None:
    """Write ``url`` as the project's ``state.url`` (so in-process checks and the CLI agree)."""
    cfg = root / "cohortsync.toml"
    text = re.sub(r'\nurl = "postgresql://[^"]*"', "", cfg.read_text())
    cfg.write_text(text.replace("[state]\n", f'[state]\nurl = "{url}"\n', 1))


def pg_state_env(server: PostgresServer) -> StateEnv:
    """A project's state in a database of its own; a copied folder gets a copy of the database."""

    def env(root: Path) -> dict[str, str]:
        marker = root / MARKER  # "ROOT DATABASE": a copied folder carries its source's line
        owner, _, source = marker.read_text().rpartition(" ") if marker.exists() else ("", "", "")
        if owner == str(root):
            assert not (root / "state" / "cohortsync.sqlite3").exists(), "a run used SQLite, not PostgreSQL"
            return {PASSWORD_ENV: server.password}
        own = "p_" + secrets.token_hex(6)
        with server.connect() as con:
            con.execute(f'CREATE DATABASE "{own}"' + (f' TEMPLATE "{source}"' if source else ""))
        marker.write_text(f"{root} {own}")
        point_state_at(root, server.url(own))
        return {PASSWORD_ENV: server.password}

    return env


@pytest.fixture(scope="module")
def state_env_module(postgres_server: PostgresServer) -> Iterator[StateEnv]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSWORD_ENV, postgres_server.password)  # in-process checks open the state too
        yield pg_state_env(postgres_server)


def test_the_whole_flow_on_azurite_and_postgresql_equals_local_and_sqlite(
    tmp_path: Path, eunomia_db: Path, azure_landing: AzureLanding, postgres_state: PostgresState,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    projects = flow_projects(tmp_path, eunomia_db, "local", "deployed")
    url = azure_landing.url
    monkeypatch.delenv("COHORTSYNC_LANDING__PATH")
    point_state_at(projects["deployed"].root, postgres_state.url)
    local = run_flow(projects["local"], {})
    deployed = run_flow(projects["deployed"], {"COHORTSYNC_LANDING__PATH": url, **postgres_state.env})
    assert local == deployed
    # Nothing of the deployed project stayed on the local disk: no landing folder, no SQLite state.
    assert not (projects["deployed"].root / "landing").exists()
    assert not (projects["deployed"].root / "state" / "cohortsync.sqlite3").exists()
    with postgres_state.connect() as con:
        assert con.execute("SELECT count(*) FROM landed_file").fetchone()[0] > 0  # type: ignore[index]

    monkeypatch.setenv("COHORTSYNC_LANDING__PATH", url)
    dep = projects["deployed"].settings()
    monkeypatch.delenv("COHORTSYNC_LANDING__PATH")
    rows = landing_rows_of(open_landing(dep), dep)
    assert rows == landing_rows_of(open_landing(projects["local"].settings()), projects["local"].settings())
    assert sum(len(v) for v in rows.values()) > 1000
    with open_state(dep) as st:
        listed = {f"c/{t}/{f['name']}" for (c, t) in st.watermarks() for f in st.files(c, t)}
    assert set(azure_landing.files()) == listed

    # A second run while the first holds the advisory lock: exit 3, nothing moves.
    env = {"COHORTSYNC_LANDING__PATH": url, **postgres_state.env}
    with open_state(dep) as holder:
        holder.lock("a test holding the run lock")
        r = projects["deployed"].cli("sync", "-q", env=env)
        assert r.exit_code == 3, r.output
        holder.unlock()
    assert landing_rows_of(open_landing(dep), dep) == rows
