"""`imagefleet run` as a user sees it off a terminal (CI, Ray Jobs, Airflow): plain progress lines and the
summary; Ray's operator tables, its C++ warnings and the actors' output only in the run's log file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import CLI, REPO, sleep_job, write_config, write_prompts

RAY_NOISE = ("logging_progress", "core_worker", "Started a local Ray", "Running Dataset", "MapWorker",
             "streaming_executor")


def test_a_run_shows_progress_lines_and_keeps_ray_output_in_its_log(tmp_path: Path, s3_env: Any,
                                                                     bucket: str) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(24)]})
    raw = sleep_job(src, f"s3://{bucket}/progress", latency_s=0.05)
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/p{os.getpid()}"
    done = subprocess.run([*CLI, "run", str(write_config(tmp_path / "job.yaml", raw))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
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
