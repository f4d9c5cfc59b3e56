"""Java and Spark checks shared by the Databricks tiers (a module of its own: ``conftest`` is an
ambiguous name to import from, with one conftest.py per test folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def java_problem() -> str | None:
    """Why Spark cannot start here, or None."""
    java = shutil.which("java")
    if java is None:
        return "no 'java' on PATH (Spark 4 needs Java 17: apt-get install openjdk-17-jre-headless)"
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    text = out.stderr + out.stdout
    if out.returncode != 0 or not any(f'version "{v}' in text for v in ("17", "18", "19", "20", "21", "22", "23", "24", "25")):
        return f"Spark 4 needs Java 17 or later; 'java -version' says: {text.strip().splitlines()[0] if text.strip() else '?'}"
    return None


def require_java() -> None:
    problem = java_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent
