"""DiffusersGenerator (GPU): any diffusers text-to-image pipeline, loaded once per actor."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagefleet.actors.adapters import local_weights
from imagefleet.actors.backend_io import (
    GENERATOR_INPUT_COLUMNS,
    GENERATOR_OPTIONAL_COLUMNS,
    GENERATOR_OUTPUT_COLUMNS,
    Request,
)
from imagefleet.actors.generation import Batch, BatchLimits, run_generation
from imagefleet.actors.inputs import InputFiles
from imagefleet.actors.keys import shape_bucket
from imagefleet.configs.generator import DiffusersConfig
from imagefleet.configs.storage import StoreSpec

logger = logging.getLogger(__name__)


class DiffusersGenerator:
    """Generates images for `pending` rows with the model's text-to-image pipeline, and image-to-image / inpainting
    rows with the matching AutoPipeline made from the same loaded components (`from_pipe`: no second copy of
    weights).

    Args:
        cfg: this generator's config slice.
        model_store: connection for an `s3://` model folder or adapter (ignored for hub ids and local paths).
        input_store: connection for rows' input images (None: the run is text-to-image).
    """

    CONFIG = DiffusersConfig
    INPUT_COLUMNS = GENERATOR_INPUT_COLUMNS
    OPTIONAL_COLUMNS = GENERATOR_OPTIONAL_COLUMNS
    OUTPUT_COLUMNS = GENERATOR_OUTPUT_COLUMNS

    def __init__(self, cfg: DiffusersConfig, model_store: StoreSpec = StoreSpec(kind="local"),
                 name: str = "", input_store: StoreSpec | None = None) -> None:
        self.name = name  # the generator this actor makes images for (rows routed elsewhere pass through)
        import torch  # heavy imports live here so the driver and --dry-run never need them

        self.cfg = cfg
        self.torch = torch
        # 1 device from torch, not from Ray: fake GPUs set CUDA_VISIBLE_DEVICES without a real device
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"generator {cfg.model}: device=cuda but torch sees no CUDA device")
        self.device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
        dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if self.device == "cuda" else "float32")
        # 2 load once per actor (hub id, local folder, or s3:// copied to local disk)
        path = _local_model_path(cfg, model_store)
        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name)}
        if cfg.variant:
            kwargs["variant"] = cfg.variant
        if not Path(path).exists():
            kwargs["revision"] = cfg.revision
        self.pipe = load_text_to_image(path, kwargs).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        if cfg.scheduler:
            import diffusers

            scheduler_cls = getattr(diffusers, cfg.scheduler, None)
            if scheduler_cls is None:
                raise ValueError(f"diffusers has no scheduler class {cfg.scheduler!r}")
            self.pipe.scheduler = scheduler_cls.from_config(self.pipe.scheduler.config)
        # 3 LoRA adapters, loaded once; each call activates the set its rows share
        for adapter in cfg.loras:
            weights = local_weights(adapter, model_store, cfg.local_cache_dir)
            source, weight_name = ((str(weights.parent), weights.name) if weights
                                   else (adapter.path, adapter.weight_name or None))
            self.pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=adapter.name)
        # 4 speed options (each a no-op unless configured), after the adapters so casts and compile cover them
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        if cfg.channels_last and denoiser is not None:
            denoiser.to(memory_format=torch.channels_last)
        if cfg.tiny_vae:
            from diffusers import AutoencoderTiny

            self.pipe.vae = AutoencoderTiny.from_pretrained(cfg.tiny_vae, dtype=kwargs["dtype"]).to(self.device)
        if cfg.fp8_weights and denoiser is not None:  # before compile, so the compiled graph has the casts
            denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=kwargs["dtype"])
        if cfg.step_cache:
            apply_step_cache(denoiser, cfg.step_cache, cfg.model)
        if cfg.compile and denoiser is not None:
            compiled = torch.compile(denoiser, mode="max-autotune-no-cudagraphs", fullgraph=False)
            setattr(self.pipe, "unet" if hasattr(self.pipe, "unet") else "transformer", compiled)
        self.active_adapters: tuple[tuple[str, float], ...] | None = None
        # 5 image-to-image and inpainting pipelines share these components, made on first use
        self.inputs = InputFiles(input_store, 2**31) if input_store is not None else None
        self.task_pipes: dict[str, Any] = {"text-to-image": self.pipe}
        logger.info("loaded %s on %s (%s)", cfg.model, self.device, dtype_name)
        # 6 warm-up: compile (and autotuning) for the sizes the run will use, before the first batch waits on it;
        #   each size's batch is probed down to what fits this device, then kept for the actor's life
        self.limits = BatchLimits()
        self.warmed = [self._warm(w, h) for w, h in cfg.warm_shapes()]

    def _warm(self, width: int, height: int) -> tuple[int, int]:
        started = time.perf_counter()
        d = self.cfg.defaults

        def run(n: int) -> None:
            self._generate([Request(prompt="warm-up", negative_prompt="", seed=i, width=width, height=height,
                                    num_steps=d.num_steps, guidance_scale=d.guidance_scale) for i in range(n)])

        shape = shape_bucket(width, height, d.num_steps, d.guidance_scale)
        fits = self.limits.probe(shape, self.cfg.pool.batch_size, run, self._is_oom)
        logger.info("warmed %dx%d in %.1f s (%d images per call)", width, height, time.perf_counter() - started, fits)
        return width, height

    def __call__(self, batch: Batch) -> Batch:
        return run_generation(
            batch,
            batch_size=self.cfg.pool.batch_size,
            generate=self._generate,
            is_fatal=self._is_fatal,
            usd_per_second=self.cfg.cost.usd_per_gpu_hour * max(self.cfg.pool.num_gpus, 0.0) / 3600,
            usd_per_image=self.cfg.cost.usd_per_image,
            is_oom=self._is_oom,
            name=self.name,
            inputs=self.inputs,
            limits=self.limits,
        )

    def _is_oom(self, exc: BaseException) -> bool:
        if isinstance(exc, self.torch.cuda.OutOfMemoryError):
            self.torch.cuda.empty_cache()
            return True
        return False

    def _generate(self, requests: Sequence[Request]) -> list[np.ndarray]:
        # 1 one shape, task, strength and adapter set per call (guaranteed by the caller's buckets)
        first = requests[0]
        pipe = self._pipe_for(first.task)
        self._use_adapters(first.adapters)
        # 2 one torch.Generator per image: each image is reproducible on its own, whatever its batch
        generators = [self.torch.Generator(self.device).manual_seed(r.seed) for r in requests]
        params = inspect.signature(pipe.__call__).parameters  # Flux has no negative_prompt, for example
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in requests],
            "num_inference_steps": first.num_steps,
            "generator": generators,
            "output_type": "pt",  # images stay on the device until they are uint8 (_to_uint8)
        }
        if "width" in params:  # image-to-image pipelines take the size from the input image instead
            kwargs.update(width=first.width, height=first.height)
        if "guidance_scale" in params:
            kwargs["guidance_scale"] = first.guidance_scale
        if "negative_prompt" in params and any(r.negative_prompt for r in requests):
            kwargs["negative_prompt"] = [r.negative_prompt for r in requests]
        if first.task != "text-to-image":  # the input redrawn at the requested size
            kwargs["image"] = [_decode(r.images[0], "RGB", first.width, first.height) for r in requests]
            kwargs["strength"] = first.strength
        if first.task == "inpaint":
            kwargs["mask_image"] = [_decode(r.mask, "L", first.width, first.height) for r in requests]
        # 3 run the pipeline's public __call__
        with self.torch.inference_mode():
            images = pipe(**kwargs).images
        # 4 float [0, 1] → uint8 on the device; only the uint8 NHWC copy crosses to the host
        return list(_to_uint8(images, self.torch))

    def _pipe_for(self, task: str) -> Any:
        """The pipeline for a task, made once from the loaded one (shared modules, adapters included)."""
        if task not in self.task_pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = {"image-to-image": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}.get(task)
            if auto is None:
                raise ValueError(f"diffusers generators can't do task {task!r}")
            pipe = auto.from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            self.task_pipes[task] = pipe
        return self.task_pipes[task]

    def _use_adapters(self, adapters: tuple[tuple[str, float], ...]) -> None:
        """Activate this call's LoRA set (nothing to do when it is the active one)."""
        if adapters == self.active_adapters or (not adapters and not self.cfg.loras):
            return
        if adapters:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in adapters], adapter_weights=[w for _, w in adapters])
        else:
            self.pipe.disable_lora()
        self.active_adapters = adapters

    def _is_fatal(self, exc: BaseException) -> bool:
        """CUDA and out-of-memory errors break the actor; everything else belongs to the row."""
        if isinstance(exc, (MemoryError, self.torch.cuda.OutOfMemoryError)):
            return True
        text = str(exc)
        return "CUDA" in text or "cuDNN" in text or "NCCL" in text


