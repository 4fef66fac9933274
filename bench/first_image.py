"""Time to first image: a one-prompt job with the tiny diffusers model, timed from process start.

`imagefleet run` runs as a fresh process (as a user starts it), twice over: as it chooses by default (a one-prompt
job runs in process: `cluster.executor: auto`) and forced onto Ray's actor pools (`cluster.executor=ray`); its
phases come from the run log's timestamps and the manifest. The comparison is a bare script in a fresh process
that imports diffusers, loads the same model and makes the same image: the floor for any tool on this machine.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, WORK, prepare_env, write_yaml

BARE = """
import sys, time
t0 = float(sys.argv[1])
import torch
from diffusers import DiffusionPipeline
imported = time.time()
pipe = DiffusionPipeline.from_pretrained(sys.argv[2], dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
loaded = time.time()
pipe(prompt=["a red circle"], width=64, height=64, num_inference_steps=2, output_type="np")
print(imported - t0, loaded - t0, time.time() - t0)
"""


def _log_time(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(log: Path, t0: float) -> dict[str, float]:
    """Seconds from process start to Ray's start and to the graph's start, read from the run log."""
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "Started a local Ray instance" in line and "ray_started_s" not in out:
            out["ray_started_s"] = round(_log_time(line) - t0, 2)
        if "Starting execution of Dataset" in line and "graph_started_s" not in out:
            out["graph_started_s"] = round(_log_time(line) - t0, 2)
    return out


def imagefleet_once(cfg: Path, out: Path, *args: str) -> dict[str, Any]:
    import shutil

    import pyarrow.dataset as pads

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "imagefleet.jobs.cli", "run", str(cfg), *args], cwd=REPO,
                          capture_output=True, text=True, check=True)
    ended = time.time() - t0
    row = pads.dataset(str(out / "manifest")).to_table(columns=["generated_at", "written_at", "queue_ms",
                                                                "generate_ms"]).to_pylist()[0]
    log = re.search(r"log\s+: (\S+)", proc.stdout)
    return {
        "first_image_s": round(row["generated_at"].timestamp() - t0, 2),
        "first_written_s": round(row["written_at"].timestamp() - t0, 2),
        "process_s": round(ended, 2),
        "queued_for_generator_s": round(row["queue_ms"] / 1000, 2),
        "model_call_s": round(row["generate_ms"] / 1000, 3),
        **(phases(Path(log.group(1)), t0) if log else {}),
    }


def run(repeats: int = 3) -> dict[str, Any]:
    prepare_env()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagefleet.jobs.tiny_models import build_tiny_pipeline

    model = str(build_tiny_pipeline(WORK / "models" / "tiny-sd"))
    src = WORK / "first" / "prompts.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": ["a red circle"]}), src)
    cfg = write_yaml(WORK / "first" / "job.yaml", {
        "name": "bench-first-image",
        "source": {"uri": str(src)},
        "generators": {"tiny": {"backend": "diffusers", "model": model, "dtype": "float32",
                                "defaults": {"width": 64, "height": 64, "num_steps": 2}}},
        "output": {"uri": str(WORK / "first" / "out")},
        "cluster": {"num_cpus": 4, "num_gpus": 1},
    })
    ours = [imagefleet_once(cfg, WORK / "first" / "out") for _ in range(repeats)]
    on_ray = [imagefleet_once(cfg, WORK / "first" / "out", "--set", "cluster.executor=ray") for _ in range(repeats)]
    bare = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", BARE, repr(time.time()), model], capture_output=True, text=True,
                              check=True).stdout.split()
        bare.append({"imported_s": round(float(done[0]), 2), "loaded_s": round(float(done[1]), 2),
                     "first_image_s": round(float(done[2]), 2)})
    best = min(ours, key=lambda r: r["first_image_s"])
    ray_best = min(on_ray, key=lambda r: r["first_image_s"])
    bare_best = min(bare, key=lambda r: r["first_image_s"])
    return {"runs": ours, "ray_runs": on_ray, "bare": bare, "best": best, "ray_best": ray_best,
            "bare_best": bare_best, "vs_bare": round(best["first_image_s"] / bare_best["first_image_s"], 2),
            "ray_vs_bare": round(ray_best["first_image_s"] / bare_best["first_image_s"], 2),
            "at": time.strftime("%Y-%m-%d %H:%M")}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    print(json.dumps(run(p.parse_args().repeats), indent=2))
