"""The state store: watermarks, committed files and the run log, in SQLite under ``state/`` or in PostgreSQL.

Both give real transactions: a table's watermarks and its file list change in one transaction,
after the files are durable, so the store never claims what the landing does not hold. The run
lock (an ``flock`` beside the SQLite file, a session advisory lock in PostgreSQL) is released when
the process dies, so a killed sync never leaves a stale lock behind. Nothing here stores row values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cohortsync import logs
from cohortsync.errors import DeidError, InputError, StateError
from cohortsync.landing import LandedFile, Landing
from cohortsync.statedb import DB_NAME, LOCK_NAME, Backend, PostgresBackend, SqliteBackend

if TYPE_CHECKING:
    from cohortsync.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "DB_NAME", "LOCK_NAME", "TABLES", "CopyReport", "Mark", "StateStore", "TableOutcome", "copy_state", "open_state",
    "table_digest",
]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS cohort (
    name TEXT PRIMARY KEY, members BIGINT NOT NULL, members_sha256 TEXT NOT NULL, registered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watermark (
    cohort TEXT NOT NULL, tbl TEXT NOT NULL, wm TEXT NOT NULL, rows BIGINT NOT NULL, files BIGINT NOT NULL,
    run_id TEXT NOT NULL, member_batch BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (cohort, tbl)
);
CREATE TABLE IF NOT EXISTS landed_file (
    cohort TEXT NOT NULL, tbl TEXT NOT NULL, name TEXT NOT NULL, lower TEXT, upper TEXT NOT NULL,
    rows BIGINT NOT NULL, bytes BIGINT NOT NULL, sha256 TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (cohort, tbl, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS purge (
    cohort TEXT NOT NULL, amendment BIGINT NOT NULL, purged_at TEXT NOT NULL, rows BIGINT NOT NULL,
    PRIMARY KEY (cohort, amendment)
);
CREATE TABLE IF NOT EXISTS retired (cohort TEXT NOT NULL, retired_at TEXT NOT NULL, files BIGINT, rows BIGINT);
CREATE TABLE IF NOT EXISTS run (
    run_id TEXT PRIMARY KEY, command TEXT NOT NULL, started TEXT NOT NULL, ended TEXT, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_table (
    run_id TEXT NOT NULL, cohort TEXT NOT NULL, tbl TEXT NOT NULL, lower TEXT, upper TEXT, rows BIGINT,
    files BIGINT, status TEXT NOT NULL, error TEXT, seconds DOUBLE PRECISION, notes TEXT,
    PRIMARY KEY (run_id, cohort, tbl)
);
"""

# Added after schema 1 and created on every open (IF NOT EXISTS): older stores gain them in place.
#  relanding: a table's re-landing (verify --repair) between its state swap and its files' moves:
#    tmp -> name to move into place, or tmp NULL: an obsolete file to delete. Finished on next open.
#  verify_result: the latest verify finding per (cohort, table), for status.
EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS relanding (
    cohort TEXT NOT NULL, tbl TEXT NOT NULL, name TEXT NOT NULL, tmp TEXT, PRIMARY KEY (cohort, tbl, name)
);
CREATE TABLE IF NOT EXISTS verify_result (
    cohort TEXT NOT NULL, tbl TEXT NOT NULL, checked_at TEXT NOT NULL, status TEXT NOT NULL, detail TEXT,
    PRIMARY KEY (cohort, tbl)
);
"""

# The export tables (cohortsync export): created on every open, like EXTRA_SCHEMA.
EXPORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_consumer (name TEXT PRIMARY KEY, slot BIGINT NOT NULL UNIQUE, first_export TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS export_log (
    export_id TEXT PRIMARY KEY, started TEXT NOT NULL, ended TEXT, cohort TEXT NOT NULL, consumer TEXT NOT NULL,
    tables TEXT NOT NULL, rows BIGINT, manifest_sha256 TEXT, os_user TEXT NOT NULL, out_dir TEXT NOT NULL,
    status TEXT NOT NULL
);
"""

