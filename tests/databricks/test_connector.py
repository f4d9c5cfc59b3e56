"""Connector tier: runs ``connector_tier.py`` in a private network namespace (loopback only).

The Spark Thrift Server in HTTP mode listens on all interfaces whatever its bind setting, so it is
started only inside ``unshare --net``, where nothing but ``lo`` exists, by a pytest subprocess
that this test starts and waits for. If the namespace cannot be created (not root, no
``unshare``), the tier is skipped with that reason in the summary, never silently.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dbx_env import require_java

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INNER = HERE / "connector_tier.py"


def namespace_problem() -> str | None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return "needs 'unshare' (util-linux) and 'ip' (iproute2) to make a private network namespace"
    probe = subprocess.run(
        [unshare, "--net", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return f"cannot create a private network namespace (unshare --net needs root): {probe.stderr.strip()[:200]}"
    return None


def test_connector_tier_in_a_private_network_namespace() -> None:
    require_java()
    problem = namespace_problem()
    if problem:
        pytest.skip(f"connector tier not run: {problem}")  # shown by -ra in the test summary
    inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -rA {INNER}"
    run = subprocess.run(
        ["unshare", "--net", "sh", "-c", inner], cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = run.stdout[-6000:] + run.stderr[-3000:]
    print(report)
    assert run.returncode == 0, f"the connector tier failed:\n{report}"
    tail = run.stdout.strip().splitlines()[-1]
    assert " passed" in tail and "skipped" not in tail and "failed" not in tail, tail
