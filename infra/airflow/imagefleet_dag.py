"""Airflow example: nightly imagefleet run submitted to a Ray cluster, as one step of a data pipeline."""

from datetime import datetime
from importlib.resources import files

from airflow import DAG
from airflow.operators.bash import BashOperator

# The config ships inside the installed package: an absolute path works in any task working directory
# (a path relative to the repository does not: Airflow runs tasks in a temporary folder).
CONFIG = str(files("configs") / "prod_sd_turbo.yaml")

with DAG("imagefleet_nightly", start_date=datetime(2026, 1, 1), schedule="0 2 * * *", catchup=False) as dag:
    generate = BashOperator(
        task_id="generate_images",
        # the driver connects to the cluster (Ray client); the exit status fails the task, and an Airflow
        # retry resumes (finished images are skipped)
        bash_command=(
            f"imagefleet run {CONFIG} --set cluster.address=ray://ray-head:10001 "
            "--set output.uri=s3://imagefleet-prod/outputs/{{ ds }}"
        ),
        retries=2,
    )
