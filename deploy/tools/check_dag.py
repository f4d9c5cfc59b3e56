"""Import the example DAG the way Airflow's DAG processor does, in Airflow's own virtual environment.

Run by deploy/check.sh (outside the DAG folder: the DAG processor would import this file too) with /work/venv-airflow's python (apache-airflow from PyPI): no import
errors, the schedule weekly after the Sunday load, one active run, retries only inside the task.
"""

import sys

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags.get("cohortsync_weekly")
assert dag is not None, f"no cohortsync_weekly DAG among {bag.dag_ids}"
assert dag.max_active_runs == 1, dag.max_active_runs
assert dag.catchup is False
expression = getattr(dag.timetable, "_expression", None)
assert expression == "0 6 * * 0", expression
(sync,) = dag.tasks
assert sync.retries == 3, sync.retries
print(f"check_dag: {dag.dag_id}: no import errors, schedule {expression!r}, max_active_runs 1, task {sync.task_id} retries {sync.retries}")
