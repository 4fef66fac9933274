"""Generator configs: the local backends and the one discriminated union over every backend."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from imagefleet.configs.base import StrictModel
from imagefleet.configs.generator_base import (
    MASK_TASKS,
    CostConfig,
    GeneratorBase,
    LoraConfig,
    Needs,
    PoolConfig,
    backend_name,
)
from imagefleet.configs.hosted import GeminiImageConfig, OpenAIImagesConfig
from imagefleet.configs.request import GenerationDefaults
from imagefleet.configs.source import parse_variant
from imagefleet.configs.storage import S3Config

__all__ = ["GENERATOR_CONFIGS", "CostConfig", "DiffusersConfig", "GenerationDefaults", "GeneratorConfig", "PoolConfig",
           "SleepConfig", "backend_name"]


class DiffusersConfig(GeneratorBase):
    """Any diffusers text-to-image pipeline: hub id, local folder or s3:// folder."""

    backend: Literal["diffusers"] = "diffusers"
    """Backend discriminator."""
    model: str
    """Hub id (`stabilityai/sd-turbo`), local folder, or `s3://bucket/prefix` copied once per actor."""
    revision: str = "main"
    """Hub revision; part of the image key."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto = bfloat16 on CUDA, float32 on CPU."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto = CUDA when the actor sees one, else CPU."""
    scheduler: str = ""
    """Diffusers scheduler class name to swap in (e.g. EulerAncestralDiscreteScheduler); empty keeps the model's."""
    variant: str = ""
    """Weights variant such as fp16; empty = default files."""
    channels_last: bool = False
    """Put the UNet/transformer in channels_last memory format (faster convolutions on CUDA)."""
    compile: bool = False
    """torch.compile the denoiser (CUDA). Each actor compiles at start for the defaults' size and `warmup_sizes`
    (a warm-up call per size, at the pool's batch size); other sizes compile on their first batch."""
    warmup_sizes: list[str] = []
    """Extra sizes (`WIDTHxHEIGHT`, e.g. `768x512`) each actor generates once at start, before its first batch:
    compile, cuDNN autotuning and allocator growth happen then, not in the middle of a run. Each is probed at the
    pool's batch size, halved while the device runs out of memory; the size that fits is kept. With `compile` the
    defaults' size is always warmed."""
    step_cache: float = Field(default=0.0, ge=0.0, le=1.0)
    """First-block cache threshold for transformer denoisers (diffusers' FirstBlockCacheConfig: Flux, QwenImage,
    Wan, ...): a step whose first block changed less than this (relative mean) reuses the later blocks' last
    residual. 0 = off; 0.05–0.1 is typical. It changes the pixels, so it is part of the image key. A UNet model
    (SD 1.x/2.x, SDXL) has no such hook: the actor refuses it at load."""
    tiny_vae: str = ""
    """Folder or id of an AutoencoderTiny (TAESD-style) to decode with; few-step models spend most FLOPs there."""
    fp8_weights: bool = False
    """Store the denoiser's (UNet/transformer) weights in float8_e4m3fn and upcast each layer to `dtype` as it runs
    (diffusers' layerwise casting; norms and embeddings stay at `dtype`): about half the denoiser's memory at
    bfloat16, so a bigger model or batch fits one device, at the price of a cast per layer per step. The pixels
    change slightly, so it is part of the image key. FP8/INT8 *compute* needs torchao, which is not a dependency."""
    model_s3: S3Config = S3Config()
    """Connection for an s3:// model folder."""
    local_cache_dir: str = "/tmp/imagefleet-models"
    """Where s3:// model folders are copied on each node."""
    loras: list[LoraConfig] = []
    """LoRA adapters loaded once per actor (their file hashes are part of image keys); each row applies the default
    ones, or those its `loras` column names."""

    def tasks(self) -> tuple[str, ...]:
        """Text-to-image, and image-to-image / inpainting through diffusers' AutoPipelines (sharing the loaded
        components); instruction editing needs a model-specific pipeline and is left to hosted generators."""
        return ("text-to-image", "image-to-image", "inpaint")

    def max_input_images(self) -> int:
        """One image is redrawn (image-to-image, inpaint)."""
        return 1

    def takes_strength(self) -> bool:
        """The AutoPipelines' `strength`."""
        return True

    def adapters(self) -> list[LoraConfig]:
        """Its LoRA adapters."""
        return self.loras

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        for size in value:
            _warmup_size(size)
        return value

    def warm_shapes(self) -> list[tuple[int, int]]:
        """(width, height) each actor generates once at start: the defaults' size when compiled, then
        `warmup_sizes`."""
        shapes = [(self.defaults.width, self.defaults.height)] if self.compile else []
        return list(dict.fromkeys([*shapes, *(_warmup_size(size) for size in self.warmup_sizes)]))

    @model_validator(mode="after")
    def _unique_adapters(self) -> "DiffusersConfig":
        names = [a.name for a in self.loras]
        if len(set(names)) != len(names):
            raise ValueError(f"loras: adapter names must be unique, got {names}")
        return self

    def render(self) -> str:
        """Non-default dtype, weights variant, tiny VAE, step cache and FP8 weights change the pixels
        (compile/channels_last don't)."""
        parts = [f"dtype={self.dtype}" if self.dtype != "auto" else "", f"variant={self.variant}" if self.variant
                 else "", f"tiny_vae={self.tiny_vae}" if self.tiny_vae else "",
                 f"step_cache={self.step_cache:g}" if self.step_cache else "",
                 "fp8_weights" if self.fp8_weights else ""]
        return ",".join(p for p in parts if p)

    def needs(self) -> Needs:
        """An s3:// model folder (or adapter) needs a store connection; a local-looking path must exist."""
        s3_adapters = any(a.path.startswith("s3://") for a in self.loras)
        if self.model.startswith("s3://"):
            return Needs(model_uri=self.model, model_s3=self.model_s3, s3_adapters=s3_adapters)
        if self.model.startswith(("/", "./", "../", "~")) or Path(self.model).expanduser().is_dir():
            return Needs(model_path=self.model, model_s3=self.model_s3, s3_adapters=s3_adapters)  # hub: org/name
        return Needs(model_s3=self.model_s3, s3_adapters=s3_adapters,
                     hub_model=(self.model, self.revision, "model_index.json"))


