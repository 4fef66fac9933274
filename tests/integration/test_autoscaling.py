"""Autoscaling shown, not assumed: a generator pool with min_size < max_size on a head with no GPUs makes
Ray's fake multi-node autoscaler add GPU nodes, and they are removed again once the run is idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imagefleet.jobs.seaweed import pick_ports
from tests.helpers import CLI, REPO, sleep_job, stop_ray_head, write_config, write_prompts

pytestmark = pytest.mark.slow

FAKE_HEAD_ID = "f" * 51 + "00000"  # the id the fake provider gives the head (RAY_FAKE_CLUSTER)
GPU_GROUP = "gpu-l4"  # like infra/'s GPU worker group: 1 GPU per node, scaled 0..2
MAX_GPU_NODES = 2

# polls the cluster and prints one JSON line per change: how many alive nodes have a GPU
WATCHER = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
last, peak, deadline = None, 0, time.time() + float(sys.argv[2])
while time.time() < deadline:
    gpus = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)
    peak = max(peak, gpus)
    if gpus != last:
        print(json.dumps({"t": round(time.time(), 1), "gpu_nodes": gpus}), flush=True)
        last = gpus
    if peak and gpus == 0:
        break
    time.sleep(0.5)
"""


def autoscaler_config(gcs: str) -> dict[str, object]:
    """A fake-multinode cluster: CPU head, one autoscaled GPU worker group (nodes are local processes)."""
    return {
        "cluster_name": "imagefleet-fake",
        "max_workers": MAX_GPU_NODES,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s: idle fake nodes go away quickly
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs,
            "head_node_id": FAKE_HEAD_ID,
            "use_node_id_as_ip": True,  # the fake provider names nodes by id; load reports must match
            "launch_multiple": True,  # otherwise "add 2 nodes" starts one
            "disable_node_updaters": True,  # nothing to ssh into
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "nobody"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 4}, "node_config": {}, "max_workers": 0},
            GPU_GROUP: {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                        "max_workers": MAX_GPU_NODES},
        },
        "head_node_type": "ray.head.default",
        **{k: [] for k in ("cluster_synced_files", "initialization_commands", "setup_commands",
                           "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                           "worker_start_ray_commands")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[str]:
    ports = pick_ports()
    gcs = f"127.0.0.1:{ports['master']}"
    temp = f"/tmp/ifray/a{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "autoscaler.yaml"
    cfg.write_text(yaml.safe_dump(autoscaler_config(gcs)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={ports['master']}",
           "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=0", f"--temp-dir={temp}",
           "--include-dashboard=false", f"--ray-client-server-port={ports['volume'] + 10000}",
           f"--min-worker-port={ports['filer'] + 20}", f"--max-worker-port={ports['filer'] + 400}",
           f"--autoscaling-config={cfg}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(6)  # `ray start` ~5.5 s
        yield gcs
    finally:
        stop_ray_head(head, temp)


def test_gpu_pool_scales_fake_nodes_up_then_down(tmp_path: Path, fake_cluster: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, fake_cluster, "150"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # 1 a run whose pool starts with 1 GPU actor and may grow to 2; the head has no GPU at all. ~29 s of work for
    # one actor: with 96 prompts (~14 s) a loaded machine sometimes finished before the second node came up
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(192)]})
    raw = sleep_job(src, str(tmp_path / "out"), latency_s=0.5)
    raw["generators"]["sleepy"]["pool"].update(min_size=1, initial_size=1, max_size=MAX_GPU_NODES)
    raw["cluster"] = {"address": fake_cluster}
    run = subprocess.run([*CLI, "run", str(write_config(tmp_path / "job.yaml", raw))],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "192 written" in run.stdout
    # 2 the autoscaler added GPU nodes for the pool, then removed them once idle
    out, _ = watcher.communicate(timeout=180)
    counts = [json.loads(line)["gpu_nodes"] for line in out.splitlines() if line.startswith("{")]
    assert counts and counts[0] == 0, out
    assert max(counts) == MAX_GPU_NODES, f"pool never grew to {MAX_GPU_NODES} GPU nodes: {counts}"
    assert counts[-1] == 0, f"GPU nodes were not removed when idle: {counts}"
