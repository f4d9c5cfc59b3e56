"""Airflow DAG example: the weekly cohortsync sync, for teams that orchestrate with Airflow (3.x).

Why a TaskFlow ``@task`` running the ``cohortsync`` CLI as a subprocess: it needs no provider at all
(``airflow.sdk`` ships with Airflow), where BashOperator needs the standard provider, DockerOperator
the docker provider and a Docker daemon on the workers, KubernetesPodOperator the cncf.kubernetes
provider and a cluster. And only a Python task can retry on one exit code and fail fast on the
others: Airflow retries every failure of a BashOperator alike, while here exit 4 (transient) raises a
plain error that Airflow retries, and 1, 2 and 5 raise ``AirflowFailException``, which it does not.

cohortsync runs from its own virtual environment on the worker (installed from
``deploy/azure/requirements.lock`` and ``requirements/spacy-model.txt`` with ``--require-hashes``),
never from Airflow's: its pins and Airflow's would fight. Secrets come from Airflow connections and
variables (or the secrets backend behind them) when the task runs, never at parse time and never in
this file; they reach cohortsync only through the subprocess's environment.

  connection ``cohortsync_databricks``: host = workspace host name, login = OAuth client id,
      password = OAuth client secret, extra ``{"http_path": "/sql/1.0/warehouses/..."}``
  connection ``cohortsync_state``: host, port, schema (database), login, password of PostgreSQL
  variable ``cohortsync_deid_key``: the de-identification key (Airflow masks variables named *key*)
  variable ``cohortsync_landing_url``: ``abfss://container@account.dfs.core.windows.net/prefix``
  variables ``cohortsync_bin`` (the CLI's path in its venv) and ``cohortsync_config`` (its toml)
Storage credentials: the worker's managed or workload identity, or AZURE_CLIENT_ID, AZURE_TENANT_ID,
AZURE_CLIENT_SECRET in the worker's environment, which the subprocess inherits.
"""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

from airflow.sdk import DAG, Connection, Variable, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

# docs/operations.md: 0 ok, 1 partial, 2 usage/config, 3 lock held, 4 transient, 5 needs a person.
LOCKED, TRANSIENT = 3, 4


def cohortsync_env() -> dict[str, str]:
    """The subprocess's environment: the worker's, plus settings and secrets from Airflow."""
    databricks = Connection.get("cohortsync_databricks")
    state = Connection.get("cohortsync_state")
    state_url = f"postgresql://{state.login}@{state.host}:{state.port or 5432}/{state.schema}?sslmode=require"
    env = dict(os.environ)
    env.update(
        {
            "COHORTSYNC_CONFIG": Variable.get("cohortsync_config", default="/etc/cohortsync/cohortsync.toml"),
            "COHORTSYNC_SOURCE__KIND": "databricks",
            "COHORTSYNC_SOURCE__AUTH": "oauth-m2m",
            "COHORTSYNC_SOURCE__SERVER_HOSTNAME": databricks.host or "",
            "COHORTSYNC_SOURCE__HTTP_PATH": str(databricks.extra_dejson.get("http_path", "")),
            "DATABRICKS_CLIENT_ID": databricks.login or "",
            "DATABRICKS_CLIENT_SECRET": databricks.password or "",
            "COHORTSYNC_LANDING__PATH": Variable.get("cohortsync_landing_url"),
            # The URL carries no password; the password travels alone (docs/configuration.md).
            "COHORTSYNC_STATE__URL": state_url,
            "COHORTSYNC_STATE_PASSWORD": state.password or "",
            "COHORTSYNC_DEID_KEY": Variable.get("cohortsync_deid_key"),
        }
    )
    return env


with DAG(
    dag_id="cohortsync_weekly",
    description="Weekly de-identified sync of the approved OMOP cohorts (docs/deployment.md)",
    schedule="0 6 * * 0",  # Sundays 06:00 UTC, after the collaborator's Sunday load
    catchup=False,  # a missed week is caught up by the next run's watermark window, not by replays
    max_active_runs=1,  # never two syncs at once; the state's run lock (exit 3) backs this up
    max_active_tasks=1,
    tags=["cohortsync"],
    default_args={"owner": "data-platform"},
):

    @task(retries=3, retry_delay=timedelta(hours=1), execution_timeout=timedelta(hours=8))
    def sync() -> None:
        """Run ``cohortsync sync --json``; retry only a transient failure, fail fast on the others."""
        command = [Variable.get("cohortsync_bin", default="cohortsync"), "--log-format", "json", "sync", "--json"]
        # stdout is the run's JSON document (names and counts only); stderr the JSON log lines.
        code = subprocess.run(command, env=cohortsync_env(), check=False).returncode
        if code == 0:
            return
        if code == LOCKED:
            raise AirflowSkipException("another cohortsync run holds the state's lock; it does this week's work")
        if code == TRANSIENT:
            raise AirflowException("cohortsync: transient failure (exit 4); Airflow retries")
        raise AirflowFailException(f"cohortsync exited {code} (docs/operations.md); not retried")

    sync()
