"""A real PostgreSQL server for the tests: Debian's package, on 127.0.0.1 and a free port, once per session.

Loaded as a pytest plugin from tests/conftest.py. ``postgres_server`` starts the server (initdb in a
temporary folder, password authentication over TCP, no fsync: a test server) and stops it at the
end; ``postgres_state`` gives each test a fresh database and sets COHORTSYNC_STATE_PASSWORD for it.
Missing binaries fail the tests with the fix, never skip them: .ci/run installs ``postgresql``.
initdb refuses to run as root (CI and containers are root), so there the server runs as the
``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

USER = "cohortsync"
PASSWORD_ENV = "COHORTSYNC_STATE_PASSWORD"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str) -> str:
        """A state URL without the password, as ``state.url`` must be."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(database), password=self.password, autocommit=True)


@dataclass(frozen=True)
class PostgresState:
    """One test's database: ``url`` for ``state.url``; ``env`` holds the password variable."""

    server: PostgresServer
    database: str
    url: str
    password: str

    @property
    def env(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.password}

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return self.server.connect(self.database)

    def terminate(self, application_name: str | None = None) -> int:
        """Kill this database's client sessions (all, or those of one application_name), as a network cut would."""
        with self.server.connect() as con:
            rows = con.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND (%s::text IS NULL OR application_name = %s::text)",
                (self.database, application_name, application_name),
            ).fetchall()
        return len(rows)


def server_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    pytest.fail(
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/postgres): "
        "apt-get install postgresql (.ci/run does); these tests must not skip"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(folder: Path) -> list[str]:
    """The command prefix that runs the server binaries, and the folder made theirs: initdb refuses root."""
    if os.geteuid() != 0:
        return []
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no 'postgres' user to run the test server (apt-get install postgresql)")
    for p in [folder, *folder.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail(f"test PostgreSQL: {what} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = server_bin()
    folder = Path(tempfile.mkdtemp(prefix="cohortsync-pg-"))
    password = secrets.token_hex(16)
    (folder / "pwfile").write_text(password + "\n", encoding="ascii")
    (folder / "run").mkdir()
    prefix = _as_server_user(folder)
    data = folder / "data"
    _run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={folder / 'pwfile'}",
         "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
        "initdb",
    )
    port = 0
    for _attempt in range(3):  # a free port may be taken between the probe and the bind
        port = _free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder / 'run'} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        r = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
             "-o", opts, "start"],
            capture_output=True, text=True, check=False,
        )
        if r.returncode == 0:
            break
    else:
        log = (folder / "server.log").read_text(errors="replace")[-800:] if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"test PostgreSQL did not start: {r.stderr.strip()[-400:]} {log}")
    try:
        yield PostgresServer("127.0.0.1", port, USER, password)
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_state(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresState]:
    """A fresh, empty database for this test, and COHORTSYNC_STATE_PASSWORD set to its password."""
    name = "t_" + secrets.token_hex(6)
    with postgres_server.connect() as con:
        con.execute(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv(PASSWORD_ENV, postgres_server.password)
    try:
        yield PostgresState(postgres_server, name, postgres_server.url(name), postgres_server.password)
    finally:
        with postgres_server.connect() as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
