"""The landing zone: ``<landing>/<cohort>/<table>/*.parquet``, written so that a crash never duplicates.

A window's rows go to files named after (table, window, part) — the same window always yields the
same names — first under a hidden temporary name, then fsynced and renamed into place. The state
store, committed after the rename, lists every committed file; a file in a table folder that the
state does not list is the remains of a run that died between rename and commit, and the next sync
of that table removes it before landing the same rows again (see docs/sync.md, "commit protocol").

The files live in a :class:`Store`: a local folder (:class:`LocalStore`: temporary name, fsync,
rename) or Azure storage (:class:`AzureStore`, through pyarrow's AzureFileSystem), where a rename is
a copy on flat namespaces. There a window's parts are written straight under their final names (a
blob's content appears whole when its upload commits) and the state stays the only commit record;
only rewrites of committed files (repair, withdrawal) go through temporary names and the redo
record of the state (docs/sync.md, "Object storage").
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cohortsync import logs
from cohortsync.config import AzureLocation
from cohortsync.errors import ConfigError, LandingAuthError, LandingError, TamperedError, TransientLandingError, safe_message
from cohortsync.faults import fault_point

if TYPE_CHECKING:
    import duckdb

    from cohortsync.config import Settings

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
KEY_STATS_ROWS = 4_000_000  # windows up to this many rows count repeated keys in memory (32 MB of int64)
FILE_RE = re.compile(r"^(?P<table>[a-z_]+)__(?P<lo>\d{8}T\d{12}|backfill)__(?P<hi>\d{8}T\d{12})__(?P<part>\d{4})\.parquet$")


def window_tag(value: datetime | None) -> str:
    return "backfill" if value is None else value.strftime("%Y%m%dT%H%M%S%f")


def file_name(table: str, lower: datetime | None, upper: datetime, part: int) -> str:
    return f"{table}__{window_tag(lower)}__{window_tag(upper)}__{part:04d}.parquet"


Sealer = Callable[[], tuple[str, int]]  # closes a written file durably: (sha256, bytes)


class Store:
    """Where a landing's files live; paths are relative to the landing root ("cohort/table/name")."""

    direct = False  # object storage: parts go straight to their final names (no rename)

    def display(self, rel: str) -> str:
        raise NotImplementedError

    def is_dir(self, rel: str) -> bool:
        raise NotImplementedError

    def names(self, rel: str) -> list[str]:
        """Names of the files directly in folder ``rel`` (none if it does not exist)."""
        raise NotImplementedError

    def size(self, rel: str) -> int | None:
        """Bytes of a file, None if it does not exist."""
        raise NotImplementedError

    def open_input(self, rel: str) -> Any:
        """A random-access file for pyarrow (Parquet footers, row groups)."""
        raise NotImplementedError

    def sha256(self, rel: str) -> tuple[str, int]:
        raise NotImplementedError

    def create(self, rel: str) -> tuple[Any, Sealer]:
        """A ParquetWriter target for a new file and the call that makes it durable."""
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        """Remove a file; one that is gone already is fine (redo after a crash)."""
        raise NotImplementedError

    def replace(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def sync_dir(self, rel: str) -> None:
        """Make the renames and deletions in a folder durable."""

    def delete_tree(self, rel: str) -> None:
        raise NotImplementedError

    def dataset(self, rels: list[str]) -> ds.Dataset:
        """The Parquet files as one pyarrow dataset (schema of the first): a streaming scan for DuckDB."""
        raise NotImplementedError


class LocalStore(Store):
    """A local folder: temporary names, fsync of files and folders, atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def display(self, rel: str) -> str:
        return str(self.root / rel)

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def names(self, rel: str) -> list[str]:
        d = self.root / rel
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def size(self, rel: str) -> int | None:
        try:
            return (self.root / rel).stat().st_size
        except FileNotFoundError:
            return None

    def open_input(self, rel: str) -> Any:
        return str(self.root / rel)

    def sha256(self, rel: str) -> tuple[str, int]:
        return file_sha256(self.root / rel)

    def create(self, rel: str) -> tuple[Any, Sealer]:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path), lambda: fsync_and_hash(path)

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def replace(self, src: str, dst: str) -> None:
        (self.root / dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / src, self.root / dst)

    def sync_dir(self, rel: str) -> None:
        if (self.root / rel).is_dir():
            _fsync_dir(self.root / rel)

    def delete_tree(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    def dataset(self, rels: list[str]) -> ds.Dataset:
        return ds.dataset([str(self.root / r) for r in rels], format="parquet")


class AzureStore(Store):
    """Azure Blob Storage or ADLS Gen2 through pyarrow's AzureFileSystem (account = its root).

    No fsync: a blob's content is committed by its upload's final call. pyarrow creates an empty
    blob when a file is opened for writing, so a file being written is visible (empty or old-free,
    never listed by the state) under its name: which is why committed names are only ever replaced
    by a server-side copy of a complete temporary blob (:meth:`replace`), never written over.
    """

    direct = True

    def __init__(self, location: AzureLocation, fs: pafs.FileSystem) -> None:
        self.location = location
        self.fs = fs

    def path(self, rel: str) -> str:
        return f"{self.location.root}/{rel}"

    def display(self, rel: str) -> str:
        return f"{self.location.display.rstrip('/')}/{rel}"

    def is_dir(self, rel: str) -> bool:
        return bool(self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory)

    def names(self, rel: str) -> list[str]:
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def size(self, rel: str) -> int | None:
        info = self.fs.get_file_info(self.path(rel))
        return int(info.size) if info.type == pafs.FileType.File and info.size is not None else None

    def open_input(self, rel: str) -> Any:
        return self.fs.open_input_file(self.path(rel))

    def sha256(self, rel: str) -> tuple[str, int]:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return _digest(f)

    def create(self, rel: str) -> tuple[Any, Sealer]:
        sink = _HashingSink(self.fs.open_output_stream(self.path(rel)))
        return sink, sink.commit

    def delete(self, rel: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))

    def replace(self, src: str, dst: str) -> None:
        try:
            self.fs.move(self.path(src), self.path(dst))  # an atomic rename on hierarchical namespaces
        except NotImplementedError:  # flat namespace: a server-side copy (atomic per blob), then the delete
            self.fs.copy_file(self.path(src), self.path(dst))
            self.fs.delete_file(self.path(src))

    def delete_tree(self, rel: str) -> None:
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=True)
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File:
                self.delete(info.path[len(self.location.root) + 1 :])

    def dataset(self, rels: list[str]) -> ds.Dataset:
        return ds.dataset([self.path(r) for r in rels], format="parquet", filesystem=self.fs)


class _HashingSink:
    """A write-only file for ParquetWriter that hashes what passes through to an Azure upload, so
    a landed blob's SHA-256 needs no second read over the network."""

    def __init__(self, out: pa.NativeFile) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.out.write(view)
        self.bytes += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """ParquetWriter closes what it was given: the upload is committed in :meth:`commit`."""

    def commit(self) -> tuple[str, int]:
        if not self.closed:
            self.closed = True
            self.out.close()  # the upload's final call: the blob's content appears whole
        return self.hash.hexdigest(), self.bytes


def open_landing(settings: Settings) -> Landing:
    """The configured landing; for Azure, checked to be reachable with the environment's credentials."""
    loc = settings.landing_url
    if loc is None:
        return Landing(settings.landing_path, settings.landing.compression)
    fs = azure_filesystem(loc, settings.landing.azure_endpoint)
    with azure_errors(loc):
        root = fs.get_file_info(loc.container)
    if root.type != pafs.FileType.Directory:
        raise ConfigError(f"Azure landing {loc.display}: container {loc.container!r} does not exist in account {loc.account}")
    return Landing(AzureStore(loc, fs), settings.landing.compression)


AZURE_KEY_ENV = "AZURE_STORAGE_ACCOUNT_KEY"
AZURE_SAS_ENV = "AZURE_STORAGE_SAS_TOKEN"


def azure_filesystem(loc: AzureLocation, endpoint: str | None) -> pafs.FileSystem:
    """pyarrow's AzureFileSystem with credentials from the environment only: an account key or a
    SAS (local work), a service principal (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET),
    else the default chain (workload identity, managed identity: AZURE_CLIENT_ID picks a
    user-assigned one). Nothing of them is logged."""
    env = os.environ
    kw: dict[str, Any] = {}
    if env.get(AZURE_KEY_ENV) and env.get(AZURE_SAS_ENV):
        raise LandingAuthError(f"set {AZURE_KEY_ENV} or {AZURE_SAS_ENV}, not both")
    if env.get(AZURE_KEY_ENV):
        kw["account_key"] = env[AZURE_KEY_ENV]
    elif env.get(AZURE_SAS_ENV):
        kw["sas_token"] = env[AZURE_SAS_ENV].lstrip("?")
    elif all(env.get(v) for v in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")):
        kw.update(client_id=env["AZURE_CLIENT_ID"], tenant_id=env["AZURE_TENANT_ID"], client_secret=env["AZURE_CLIENT_SECRET"])
    elif env.get("AZURE_CLIENT_ID") and not env.get("AZURE_FEDERATED_TOKEN_FILE"):
        kw["client_id"] = env["AZURE_CLIENT_ID"]  # a user-assigned managed identity
    if endpoint:
        scheme, _, authority = endpoint.rstrip("/").partition("://")
        kw.update(blob_storage_authority=authority, dfs_storage_authority=authority,
                  blob_storage_scheme=scheme, dfs_storage_scheme=scheme)
    try:
        return pafs.AzureFileSystem(loc.account, **kw)
    except (ValueError, TypeError, OSError, pa.ArrowException) as e:
        raise LandingAuthError(f"Azure landing {loc.display}: bad credentials in the environment ({type(e).__name__})") from None


# Matched on the error text with URLs and quoted paths removed (a container name may hold "403").
_AUTH = re.compile(r"AuthenticationFailed|AuthorizationFailure|AuthorizationPermissionMismatch|InvalidAuthenticationInfo"
                   r"|\] 40[13] |[Cc]redential")
_TRANSIENT = re.compile(r"Could not connect|Fail to get a new connection|Connection was closed|[Tt]imeout|timed out"
                        r"|Connection reset|ServerBusy"
                        r"|OperationTimedOut|[Cc]ould(n't| not) resolve|\] 5\d\d ")
_NOISE = re.compile(r"https?://\S+|'[^']*'")


def classify_azure(loc: AzureLocation, e: BaseException) -> LandingError:
    """One line for an Azure failure: credentials refused (fix them), unreachable (retry later)."""
    text = _NOISE.sub("", str(e))
    if _AUTH.search(text):
        return LandingAuthError(
            f"Azure storage account {loc.account} refused the credentials from the environment "
            f"(check {AZURE_KEY_ENV}, {AZURE_SAS_ENV} or the identity's role on {loc.container})"
        )
    if _TRANSIENT.search(text):
        return TransientLandingError(f"Azure storage account {loc.account} is unreachable or busy: {safe_message(e, 160)}")
    return LandingError(f"Azure landing {loc.display}: {safe_message(e, 200)}")


@contextmanager
def azure_errors(loc: AzureLocation) -> Iterator[None]:
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise classify_azure(loc, e) from None


@dataclass(frozen=True)
class LandedFile:
    name: str  # relative to the table folder
    rows: int
    bytes: int
    sha256: str


class Landing:
    def __init__(self, root: Path | Store, compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd") -> None:
        self.store = root if isinstance(root, Store) else LocalStore(root)
        self.compression = compression

    @staticmethod
    def rel(cohort: str, table: str, name: str = "") -> str:
        return f"{cohort}/{table}/{name}" if name else f"{cohort}/{table}"

    def table_dir(self, cohort: str, table: str) -> Path:
        """The local folder of a table (local landings only; tests and tools look inside)."""
        assert isinstance(self.store, LocalStore)
        return self.store.root / cohort / table

    def display(self, cohort: str, table: str, name: str = "") -> str:
        return self.store.display(self.rel(cohort, table, name))

    def failure(self, e: BaseException, doing: str) -> LandingError:
        """The error to raise for ``e`` while ``doing``: on Azure, storage unreachable is transient
        (the table is retried) and refused credentials a configuration error; else a LandingError."""
        if isinstance(e, LandingError):
            return e
        if isinstance(self.store, AzureStore) and isinstance(e, (OSError, pa.ArrowException)):
            c = classify_azure(self.store.location, e)
            if type(c) is not LandingError:
                return c
        return LandingError(f"{doing}: {_one_line(e)}")

    def reconcile(self, cohort: str, table: str, committed: set[str], resumable_lower: datetime | None) -> list[str]:
        """Remove what a crashed run left in a table folder; refuse when the folder disagrees otherwise.

        Temporary files are always removed. A finished file the state does not list is removed only
        if it belongs to the window this sync is about to land again (its lower bound equals the
        current watermark); any other unlisted file means state and landing disagree (state restored
        from a backup, files copied in by hand), and deleting it could lose data, so we stop.
        """
        d = self.rel(cohort, table)
        removed = []
        want = window_tag(resumable_lower)
        for name in self.store.names(d):
            if name.startswith(TMP_PREFIX):
                self.store.delete(f"{d}/{name}")
                removed.append(name)
                continue
            if name in committed or not name.endswith(".parquet"):
                continue
            m = FILE_RE.match(name)
            if m and m["table"] == table and m["lo"] == want:
                self.store.delete(f"{d}/{name}")
                removed.append(name)
                continue
            raise TamperedError(
                f"landing file {cohort}/{table}/{name} is not recorded in the state store; "
                "refusing to sync this table until it is explained (see docs/operations.md)"
            )
        if removed:
            self.store.sync_dir(d)
        return removed

    def remove_temporaries(self, cohort: str, table: str) -> None:
        """A crashed repair's or sync's temporary files: never listed, never read."""
        d = self.rel(cohort, table)
        for name in self.store.names(d):
            if name.startswith(TMP_PREFIX):
                self.store.delete(f"{d}/{name}")

    def check_file(self, cohort: str, table: str, recorded: dict[str, Any], thorough: bool) -> str | None:
        """What is wrong with a file the state lists, or None. Cheap (sync, before building on a
        table): present, with the recorded size. Thorough (verify): also its SHA-256, and readable
        as Parquet."""
        rel = self.rel(cohort, table, recorded["name"])
        try:
            size = self.store.size(rel)
        except OSError as e:
            return f"cannot be read ({e.strerror or type(e).__name__})"
        if size is None:
            return "missing"
        if size != recorded["bytes"]:
            return f"{size} bytes, the state recorded {recorded['bytes']}"
        if not thorough:
            return None
        try:
            digest, _ = self.store.sha256(rel)
        except OSError as e:
            return f"cannot be read ({e.strerror or type(e).__name__})"
        if digest != recorded["sha256"]:
            return "content differs from what was landed (SHA-256 mismatch)"
        try:
            pq.read_metadata(self.store.open_input(rel))
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

    def parquet_file(self, cohort: str, table: str, name: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.store.open_input(self.rel(cohort, table, name)))

    def holds_raw_load_dt(self, cohort: str, table: str, records: list[dict[str, Any]]) -> bool:
        """Whether the table's oldest listed file keeps the source's load_dt timestamp (landed before
        load_dt became order_only): one footer read. Unreadable files are verify's business."""
        if not records:
            return False
        try:
            schema = self.parquet_file(cohort, table, records[0]["name"]).schema_arrow
        except (OSError, pa.ArrowException):
            return False
        i = schema.get_field_index("load_dt")
        return i >= 0 and bool(pa.types.is_timestamp(schema.field(i).type))

    def finish_relanding(self, cohort: str, table: str, steps: list[tuple[str, str | None]]) -> None:
        """Do what a committed re-landing still owes the folder; safe to repeat after a crash: a move
        whose temporary file is gone was done, a delete of a file that is gone was done."""
        d = self.rel(cohort, table)
        for name, tmp in steps:
            if tmp is None:
                self.store.delete(f"{d}/{name}")
            elif self.store.size(f"{d}/{tmp}") is not None:
                self.store.replace(f"{d}/{tmp}", f"{d}/{name}")
                fault_point("between_relanding_moves")
        self.store.sync_dir(d)

    def set_aside(self, cohort: str, table: str, names: list[str], tag: str) -> str:
        """Move files the state does not list out of the table folder (never deleted: they may be
        the only copy of something) into ``<table>/.unlisted/<tag>/``, which readers of
        ``<table>/*.parquet`` and sync's reconcile do not see. Returns where, for the report."""
        d = self.rel(cohort, table)
        target = f"{d}/.unlisted/{tag}"
        for name in names:
            self.store.replace(f"{d}/{name}", f"{target}/{name}")
        self.store.sync_dir(target)
        self.store.sync_dir(d)
        return self.store.display(target)

    def files(self, cohort: str, table: str) -> list[str]:
        """Names of the Parquet files in a table's folder (listed or not)."""
        return [n for n in self.store.names(self.rel(cohort, table)) if n.endswith(".parquet") and not n.startswith(".")]

    def create(self, cohort: str, table: str, name: str) -> tuple[Any, Sealer]:
        return self.store.create(self.rel(cohort, table, name))

    def replace(self, cohort: str, table: str, tmp: str, name: str) -> None:
        self.store.replace(self.rel(cohort, table, tmp), self.rel(cohort, table, name))

    def delete(self, cohort: str, table: str, name: str) -> None:
        self.store.delete(self.rel(cohort, table, name))

    def delete_cohort(self, cohort: str) -> None:
        self.store.delete_tree(cohort)

    def register(self, con: duckdb.DuckDBPyConnection, view: str, cohort: str, table: str, names: list[str]) -> str:
        """The files as one relation in DuckDB: ``read_parquet`` of local paths, or a pyarrow
        dataset over Azure (DuckDB cannot read abfss:// without its azure extension, a download)
        that DuckDB scans streaming, with projection and filters pushed down. Returns SQL."""
        rels = [self.rel(cohort, table, n) for n in names]
        if isinstance(self.store, LocalStore):
            return "read_parquet([" + ", ".join(_sql_str(str(self.store.path(r))) for r in rels) + "])"
        con.register(view, self.store.dataset(rels))
        return view


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


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
        rewrite: bool = False,
        taken: Collection[str] = (),
    ) -> None:
        self.landing = landing
        # Committed names of this table: a window can repeat its bounds (members added twice while
        # the source has no new load land twice as (W, W]), and a new part must never reuse one.
        self.taken = frozenset(taken)
        # Parts go to temporary names unless the store writes final names directly (object storage)
        # and this is not a rewrite of committed names (a re-landing, which seals and swaps).
        self.direct = landing.store.direct and not rewrite
        self.key = key
        self._keys: list[np.ndarray] | None = [] if key else None  # copies of the non-null keys
        self._null_keys = 0
        self.dir = landing.rel(cohort, table)
        self.where = landing.display(cohort, table)
        self.table = table
        self.lower = lower
        self.upper = upper
        self.file_rows = file_rows
        self.rows = 0
        self._lock = threading.Lock()
        self._next_part = 0
        self._lanes = [_Lane(self) for _ in range(max(1, lanes))]
        self._turn = 0

    def new_part(self) -> tuple[str, str]:
        """(the name written now, relative to the landing root; the part's final name)."""
        with self._lock:
            while True:
                name = file_name(self.table, self.lower, self.upper, self._next_part)
                self._next_part += 1
                if name not in self.taken:
                    break
        return f"{self.dir}/{name if self.direct else f'{TMP_PREFIX}{os.getpid()}-{name}'}", name

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
            assert not self.direct, "a re-landing writes temporary names"
            return [(tmp.rsplit("/", 1)[1], LandedFile(name, rows, size, digest)) for tmp, name, rows, digest, size in ordered]
        except LandingError:
            self.abort()
            raise

    def finish(self) -> list[LandedFile]:
        """Make the parts durable and visible under their final names; returns what to commit."""
        try:
            parts = [p for lane in self._lanes for p in lane.close()]  # each part already fsynced and hashed
            out = []
            for tmp, name, rows, digest, size in sorted(parts, key=lambda p: p[1]):
                if not self.direct:
                    self.landing.store.replace(tmp, f"{self.dir}/{name}")
                out.append(LandedFile(name, rows, size, digest))
                fault_point("between_renames")
            if out:
                self.landing.store.sync_dir(self.dir)
            for f in out:
                logs.event(log, logging.DEBUG, "landing.file", f"landed {f.name}", rows=f.rows, bytes=f.bytes)
            return out
        except (OSError, pa.ArrowException) as e:
            self.abort()
            raise self.landing.failure(e, f"cannot finish landing in {self.where}") from None
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
        self.parts: list[tuple[str, str, int]] = []  # (written name, final name, rows)
        self._sealed: dict[str, tuple[str, int]] = {}  # part -> (sha256, bytes), once closed and durable
        self._sealer: Sealer | None = None
        self.error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._thread: threading.Thread | None = None

    def put(self, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise self.owner.landing.failure(self.error, f"cannot write {self.owner.where}")
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
        target, self._sealer = self.owner.landing.store.create(tmp)
        self._writer = pq.ParquetWriter(
            target, schema, compression=comp, write_statistics=True, use_dictionary=dictionary_columns(schema)
        )

    def _close_writer(self) -> None:
        """Close the current part and, on this lane's thread, fsync and hash it: the lanes of a
        window do that side by side instead of ``finish`` doing it part after part."""
        if self._writer is not None:
            w, self._writer = self._writer, None
            try:
                w.close()
                if self.error is None and self._sealer is not None:
                    tmp = self.parts[-1][0]
                    self._sealed[tmp] = self._sealer()
            except BaseException as e:
                self.error = self.error or e

    def close(self) -> list[tuple[str, str, int, str, int]]:
        """The lane's parts as (temporary path, final name, rows, sha256, bytes)."""
        if self._thread is not None:
            self.queue.put(_STOP)
            self._thread.join()
        if self.error is not None:
            raise self.owner.landing.failure(self.error, f"cannot write {self.owner.where}")
        return [(tmp, name, rows, *self._sealed[tmp]) for tmp, name, rows in self.parts]

    def abort(self) -> None:
        if self.error is None:
            self.error = LandingError("aborted")
        if self._thread is not None and self._thread.is_alive():
            self.queue.put(_STOP)
            self._thread.join()
        for tmp, _, _ in self.parts:
            with suppress(OSError):  # else a temporary or unlisted file: the next sync's reconcile removes it
                self.owner.landing.store.delete(tmp)
        self.parts = []


def _one_line(e: BaseException) -> str:
    """Azure SDK errors span several lines (request id, time); a message keeps the first."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


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
