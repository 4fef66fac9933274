"""Orchestration efficiency: imagefleet vs ideal (N fake GPUs / known latency) vs the naive Ray recipe.

One run, same machine, same stand-in "GPU" (the `sleep` backend: no CPU while generating), same S3; each
contender gets a fresh local Ray session (started before its clock starts), configured as imagefleet's own.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from bench.common import WORK, Timer, prepare_env, start_s3, steady_rate, write_yaml

NUM_GPUS = 4
BATCH = 8
BASE_S, PER_IMAGE_S = 0.05, 0.025  # a batch of 8 takes 0.25 s; a single image 0.075 s


def run(rows: int) -> dict[str, Any]:
    prepare_env()
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from imagefleet.jobs import generate
    from imagefleet.jobs.runtime import RAY_ENV

    server = start_s3("s3-orch")
    bucket = "bench-" + uuid.uuid4().hex[:6]
    server.ensure_bucket(bucket)
    src = WORK / "orch" / "prompts.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": [f"bench prompt {i}" for i in range(rows)]}), src)

    def fresh_ray() -> None:
        """A new local Ray session for each contender: Ray Data's own actors (stats, autoscaling, locality) and
        warm idle workers left by one job would otherwise speed up the next one's start."""
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=4, num_gpus=NUM_GPUS, include_dashboard=False,
                 _node_ip_address="127.0.0.1", _temp_dir=f"/tmp/ifray/b{uuid.uuid4().hex[:6]}",
                 runtime_env={"env_vars": dict(RAY_ENV)},
                 _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False})

    fresh_ray()
    try:
        # 1 imagefleet
        cfg = write_yaml(WORK / "orch" / "job.yaml", {
            "name": "bench-orchestration",
            "source": {"uri": str(src)},
            "generators": {"gpu": {"backend": "sleep", "base_latency_s": BASE_S, "per_image_s": PER_IMAGE_S,
                                   "pool": {"min_size": NUM_GPUS, "max_size": NUM_GPUS, "initial_size": NUM_GPUS,
                                            "num_gpus": 1, "num_cpus": 0, "batch_size": BATCH},
                                   "defaults": {"width": 64, "height": 64}}},
            "output": {"uri": f"s3://{bucket}/imagefleet", "format": "png",
                       "pool": {"min_size": 1, "max_size": 2, "num_cpus": 0.5, "batch_size": 32}},
        })
        with Timer() as t_if:
            assert generate.main([str(cfg)]) == 0
        from imagefleet.configs import load_config
        from imagefleet.jobs.preflight import resolve_stores
        from imagefleet.pipelines.manifest import read_manifest_columns

        stores = resolve_stores(load_config(cfg))
        ts = [t.timestamp() for t in read_manifest_columns(f"s3://{bucket}/imagefleet", stores.output,
                                                           ["generated_at"]).column(0).to_pylist()]
        ours = steady_rate(ts)
        # 2 the peer: a hand-written Ray Data job (GPU pool → separate CPU encode/upload pool), same store
        from bench.peer_job import run_peer

        out = stores.output
        client = {"endpoint_url": out.endpoint_url, "region_name": out.region,
                  "aws_access_key_id": out.access_key.get_secret_value(),
                  "aws_secret_access_key": out.secret_key.get_secret_value()}
        fresh_ray()
        with Timer() as t_peer:
            peer_ts = run_peer(ray.data, str(src), bucket, client, NUM_GPUS, BATCH, BASE_S, PER_IMAGE_S)
        peer = steady_rate(peer_ts)
        # 3 naive recipe: batch_size=1, fixed pool, encode + upload inside the "GPU" actor
        from bench.naive_actor import NaiveGenerateAndUpload

        fresh_ray()
        ds = ray.data.read_parquet(str(src)).limit(rows // 2).repartition(target_num_rows_per_block=1)
        ds = ds.map_batches(NaiveGenerateAndUpload, batch_size=1, num_gpus=1, num_cpus=0,
                            compute=ray.data.ActorPoolStrategy(size=NUM_GPUS),
                            fn_constructor_kwargs={"uri": f"s3://{bucket}/naive", "store": stores.output,
                                                   "base_latency_s": BASE_S, "per_image_s": PER_IMAGE_S})
        with Timer() as t_naive:
            naive_ts = [t for batch in ds.iter_batches(batch_size=None) for t in batch["written_at"]]
        naive = steady_rate(naive_ts)
    finally:
        ray.shutdown()
        server.stop()  # the benchmark's own SeaweedFS
    ideal = NUM_GPUS * BATCH / (BASE_S + PER_IMAGE_S * BATCH)
    return {
        "rows": rows, "naive_rows": rows // 2, "fake_gpus": NUM_GPUS, "batch_size": BATCH,
        "latency_model": f"{BASE_S}+{PER_IMAGE_S}*n s",
        "ideal_img_s": round(ideal, 2), "imagefleet_img_s": round(ours, 2), "imagefleet_wall_s": round(t_if.seconds, 1),
        "naive_img_s": round(naive, 2), "naive_wall_s": round(t_naive.seconds, 1),
        "peer_img_s": round(peer, 2), "peer_wall_s": round(t_peer.seconds, 1),
        "vs_peer_steady": round(ours / peer, 3) if peer else None,
        "vs_peer_end_to_end": round(t_peer.seconds / t_if.seconds, 3),
        "efficiency": round(ours / ideal, 3), "speedup_vs_naive": round(ours / naive, 2) if naive else None,
        "at": time.strftime("%Y-%m-%d %H:%M"),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=3200)
    print(json.dumps(run(p.parse_args().rows), indent=2))
