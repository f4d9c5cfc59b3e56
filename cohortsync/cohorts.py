"""Approved cohorts: validating a patient list and recording it under ``cohorts/`` for review.

A cohort is two plain-text files a reviewer can diff: ``cohorts/<name>/cohort.toml`` (what, when, how
many, a checksum of the members) and ``cohorts/<name>/members.txt`` (sorted person ids, one a line).
The files are the source of truth; the sandbox table is a copy that sync restores when it drifts.
Error messages give line numbers and counts, never the offending text, which could be PHI.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cohortsync import logs
from cohortsync.errors import CohortError, InputError, MembershipError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
MAX_ID = 2**63 - 1
DEFINITION = "cohort.toml"
MEMBERS = "members.txt"


def check_name(name: str) -> str:
    """A cohort name is a lowercase slug; it becomes a folder name and a SQL string literal."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid cohort name {name[:80]!r}: use a lowercase letter then up to 62 of a-z, 0-9, '_' or '-'"
        )
    return name


@dataclass(frozen=True)
class PatientList:
    ids: list[int]  # sorted, unique
    lines: int  # ids read, duplicates included
    duplicates: int

    @property
    def sha256(self) -> str:
        return members_sha256(self.ids)


@dataclass(frozen=True)
class Cohort:
    name: str
    members: int
    members_sha256: str
    registered_at: str
    source_file: str
    duplicates_collapsed: int
    missing_allowed: int
    folder: Path
    batch: int = 0  # the latest amendment that added members (0: the registered list)
    registered_by: str = ""
    amendments: tuple[Amendment, ...] = ()

    def member_batches(self) -> tuple[list[int], list[int]]:
        """Members and, for each, the amendment that added them last (0: the registered list)."""
        ids = self.member_ids()
        if not any(a.add_file for a in self.amendments):
            return ids, [0] * len(ids)
        batch = dict.fromkeys(ids, 0)
        for a in self.amendments:
            if a.add_file:
                for i in _read_ids(self.folder / a.add_file):
                    if i in batch:
                        batch[i] = a.number
        return ids, [batch[i] for i in ids]

    def member_ids(self) -> list[int]:
        data = (self.folder / MEMBERS).read_bytes()
        ids = list(map(int, data.split()))
        # The file is written one "<id>\n" a line, so its bytes hash to the checksum; hashing id by
        # id (8x slower: every sync reads every cohort) is left for a file whose line ends changed.
        canonical = hashlib.sha256(data).hexdigest() == self.members_sha256
        if len(ids) != self.members or not (canonical or members_sha256(ids) == self.members_sha256):
            raise MembershipError(f"cohort {self.name}: {MEMBERS} does not match the checksum in {DEFINITION}")
        return ids


def _read_ids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text(encoding="ascii").split()]


