"""The landing zone: ``<landing>/<cohort>/<table>/*.parquet``, written so that a crash never duplicates.

A window's rows go to files named after (table, window, part) — the same window always yields the
same names — first under a hidden temporary name, then fsynced and renamed into place. The state
store, committed after the rename, lists every committed file; a file in a table folder that the
state does not list is the remains of a run that died between rename and commit, and the next sync
of that table removes it before landing the same rows again (see docs/sync.md, "commit protocol").
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cohortsync import logs
from cohortsync.errors import LandingError, TamperedError
from cohortsync.faults import fault_point

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
KEY_STATS_ROWS = 4_000_000  # windows up to this many rows count repeated keys in memory (32 MB of int64)
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
            raise TamperedError(
                f"landing file {cohort}/{table}/{p.name} is not recorded in the state store; "
                "refusing to sync this table until it is explained (see docs/operations.md)"
            )
        if removed:
            _fsync_dir(d)
        return removed

    def check_file(self, cohort: str, table: str, recorded: dict[str, Any], thorough: bool) -> str | None:
        """What is wrong with a file the state lists, or None. Cheap (sync, before building on a
        table): present, with the recorded size. Thorough (verify): also its SHA-256, and readable
        as Parquet."""
        path = self.table_dir(cohort, table) / recorded["name"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if size != recorded["bytes"]:
            return f"{size} bytes, the state recorded {recorded['bytes']}"
        if not thorough:
            return None
        try:
            digest, _ = file_sha256(path)
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if digest != recorded["sha256"]:
            return "content differs from what was landed (SHA-256 mismatch)"
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as e:
            return f"not readable as Parquet ({type(e).__name__})"
        return None

    def first_damaged(self, cohort: str, table: str, records: list[dict[str, Any]]) -> str | None:
        """The one-line refusal to build on a table whose listed files are missing or resized (cheap)."""
        for f in records:
            problem = self.check_file(cohort, table, f, thorough=False)
            if problem:
                what = problem if problem == "missing" else f"damaged: {problem}"
                return f"landed file {cohort}/{table}/{f['name']} is {what}; run 'cohortsync verify {cohort} --repair'"
        return None

    def holds_raw_load_dt(self, cohort: str, table: str, records: list[dict[str, Any]]) -> bool:
        """Whether the table's oldest listed file keeps the source's load_dt timestamp (landed before
        load_dt became order_only): one footer read. Unreadable files are verify's business."""
        if not records:
            return False
        try:
            schema = pq.read_schema(self.table_dir(cohort, table) / records[0]["name"])
        except (OSError, pa.ArrowException):
            return False
        i = schema.get_field_index("load_dt")
        return i >= 0 and bool(pa.types.is_timestamp(schema.field(i).type))

    def finish_relanding(self, cohort: str, table: str, steps: list[tuple[str, str | None]]) -> None:
        """Do what a committed re-landing still owes the folder; safe to repeat after a crash: a move
        whose temporary file is gone was done, a delete of a file that is gone was done."""
        d = self.table_dir(cohort, table)
        for name, tmp in steps:
            if tmp is None:
                (d / name).unlink(missing_ok=True)
            elif (d / tmp).exists():
                os.replace(d / tmp, d / name)
                fault_point("between_relanding_moves")
        if d.is_dir():
            _fsync_dir(d)

    def set_aside(self, cohort: str, table: str, names: list[str], tag: str) -> Path:
        """Move files the state does not list out of the table folder (never deleted: they may be
        the only copy of something) into ``<table>/.unlisted/<tag>/``, which readers of
        ``<table>/*.parquet`` and sync's reconcile do not see."""
        d = self.table_dir(cohort, table)
        target = d / ".unlisted" / tag
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(d / name, target / name)
        _fsync_dir(target)
        _fsync_dir(d)
        return target

    def files(self, cohort: str, table: str) -> list[Path]:
        d = self.table_dir(cohort, table)
        return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


