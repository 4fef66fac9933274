"""What a skilled Ray user writes instead of using imagefleet (#16): read_parquet → a pool of "GPU" actors
(batch 8) → a separate CPU pool that encodes PNGs and PUTs them to S3. Plain Ray Data, about 40 lines, the same
stand-in GPU as imagefleet's `sleep` backend (0.05 + 0.025·n s per batch, no CPU) and the same store."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import numpy as np


class StandInGPU:
    """Sleeps like a GPU generating a batch, returns flat 64 px images (what imagefleet's sleep backend does)."""

    def __init__(self, base_s: float, per_image_s: float) -> None:
        self.base_s, self.per_image_s = base_s, per_image_s

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["prompt"])
        time.sleep(self.base_s + self.per_image_s * n)
        shade = np.array([hash(p) % 251 for p in batch["prompt"]], dtype=np.uint8)
        images = np.broadcast_to(shade[:, None, None, None], (n, 64, 64, 3)).copy()
        return {"prompt": batch["prompt"], "image": images, "generated_at": np.full(n, time.time())}


class EncodeUpload:
    """PNG-encodes each image and PUTs it under its prompt's hash (boto3, one client per actor)."""

    def __init__(self, bucket: str, prefix: str, client_kwargs: dict[str, Any]) -> None:
        import boto3

        self.s3 = boto3.client("s3", **client_kwargs)
        self.bucket, self.prefix = bucket, prefix

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        done = []
        for prompt, pixels in zip(batch["prompt"], batch["image"], strict=True):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            key = f"{self.prefix}/{hashlib.sha256(str(prompt).encode()).hexdigest()[:40]}.png"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=buf.getvalue(), ContentType="image/png")
            done.append(time.time())
        return {"generated_at": batch["generated_at"], "written_at": np.asarray(done)}


def run_peer(ray_data: Any, src: str, bucket: str, client_kwargs: dict[str, Any], gpus: int, batch: int,
             base_s: float, per_image_s: float) -> list[float]:
    """The peer job end to end; returns each image's generation time (for the steady-state rate)."""
    ds = ray_data.read_parquet(src).repartition(target_num_rows_per_block=4 * batch)  # one small file = one block
    ds = ds.map_batches(StandInGPU, batch_size=batch, num_gpus=1, num_cpus=0,  # it sleeps: no CPU, as imagefleet's
                        compute=ray_data.ActorPoolStrategy(size=gpus),
                        fn_constructor_kwargs={"base_s": base_s, "per_image_s": per_image_s})
    ds = ds.map_batches(EncodeUpload, batch_size=32, num_cpus=0.5,
                        compute=ray_data.ActorPoolStrategy(min_size=1, max_size=2),
                        fn_constructor_kwargs={"bucket": bucket, "prefix": "peer", "client_kwargs": client_kwargs})
    return [float(t) for b in ds.iter_batches(batch_size=None) for t in b["generated_at"]]
