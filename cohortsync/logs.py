"""Logging for a scheduler and for a person, from one ``logging`` tree.

Every module logs to its own logger (``logging.getLogger(__name__)``, all under ``cohortsync``);
an event carries a name, the cohort and table it concerns and its figures (rows, files, bytes,
seconds) through :func:`event`. :func:`setup` picks the rendering once per command: human lines
on a terminal, JSON lines (one object per event, ready for Log Analytics) anywhere else.

What goes in: names of cohorts, tables, columns and files, counts, durations and error messages
that :func:`cohortsync.errors.safe_message` has cleaned. What never goes in: anything read from a
row (values, note text, source values, person ids). Third-party loggers stay at WARNING even at
``--log-level debug``: a library's debug output may quote the data it handles.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from cohortsync.errors import safe_message

ROOT = "cohortsync"
LogFormat = Literal["auto", "text", "json"]
LEVELS = ("debug", "info", "warning", "error")

_lock = threading.Lock()
_run_id: str | None = None  # process-wide: worker threads log for the same run
_claimed = False
_format: str = "text"


def new_run_id() -> str:
    """A run id: UTC start time plus a random suffix, sortable and unique enough per landing."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def start_invocation() -> str:
    """A fresh id for this command; every log line and the --json document carry it."""
    global _run_id, _claimed
    with _lock:
        _run_id, _claimed = new_run_id(), False
        return _run_id


def current_run_id() -> str | None:
    return _run_id


def claim_run_id() -> str:
    """The id under which the state store records a run: the command's own the first time, a new
    one for each further run of the same command (``demo`` and ``verify --repair`` sync twice),
    which then becomes the current id of the log lines."""
    global _run_id, _claimed
    with _lock:
        if _run_id is None or _claimed:
            _run_id = new_run_id()
        _claimed = True
        return _run_id


def event(
    logger: logging.Logger,
    level: int,
    name: str,
    message: str,
    *,
    cohort: str | None = None,
    table: str | None = None,
    **figures: Any,
) -> None:
    """Log one event. ``message`` and ``figures`` must hold no row data (see the module doc)."""
    if logger.isEnabledFor(level):
        extra = {"event": name, "cohort": cohort, "table": table, "figures": figures}
        logger.log(level, message, extra=extra, stacklevel=2)


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception(record: logging.LogRecord) -> dict[str, Any] | None:
    """The exception of a record without its message's quoted values; frames are code, not data."""
    if not record.exc_info or record.exc_info[1] is None:
        return None
    e = record.exc_info[1]
    frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(e.__traceback__)]
    return {"type": type(e).__name__, "message": safe_message(e), "frames": frames}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp, level, run_id, cohort, table, event, figures, message."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": _run_id,
            "cohort": getattr(record, "cohort", None),
            "table": getattr(record, "table", None),
            "event": getattr(record, "event", None) or "message",
            "message": record.getMessage(),
            "figures": getattr(record, "figures", None) or {},
        }
        exc = _exception(record)
        if exc:
            doc["exception"] = exc
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human lines: ``error: ...`` / ``warning: ...``; info as is; debug with its logger and figures."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            line = f"{record.levelname.lower()}: {msg}"
        elif record.levelno >= logging.INFO:
            line = msg
        else:
            figures = getattr(record, "figures", None) or {}
            tail = " ".join(f"{k}={v}" for k, v in figures.items())
            line = f"debug [{record.name}] {msg}{' ' + tail if tail else ''}"
        exc = _exception(record)
        if exc:  # only attached at --log-level debug (cli.py)
            line += f"\n  {exc['type']}: {exc['message']}\n  " + "\n  ".join(exc["frames"])
        return line


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def resolve_format(fmt: str) -> str:
    """``auto``: text on a terminal, JSON lines anywhere else (cron, containers, pipes)."""
    if fmt != "auto":
        return fmt
    try:
        return "text" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def setup(fmt: str = "auto", level: str = "info") -> str:
    """Configure the ``cohortsync`` logger for one command; returns the format in effect."""
    global _format
    effective = resolve_format(fmt)
    logger = logging.getLogger(ROOT)
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if effective == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False  # third-party loggers and the root are left as they are
    _format = effective
    return effective


def current_format() -> str:
    return _format
