"""Generator configs: one discriminated union over backends, each owning its pool and defaults."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from configs.base import StrictModel
from configs.storage import S3Config


class PoolConfig(StrictModel):
    """The autoscaled Ray actor pool that runs one generator."""

    min_size: int = Field(default=1, ge=1)
    """Actors kept alive at all times."""
    max_size: int = Field(default=1, ge=1)
    """Upper bound the autoscaler may grow to."""
    initial_size: int = Field(default=1, ge=1)
    """Actors started up front (min_size <= initial_size <= max_size)."""
    num_gpus: float = Field(default=1.0, ge=0)
    """GPUs per actor; fractional shares a GPU, 0 runs on CPU."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs per actor."""
    batch_size: int = Field(default=4, ge=1, le=1024)
    """Images per model call (rows are grouped by shape first)."""
    accelerator_type: str = ""
    """Ray accelerator type the actors need (e.g. H100, L4; a GPU worker group in infra/ provides it)."""

    @model_validator(mode="after")
    def _sizes(self) -> "PoolConfig":
        if not self.min_size <= self.initial_size <= self.max_size:
            raise ValueError(
                f"pool sizes must satisfy min_size <= initial_size <= max_size, got "
                f"min_size={self.min_size}, initial_size={self.initial_size}, max_size={self.max_size}"
            )
        return self


class GenerationDefaults(StrictModel):
    """Per-generator defaults; a row's own columns override them."""

    width: int = Field(default=512, ge=8, le=8192)
    """Image width in pixels (multiple of 8)."""
    height: int = Field(default=512, ge=8, le=8192)
    """Image height in pixels (multiple of 8)."""
    num_steps: int = Field(default=30, ge=1, le=1000)
    """Denoising steps."""
    guidance_scale: float = Field(default=5.0, ge=0, le=50)
    """Classifier-free guidance; 0 disables it (turbo models)."""
    negative_prompt: str = ""
    """Negative prompt when the row has none."""
    max_pixels: int = Field(default=4096 * 4096, ge=64)
    """Rows asking for more pixels than this become error rows."""

    @model_validator(mode="after")
    def _multiple_of_8(self) -> "GenerationDefaults":
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {getattr(self, name)}")
        return self


class CostConfig(StrictModel):
    """How a generator's images are priced in the manifest."""

    usd_per_gpu_hour: float = Field(default=0.0, ge=0)
    """Local pools: price of one GPU-hour (generation time x num_gpus is billed)."""
    usd_per_image: float = Field(default=0.0, ge=0)
    """Flat price per image (hosted APIs without usage, or a house rate)."""
    est_seconds_per_image: float = Field(default=0.0, ge=0)
    """Expected model seconds per image, for --dry-run estimates and `budget_usd` (actual time is billed)."""

    def estimate_usd(self, num_gpus: float) -> float:
        """Expected price of one image, before it is generated."""
        return self.usd_per_image + self.est_seconds_per_image * num_gpus * self.usd_per_gpu_hour / 3600


class DiffusersConfig(StrictModel):
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
    """torch.compile the denoiser (CUDA); the first batch of each shape pays the compile time."""
    tiny_vae: str = ""
    """Folder or id of an AutoencoderTiny (TAESD-style) to decode with; few-step models spend most FLOPs there."""
    model_s3: S3Config = S3Config()
    """Connection for an s3:// model folder."""
    local_cache_dir: str = "/tmp/imagefleet-models"
    """Where s3:// model folders are copied on each node."""
    pool: PoolConfig = PoolConfig()
    """Actor pool for this generator."""
    defaults: GenerationDefaults = GenerationDefaults()
    """Defaults for rows that don't set them."""
    cost: CostConfig = CostConfig()
    """Pricing of this generator's images."""


class SleepConfig(StrictModel):
    """Benchmark/test stand-in for a GPU: sleeps `base_latency_s + per_image_s * n` per batch, no CPU."""

    backend: Literal["sleep"] = "sleep"
    """Backend discriminator."""
    model: str = "sleep"
    """Name recorded as the model (part of the image key)."""
    revision: str = "v1"
    """Recorded revision."""
    scheduler: str = ""
    """Unused; kept so every backend has the same key fields."""
    base_latency_s: float = Field(default=0.0, ge=0)
    """Fixed latency per batch."""
    per_image_s: float = Field(default=0.0, ge=0)
    """Extra latency per image in the batch."""
    fail_prompt_substring: str = ""
    """Prompts containing this text fail as a row error (fault-injection for tests); empty = never."""
    pool: PoolConfig = PoolConfig()
    """Actor pool for this generator."""
    defaults: GenerationDefaults = GenerationDefaults(num_steps=1, guidance_scale=0.0)
    """Defaults for rows that don't set them."""
    cost: CostConfig = CostConfig()
    """Pricing of this generator's images."""


from configs.hosted import GeminiImageConfig, OpenAIImagesConfig  # noqa: E402 - hosted configs reuse the classes above

GeneratorConfig = Annotated[
    DiffusersConfig | SleepConfig | OpenAIImagesConfig | GeminiImageConfig, Field(discriminator="backend")
]