class WindowWriter:
    """Writes one (cohort, table, window) as Parquet parts; nothing is visible until ``finish``.

    Encoding Parquet (dictionary, zstd) is the single most expensive step of a sync, and pyarrow's
    writer encodes one column after another on one core. So a window is written by ``lanes``
    encoder threads, each with its own part files; batch ``i`` goes to lane ``i % lanes``. Each
    lane's queue holds two batches: memory stays bounded, and a slow disk slows the source down.
    """

    def __init__(
        self,
        landing: Landing,
        cohort: str,
        table: str,
        lower: datetime | None,
        upper: datetime,
        file_rows: int,
        lanes: int = 2,
        key: str | None = None,
    ) -> None:
        self.landing = landing
        self.key = key
        self._keys: list[np.ndarray] | None = [] if key else None  # copies of the non-null keys
        self._null_keys = 0
        self.dir = landing.table_dir(cohort, table)
        self.table = table
        self.lower = lower
        self.upper = upper
        self.file_rows = file_rows
        self.rows = 0
        self._lock = threading.Lock()
        self._next_part = 0
        self._lanes = [_Lane(self) for _ in range(max(1, lanes))]
        self._turn = 0

    def new_part(self) -> tuple[Path, str]:
        with self._lock:
            part = self._next_part
            self._next_part += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        name = file_name(self.table, self.lower, self.upper, part)
        return self.dir / f"{TMP_PREFIX}{os.getpid()}-{name}", name

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        lane = self._lanes[self._turn % len(self._lanes)]
        self._turn += 1
        lane.put(batch)
        self.rows += batch.num_rows
        if self._keys is not None and self.key is not None:
            # Small windows (every incremental) keep their keys to count repeats without reading the
            # files back; a large one drops them and is counted from the files (bounded memory).
            col = batch.column(self.key)
            if self.rows <= KEY_STATS_ROWS and pa.types.is_integer(col.type):
                self._null_keys += col.null_count
                # A copy, not the column: an Arrow batch from the engine is freed as a whole, so
                # holding one of its columns would hold every column of every batch of the window.
                self._keys.append(np.array(col.drop_null().to_numpy(), dtype=np.int64, copy=True))
            else:
                self._keys = None

    def key_stats(self) -> tuple[int, int] | None:
        """(rows repeating a key, rows without a key) of this window, if it was small enough to keep."""
        if self._keys is None:
            return None
        return repeats(np.concatenate(self._keys) if self._keys else np.empty(0, np.int64)), self._null_keys

    def seal(self) -> list[tuple[str, LandedFile]]:
        """Make the parts durable but leave them under their temporary names: (temporary name,
        file) pairs for a re-landing, whose state swap comes before the files move into place."""
        try:
            parts = [p for lane in self._lanes for p in lane.close()]
            ordered = sorted(parts, key=lambda p: p[1])
            return [(tmp.name, LandedFile(name, rows, size, digest)) for tmp, name, rows, digest, size in ordered]
        except LandingError:
            self.abort()
            raise

    def finish(self) -> list[LandedFile]:
        """Make the parts durable and visible under their final names; returns what to commit."""
        try:
            parts = [p for lane in self._lanes for p in lane.close()]  # each part already fsynced and hashed
            out = []
            for tmp, name, rows, digest, size in sorted(parts, key=lambda p: p[1]):
                os.replace(tmp, self.dir / name)
                out.append(LandedFile(name, rows, size, digest))
                fault_point("between_renames")
            if out:
                _fsync_dir(self.dir)
            for f in out:
                logs.event(log, logging.DEBUG, "landing.file", f"landed {f.name}", rows=f.rows, bytes=f.bytes)
            return out
        except OSError as e:
            self.abort()
            raise LandingError(f"cannot finish landing in {self.dir}: {e}") from None
        except LandingError:
            self.abort()
            raise

    def abort(self) -> None:
        for lane in self._lanes:
            lane.abort()


_STOP = object()


