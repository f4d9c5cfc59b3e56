"""The two databases the state store can live in: SQLite in a folder (embedded) or PostgreSQL (deployed).

:class:`cohortsync.state.StateStore` holds every query, written once in SQL both engines run
(``ON CONFLICT ... DO UPDATE``, ``?`` placeholders, TEXT timestamps); a backend only connects,
runs those strings (PostgreSQL's driver wants ``%s``), frames transactions, maps the driver's
errors to :mod:`cohortsync.errors` and holds the run lock. SQLite's lock is an ``flock`` on a file
beside the database; PostgreSQL's is a session advisory lock on a dedicated connection. Both are
released by the operating system or the server when the process dies, so a killed run never
leaves a stale lock. See docs/design.md ("State in SQLite or PostgreSQL").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cohortsync.config import redact_url, url_problem
from cohortsync.errors import ConfigError, LockedError, StateError, TransientStateError, safe_message

if TYPE_CHECKING:
    import psycopg


DB_NAME = "cohortsync.sqlite3"
LOCK_NAME = "cohortsync.lock"
# The advisory lock's two keys: "cohs" and 1. Advisory locks are per database, so two deployments
# sharing a server with different databases never block each other.
LOCK_KEY = (0x636F6873, 1)
CONNECT_TIMEOUT_S = 10


def _since() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


class Cursor(Protocol):
    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ...) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Backend(Protocol):
    """What :class:`cohortsync.state.StateStore` needs of a database."""

    kind: str  # "sqlite" | "postgresql"
    where: str  # for messages: the folder, or the URL without credentials

    def migrate(self, schema: str, version: int, always: str) -> None: ...
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def script(self, sql: str) -> None: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def lock(self, what: str) -> None: ...
    def unlock(self) -> None: ...
    def close(self) -> None: ...


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# -- SQLite ---------------------------------------------------------------------------------------


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)
        self._lock_fd: int | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise StateError(f"state store {folder} is not writable (read-only file system?)")
            self.conn = sqlite3.connect(folder / DB_NAME, isolation_level=None)  # explicit transactions only
            self.conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may undo the last commit, never corrupt the store. That is
            # safe here: an undone commit leaves fsynced files the state does not list, which the next
            # sync removes and lands again (docs/sync.md). FULL would fsync on every commit.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as e:
            raise StateError(f"state store {folder}: {e}") from None
        except OSError as e:
            raise StateError(f"state store {folder}: {e.strerror}") from None

    def migrate(self, schema: str, version: int, always: str) -> None:
        try:
            found = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if found > version:
                raise StateError(f"state store {self.folder} was written by a newer cohortsync (schema {found})")
            if found < version:
                self.conn.executescript(schema)  # idempotent; executescript manages its own transaction
                self.conn.execute(f"PRAGMA user_version={version}")
            self.conn.executescript(always)
        except sqlite3.Error as e:
            raise StateError(f"state store {self.folder}: {e}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as e:
            raise StateError(f"state store {self.folder}: {e}") from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as e:
            raise StateError(f"state store {self.folder}: {e}") from None

    def script(self, sql: str) -> None:
        try:
            self.conn.executescript(sql)
        except sqlite3.Error as e:
            raise StateError(f"state store {self.folder}: {e}") from None

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StateError(f"state store {self.folder}: commit failed: {e}") from None

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def lock(self, what: str) -> None:
        try:
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"cannot open lock file in {self.folder}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise LockedError(
                f"another cohortsync run holds the lock ({holder or 'unknown'}); try again when it ends"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {what}, since {_since()}".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self.conn.close()
        self.unlock()


# -- PostgreSQL -----------------------------------------------------------------------------------


def _is_config_problem(message: str) -> bool:
    """A refusal no retry will cure: wrong password or user, missing database, TLS required/refused."""
    m = message.lower()
    return any(
        s in m
        for s in ("authentication failed", "no password supplied", "does not exist", "no pg_hba.conf entry",
                  "does not support ssl", "permission denied")
    )


def _bytewise(ddl: str) -> str:
    """Text columns that compare and sort by bytes, as SQLite's do, whatever the database's locale."""
    return ddl.replace(" TEXT", ' TEXT COLLATE "C"')


class PostgresBackend:
    kind = "postgresql"

    def __init__(self, url: str, password: str | None) -> None:
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"state.url {problem}")
        self.url = url
        self.password = password
        self.where = redact_url(url)
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._lock_pid: int | None = None
        self._lost: str | None = None
        self.conn = self._connect("cohortsync")

    def _connect(self, application_name: str, **extra: Any) -> psycopg.Connection[Any]:
        import psycopg

        # Secrets come only from the environment: libpq's password file (~/.pgpass, PGPASSFILE) is never read.
        kwargs: dict[str, Any] = {
            "autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "application_name": application_name,
            "passfile": os.devnull,
        }  # fmt: skip
        if self.password is not None:
            kwargs["password"] = self.password
        try:
            return psycopg.connect(self.url, **kwargs, **extra)
        except psycopg.Error as e:
            msg = safe_message(e)
            if _is_config_problem(msg):
                raise ConfigError(f"state store {self.where} refuses the connection: {msg}") from None
            raise TransientStateError(f"state store {self.where} cannot be reached: {msg}") from None

    def _failed(self, e: Exception, doing: str = "") -> StateError:
        import psycopg

        msg = safe_message(e)
        if isinstance(e, psycopg.OperationalError) or self.conn.closed:
            # Later calls on the dead connection only say "the connection is closed": report the first cause.
            self._lost = self._lost or f"connection lost{doing}: {msg}"
            return TransientStateError(
                f"state store {self.where}: {self._lost}; nothing was committed that the landing does not hold, run again"
            )
        return StateError(f"state store {self.where}{doing}: {msg}")

    def migrate(self, schema: str, version: int, always: str) -> None:
        # Concurrent first opens must not race on CREATE TABLE: serialise them on a transaction lock.
        self.begin()
        try:
            self.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY[0]}, 0)")
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            self.execute("CREATE TABLE IF NOT EXISTS run_lock (id INTEGER PRIMARY KEY, holder TEXT NOT NULL)")
            row = self.execute("SELECT max(version) FROM schema_version").fetchone()
            found = 0 if row is None or row[0] is None else int(row[0])
            if found > version:
                raise StateError(f"state store {self.where} was written by a newer cohortsync (schema {found})")
            if found < version:
                self.script(_bytewise(schema))
                self.execute("DELETE FROM schema_version")
                self.execute("INSERT INTO schema_version VALUES (?)", (version,))
            self.script(_bytewise(always))
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        import psycopg

        try:
            return self.conn.execute(sql.replace("?", "%s"), params or None)
        except psycopg.Error as e:
            raise self._failed(e) from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)
        except psycopg.Error as e:
            raise self._failed(e) from None

    def script(self, sql: str) -> None:
        for s in statements(sql):
            self.execute(s)

    def begin(self) -> None:
        self.execute("BEGIN")
        if self._lock_pid is not None:
            # Fencing: commit only while this run still holds the lock. Had the lock's connection
            # dropped, another run may have started; this one must stop before it writes.
            k1, k2 = LOCK_KEY
            (held,) = self.execute(
                f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {k1} AND objid = {k2} "
                "AND objsubid = 2 AND granted AND pid = ?",
                (self._lock_pid,),
            ).fetchone()
            if not held:
                self.rollback()
                raise TransientStateError(
                    f"state store {self.where}: this run lost its lock (its connection dropped); stopped before "
                    "committing, run again"
                )

    def commit(self) -> None:
        import psycopg

        try:
            self.conn.execute("COMMIT")
        except psycopg.Error as e:
            raise self._failed(e, " at commit") from None

    def rollback(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error):  # a dropped connection: the server has rolled back already
            self.conn.execute("ROLLBACK")

    def lock(self, what: str) -> None:
        """Take the session advisory lock on a connection of its own, held open for the run."""
        import psycopg

        holder = f"pid {os.getpid()} on {socket.gethostname()}, {what}, since {_since()}"
        conn = self._connect(
            "cohortsync run lock",
            # The server must notice a vanished client (host gone, not just process): TCP keepalives.
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
        )
        try:
            k1, k2 = LOCK_KEY
            (got,) = conn.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)", (k1, k2)).fetchone()  # type: ignore[misc]
            if not got:
                conn.close()
                raise LockedError(f"another cohortsync run holds the lock ({self._holder()}); try again when it ends")
            conn.execute(
                "INSERT INTO run_lock VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET holder = excluded.holder", (holder,)
            )
            (self._lock_pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
        except psycopg.Error as e:
            conn.close()
            raise TransientStateError(f"state store {self.where}: cannot take the run lock: {safe_message(e)}") from None
        self._lock_conn = conn

    def _holder(self) -> str:
        """Who holds the lock: the row its holder wrote right after taking it."""
        try:
            row = self.execute("SELECT holder FROM run_lock WHERE id = 1").fetchone()
        except StateError:
            return "unknown"
        return str(row[0]) if row else "unknown"

    def unlock(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()  # ends the session: the server releases the advisory lock
            self._lock_conn = None
            self._lock_pid = None

    def close(self) -> None:
        self.conn.close()
        self.unlock()

