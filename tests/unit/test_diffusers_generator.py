"""DiffusersGenerator on dict batches with a tiny random pipeline, without Ray."""

import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from actors.diffusers_generator import DiffusersGenerator
from configs.generator import DiffusersConfig


def batch(prompts: list[str], seeds: list[int], sizes: list[tuple[int, int]]) -> dict:
    n = len(prompts)
    return {
        "prompt": np.array(prompts, dtype=object),
        "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.array(seeds),
        "width": np.array([w for w, _ in sizes]),
        "height": np.array([h for _, h in sizes]),
        "num_steps": np.array([2] * n),
        "guidance_scale": np.array([0.0] * n),
        "status": np.array(["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "enqueued_at": np.array([time.time()] * n),
    }


@pytest.fixture(scope="module")
def generator(tiny_model: Path) -> DiffusersGenerator:
    return DiffusersGenerator(DiffusersConfig(model=str(tiny_model), dtype="float32"))


def test_shapes_dtypes_and_mixed_sizes(generator: DiffusersGenerator) -> None:
    out = generator(batch(["a", "b", "c"], [1, 2, 3], [(64, 64), (96, 64), (64, 128)]))
    assert list(out["status"]) == ["generated"] * 3
    for raw, (w, h) in zip(out["image"], [(64, 64), (96, 64), (64, 128)], strict=True):
        assert len(raw) == w * h * 3
    assert out["generate_ms"].dtype == np.float64 and (out["generate_ms"] > 0).all()


def test_same_request_same_image(generator: DiffusersGenerator) -> None:
    first = generator(batch(["a cat", "other"], [5, 6], [(64, 64)] * 2))
    second = generator(batch(["a cat"], [5], [(64, 64)]))
    assert first["image"][0] == second["image"][0]
    different_seed = generator(batch(["a cat"], [9], [(64, 64)]))
    assert different_seed["image"][0] != first["image"][0]


def test_poison_row_becomes_error_row(generator: DiffusersGenerator) -> None:
    real = generator.pipe.__call__

    def flaky(**kwargs):  # fault injection: the pipeline raises whenever "poison" is in the batch
        if any("poison" in p for p in kwargs["prompt"]):
            raise ValueError("cannot render this prompt")
        return real(**kwargs)

    with mock.patch.object(type(generator.pipe), "__call__", side_effect=lambda *a, **k: flaky(**k)):
        out = generator(batch(["ok", "poison", "fine"], [1, 2, 3], [(64, 64)] * 3))
    assert list(out["status"]) == ["generated", "error", "generated"]
    assert "cannot render" in out["error"][1]


def test_cuda_errors_are_fatal(generator: DiffusersGenerator) -> None:
    fault = mock.patch.object(type(generator.pipe), "__call__", side_effect=RuntimeError("CUDA error: device-side"))
    with fault, pytest.raises(RuntimeError, match="CUDA"):
        generator(batch(["a"], [1], [(64, 64)]))


def test_missing_model_raises_at_load(tmp_path: Path) -> None:
    with pytest.raises((OSError, ValueError)):
        DiffusersGenerator(DiffusersConfig(model=str(tmp_path / "no-such-model")))


def test_cuda_requested_without_gpu_fails_clearly(tiny_model: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        DiffusersGenerator(DiffusersConfig(model=str(tiny_model), device="cuda"))


def test_sdxl_shaped_pipeline(tiny_model_xl: Path) -> None:
    gen = DiffusersGenerator(DiffusersConfig(model=str(tiny_model_xl), dtype="float32"))
    out = gen(batch(["a"], [1], [(64, 64)]))
    assert out["status"][0] == "generated"


def test_scheduler_swap(tiny_model: Path) -> None:
    gen = DiffusersGenerator(DiffusersConfig(model=str(tiny_model), scheduler="EulerAncestralDiscreteScheduler"))
    assert type(gen.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.raises(ValueError, match="no scheduler"):
        DiffusersGenerator(DiffusersConfig(model=str(tiny_model), scheduler="NoSuchScheduler"))
