"""Pipeline vs bare loop: the same tiny diffusers model and prompts, a plain Python loop (no Ray) vs
`imagefleet run` on a private local Ray, and the same run forced in process (`cluster.executor=in_process`: one
generator, no Ray). All encode PNGs and write them to local disk."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from typing import Any

from bench.common import WORK, Timer, prepare_env, steady_rate, write_yaml

SIZE, STEPS, BATCH = 64, 2, 4


def bare_loop(model: str, prompts: list[str], out_dir: str) -> dict[str, Any]:
    import os

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    from imagefleet.actors.image_writer import encode_image

    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    pipe = DiffusionPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    done: list[float] = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        gens = [torch.Generator("cpu").manual_seed(start + i) for i in range(len(chunk))]
        with torch.inference_mode():
            images = pipe(prompt=chunk, width=SIZE, height=SIZE, num_inference_steps=STEPS, guidance_scale=0.0,
                          generator=gens, output_type="np").images
        for img in (np.clip(images, 0, 1) * 255).round().astype(np.uint8):
            data = encode_image(img, "png", 90, 1)
            with open(os.path.join(out_dir, hashlib.sha256(data).hexdigest()[:16] + ".png"), "wb") as fh:
                fh.write(data)
            done.append(time.time())
    return {"wall_s": time.time() - t0, "ttfi_s": done[0] - t0, "steady_img_s": steady_rate(done)}


def run(rows: int) -> dict[str, Any]:
    prepare_env()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagefleet.configs import load_config
    from imagefleet.jobs import generate
    from imagefleet.jobs.preflight import resolve_stores
    from imagefleet.jobs.tiny_models import build_tiny_pipeline
    from imagefleet.pipelines.manifest import read_manifest_columns

    model = str(build_tiny_pipeline(WORK / "models" / "tiny-sd"))
    prompts = [f"a tiny test prompt number {i}" for i in range(rows)]
    src = WORK / "bare" / "prompts.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": prompts}), src)
    shutil.rmtree(WORK / "bare" / "out", ignore_errors=True)
    bare = bare_loop(model, prompts, str(WORK / "bare" / "loop-out"))
    cfg = write_yaml(WORK / "bare" / "job.yaml", {
        "name": "bench-bare-vs-pipeline",
        "source": {"uri": str(src)},
        "generators": {"tiny": {"backend": "diffusers", "model": model, "dtype": "float32",
                                "pool": {"min_size": 2, "max_size": 2, "initial_size": 2, "num_gpus": 1,
                                         "num_cpus": 1, "batch_size": BATCH},
                                "defaults": {"width": SIZE, "height": SIZE, "num_steps": STEPS, "guidance_scale": 0}}},
        "output": {"uri": str(WORK / "bare" / "out"), "pool": {"min_size": 1, "max_size": 1, "num_cpus": 0.25,
                                                               "batch_size": 16}},
        "cluster": {"address": "local", "num_cpus": 4, "num_gpus": 2},
    })

    def timed(*args: str) -> dict[str, float]:
        out = WORK / "bare" / "out"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        with Timer() as t_run:
            assert generate.main([str(cfg), "--progress", "off", *args]) == 0
        ts = read_manifest_columns(str(out), resolve_stores(load_config(cfg)).output,
                                   ["generated_at"]).column(0).to_pylist()
        ts = [t.timestamp() for t in ts]
        return {"wall_s": t_run.seconds, "ttfi_s": min(ts) - t0, "steady_img_s": steady_rate(ts)}

    ours = timed()
    here = timed("--set", "cluster.executor=in_process")
    return {
        "rows": rows, "image": f"{SIZE}px, {STEPS} steps, batch {BATCH}",
        "bare": {k: round(v, 2) for k, v in bare.items()},
        "imagefleet": {k: round(v, 2) for k, v in ours.items()},
        "in_process": {k: round(v, 2) for k, v in here.items()},
        "steady_ratio": round(ours["steady_img_s"] / bare["steady_img_s"], 3),
        "end_to_end_ratio": round(bare["wall_s"] / ours["wall_s"], 3),
        "in_process_steady_ratio": round(here["steady_img_s"] / bare["steady_img_s"], 3),
        "in_process_end_to_end_ratio": round(bare["wall_s"] / here["wall_s"], 3),
        "at": time.strftime("%Y-%m-%d %H:%M"),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1536)
    print(json.dumps(run(p.parse_args().rows), indent=2))
