"""SleepGenerator: a GPU stand-in for benchmarks and tests — sleeps a known latency, emits a tiny image."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from imagefleet.actors.backend_io import (
    GENERATOR_INPUT_COLUMNS,
    GENERATOR_OPTIONAL_COLUMNS,
    GENERATOR_OUTPUT_COLUMNS,
    Request,
)
from imagefleet.actors.generation import Batch, run_generation
from imagefleet.actors.inputs import InputFiles
from imagefleet.configs.generator import SleepConfig, SleepFaults
from imagefleet.configs.storage import StoreSpec


class SleepGenerator:
    """Sleeps `base_latency_s + per_image_s * n` per model call and returns a deterministic flat image.

    It uses no CPU while "generating", so with N fake GPUs the ideal throughput is known exactly and
    `achieved / ideal` measures orchestration overhead.

    Args:
        cfg: this generator's config slice.
    """

    CONFIG = SleepConfig
    INPUT_COLUMNS = GENERATOR_INPUT_COLUMNS
    OPTIONAL_COLUMNS = GENERATOR_OPTIONAL_COLUMNS
    OUTPUT_COLUMNS = GENERATOR_OUTPUT_COLUMNS

    def __init__(self, cfg: SleepConfig, name: str = "", input_store: StoreSpec | None = None) -> None:
        self.cfg = cfg
        self.name = name  # the generator this actor makes images for (rows routed elsewhere pass through)
        self.inputs = InputFiles(input_store, 2**31) if input_store is not None else None
        self.made = 0  # images made by this actor (chaos tests' faults count them)
        self.acted = False

    def __call__(self, batch: Batch) -> Batch:
        return run_generation(
            batch,
            batch_size=self.cfg.pool.batch_size,
            generate=self._generate,
            is_fatal=lambda exc: False,
            usd_per_second=self.cfg.cost.usd_per_gpu_hour * self.cfg.pool.num_gpus / 3600,
            usd_per_image=self.cfg.cost.usd_per_image,
            name=self.name,
            inputs=self.inputs,
        )

    def _generate(self, requests: Sequence[Request]) -> list[np.ndarray]:
        time.sleep(self.cfg.base_latency_s + self.cfg.per_image_s * len(requests))
        if self.cfg.fail_prompt_substring and any(self.cfg.fail_prompt_substring in r.prompt for r in requests):
            raise ValueError(f"prompt contains {self.cfg.fail_prompt_substring!r} (injected failure)")
        out = []
        for r in requests:
            colour = np.array([r.seed % 251, (r.seed // 251) % 251, (r.seed // 63001) % 251], dtype=np.uint8)
            if r.images:  # made "from" the input: its mean colour, so tests can tell which input a row got
                colour = _mean_colour(r.images[0])
            if r.adapters:  # adapters tint red by their total weight
                colour[0] = int(colour[0] + 40 * sum(w for _, w in r.adapters)) % 256
            out.append(np.broadcast_to(colour, (r.height, r.width, 3)).copy())
        self.made += len(out)
        if self.cfg.faults is not None and not self.acted and self.made >= self.cfg.faults.after_images:
            self.acted = True
            _fault(self.cfg.faults)
        return out


def _fault(faults: SleepFaults) -> None:
    """The configured fault, at the event that triggers it (see `SleepFaults`)."""
    import os
    import signal
    from pathlib import Path

    folder = Path(faults.dir)
    if faults.action == "die":
        for k in range(1, faults.times + 1):
            try:
                os.close(os.open(folder / f"died-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os.kill(os.getpid(), signal.SIGKILL)
        return
    (folder / f"paused-{os.getpid()}").touch()
    waited = 0.0
    while not (folder / "go").exists():  # released by the test's event, not by a timer
        if waited > faults.pause_limit_s:
            raise TimeoutError(f"paused for {faults.pause_limit_s} s and never released ({folder / 'go'})")
        time.sleep(0.05)
        waited += 0.05


def _mean_colour(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    mean: np.ndarray = pixels.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    return mean