def _warmup_size(size: str) -> tuple[int, int]:
    """(width, height) of a `warmup_sizes` entry, read as `source.variants` reads an exact size."""
    try:
        kind, value = parse_variant(size.lower()) if size == size.strip() else ("", 0.0)
    except ValueError:
        kind = ""
    if kind != "size":
        raise ValueError(f"warmup_sizes: {size!r} is not WIDTHxHEIGHT (e.g. 768x512; each side a multiple of 8 "
                         f"from 8 to 8192)")
    return value  # type: ignore[return-value]


class SleepFaults(StrictModel):
    """Fault injection for chaos tests, triggered by events (the images an actor has made), never by time."""

    dir: str
    """A local folder the run's actors and the test share: the actors write what happened there, and a test
    releases paused actors by creating `go` in it."""
    after_images: int = Field(ge=1)
    """An actor acts once it has made this many images (counted from its start)."""
    action: Literal["die", "pause"]
    """die: the actor process kills itself (SIGKILL) before returning the batch, each time taking one of `times`
    slots (files `died-<k>`), so the run sees exactly `times` deaths; pause: the actor writes `paused-<pid>` and
    waits until `go` exists (then goes on, and doesn't pause again)."""
    times: int = Field(default=1, ge=1)
    """Deaths in the whole run (die)."""
    pause_limit_s: float = Field(default=300.0, gt=0)
    """A paused actor fails its batch if `go` hasn't appeared by then (a test that never releases it can't hang)."""


class SleepConfig(GeneratorBase):
    """Benchmark/test stand-in for a GPU: sleeps `base_latency_s + per_image_s * n` per batch, no CPU."""

    backend: Literal["sleep"] = "sleep"
    """Backend discriminator."""
    model: str = "sleep"
    """Name recorded as the model (part of the image key)."""
    revision: str = "v1"
    """Recorded revision."""
    base_latency_s: float = Field(default=0.0, ge=0)
    """Fixed latency per batch."""
    per_image_s: float = Field(default=0.0, ge=0)
    """Extra latency per image in the batch."""
    fail_prompt_substring: str = ""
    """Prompts containing this text fail as a row error (fault-injection for tests); empty = never."""
    faults: SleepFaults | None = None
    """Actor deaths or pauses at the k-th image (chaos tests); None = none."""
    defaults: GenerationDefaults = GenerationDefaults(num_steps=1, guidance_scale=0.0)
    """Defaults for rows that don't set them."""
    loras: list[LoraConfig] = []
    """Stand-in adapters (hashed into keys like real ones; they tint the image by their weight)."""

    def tasks(self) -> tuple[str, ...]:
        """Every task (a stand-in: its image derives from the first input's mean colour)."""
        return ("text-to-image", "image-to-image", "inpaint", "edit")

    def max_input_images(self) -> int:
        """As many as the hosted APIs take."""
        return 16

    def takes_strength(self) -> bool:
        """Keyed like a real backend's."""
        return True

    def takes_mask(self, task: str) -> bool:
        """inpaint and edit."""
        return task in MASK_TASKS

    def adapters(self) -> list[LoraConfig]:
        """Its stand-in adapters."""
        return self.loras


# Adding a backend: its config class (here or in its own module), one entry in this tuple and in the union below,
# its actor class (declaring `CONFIG`) listed in `actors/__init__.py`. tests/unit/test_registry.py checks they agree.
GENERATOR_CONFIGS: tuple[type[GeneratorBase], ...] = (DiffusersConfig, SleepConfig, OpenAIImagesConfig,
                                                      GeminiImageConfig)
"""Every generator backend's config class (the union below lists the same classes)."""

GeneratorConfig = Annotated[
    DiffusersConfig | SleepConfig | OpenAIImagesConfig | GeminiImageConfig, Field(discriminator="backend")
]
