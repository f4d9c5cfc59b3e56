"""The deployment files (deploy/) against the code and the docs, with what .ci/run already installs.

The real tools (hadolint, buildah, terraform, checkov, Airflow) run in deploy/check.sh, not here.
These tests read the files as text: every environment variable they hand cohortsync is documented,
no secret is written in them, the schedule is weekly with one replica, the hashed lock covers every
runtime dependency, and the image's entry script maps exit codes as docs/deployment.md says.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohortsync.config import load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TF = DEPLOY / "azure" / "terraform"
DAG = DEPLOY / "airflow" / "cohortsync_dag.py"
ENTRY = DEPLOY / "azure" / "entrypoint.sh"

# Settings the deployment passes that come with branches not merged yet. Once docs/configuration.md
# documents one, test_every_setting_passed_is_documented fails until it is removed from here.
AWAITING_MERGE: set[str] = set()

ENV_NAME = re.compile(r"\b(COHORTSYNC_[A-Z0-9_]+|DATABRICKS_[A-Z_]+|AZURE_[A-Z_]+|JOB_[A-Z_]+)\b")


def passed_env() -> dict[str, set[str]]:
    """Every environment variable name deploy/ hands the process, per file that hands it."""
    sources = {
        "job.tf": (TF / "job.tf").read_text() + (TF / "identity.tf").read_text(),
        "Dockerfile": "\n".join(
            line for line in (DEPLOY / "azure" / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")
        ),
        "entrypoint.sh": ENTRY.read_text(),
        "cohortsync_dag.py": DAG.read_text(),
    }
    found: dict[str, set[str]] = {}
    for name, text in sources.items():
        for var in ENV_NAME.findall(text):
            found.setdefault(var, set()).add(name)
    return found


def setting_of(var: str) -> str | None:
    """``COHORTSYNC_SOURCE__HTTP_PATH`` -> ``source.http_path``; None for a variable that is no setting."""
    m = re.fullmatch(r"COHORTSYNC_([A-Z]+)__([A-Z0-9_]+)", var)
    return f"{m[1].lower()}.{m[2].lower()}" if m else None


def test_the_deployment_passes_the_variables_it_must() -> None:
    env = passed_env()
    for var in ("COHORTSYNC_DEID_KEY", "COHORTSYNC_STATE_PASSWORD", "COHORTSYNC_LANDING__PATH", "COHORTSYNC_STATE__URL"):
        assert {"job.tf", "cohortsync_dag.py"} <= env.get(var, set()), f"{var} is not passed by both the job and the DAG"


def test_every_setting_passed_is_documented() -> None:
    configuration = (REPO / "docs" / "configuration.md").read_text()
    deployment = (REPO / "docs" / "deployment.md").read_text()
    undocumented, merged = [], []
    for var in sorted(passed_env()):
        setting = setting_of(var)
        key = setting or var
        documented = f"`{key}`" in configuration or (setting is None and f"`{var}`" in configuration)
        if key in AWAITING_MERGE:
            if documented:
                merged.append(key)
            continue
        if setting is not None and not documented:
            undocumented.append(f"{var} ({setting}) not in docs/configuration.md")
        elif setting is None and not documented and f"`{var}`" not in deployment:
            undocumented.append(f"{var} in neither docs/configuration.md nor docs/deployment.md")
    assert not merged, f"now documented, remove from AWAITING_MERGE in tests/test_deploy.py: {merged}"
    assert not undocumented, undocumented


SECRET_PATTERNS = {
    "storage connection string": re.compile(r"AccountKey=|SharedAccessSignature=", re.I),
    "SAS token": re.compile(r"[?&]sig=[A-Za-z0-9%]{20,}"),
    "Databricks token": re.compile(r"\bdapi[0-9a-f]{32}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "storage account key": re.compile(r"\b[A-Za-z0-9+/]{86}==(?![A-Za-z0-9+/=])"),
    "password in a URL": re.compile(r"postgres(?:ql)?://[^/\s:@]+:[^@\s/]+@"),
    "literal secret assignment": re.compile(
        r"""(?ix)\w*(password|secret|token|deid_key)\w*\s*[:=]\s*["'](?!\s*["'])[^"'{$]{6,}["']"""
    ),
}


def deploy_files() -> list[Path]:
    return [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".lock")]


def test_no_secret_is_written_in_deploy() -> None:
    found = [
        f"{p.relative_to(REPO)}:{n}: {what}"
        for p in deploy_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        for what, pattern in SECRET_PATTERNS.items()
        if pattern.search(line) and "deploy-scan: stand-in" not in line  # fixed stand-ins of deploy/tools/check_dag.py
    ]
    assert not found, found


@pytest.mark.parametrize(
    "line",
    [
        'administrator_password = "Winter2026!x"',
        "COHORTSYNC_STATE__URL=postgresql://cohortsync:hunter22@pg:5432/db",
        "DATABRICKS_TOKEN=dapi0123456789abcdef0123456789abcdef",
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc",
    ],
)
def test_the_secret_scan_finds_a_planted_secret(line: str) -> None:
    assert any(p.search(line) for p in SECRET_PATTERNS.values()), line


def test_secrets_reach_the_job_only_as_key_vault_references() -> None:
    tf = "".join(p.read_text() for p in TF.glob("*.tf"))
    assert "azurerm_key_vault_secret" not in tf, "Terraform must not hold secret values (they would be in its state)"
    assert re.search(r"key_vault_secret_id\s*=\s*\"\$\{azurerm_key_vault\.main\.vault_uri\}secrets/", tf)
    docker = (DEPLOY / "azure" / "Dockerfile").read_text()
    for line in docker.splitlines():
        if re.match(r"\s*(ENV|ARG)\b", line):
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", line.split("#")[0]), line


