"""Airflow example: nightly imagefleet run submitted to a Ray cluster, as one step of a data pipeline."""

import os
from datetime import datetime
from importlib.resources import files

from airflow import DAG
from airflow.operators.bash import BashOperator

# The config ships inside the installed package: an absolute path works in any task working directory
# (a path relative to the repository does not: Airflow runs tasks in a temporary folder).
CONFIG = str(files("configs") / "prod_sd_turbo.yaml")
# KubeRay names the head service `<RayCluster name>-head-svc` (infra/base: `imagefleet`; the overlays prefix it,
# e.g. prod-imagefleet-head-svc); 10001 is the Ray client port. Set IMAGEFLEET_RAY_ADDRESS on the Airflow worker.
RAY_ADDRESS = os.environ.get("IMAGEFLEET_RAY_ADDRESS", "ray://imagefleet-head-svc:10001")

with DAG("imagefleet_nightly", start_date=datetime(2026, 1, 1), schedule="0 2 * * *", catchup=False) as dag:
    generate = BashOperator(
        task_id="generate_images",
        # the driver connects to the cluster (Ray client); the exit status fails the task, and an Airflow
        # retry resumes (finished images are skipped)
        bash_command=(
            f"imagefleet run {CONFIG} --set cluster.address={RAY_ADDRESS} "
            "--set output.uri=s3://imagefleet-prod/outputs/{{ ds }}"
        ),
        retries=2,
    )
