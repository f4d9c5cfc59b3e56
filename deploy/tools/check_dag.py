"""Check the example DAG in Airflow's own virtual environment (deploy/check.sh runs it).

It lives outside deploy/airflow/ because the DAG processor would import it as a DAG file too.
1. Load the DAG file the way Airflow's DAG processor does (DagBag): no import errors.
2. Its shape: weekly schedule after the Sunday load, one active run, no catch-up, retries.
3. Its exit-code mapping, by calling the task's function with a stand-in `cohortsync` that exits with
   each code (connections and variables replaced by fixed stand-ins, since no Airflow API server runs
   here): 0 succeeds, 3 skips, 4 raises a retryable error, 1/2/5 raise AirflowFailException (no
   retry); the secrets reach the child's environment, never its arguments.
"""

import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags.get("cohortsync_weekly")
assert dag is not None, f"no cohortsync_weekly DAG among {bag.dag_ids}"
assert dag.max_active_runs == 1, dag.max_active_runs
assert dag.catchup is False
expression = getattr(dag.timetable, "expression", None)
assert expression == "0 6 * * 0", expression
(sync,) = dag.tasks
assert sync.retries == 3, sync.retries

SECRET = "deid-key-for-the-check-only"  # deploy-scan: stand-in
variables = {"cohortsync_deid_key": SECRET, "cohortsync_landing_url": "abfss://landing@acct.dfs.core.windows.net/p"}
connections = {
    "cohortsync_databricks": SimpleNamespace(
        host="adb-1.2.azuredatabricks.net",
        login="client-id",
        password="client-secret",  # deploy-scan: stand-in
        extra_dejson={"http_path": "/sql/1.0/x"},
    ),
    "cohortsync_state": SimpleNamespace(host="pg.internal", port=5432, schema="cohortsync", login="cohortsync", password="pw"),
}
tmp = Path(tempfile.mkdtemp())
stub = tmp / "cohortsync"
stub.write_text(
    "#!/usr/bin/env python3\nimport json, os, sys\n"
    f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(tmp / 'seen.json')!r}, 'w'))\n"
    "sys.exit(int(os.environ['STUB_EXIT']))\n"
)
stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
variables["cohortsync_bin"] = str(stub)
scope = sync.python_callable.__globals__
scope["Variable"] = SimpleNamespace(get=lambda key, default=None: variables.get(key, default))
scope["Connection"] = SimpleNamespace(get=lambda conn_id: connections[conn_id])

outcome = {}
for code in (0, 1, 2, 3, 4, 5):
    os.environ["STUB_EXIT"] = str(code)
    try:
        sync.python_callable()
        outcome[code] = "success"
    except AirflowSkipException:
        outcome[code] = "skipped"
    except AirflowFailException:
        outcome[code] = "failed, no retry"
    except Exception:  # any other error is what Airflow retries
        outcome[code] = "retried"
expected = {0: "success", 1: "failed, no retry", 2: "failed, no retry", 3: "skipped", 4: "retried", 5: "failed, no retry"}
assert outcome == expected, outcome
seen = json.loads((tmp / "seen.json").read_text())
assert seen["env"]["COHORTSYNC_DEID_KEY"] == SECRET and SECRET not in " ".join(seen["argv"]), seen["argv"]
assert seen["env"]["COHORTSYNC_STATE__URL"] == "postgresql://cohortsync@pg.internal:5432/cohortsync?sslmode=require"
assert "pw" not in seen["env"]["COHORTSYNC_STATE__URL"] and seen["env"]["COHORTSYNC_STATE_PASSWORD"] == "pw"
print(
    f"check_dag: {dag.dag_id}: no import errors, schedule {expression!r}, max_active_runs 1, "
    f"retries {sync.retries}; exit codes -> {outcome}"
)
