"""Airflow DAG: bigtrain's nightly image pipeline, the same command cron runs.

Copy (or symlink) this file into Airflow's dags folder on a host where bigtrain is installed, and set
BIGTRAIN_HOME to the checkout (default /opt/bigtrain). Airflow is not a dependency of bigtrain: without it, this
module imports and defines no DAG.

The pipeline runner does the work that matters to a scheduler: it skips stages whose inputs did not change, holds a
lock (a second run exits 75, which this DAG reports as skipped, not failed), records every run
(`bigtrain pipeline history ...`) and exits 1 when a stage fails or 3 when preprocessing rejected too much input.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

BIGTRAIN_HOME = os.environ.get("BIGTRAIN_HOME", "/opt/bigtrain")
PIPELINE = "conf/pipelines/nightly_images.yaml"
EXIT_LOCKED = 75  # core.errors.EXIT_LOCKED, spelled out: the Airflow host need not have bigtrain importable


def command(action: str) -> str:
    return f"cd {BIGTRAIN_HOME} && .venv/bin/bigtrain pipeline {action} {PIPELINE}"


try:  # Airflow is optional: this file is importable (and testable) without it
    from airflow import DAG
    from airflow.operators.bash import BashOperator
except ImportError:
    DAG = None

dag = None
if DAG is not None:
    with DAG(
        dag_id="bigtrain_nightly_images",
        description="new raw images -> committed dataset snapshot -> verify -> train -> predict",
        schedule="30 2 * * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
        tags=["bigtrain"],
    ) as dag:
        run = BashOperator(task_id="pipeline_run", bash_command=command("run"), skip_on_exit_code=EXIT_LOCKED,
                           execution_timeout=timedelta(hours=6))
        history = BashOperator(task_id="pipeline_history", bash_command=command("history") + " --last 1",
                               trigger_rule="all_done")
        run >> history
