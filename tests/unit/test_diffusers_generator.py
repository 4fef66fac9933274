"""DiffusersGenerator on dict batches with a tiny random pipeline, without Ray."""

import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from imagefleet.actors.backend_io import Request
from imagefleet.actors.diffusers_generator import DiffusersGenerator
from imagefleet.configs.generator import DiffusersConfig


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


def test_a_checkpoint_saved_for_image_to_image_still_generates_from_text(generator: DiffusersGenerator,
                                                                         tmp_path: Path) -> None:
    """The text-to-image pipeline is loaded as the model names it (no AutoPipeline import); a checkpoint saved as
    an image-to-image pipeline gets its text-to-image counterpart, as AutoPipelineForText2Image would give, and
    makes the same image from the same request."""
    from diffusers import StableDiffusionImg2ImgPipeline

    assert type(generator.pipe).__name__ == "StableDiffusionPipeline"
    StableDiffusionImg2ImgPipeline(**generator.pipe.components).save_pretrained(tmp_path / "i2i")
    saved = DiffusersGenerator(DiffusersConfig(model=str(tmp_path / "i2i"), dtype="float32"))
    assert type(saved.pipe).__name__ == "StableDiffusionPipeline"
    rows = batch(["same"], [5], [(64, 64)])
    assert np.array_equal(saved(dict(rows))["image"][0], generator(dict(rows))["image"][0])


def test_scheduler_swap(tiny_model: Path) -> None:
    gen = DiffusersGenerator(DiffusersConfig(model=str(tiny_model), scheduler="EulerAncestralDiscreteScheduler"))
    assert type(gen.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.raises(ValueError, match="no scheduler"):
        DiffusersGenerator(DiffusersConfig(model=str(tiny_model), scheduler="NoSuchScheduler"))


def test_uint8_on_device_matches_the_host_conversion() -> None:
    """The device-side cast rounds like numpy on float32 (half-way values, clipping, bf16 inputs): the same
    bytes as before, so image keys' hashes don't change when the conversion moved to the device."""
    import torch

    from imagefleet.actors.diffusers_generator import _to_uint8

    edges = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.5, 127.5 / 255, 1.0, 1.7])
    images = torch.cat([torch.rand(2, 3, 8, 8).flatten(), edges]).reshape(1, 3, -1, 1)
    for tensor in (images, images.to(torch.bfloat16)):
        host = tensor.float().permute(0, 2, 3, 1).numpy()
        expected = (np.clip(host, 0.0, 1.0) * 255).round().astype(np.uint8)
        got = _to_uint8(tensor, torch)
        assert got.dtype == np.uint8 and got.shape == expected.shape and np.array_equal(got, expected)
    assert np.array_equal(_to_uint8(expected, torch), expected)  # already uint8 (PIL output): kept
    assert np.array_equal(_to_uint8(host, torch), expected)  # float arrays: converted on the host


def test_warmup_sizes_run_once_at_start(tiny_model: Path) -> None:
    """Each actor generates its warm-up sizes before its first batch (compile adds the defaults' size)."""
    cfg = DiffusersConfig(model=str(tiny_model), dtype="float32", warmup_sizes=["64x96", "64x96"],
                          defaults={"width": 64, "height": 64, "num_steps": 1, "guidance_scale": 0})
    assert cfg.warm_shapes() == [(64, 96)]
    assert cfg.model_copy(update={"compile": True}).warm_shapes() == [(64, 64), (64, 96)]
    gen = DiffusersGenerator(cfg)
    assert gen.warmed == [(64, 96)]
    assert gen.limits.size((64, 96, 1, 0.0), cfg.pool.batch_size) == cfg.pool.batch_size  # it all fitted
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        DiffusersConfig(model=str(tiny_model), warmup_sizes=["64x100"])


