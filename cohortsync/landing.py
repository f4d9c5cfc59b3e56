"""The landing zone: ``<landing>/<cohort>/<table>/*.parquet``, written so that a crash never duplicates.

A window's rows go to files named after (table, window, part) — the same window always yields the
same names — first under a hidden temporary name, then fsynced and renamed into place. The state
store, committed after the rename, lists every committed file; a file in a table folder that the
state does not list is the remains of a run that died between rename and commit, and the next sync
of that table removes it before landing the same rows again (see docs/sync.md, "commit protocol").
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from cohortsync.errors import LandingError, StateError

TMP_PREFIX = ".tmp-"
FILE_RE = re.compile(r"^(?P<table>[a-z_]+)__(?P<lo>\d{8}T\d{12}|backfill)__(?P<hi>\d{8}T\d{12})__(?P<part>\d{4})\.parquet$")


def window_tag(value: datetime | None) -> str:
    return "backfill" if value is None else value.strftime("%Y%m%dT%H%M%S%f")


def file_name(table: str, lower: datetime | None, upper: datetime, part: int) -> str:
    return f"{table}__{window_tag(lower)}__{window_tag(upper)}__{part:04d}.parquet"


@dataclass(frozen=True)
class LandedFile:
    name: str  # relative to the table folder
    rows: int
    bytes: int
    sha256: str


class Landing:
    def __init__(self, root: Path, compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd") -> None:
        self.root = root
        self.compression = compression

    def table_dir(self, cohort: str, table: str) -> Path:
        return self.root / cohort / table

    def writer(self, cohort: str, table: str, lower: datetime | None, upper: datetime, file_rows: int) -> WindowWriter:
        return WindowWriter(self, cohort, table, lower, upper, file_rows)

    def reconcile(self, cohort: str, table: str, committed: set[str], resumable_lower: datetime | None) -> list[str]:
        """Remove what a crashed run left in a table folder; refuse when the folder disagrees otherwise.

        Temporary files are always removed. A finished file the state does not list is removed only
        if it belongs to the window this sync is about to land again (its lower bound equals the
        current watermark); any other unlisted file means state and landing disagree (state restored
        from a backup, files copied in by hand), and deleting it could lose data, so we stop.
        """
        d = self.table_dir(cohort, table)
        if not d.is_dir():
            return []
        removed = []
        want = window_tag(resumable_lower)
        for p in sorted(d.iterdir()):
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)
                removed.append(p.name)
                continue
            if p.name in committed or not p.name.endswith(".parquet"):
                continue
            m = FILE_RE.match(p.name)
            if m and m["table"] == table and m["lo"] == want:
                p.unlink()
                removed.append(p.name)
                continue
            raise StateError(
                f"landing file {cohort}/{table}/{p.name} is not recorded in the state store; "
                "refusing to sync this table until it is explained (see docs/operations.md)"
            )
        if removed:
            _fsync_dir(d)
        return removed

    def files(self, cohort: str, table: str) -> list[Path]:
        d = self.table_dir(cohort, table)
        return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


class WindowWriter:
    """Writes one (cohort, table, window) as one or more Parquet parts; nothing is visible until ``finish``."""

    def __init__(
        self, landing: Landing, cohort: str, table: str, lower: datetime | None, upper: datetime, file_rows: int
    ) -> None:
        self.landing = landing
        self.dir = landing.table_dir(cohort, table)
        self.table = table
        self.lower = lower
        self.upper = upper
        self.file_rows = file_rows
        self.rows = 0
        self._parts: list[tuple[Path, str, int]] = []  # (tmp path, final name, rows)
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        try:
            if self._writer is None or self._part_rows >= self.file_rows:
                self._roll(batch.schema)
            assert self._writer is not None
            self._writer.write_batch(batch)
        except OSError as e:
            raise LandingError(f"cannot write {self.dir}: {e}") from None
        self.rows += batch.num_rows
        self._part_rows += batch.num_rows
        path, name, _ = self._parts[-1]
        self._parts[-1] = (path, name, self._part_rows)

    def _roll(self, schema: pa.Schema) -> None:
        self._close_current()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = file_name(self.table, self.lower, self.upper, len(self._parts))
        tmp = self.dir / f"{TMP_PREFIX}{os.getpid()}-{name}"
        comp = None if self.landing.compression == "none" else self.landing.compression
        self._writer = pq.ParquetWriter(tmp, schema, compression=comp, write_statistics=True)
        self._parts.append((tmp, name, 0))
        self._part_rows = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[LandedFile]:
        """Make the parts durable and visible under their final names; returns what to commit."""
        try:
            self._close_current()
            out = []
            for tmp, name, rows in self._parts:
                digest, size = _fsync_and_hash(tmp)
                os.replace(tmp, self.dir / name)
                out.append(LandedFile(name, rows, size, digest))
            if self._parts:
                _fsync_dir(self.dir)
            return out
        except OSError as e:
            self.abort()
            raise LandingError(f"cannot finish landing in {self.dir}: {e}") from None

    def abort(self) -> None:
        try:
            self._close_current()
        except Exception:  # the writer may already be broken; the temporary files go regardless
            self._writer = None
        for tmp, _, _ in self._parts:
            tmp.unlink(missing_ok=True)
        self._parts.clear()


def _fsync_and_hash(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb+") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return h.hexdigest(), size


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
