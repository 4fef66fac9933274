"""Airflow 3 example: the nightly imagefleet run, submitted to the prod Ray cluster as a Ray job."""

import shlex
from datetime import datetime
from importlib.resources import files

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

# The config ships inside the installed package: an absolute path works in any task working directory
# (a path relative to the repository does not: Airflow runs tasks in a temporary folder).
CONFIG = str(files("imagefleet.configs") / "prod_sd_turbo.yaml")
# The Ray Jobs API (the dashboard, port 8265) of infra/overlays/prod's RayCluster: KubeRay names its head service
# `<RayCluster name>-head-svc`, here `prod-imagefleet` in the namespace `imagefleet`. IMAGEFLEET_RAY_DASHBOARD on the
# Airflow worker overrides it; bash reads it when the task runs (Airflow 3 parses DAGs in another process).
DASHBOARD = "http://prod-imagefleet-head-svc.imagefleet.svc:8265"

with DAG("imagefleet_nightly", start_date=datetime(2026, 1, 1), schedule="0 2 * * *", catchup=False,
         max_active_runs=1) as dag:
    generate = BashOperator(
        task_id="generate_images",
        # A Ray job: the driver runs on the cluster, not in this worker. --wait streams its logs and exits with its
        # status, so a failed job fails the task, and a retry submits again and resumes (finished images are
        # skipped).
        bash_command=(
            f'imagefleet submit {shlex.quote(CONFIG)} --address "${{IMAGEFLEET_RAY_DASHBOARD:-{DASHBOARD}}}" --wait '
            "--set output.uri=s3://imagefleet-prod/outputs/{{ ds }}"
        ),
        retries=2,
    )