def test_warmup_probes_each_size_down_to_a_batch_that_fits(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm-up size whose full batch runs out of device memory is probed down (torch's own OOM error) and kept:
    the actor's calls of that size are made at the size that fits from the first batch on."""
    import torch

    real = DiffusersGenerator._generate
    sizes: list[int] = []

    def generate(self: DiffusersGenerator, requests: Sequence[Request]) -> list[np.ndarray]:
        sizes.append(len(requests))
        if len(requests) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, requests)

    monkeypatch.setattr(DiffusersGenerator, "_generate", generate)
    cfg = DiffusersConfig(model=str(tiny_model), dtype="float32", warmup_sizes=["64x64"],
                          pool={"batch_size": 8}, defaults={"width": 64, "height": 64, "num_steps": 2,
                                                            "guidance_scale": 0})
    gen = DiffusersGenerator(cfg)
    assert sizes == [8, 4, 2] and gen.limits.size((64, 64, 2, 0.0), 8) == 2
    sizes.clear()
    out = gen(batch([f"p{i}" for i in range(6)], list(range(6)), [(64, 64)] * 6))
    assert list(out["status"]) == ["generated"] * 6 and sizes == [2, 2, 2]


def test_step_cache_on_a_transformer_and_refused_on_a_unet(generator: DiffusersGenerator) -> None:
    """The first-block cache goes on a transformer denoiser (a tiny Flux transformer, diffusers' real hook) and
    runs; a UNet is refused with the line that says what to set."""
    import torch
    from diffusers import FluxTransformer2DModel

    from imagefleet.actors.diffusers_generator import apply_step_cache

    flux = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    apply_step_cache(flux, 0.5, "tiny-flux")
    assert flux.is_cache_enabled
    inputs = {"hidden_states": torch.randn(1, 16, 4), "encoder_hidden_states": torch.randn(1, 4, 16),
              "pooled_projections": torch.randn(1, 8), "timestep": torch.tensor([1.0]),
              "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(4, 3)}
    with torch.inference_mode(), flux.cache_context("step"):
        first = flux(**inputs).sample
        again = flux(**inputs).sample  # the same input: the first block barely changed, the rest is reused
    assert torch.allclose(first, again)
    with pytest.raises(ValueError, match="needs a transformer denoiser.*UNet2DConditionModel.*step_cache: 0"):
        apply_step_cache(generator.pipe.unet, 0.05, "tiny-sd")
    assert "step_cache=0.05" in DiffusersConfig(model="x/y", step_cache=0.05).render()


def test_fp8_weights_quarter_the_denoiser_and_keep_adapters(generator: DiffusersGenerator, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    """`fp8_weights` stores the UNet in float8 (diffusers' layerwise casting) and upcasts per layer: the same
    requests still render, close to the full-precision pixels but not equal (so the option is in the key), a LoRA
    still applies on top, and the stored denoiser is about a quarter of its float32 bytes."""
    import dataclasses

    import torch

    from imagefleet.jobs.tiny_models import build_tiny_lora

    lora = build_tiny_lora(tiny_model, tmp_path / "lora")
    fp8 = DiffusersGenerator(DiffusersConfig(model=str(tiny_model), dtype="float32", fp8_weights=True,
                                             loras=[{"name": "brand", "path": str(lora), "default": False}]))

    def stored(module: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    assert torch.float8_e4m3fn in {p.dtype for p in fp8.pipe.unet.parameters()}
    assert stored(fp8.pipe.unet) < 0.3 * stored(generator.pipe.unet)
    req = Request(prompt="a red bottle", negative_prompt="", seed=3, width=64, height=64, num_steps=2,
                  guidance_scale=0.0)
    full, low = generator._generate([req])[0], fp8._generate([req])[0]
    assert 0 < np.abs(full.astype(int) - low).mean() < 8  # near the float32 image, not the same one
    assert np.array_equal(fp8._generate([req])[0], low)
    styled = fp8._generate([dataclasses.replace(req, adapters=(("brand", 1.0),))])[0]
    assert np.abs(styled.astype(int) - low).mean() > 1
    assert DiffusersConfig(model="x/y", fp8_weights=True).render() == "fp8_weights"
