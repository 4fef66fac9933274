"""The naive recipe of Ray's Stable Diffusion batch example, as a bench-only actor: batch_size=1, fixed pool,
and encode + upload inside the GPU actor (so the "GPU" idles while the CPU work runs)."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from imagefleet.actors.image_writer import encode_image
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec


class NaiveGenerateAndUpload:
    def __init__(self, uri: str, store: StoreSpec, base_latency_s: float, per_image_s: float) -> None:
        self.store = open_store(uri, store)
        self.latency = base_latency_s + per_image_s  # one image per call

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = []
        for prompt in batch["prompt"]:
            time.sleep(self.latency)  # the same stand-in "GPU" as the sleep backend, at batch size 1
            pixels = np.full((64, 64, 3), hash(prompt) % 251, np.uint8)
            data = encode_image(pixels, "png", 90, 1)
            key = hashlib.sha256(str(prompt).encode()).hexdigest()[:40]
            self.store.put_if_absent(f"images/{key}.png", data, "image/png", hashlib.sha256(data).hexdigest())
            done.append(time.time())
        return {"written_at": np.asarray(done)}