# Every table of the store, in an order that copies parents first (``cohortsync state copy``).
TABLES = (
    "meta", "cohort", "watermark", "landed_file", "purge", "retired", "run", "run_table", "relanding",
    "verify_result", "export_consumer", "export_log",
)


def open_state(settings: Settings) -> StateStore:
    """The state store the settings name: PostgreSQL at ``state.url``, else SQLite in ``state.path``."""
    if settings.state.url:
        password = settings.state_password.get_secret_value() if settings.state_password else None
        return StateStore.postgres(settings.state.url, password)
    return StateStore(settings.state_path)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds")


def parse_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Mark:
    """A (cohort, table) watermark, and the last amendment batch whose members it covers."""

    wm: datetime
    batch: int


@dataclass(frozen=True)
class TableOutcome:
    """What one (cohort, table) got in a run; the unit the run log and the reports speak of."""

    cohort: str
    table: str
    lower: datetime | None
    upper: datetime | None
    rows: int
    files: list[LandedFile]
    status: str  # "landed" | "up-to-date" | "failed" | "skipped"
    error: str | None = None
    seconds: float = 0.0
    notes: dict[str, Any] | None = None
    batch: int = 0  # member batch the watermark covers after this outcome
    exit_code: int = 0  # of a failure: what the error means to a scheduler (errors.ExitCode)