NOT_TEXT_TO_IMAGE = ("Img2Img", "Image2Image", "Inpaint", "Depth2Img", "Upscale", "Variation")
"""Words in a diffusers pipeline class name that mean it doesn't take a prompt alone."""


def load_text_to_image(path: str, kwargs: dict[str, Any]) -> Any:
    """The model's text-to-image pipeline: the class its model_index.json names (diffusers imports only that
    pipeline's module), or, for a checkpoint saved as an image-to-image / inpainting pipeline, the text-to-image
    one made from its components (`AutoPipelineForText2Image.from_pipe`, which raises for a model with none).

    `AutoPipelineForText2Image.from_pretrained` gives the same pipeline but imports every pipeline diffusers has
    first: ~1.3 s more of every generator's start on a 2-core machine (BENCHMARKS.md, time to first image)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    if any(word in type(pipe).__name__ for word in NOT_TEXT_TO_IMAGE):
        from diffusers import AutoPipelineForText2Image

        pipe = AutoPipelineForText2Image.from_pipe(pipe)
    return pipe


def apply_step_cache(denoiser: Any, threshold: float, model: str) -> None:
    """diffusers' first-block cache on a transformer denoiser; a model without the hook (a UNet) is refused."""
    if denoiser is None or not hasattr(denoiser, "enable_cache"):
        kind = type(denoiser).__name__ if denoiser is not None else "no denoiser"
        raise ValueError(f"generator {model}: step_cache needs a transformer denoiser with diffusers' cache hooks "
                         f"(Flux, QwenImage, Wan, ...); this model has {kind}: set step_cache: 0")
    from diffusers import FirstBlockCacheConfig

    denoiser.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def _to_uint8(images: Any, torch: Any) -> np.ndarray:
    """A pipeline's `pt` output (NCHW, [0, 1], on its device) as uint8 NHWC on the host: scaled, rounded and
    cast where it was made, so the host gets a quarter of float32's bytes and no float copy. float32 math on
    the device rounds exactly as numpy did on the host (the same bytes, so the same image keys and hashes).
    A pipeline that returns arrays or PIL images anyway is converted on the host."""
    if not isinstance(images, torch.Tensor):
        arr = np.asarray(images)
        if arr.dtype == np.uint8:  # PIL images
            return arr
        return (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    scaled = (images.float().clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    host: np.ndarray = scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return host


def _decode(data: bytes, mode: str, width: int, height: int) -> Any:
    """An input file as a PIL image in `mode` at the requested size (the row's key names that size)."""
    from PIL import Image

    from imagefleet.actors.inputs import open_image

    with open_image(data) as img:
        out = img.convert(mode)
    resample = Image.Resampling.NEAREST if mode == "L" else Image.Resampling.LANCZOS  # masks stay hard-edged
    return out if out.size == (width, height) else out.resize((width, height), resample)


def _local_model_path(cfg: DiffusersConfig, store_spec: StoreSpec) -> str:
    """Hub ids and local folders as-is; s3:// folders copied once into the node's cache, in a folder named by the
    listing's names, sizes and ETags (weights replaced on S3 are fetched again, never served stale)."""
    if not cfg.model.startswith("s3://"):
        return cfg.model
    from imagefleet.actors.s3_store import S3Store

    store = S3Store(cfg.model, store_spec)
    listing = sorted(store.listing(""))
    if not listing:
        raise FileNotFoundError(f"no model files under {cfg.model}")
    version = hashlib.sha256(repr((cfg.model, listing)).encode()).hexdigest()[:16]
    target = Path(cfg.local_cache_dir, version)
    done = target / ".imagefleet-complete"
    if done.exists():
        return str(target)
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}-{id(store)}")
    for rel, _, _ in listing:
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.get(rel))
    with contextlib.suppress(OSError):  # another actor on this node finished first
        staging.rename(target)
    done.touch()
    return str(target)