def members_sha256(ids: list[int]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(b"%d\n" % i)
    return h.hexdigest()


def read_patients(path: Path) -> PatientList:
    """Parse a patient file: a CSV with a ``person_id`` column, or one id a line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"patient file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"patient file {path} is a directory") from None
    except OSError as e:
        raise InputError(f"patient file {path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"patient file {path}: not UTF-8 text (byte {e.start})") from None
    ids: set[int] = set()
    count = 0
    for lineno, value in _values(path, text):
        if not value.isascii() or not value.isdigit():
            raise InputError(f"{path} line {lineno}: not a positive integer person_id")
        if len(value) > 1 and value.startswith("0"):
            raise InputError(f"{path} line {lineno}: person_id has leading zeros")
        n = int(value)
        if n <= 0:
            raise InputError(f"{path} line {lineno}: person_id must be positive")
        if n > MAX_ID:
            raise InputError(f"{path} line {lineno}: person_id exceeds the 64-bit range")
        count += 1
        ids.add(n)
    if not ids:
        raise InputError(f"patient file {path} holds no person_id")
    return PatientList(sorted(ids), count, count - len(ids))


def _values(path: Path, text: str) -> Iterator[tuple[int, str]]:
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return
    head = lines[first]
    header = [h.strip().lower() for h in next(csv.reader([head]))]
    if "," in head or (not head.strip().isdigit() and "person_id" in header):
        if "person_id" not in header:
            raise InputError(f"{path} line {first + 1}: CSV header has no person_id column")
        col = header.index("person_id")
        reader = csv.reader(io.StringIO("\n".join(lines[first + 1 :])))
        for offset, row in enumerate(reader):
            lineno = first + 2 + offset
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise InputError(f"{path} line {lineno}: {len(row)} fields where the header has {len(header)}")
            yield lineno, row[col].strip()
        return
    for i, line in enumerate(lines[first:], start=first + 1):
        if line.strip():
            yield i, line.strip()


def load(folder: Path, name: str) -> Cohort | None:
    d = folder / check_name(name)
    if folder.is_dir():
        _recover(folder)
    try:
        with (d / DEFINITION).open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CohortError(f"cohort {name}: unreadable {DEFINITION}: {e}") from None
    try:
        return Cohort(
            name=doc["name"],
            members=int(doc["members"]),
            members_sha256=doc["members_sha256"],
            registered_at=doc["registered_at"],
            source_file=doc.get("source_file", ""),
            duplicates_collapsed=int(doc.get("duplicates_collapsed", 0)),
            missing_allowed=int(doc.get("missing_allowed", 0)),
            folder=d,
            batch=int(doc.get("batch", 0)),
            registered_by=str(doc.get("registered_by", "")),
            amendments=tuple(
                Amendment(
                    int(a["number"]), str(a["at"]), str(a["by"]), int(a["added"]), int(a["removed"]),
                    a.get("add_file"), a.get("remove_file"),
                )
                for a in doc.get("amendment", [])
            ),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise CohortError(f"cohort {name}: {DEFINITION} is missing or has a bad field ({e})") from None


def load_all(folder: Path) -> list[Cohort]:
    if not folder.is_dir():
        return []
    _recover(folder)
    out = []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and NAME_RE.fullmatch(d.name) and (d / DEFINITION).exists():
            c = load(folder, d.name)
            assert c is not None
            out.append(c)
    return out


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _who() -> str:
    """Who made a change, for the reviewable history (the OS user; a scheduler's service account)."""
    try:
        return getpass.getuser()
    except Exception:  # no user database entry in some containers
        return "unknown"


def _write_ids(path: Path, ids: Iterable[int]) -> None:
    with path.open("w", encoding="ascii") as f:
        for i in ids:
            f.write(f"{i}\n")
        f.flush()
        os.fsync(f.fileno())


def _render(doc: dict[str, object], amendments: list[Amendment]) -> str:
    lines = ["# Approved cohort, recorded by cohortsync. Members: members.txt; history: [[amendment]] below."]
    lines += [f"{k} = {json.dumps(v)}" for k, v in doc.items()]
    for a in amendments:
        lines += ["", "[[amendment]]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in a.as_dict().items()]
    return "\n".join(lines) + "\n"


def _swap_in(folder: Path, name: str, tmp: Path) -> None:
    """Put a fully written folder in place of the cohort's: two renames, recoverable in between."""
    target = folder / name
    if not target.exists():
        os.replace(tmp, target)
        return
    old = folder / f".{name}.old-{os.getpid()}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old)


def _recover(folder: Path) -> None:
    """Finish or undo a swap a crash interrupted: a cohort folder is never left missing."""
    for old in folder.glob(".*.old-*"):
        name = old.name[1:].split(".old-")[0]
        if (folder / name).exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, folder / name)
    for tmp in folder.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def record(folder: Path, name: str, patients: PatientList, source_file: str, missing_allowed: int) -> Cohort:
    """Write the cohort's files into place atomically (temporary folder, then rename)."""
    check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_ids(tmp / MEMBERS, patients.ids)
        doc: dict[str, object] = {
            "name": name,
            "registered_at": _now(),
            "registered_by": _who(),
            "members": len(patients.ids),
            "members_sha256": patients.sha256,
            "source_file": os.path.basename(source_file),
            "duplicates_collapsed": patients.duplicates,
            "missing_allowed": missing_allowed,
            "batch": 0,
        }
        (tmp / DEFINITION).write_text(_render(doc, []), encoding="utf-8")
        os.replace(tmp, folder / name)  # fails if the target exists and is not empty: never overwrite
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CohortError(f"cannot record cohort {name} under {folder}: {e.strerror}") from None
    c = load(folder, name)
    assert c is not None
    logs.event(log, logging.INFO, "cohort.recorded", f"cohort {name} recorded under {folder}", cohort=name, members=c.members)
    return c


@dataclass(frozen=True)
class Amendment:
    number: int
    at: str
    by: str
    added: int
    removed: int
    add_file: str | None  # relative to the cohort folder: amendments/0001-add.txt
    remove_file: str | None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"number": self.number, "at": self.at, "by": self.by, "added": self.added,
                                "removed": self.removed}
        if self.add_file:
            d["add_file"] = self.add_file
        if self.remove_file:
            d["remove_file"] = self.remove_file
        return d


def amend(folder: Path, cohort: Cohort, add: list[int], remove: list[int]) -> tuple[Cohort, Amendment]:
    """Record an amendment: new members.txt, the amendment's id lists, and a history entry."""
    current = cohort.member_ids()
    number = len(cohort.amendments) + 1
    members = sorted((set(current) - set(remove)) | set(add))
    amendment = Amendment(
        number, _now(), _who(), len(add), len(remove),
        f"amendments/{number:04d}-add.txt" if add else None,
        f"amendments/{number:04d}-remove.txt" if remove else None,
    )
    tmp = folder / f".{cohort.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(cohort.folder, tmp)
        (tmp / "amendments").mkdir(exist_ok=True)
        if add:
            _write_ids(tmp / str(amendment.add_file), sorted(add))
        if remove:
            _write_ids(tmp / str(amendment.remove_file), sorted(remove))
        _write_ids(tmp / MEMBERS, members)
        doc: dict[str, object] = {
            "name": cohort.name,
            "registered_at": cohort.registered_at,
            "registered_by": cohort.registered_by,
            "members": len(members),
            "members_sha256": members_sha256(members),
            "source_file": cohort.source_file,
            "duplicates_collapsed": cohort.duplicates_collapsed,
            "missing_allowed": cohort.missing_allowed,
            "batch": number if add else cohort.batch,
        }
        (tmp / DEFINITION).write_text(_render(doc, [*cohort.amendments, amendment]), encoding="utf-8")
        _swap_in(folder, cohort.name, tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CohortError(f"cannot record the amendment of {cohort.name}: {e.strerror}") from None
    c = load(folder, cohort.name)
    assert c is not None
    return c, amendment


def retire(folder: Path, cohort: Cohort) -> Path:
    """Move a removed cohort's record aside (kept for the audit trail; the name becomes free)."""
    retired = folder / ".retired"
    retired.mkdir(exist_ok=True)
    target = retired / f"{cohort.name}-{_now().replace(':', '')}"
    (cohort.folder / "retired.toml").write_text(f'retired_at = "{_now()}"\nretired_by = {json.dumps(_who())}\n')
    os.replace(cohort.folder, target)
    return target
