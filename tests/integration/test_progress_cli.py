"""`imagefleet run` as a user sees it off a terminal (CI, Ray Jobs, Airflow): plain progress lines and the
summary; Ray's operator tables, its C++ warnings and the actors' output only in the run's log file, except Ray
Data's warning that the cluster can't run a stage, said once; one throughput figure in the last progress line,
the summary and the report."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from imagefleet.actors.storage import resolve_store_spec
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import S3Config
from tests.helpers import CLI, REPO, sleep_job, write_config, write_prompts

RAY_NOISE = ("logging_progress", "core_worker", "Started a local Ray", "Running Dataset", "MapWorker",
             "streaming_executor")


def test_a_run_shows_progress_lines_and_keeps_ray_output_in_its_log(tmp_path: Path, s3_env: Any,
                                                                     bucket: str) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(24)]})
    raw = sleep_job(src, f"s3://{bucket}/progress", latency_s=0.05)
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/p{os.getpid()}"
    # Ray Data warns of a stage without resources after this long (60 s by default); 0: at the first moment one
    # waits, as the read stage does while the actor pools start
    done = subprocess.run([*CLI, "run", str(write_config(tmp_path / "job.yaml", raw))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "RAY_DATA_STARVATION_WARNING_DELAY_S": "0"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = done.stdout + done.stderr
    progress = [ln for ln in done.stdout.splitlines() if ln.startswith("imagefleet: ")]
    assert progress and "24/24 images (100%)" in progress[-1] and "errors 0" in progress[-1], done.stdout
    assert "24 written" in done.stdout
    for noise in RAY_NOISE:
        assert noise not in shown, f"{noise!r} reached the terminal:\n{shown[-3000:]}"
    log = next(ln.split(":", 1)[1].split()[0] for ln in done.stdout.splitlines() if ln.strip().startswith("log "))
    assert f"(copy: s3://{bucket}/progress/logs/" in done.stdout
    kept = Path(log).read_text()
    assert "Running Dataset" in kept or "streaming_executor" in kept, kept[-2000:]
    # one throughput, named the same way: the last progress line, the summary and the report
    rate = r"(\d+\.\d\d) img/s \(new images / run wall time\)"
    panel = re.search(rate, progress[-1])
    summary = re.search(r"throughput: " + rate, done.stdout)
    uri = f"s3://{bucket}/progress"
    page = open_store(uri, resolve_store_spec(uri, S3Config())).get("report.html").decode()
    report = re.search(r"<b>(\d+\.\d\d) img/s</b>throughput \(new images / run wall time\)", page)
    assert panel and summary and report, (progress[-1], done.stdout[-1500:])
    assert panel.group(1) == summary.group(1) == report.group(1) != "0.00"
    # Ray Data's starvation warning: in the log as Ray wrote it, and (only then) once on the terminal
    warned = [ln for ln in done.stdout.splitlines() if ln.startswith("imagefleet: warning: Ray Data has no resources")]
    assert len(warned) == ("Cluster resources are not enough to run any task" in kept), warned
    assert all("lower the pools' max_size" in ln for ln in warned)
