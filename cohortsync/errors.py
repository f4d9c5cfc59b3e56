"""Every error cohortsync raises on purpose, in one tree, and the exit code each one means.

A scheduler acts on the exit code alone (docs/operations.md has the table): retry later, page a
person, or fix the configuration. Each class says which, through ``exit_code`` and ``transient``
(as dlt's transient/terminal split; one tree, as httpx's): the CLI maps an error to its exit code
in one place, :func:`exit_code_for`. Messages never carry row values, person ids or secrets: they
name files, tables, columns, line numbers and counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every command (docs/operations.md, "Exit codes")."""

    OK = 0  # success
    PARTIAL = 1  # some work failed (some tables failed, the rest committed), or an unexpected error
    USAGE = 2  # usage or configuration error: fix the command line or the configuration
    LOCKED = 3  # another live run holds the run lock: nothing was done; run again when it ends
    RETRY_LATER = 4  # transient failure after the retries (source or storage unreachable): retry later
    NEEDS_PERSON = 5  # a data or policy refusal: schema drift, membership mismatch, tampered file


class CohortsyncError(Exception):
    """Base of everything cohortsync reports to a user."""

    exit_code: int = ExitCode.PARTIAL
    transient = False


class ConfigError(CohortsyncError):
    """The configuration file or environment is wrong; fix it and re-run."""

    exit_code = ExitCode.USAGE


class InputError(CohortsyncError):
    """A user-supplied input (cohort name, patient file, option) is invalid."""

    exit_code = ExitCode.USAGE


class CohortError(CohortsyncError):
    """A cohort operation is refused (unknown cohort, conflicting re-registration, ...)."""

    exit_code = ExitCode.USAGE


class RefusalError(CohortsyncError):
    """The data or the policy does not allow going on; a person must look (no retry will help)."""

    exit_code = ExitCode.NEEDS_PERSON


class MembershipError(RefusalError, CohortError):
    """A member list does not match: ids absent from the person table, or members.txt changed by hand."""

    exit_code = ExitCode.NEEDS_PERSON


class SourceError(CohortsyncError):
    """The source database refused or failed a request; retrying will not help."""


class SourceConfigError(SourceError):
    """The source refuses these credentials, or lacks the warehouse, catalog, schema or table configured."""

    exit_code = ExitCode.USAGE


class SchemaDriftError(RefusalError, SourceError):
    """A source table no longer has what a sync relies on (load_dt, the person link, a free name)."""

    exit_code = ExitCode.NEEDS_PERSON


class TransientSourceError(SourceError):
    """The source is unreachable, starting or overloaded; a retry later may succeed."""

    transient = True
    exit_code = ExitCode.RETRY_LATER


class LandingError(CohortsyncError):
    """Writing to or reading from the landing zone failed."""


class TransientLandingError(LandingError):
    """The landing's storage (Azure) is unreachable or overloaded; a retry later may succeed."""

    transient = True
    exit_code = ExitCode.RETRY_LATER


class LandingAuthError(LandingError):
    """The landing's storage refuses the credentials from the environment; fix them, do not retry."""

    exit_code = ExitCode.USAGE


class StateError(CohortsyncError):
    """The state store is unreadable, unwritable or inconsistent."""


class TamperedError(RefusalError, StateError):
    """The landing holds a file the state store does not list, or one whose checksum differs."""

    exit_code = ExitCode.NEEDS_PERSON


class TransientStateError(StateError):
    """The state database cannot be reached or dropped the connection; a retry later may succeed."""

    transient = True
    exit_code = ExitCode.RETRY_LATER


class LockedError(StateError):
    """Another cohortsync run holds the state lock."""

    transient = True
    exit_code = ExitCode.LOCKED


_QUOTED = re.compile(r"'(?:[^']|'')*'")


def safe_message(e: BaseException, limit: int = 300) -> str:
    """An engine's error message fit for logs and state: first line, quoted values redacted.

    Engines quote the offending value in conversion errors ("Could not convert 'Jane' to INT");
    such a value may be PHI, so every single-quoted span is replaced. Identifiers (double quotes or
    backticks) stay, as they name the table or column at fault.
    """
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = _QUOTED.sub("'…'", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PolicyError(CohortsyncError):
    """The de-identification policy is malformed or cannot be applied as configured."""

    exit_code = ExitCode.USAGE


class PolicyDriftError(RefusalError, PolicyError):
    """The source holds a column the de-identification policy does not cover (fail closed)."""

    exit_code = ExitCode.NEEDS_PERSON


class DeidError(CohortsyncError):
    """De-identification cannot run (no key, wrong key, text analyzer unavailable)."""

    exit_code = ExitCode.USAGE


# Which failure wins when a run has several (per-table failures of a sync): a refusal needs a
# person whatever else happened; a usage error needs the configuration fixed; a transient failure
# counts only if every failure was transient (then a retry later is all it takes).
_PRECEDENCE = (ExitCode.NEEDS_PERSON, ExitCode.USAGE, ExitCode.LOCKED, ExitCode.PARTIAL, ExitCode.RETRY_LATER)


def exit_code_for(e: BaseException) -> int:
    """The one mapping from an exception to an exit code; anything unexpected is 1."""
    if isinstance(e, CohortsyncError):
        return int(e.exit_code)
    return int(ExitCode.PARTIAL)


def combined_exit_code(codes: Iterable[int]) -> int:
    """The exit code of a run from those of its failures (none: 0). See ``_PRECEDENCE``."""
    found = set(codes)
    if not found:
        return int(ExitCode.OK)
    for code in _PRECEDENCE:
        if code in found:
            return int(code)
    return int(ExitCode.PARTIAL)
