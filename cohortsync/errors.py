"""Every error cohortsync raises on purpose, in one tree.

The CLI prints ``error: <message>`` (one line) and exits with ``exit_code``; a scheduler can read
``transient`` to decide whether a retry may help (as dlt does). Messages never carry row values,
person ids or secrets: they name files, tables, columns, line numbers and counts.
"""

from __future__ import annotations

import re


class CohortsyncError(Exception):
    """Base of everything cohortsync reports to a user."""

    exit_code = 1
    transient = False


class ConfigError(CohortsyncError):
    """The configuration file or environment is wrong; fix it and re-run."""

    exit_code = 2


class InputError(CohortsyncError):
    """A user-supplied input (cohort name, patient file, option) is invalid."""

    exit_code = 2


class CohortError(CohortsyncError):
    """A cohort operation is refused (unknown cohort, conflicting re-registration, ...)."""

    exit_code = 2


class SourceError(CohortsyncError):
    """The source database refused or failed a request; retrying will not help."""


class TransientSourceError(SourceError):
    """The source is unreachable, starting or overloaded; a retry later may succeed."""

    transient = True
    exit_code = 75  # EX_TEMPFAIL


class LandingError(CohortsyncError):
    """Writing to or reading from the landing zone failed."""


class StateError(CohortsyncError):
    """The state store is unreadable, unwritable or inconsistent."""


class LockedError(StateError):
    """Another cohortsync run holds the state lock."""

    transient = True
    exit_code = 75


class SyncFailed(CohortsyncError):
    """Some tables failed during a sync; the others were committed."""


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
    """The de-identification policy does not cover what the source holds, or is malformed."""

    exit_code = 2


class DeidError(CohortsyncError):
    """De-identification cannot run (no key, wrong key, text analyzer unavailable)."""

    exit_code = 2