def test_the_job_runs_weekly_one_replica_without_platform_retries() -> None:
    job = (TF / "job.tf").read_text()
    block = job[job.index("schedule_trigger_config") :]
    block = block[: block.index("}")]
    assert re.search(r"parallelism\s*=\s*1\b", block)
    assert re.search(r"replica_completion_count\s*=\s*1\b", block)
    assert re.search(r"cron_expression\s*=\s*var\.schedule_cron", block)
    assert re.search(r"replica_retry_limit\s*=\s*0\b", job)
    assert re.search(r"replica_timeout_in_seconds\s*=\s*var\.replica_timeout_seconds", job)
    variables = (TF / "variables.tf").read_text()
    default = re.search(r'variable "schedule_cron" \{.*?default\s*=\s*"([^"]+)"', variables, re.S)
    assert default, "schedule_cron has no default"
    minute, hour, dom, month, dow = default[1].split()
    assert (dom, month) == ("*", "*") and dow.isdigit() and minute.isdigit() and hour.isdigit(), default[1]
    dag_schedule = next(
        kw.value.value
        for node in ast.walk(ast.parse(DAG.read_text()))
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "schedule" and isinstance(kw.value, ast.Constant)
    )
    assert dag_schedule == default[1], "the DAG and the Container Apps job should start at the same time"


def test_the_lock_pins_every_runtime_dependency_with_a_hash() -> None:
    lock = (DEPLOY / "azure" / "requirements.lock").read_text()
    pinned = {}
    for m in re.finditer(r"^([a-z0-9._-]+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})", lock, re.M):
        pinned[re.sub(r"[-_.]+", "-", m[1])] = m[2]
    entries = [line for line in lock.splitlines() if re.match(r"^[a-z0-9]", line)]
    assert len(entries) == len(pinned), "an entry of requirements.lock has no sha256 hash"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", d)[0].lower()) for d in deps}  # type: ignore[index]
    missing = sorted(names - set(pinned))
    assert not missing, f"not in deploy/azure/requirements.lock (rerun deploy/azure/lock.sh): {missing}"


def test_the_image_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("COHORTSYNC_")]:
        monkeypatch.delenv(var)
    job = (TF / "job.tf").read_text()
    values = {  # what Terraform fills in (deploy/azure/terraform/job.tf, locals)
        "COHORTSYNC_LANDING__PATH": "abfss://landing@acct.dfs.core.windows.net/cohortsync",
        "COHORTSYNC_STATE__URL": "postgresql://cohortsync@psql-x.private.postgres.database.azure.com:5432/cohortsync?sslmode=require",
        "COHORTSYNC_SOURCE__AUTH": "oauth-m2m",
    }
    for var in re.findall(r"^\s*(COHORTSYNC_[A-Z_]+__[A-Z_]+)\s*=", job, re.M):
        if setting_of(var) not in AWAITING_MERGE:
            monkeypatch.setenv(var, values.get(var, "x"))
    s = load_settings(DEPLOY / "azure" / "cohortsync.toml")
    assert s.source.kind == "databricks"
    assert s.state.url == values["COHORTSYNC_STATE__URL"]
    assert str(s.cohorts_path) == "/data/cohorts"


# --- the entry script: exit codes for a scheduler that knows only success and failure -------------


def run_entry(tmp_path: Path, codes: list[int], retries: int = 2) -> tuple[int, int]:
    """Run entrypoint.sh against a stand-in `cohortsync` that exits with ``codes`` in turn."""
    stub = tmp_path / "cohortsync"
    counter = tmp_path / "calls"
    counter.write_text("0")
    stub.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{counter}"); echo $((n + 1)) > "{counter}"\n'
        f"set -- {' '.join(map(str, codes))}\n"
        'shift "$n" 2>/dev/null || exit 99\n'
        'exit "${1:-99}"\n'
    )
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JOB_TRANSIENT_RETRIES": str(retries), "JOB_RETRY_DELAY_S": "0"}
    proc = subprocess.run(["/bin/sh", str(ENTRY)], env=env, capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, int(counter.read_text())


@settings(max_examples=40, deadline=None)
@given(codes=st.lists(st.sampled_from([0, 1, 2, 3, 4, 5]), min_size=1, max_size=4), retries=st.integers(0, 2))
def test_the_entry_script_retries_only_transient_failures(
    tmp_path_factory: pytest.TempPathFactory, codes: list[int], retries: int
) -> None:
    tmp = tmp_path_factory.mktemp("entry")
    code, calls = run_entry(tmp, codes, retries)
    # The model: run until a non-transient code or until the retries are spent (the stand-in exits
    # 99, a non-transient code, once its list is used up).
    runs = [*codes, 99]
    expected_calls = next(i for i, c in enumerate(runs, 1) if c != 4 or i > retries)
    last = runs[expected_calls - 1]
    assert calls == expected_calls
    assert code == {3: 0}.get(last, last)


def test_the_build_context_lets_through_exactly_what_the_dockerfile_copies() -> None:
    docker = (DEPLOY / "azure" / "Dockerfile").read_text()
    copied = set()
    for line in docker.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied.update(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))
    ignore = (DEPLOY / "azure" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore, "the ignore file must start from nothing and let through what is copied"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied == allowed, f"copied but ignored: {copied - allowed}; let through but not copied: {allowed - copied}"
    for path in copied:
        assert (REPO / path).exists(), path