class _Lane:
    """One encoder thread of a WindowWriter, rolling over to a new part after ``file_rows`` rows."""

    def __init__(self, owner: WindowWriter) -> None:
        self.owner = owner
        self.queue: queue.Queue[object] = queue.Queue(maxsize=2)
        self.parts: list[tuple[Path, str, int]] = []
        self._sealed: dict[Path, tuple[str, int]] = {}  # part -> (sha256, bytes), once closed and fsynced
        self.error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._thread: threading.Thread | None = None

    def put(self, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise LandingError(f"cannot write {self.owner.dir}: {self.error}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cohortsync-parquet", daemon=True)
            self._thread.start()
        self.queue.put(batch)

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not _STOP:
                assert isinstance(item, pa.RecordBatch)
                if self.error is not None:
                    continue  # drain, so the producer never blocks on a dead lane
                if self._writer is None or self._rows >= self.owner.file_rows:
                    self._roll(item.schema)
                assert self._writer is not None
                self._writer.write_batch(item)
                self._rows += item.num_rows
                tmp, name, _ = self.parts[-1]
                self.parts[-1] = (tmp, name, self._rows)
        except BaseException as e:  # reported to the producer on its next put, or at close
            self.error = e
            while self.queue.get() is not _STOP:
                pass
        finally:
            self._close_writer()

    def _roll(self, schema: pa.Schema) -> None:
        self._close_writer()
        tmp, name = self.owner.new_part()
        self.parts.append((tmp, name, 0))  # before the file exists: a writer that fails to open it (disk full) leaves nothing
        self._rows = 0
        comp = None if self.owner.landing.compression == "none" else self.owner.landing.compression
        self._writer = pq.ParquetWriter(
            tmp, schema, compression=comp, write_statistics=True, use_dictionary=dictionary_columns(schema)
        )

    def _close_writer(self) -> None:
        """Close the current part and, on this lane's thread, fsync and hash it: the lanes of a
        window do that side by side instead of ``finish`` doing it part after part."""
        if self._writer is not None:
            w, self._writer = self._writer, None
            try:
                w.close()
                if self.error is None:
                    tmp = self.parts[-1][0]
                    self._sealed[tmp] = fsync_and_hash(tmp)
            except BaseException as e:
                self.error = self.error or e

    def close(self) -> list[tuple[Path, str, int, str, int]]:
        """The lane's parts as (temporary path, final name, rows, sha256, bytes)."""
        if self._thread is not None:
            self.queue.put(_STOP)
            self._thread.join()
        if self.error is not None:
            raise LandingError(f"cannot write {self.owner.dir}: {self.error}")
        return [(tmp, name, rows, *self._sealed[tmp]) for tmp, name, rows in self.parts]

    def abort(self) -> None:
        if self.error is None:
            self.error = LandingError("aborted")
        if self._thread is not None and self._thread.is_alive():
            self.queue.put(_STOP)
            self._thread.join()
        for tmp, _, _ in self.parts:
            tmp.unlink(missing_ok=True)
        self.parts = []


def repeats(keys: np.ndarray) -> int:
    """How many keys equal an earlier one: sorted, adjacent equal pairs counted (20 ms for 1.7 M
    keys, where ``pc.count_distinct`` took 820 ms on random 63-bit pseudonyms)."""
    values = np.sort(keys)
    return int(np.count_nonzero(values[1:] == values[:-1]))


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode only columns with few distinct values (concept ids, codes, a raw load_dt).

    Surrogate keys and pseudonyms are nearly all distinct: a dictionary for them is built, overflows
    and is thrown away, which made writing ~30 % slower and files ~35 % larger (benchmarks/). So is
    an order_only load_dt (an int64 per row key), unlike a kept one (a few weekly timestamps).
    """
    return [
        f.name
        for f in schema
        if f.name.endswith("_concept_id")
        or (f.name == "load_dt" and pa.types.is_timestamp(f.type))
        or pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
    ]


def file_sha256(path: Path) -> tuple[str, int]:
    """(sha256, bytes) of a file as it is on disk (checks of landed and exported files)."""
    with path.open("rb") as f:
        return _digest(f)


def fsync_and_hash(path: Path) -> tuple[str, int]:
    """(sha256, bytes) of a file just written, made durable in the same pass."""
    with path.open("rb+") as f:
        out = _digest(f)
        os.fsync(f.fileno())
    return out


def _digest(f: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(1 << 22):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
