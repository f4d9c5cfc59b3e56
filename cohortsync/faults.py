"""Named crash points for the fault-injection tests (tests/test_faults.py, benchmarks/crash_trials.py).

Never set in production: ``COHORTSYNC_FAULT_POINT=after_land`` kills the process with SIGKILL, as a
power cut would, the first time the sync passes that point; ``after_land@3`` the third time.
Points: mid_stream, before_finish, between_renames, after_land, after_commit; a re-landing
(verify --repair): relanding_sealed, relanding_swapped, between_relanding_moves.
"""

from __future__ import annotations

import os
import signal
import threading

FAULT_ENV = "COHORTSYNC_FAULT_POINT"
_hits: dict[str, int] = {}
_lock = threading.Lock()  # tables land on several threads


def fault_point(name: str) -> None:
    want = os.environ.get(FAULT_ENV)
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name] >= int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