class StateStore:
    """The one state interface: every query, written once for both backends (``cohortsync.statedb``).

    ``StateStore(folder)`` opens the embedded SQLite store; :func:`open_state` picks the backend
    the settings name. ``db`` runs the portable SQL of this class on either engine.
    """

    def __init__(self, folder: Path | None = None, *, backend: Backend | None = None) -> None:
        if backend is None:
            if folder is None:
                raise ValueError("StateStore needs a folder or a backend")
            backend = SqliteBackend(folder)
        self.db: Backend = backend
        self.where = backend.where
        try:
            backend.migrate(SCHEMA, SCHEMA_VERSION, EXTRA_SCHEMA + EXPORT_SCHEMA)
        except BaseException:
            backend.close()
            raise

    @classmethod
    def postgres(cls, url: str, password: str | None) -> StateStore:
        return cls(backend=PostgresBackend(url, password))

    @property
    def kind(self) -> str:
        return self.db.kind

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Backend]:
        self.db.begin()
        try:
            yield self.db
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    # -- the lock ------------------------------------------------------------------------------
    def lock(self, what: str) -> None:
        """Take the run lock or fail at once: two writers would race on watermarks and files."""
        self.db.lock(what)
        logs.event(log, logging.DEBUG, "state.locked", f"run lock taken in {self.where} for {what}")

    def unlock(self) -> None:
        self.db.unlock()

    # -- the de-identification key ----------------------------------------------------------------
    def check_key_fingerprint(self, fingerprint: str) -> None:
        """Refuse a different key than the landing was written with: pseudonyms would not join."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'deid_key_fingerprint'").fetchone()
        if row is None:
            with self.transaction() as db:
                db.execute("INSERT INTO meta VALUES ('deid_key_fingerprint', ?)", (fingerprint,))
        elif row[0] != fingerprint:
            raise DeidError(
                "COHORTSYNC_DEID_KEY is not the key this landing was written with "
                f"(fingerprint {row[0]}, now {fingerprint}); rotating the key is a deliberate act: see docs/operations.md"
            )

    def forget_key(self) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM meta WHERE key = 'deid_key_fingerprint'")

    # -- cohorts ---------------------------------------------------------------------------------
    def record_cohort(self, name: str, members: int, sha256: str, registered_at: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO cohort VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET members=excluded.members, "
                "members_sha256=excluded.members_sha256",
                (name, members, sha256, registered_at),
            )

    # -- watermarks and files --------------------------------------------------------------------
    def watermarks(self) -> dict[tuple[str, str], Mark]:
        rows = self.db.execute("SELECT cohort, tbl, wm, member_batch FROM watermark").fetchall()
        return {(c, t): Mark(datetime.fromisoformat(w), int(b)) for c, t, w, b in rows}

    def committed_files(self, cohort: str, table: str) -> set[str]:
        rows = self.db.execute("SELECT name FROM landed_file WHERE cohort=? AND tbl=?", (cohort, table)).fetchall()
        return {r[0] for r in rows}

    def files(self, cohort: str, table: str) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT name, lower, upper, rows, bytes, sha256, run_id FROM landed_file WHERE cohort=? AND tbl=? "
            "ORDER BY upper, name",
            (cohort, table),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def commit_table(self, run_id: str, outcomes: list[TableOutcome]) -> None:
        """Advance the watermarks of one table scan and record its files: all cohorts or none."""
        with self.transaction() as db:
            for o in outcomes:
                assert o.upper is not None
                for f in o.files:
                    db.execute(
                        "INSERT INTO landed_file VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (cohort, tbl, name) DO UPDATE "
                        "SET lower=excluded.lower, upper=excluded.upper, rows=excluded.rows, bytes=excluded.bytes, "
                        "sha256=excluded.sha256, run_id=excluded.run_id",
                        (o.cohort, o.table, f.name, iso(o.lower), iso(o.upper), f.rows, f.bytes, f.sha256, run_id),
                    )
                db.execute(
                    "INSERT INTO watermark VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(cohort, tbl) DO UPDATE SET "
                    "wm=excluded.wm, rows=watermark.rows+excluded.rows, files=watermark.files+excluded.files, "
                    "run_id=excluded.run_id, member_batch=excluded.member_batch",
                    (o.cohort, o.table, iso(o.upper), o.rows, len(o.files), run_id, o.batch),
                )
                self._log(db, run_id, o)
        for o in outcomes:
            logs.event(
                log, logging.DEBUG, "state.committed", f"{o.cohort}/{o.table}: watermark -> {iso(o.upper)}",
                cohort=o.cohort, table=o.table, rows=o.rows, files=len(o.files), watermark=iso(o.upper),
            )

    def update_files(self, cohort: str, table: str, files: list[LandedFile], rows_removed: int) -> None:
        """Record rewritten files (a purge): new sizes and checksums, fewer rows."""
        with self.transaction() as db:
            for f in files:
                db.execute(
                    "UPDATE landed_file SET rows=?, bytes=?, sha256=? WHERE cohort=? AND tbl=? AND name=?",
                    (f.rows, f.bytes, f.sha256, cohort, table, f.name),
                )
            db.execute("UPDATE watermark SET rows = rows - ? WHERE cohort=? AND tbl=?", (rows_removed, cohort, table))

    def purged_amendments(self, cohort: str) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT amendment FROM purge WHERE cohort=?", (cohort,)).fetchall()}

    def record_purge(self, cohort: str, amendment: int, rows: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO purge VALUES (?, ?, ?, ?) ON CONFLICT (cohort, amendment) DO UPDATE "
                "SET purged_at=excluded.purged_at, rows=excluded.rows",
                (cohort, amendment, iso(now_utc()), rows),
            )

    def forget_cohort(self, cohort: str) -> None:
        """A retired cohort: its watermarks and file list go; the run log and the act itself stay."""
        with self.transaction() as db:
            n, rows = db.execute(
                "SELECT count(*), CAST(coalesce(sum(rows), 0) AS BIGINT) FROM landed_file WHERE cohort=?", (cohort,)
            ).fetchone()
            db.execute("DELETE FROM landed_file WHERE cohort=?", (cohort,))
            db.execute("DELETE FROM watermark WHERE cohort=?", (cohort,))
            db.execute("DELETE FROM purge WHERE cohort=?", (cohort,))
            db.execute("DELETE FROM relanding WHERE cohort=?", (cohort,))
            db.execute("DELETE FROM verify_result WHERE cohort=?", (cohort,))
            db.execute("DELETE FROM cohort WHERE name=?", (cohort,))
            db.execute("INSERT INTO retired VALUES (?, ?, ?, ?)", (cohort, iso(now_utc()), n, rows))

    def forget_table(self, cohort: str, table: str) -> None:
        """Forget what was landed for one (cohort, table), so the next sync backfills it (verify --repair)."""
        with self.transaction() as db:
            db.execute("DELETE FROM landed_file WHERE cohort=? AND tbl=?", (cohort, table))
            db.execute("DELETE FROM watermark WHERE cohort=? AND tbl=?", (cohort, table))

    def swap_table(
        self,
        run_id: str,
        cohort: str,
        table: str,
        upper: datetime,
        new: list[tuple[str, LandedFile]],
        unchanged: frozenset[str] = frozenset(),
    ) -> None:
        """Replace a table's file list, in one transaction that also records what the folder must
        still do: move each new file from its temporary name into place, delete each old file that
        no new one replaces and that is not ``unchanged`` (``relanding``). A new file keeps the
        window of the old file of its name (a rewrite); any other is the window ``(backfill, upper]``
        (a re-landing). The watermark stays; its row and file counts become the new landing's."""
        with self.transaction() as db:
            cur = db.execute("SELECT name, lower, upper, rows FROM landed_file WHERE cohort=? AND tbl=?", (cohort, table))
            old = {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}
            db.execute("DELETE FROM relanding WHERE cohort=? AND tbl=?", (cohort, table))
            for name in old:
                if name not in unchanged:
                    db.execute("DELETE FROM landed_file WHERE cohort=? AND tbl=? AND name=?", (cohort, table, name))
            for tmp, f in new:
                lower, up, _ = old.get(f.name, (None, iso(upper), 0))
                db.execute(
                    "INSERT INTO landed_file VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cohort, table, f.name, lower, up, f.rows, f.bytes, f.sha256, run_id),
                )
                db.execute("INSERT INTO relanding VALUES (?, ?, ?, ?)", (cohort, table, f.name, tmp))
            for name in sorted(set(old) - {f.name for _, f in new} - unchanged):
                db.execute("INSERT INTO relanding VALUES (?, ?, ?, NULL)", (cohort, table, name))
            kept = [old[n][2] for n in unchanged if n in old]
            db.execute(
                "UPDATE watermark SET rows=?, files=?, run_id=? WHERE cohort=? AND tbl=?",
                (sum(f.rows for _, f in new) + sum(kept), len(new) + len(kept), run_id, cohort, table),
            )

    def finish_relandings(self, landing: Landing) -> list[tuple[str, str]]:
        """Complete re-landings that a crash interrupted after their state swap (``sync.reland``):
        each recorded move is idempotent, and the record goes once all of a table's are done."""
        done = []
        for (cohort, table), steps in self.relandings().items():
            landing.finish_relanding(cohort, table, steps)
            self.relanded(cohort, table)
            done.append((cohort, table))
        return done

    def relandings(self) -> dict[tuple[str, str], list[tuple[str, str | None]]]:
        """Re-landings whose files have not all been moved into place yet: (name, temporary name or None)."""
        out: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        for c, t, name, tmp in self.db.execute("SELECT cohort, tbl, name, tmp FROM relanding ORDER BY 1, 2, 3"):
            out.setdefault((c, t), []).append((name, tmp))
        return out

    def relanded(self, cohort: str, table: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM relanding WHERE cohort=? AND tbl=?", (cohort, table))

    def record_verify(self, cohort: str, results: dict[str, tuple[str, str | None]]) -> None:
        """The latest verify finding per table: (status, detail without row values)."""
        with self.transaction() as db:
            for table, (status, detail) in results.items():
                db.execute(
                    "INSERT INTO verify_result VALUES (?, ?, ?, ?, ?) ON CONFLICT (cohort, tbl) DO UPDATE "
                    "SET checked_at=excluded.checked_at, status=excluded.status, detail=excluded.detail",
                    (cohort, table, iso(now_utc()), status, detail),
                )

    def verify_results(self) -> dict[tuple[str, str], dict[str, Any]]:
        cur = self.db.execute("SELECT cohort, tbl, checked_at, status, detail FROM verify_result")
        return {(c, t): {"checked_at": at, "status": s, "detail": d} for c, t, at, s, d in cur.fetchall()}

    def log_outcome(self, run_id: str, o: TableOutcome) -> None:
        with self.transaction() as db:
            self._log(db, run_id, o)

    @staticmethod
    def _log(db: Backend, run_id: str, o: TableOutcome) -> None:
        db.execute(
            "INSERT INTO run_table VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, cohort, tbl) DO UPDATE "
            "SET lower=excluded.lower, upper=excluded.upper, rows=excluded.rows, files=excluded.files, "
            "status=excluded.status, error=excluded.error, seconds=excluded.seconds, notes=excluded.notes",
            (
                run_id, o.cohort, o.table, iso(o.lower), iso(o.upper), o.rows, len(o.files), o.status, o.error,
                round(o.seconds, 3), json.dumps(o.notes, sort_keys=True) if o.notes else None,
            ),
        )

    # -- runs ------------------------------------------------------------------------------------
    def start_run(self, command: str) -> str:
        run_id = logs.claim_run_id()  # the command's run id, so log lines, --json and the run log agree
        with self.transaction() as db:
            db.execute("INSERT INTO run VALUES (?, ?, ?, NULL, 'running')", (run_id, command, iso(now_utc())))
        return run_id

    def end_run(self, run_id: str, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE run SET ended=?, status=? WHERE run_id=?", (iso(now_utc()), status, run_id))

    def status_rows(self) -> list[dict[str, Any]]:
        """Per (cohort, table): watermark, rows landed, and the latest run's outcome and error."""
        cur = self.db.execute(
            """
            WITH last AS (
              SELECT rt.*, r.started, ROW_NUMBER() OVER (PARTITION BY rt.cohort, rt.tbl ORDER BY r.started DESC) AS k
              FROM run_table rt JOIN run r USING (run_id)
            )
            SELECT COALESCE(w.cohort, l.cohort) AS cohort, COALESCE(w.tbl, l.tbl) AS tbl, w.wm AS watermark,
                   COALESCE(w.rows, 0) AS rows_landed, COALESCE(w.files, 0) AS files, l.run_id AS last_run,
                   l.started AS last_run_started, l.status AS last_status, l.error AS last_error
            FROM watermark w FULL OUTER JOIN (SELECT * FROM last WHERE k = 1) l
              ON l.cohort = w.cohort AND l.tbl = w.tbl
            ORDER BY 1, 2
            """
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM run ORDER BY started DESC LIMIT ?", (limit,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def run_tables(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM run_table WHERE run_id=? ORDER BY cohort, tbl", (run_id,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # -- exports (cohortsync export) -------------------------------------------------------------
    def window_notes(self, cohort: str, table: str) -> dict[str, str | None]:
        """Per landed window (its upper bound): the notes (JSON) of the latest run that landed it."""
        rows = self.db.execute(
            "SELECT rt.upper, rt.notes FROM run_table rt JOIN run r USING (run_id) WHERE rt.cohort=? AND rt.tbl=? "
            "AND rt.status='landed' ORDER BY r.started",
            (cohort, table),
        ).fetchall()
        return {u: n for u, n in rows}

    def cohort_names(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM cohort").fetchall()}

    def key_fingerprint(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'deid_key_fingerprint'").fetchone()
        return None if row is None else str(row[0])

    def consumer_slot(self, consumer: str, slots: int) -> int:
        """The consumer's fixed slot among ``slots``: the first free one from a hash of its name, so it
        is the same after a state restore whenever no other consumer took it first."""
        with self.transaction() as db:
            row = db.execute("SELECT slot FROM export_consumer WHERE name=?", (consumer,)).fetchone()
            if row is not None:
                return int(row[0])
            taken = {r[0] for r in db.execute("SELECT slot FROM export_consumer").fetchall()}
            if len(taken) >= slots:
                raise StateError(f"every one of the {slots} buyer date-offset slots is taken; see docs/export.md")
            slot = int.from_bytes(uuid.uuid5(uuid.NAMESPACE_URL, f"cohortsync-consumer:{consumer}").bytes[:8]) % slots
            while slot in taken:
                slot = (slot + 1) % slots
            db.execute("INSERT INTO export_consumer VALUES (?, ?, ?)", (consumer, slot, iso(now_utc())))
            return slot

    def start_export(self, cohort: str, consumer: str, tables: list[str], out_dir: str, os_user: str) -> str:
        export_id = now_utc().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        with self.transaction() as db:
            db.execute(
                "INSERT INTO export_log VALUES (?, ?, NULL, ?, ?, ?, NULL, NULL, ?, ?, 'running')",
                (export_id, iso(now_utc()), cohort, consumer, json.dumps(tables), os_user, out_dir),
            )
        return export_id

    def end_export(self, export_id: str, status: str, rows: int | None, manifest_sha256: str | None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE export_log SET ended=?, status=?, rows=?, manifest_sha256=? WHERE export_id=?",
                (iso(now_utc()), status, rows, manifest_sha256, export_id),
            )

    def exports(self, limit: int = 10) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM export_log ORDER BY started DESC LIMIT ?", (limit,))
        cols = [d[0] for d in cur.description]
        out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        for r in out:
            r["tables"] = json.loads(r["tables"])
        return out


# -- moving a state (cohortsync state copy) --------------------------------------------------------
COPY_BATCH = 1000


def table_digest(store: StateStore, table: str) -> tuple[int, str]:
    """A table's row count and a digest of its content that both engines compute alike.

    Each row (as JSON of column -> value) is hashed and the hashes are summed modulo 2**256: the
    result does not depend on row order, so neither engine's sort order nor a materialised sort is
    needed, and any changed, missing or extra row changes it.
    """
    cur = store.db.execute(f"SELECT * FROM {table}")
    cols = [d[0] for d in cur.description]
    total, n = 0, 0
    while batch := cur.fetchmany(COPY_BATCH):
        for row in batch:
            doc = json.dumps(dict(zip(cols, row, strict=True)), sort_keys=True, separators=(",", ":"))
            total = (total + int.from_bytes(hashlib.sha256(doc.encode()).digest())) % (1 << 256)
            n += 1
    return n, f"{total:064x}"


@dataclass(frozen=True)
class CopyReport:
    tables: dict[str, tuple[int, str]]  # table -> (rows, digest), equal on both sides

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.tables.values())


def copy_state(source: StateStore, target: StateStore) -> CopyReport:
    """Copy every table of ``source`` into the empty ``target`` in one target transaction, then
    compare each table's row count and digest on both sides before committing: a difference rolls
    the whole copy back, so the target ends either empty or equal to the source. Both are locked."""
    for table in TABLES:
        (n,) = target.db.execute(f"SELECT count(*) FROM {table}").fetchone()
        if n:
            raise InputError(
                f"state copy: the target {target.where} is not empty ({table} has {n} rows); "
                "copy only into a new, empty database"
            )
    with target.transaction() as db:
        for table in TABLES:
            cur = source.db.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            insert = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
            while batch := cur.fetchmany(COPY_BATCH):
                db.executemany(insert, batch)
        found: dict[str, tuple[int, str]] = {}
        for table in TABLES:
            want, got = table_digest(source, table), table_digest(target, table)
            if want != got:
                raise StateError(
                    f"state copy: {table} differs after copying ({want[0]} rows in {source.where}, {got[0]} in "
                    f"{target.where}); nothing was committed"
                )
            found[table] = want
    return CopyReport(found)
