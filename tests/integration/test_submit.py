"""`imagefleet submit/status/logs/list` against a real `ray start --head` on loopback (token auth as configured
by Ray 2.60), stopped by PID afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs.seaweed import pick_ports
from tests.helpers import CLI, REPO, sleep_job, stop_ray_head, write_config, write_prompts
from tests.integration.test_pipeline import manifest

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head(s3_env: Any) -> Iterator[str]:
    ports = pick_ports()
    temp = f"/tmp/ifray/h{uuid.uuid4().hex[:6]}"
    dash, gcs = ports["s3"], ports["master"]  # two free loopback ports outside Ray's worker range
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           "--num-cpus=4", "--num-gpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
           f"--ray-client-server-port={ports['volume'] + 10000}", f"--dashboard-agent-listen-port={ports['filer']}",
           f"--min-worker-port={ports['filer'] + 20}", f"--max-worker-port={ports['filer'] + 400}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            done = subprocess.run([*CLI, "status", "nope", "--address", address],
                                  cwd=REPO, capture_output=True, text=True)
            if "Connection refused" not in done.stderr and "Failed to connect" not in done.stderr:
                break
            time.sleep(1)
        yield address
    finally:
        stop_ray_head(head, temp)


def test_submit_waits_then_status_logs_list(tmp_path: Path, s3_env: Any, bucket: str, ray_head: str) -> None:
    """Submitting waits by default (the log streamed, the job's status as the exit code); the same submission id
    again is a no-op once the job succeeded; the address may come from RAY_ADDRESS."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(12)]})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, f"s3://{bucket}/sub"))
    job_id = f"imagefleet-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    run = subprocess.run([*CLI, "submit", str(cfg), "--address", ray_head, "--submission-id", job_id],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"submitted {job_id}" in run.stdout and "12 written" in run.stdout
    assert f"job {job_id}: SUCCEEDED" in run.stdout
    env["RAY_ADDRESS"] = ray_head  # no --address from here on
    again = subprocess.run([*CLI, "submit", str(cfg), "--submission-id", job_id], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env=env)
    assert again.returncode == 0 and "already SUCCEEDED" in again.stdout, again.stdout + again.stderr[-2000:]
    status = subprocess.run([*CLI, "status", job_id], cwd=REPO, capture_output=True, text=True, env=env)
    assert status.stdout.strip() == "SUCCEEDED", status.stderr[-2000:]
    logs = subprocess.run([*CLI, "logs", job_id, "--follow"], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)
    assert logs.returncode == 0 and "imagefleet run" in logs.stdout and f"job {job_id}: SUCCEEDED" in logs.stdout
    listed = subprocess.run([*CLI, "list"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert any(line.split()[:2] == [job_id, "SUCCEEDED"] for line in listed.stdout.splitlines()), listed.stdout
    assert len(manifest(s3_env, bucket, "sub")) == 12
