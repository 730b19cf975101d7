"""Airflow DAG: ``sluice retrain MODEL`` every Monday at 03:00, one task per model.

The same command as deploy/kubernetes/retrain-cronjob.yaml, run by a BashOperator on a worker
that has Sluice installed (with the ``models`` extra for digits/train.py) and the model
repository and state directory mounted. Exit status 0: a better version went to a canary, or
none was better; 1: a step failed and serving is untouched (the task fails, no retry).
Copy this file into the DAGs folder and set SLUICE_URL, MODEL_REPOSITORY, STATE_DIR and MODELS.
"""

from __future__ import annotations

import datetime as dt
import shlex

from airflow import DAG

try:  # Airflow 3 moved the bash operator to the standard provider
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

SLUICE_URL = "sluice:8001"
MODEL_REPOSITORY = "/models"
STATE_DIR = "/state"
MODELS = ("digits",)


def retrain_command(model: str) -> str:
    """The shell command one task runs."""
    return shlex.join(["sluice", "retrain", model, "--url", SLUICE_URL,
                       "--model-repository", MODEL_REPOSITORY, "--state-dir", STATE_DIR])


with DAG(
    dag_id="sluice_retrain",
    schedule="0 3 * * 1",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["sluice", "retrain"],
) as dag:
    for name in MODELS:
        BashOperator(task_id=f"retrain_{name}", bash_command=retrain_command(name), retries=0)
