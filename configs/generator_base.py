"""Pieces every generator config shares: pool, defaults, cost, declared run-time needs, and the base class."""

from typing import Literal

from pydantic import Field, model_validator

from imagefleet.configs.base import StrictModel
from imagefleet.configs.request import GenerationDefaults
from imagefleet.configs.storage import S3Config

Task = Literal["text-to-image", "image-to-image", "inpaint", "edit"]
"""What a row asks of its generator: text-to-image (no input image); image-to-image (an input image redrawn with
`strength`); inpaint (the input image's masked area redrawn; white in the mask = change); edit (the model rewrites
input/reference images as the prompt says, optionally only inside a mask)."""
STRENGTH_TASKS = ("image-to-image", "inpaint")
"""Tasks that redraw an input image by a `strength`."""
MASK_TASKS = ("inpaint", "edit")
"""Tasks a mask can go with (image-to-image ignores the mask column)."""


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


class LoraConfig(StrictModel):
    """A LoRA adapter a generator loads once per actor; rows pick adapters by name (`loras` column)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """How rows refer to it (letters, digits, `_`, `.`, `-`)."""
    path: str = Field(min_length=1)
    """A `.safetensors` file or a folder holding one (local or s3://), or a hub id (`org/name`)."""
    weight: float = Field(default=1.0, ge=-10, le=10)
    """Scale when applied by default; rows may give their own (`name:0.6`)."""
    default: bool = True
    """Applied to rows that don't choose adapters (null `loras`)."""
    weight_name: str = ""
    """The file inside a folder or hub repository to load ('' = the one `.safetensors` file there)."""


class Needs(StrictModel):
    """What a generator needs at run time beyond its config: jobs resolve these, the pipeline passes them on.

    Each generator config declares its needs (`GeneratorBase.needs`), so neither jobs nor pipelines switch on
    config types: a new backend states what it needs here and gets it as constructor arguments.
    """

    api_key_env: str = ""
    """Environment variable holding an API key (`api_key` constructor argument); empty = no key needed."""
    api_key_file: str = ""
    """File holding the API key (wins over `api_key_env`)."""
    model_uri: str = ""
    """An `s3://` model folder to copy once per actor (`model_store` constructor argument); empty = none."""
    model_s3: S3Config = S3Config()
    """Connection settings for `model_uri` and s3:// adapters (`model_store` constructor argument)."""
    s3_adapters: bool = False
    """Some LoRA adapter is an s3:// object (read through `model_s3`)."""
    model_path: str = ""
    """A local model folder that must exist before the run starts (checked by --dry-run too)."""
    hub_model: tuple[str, str, str] | None = None
    """A Hugging Face model the actor loads: (repo id, revision, a file it must have), resolved before the run
    (cached, or on the hub) by --dry-run too."""
    state_store: bool = False
    """Keeps state next to the outputs (`state_uri`, `state_store` constructor arguments), e.g. batch ids."""
    spend: bool = False
    """Pays per request: gets the run's budget (`budget` constructor argument) to check actual spend against."""

    @property
    def api_key(self) -> bool:
        """Whether an API key must be resolved."""
        return bool(self.api_key_env or self.api_key_file)


class RunBudget(StrictModel):
    """The run's budget as a generator that pays per request sees it: the limit and the run's shared ledger."""

    usd: float
    """limits.budget_usd."""
    ledger: str
    """The run's identity for its spend ledger (the output URI: one run per output at a time)."""


class GeneratorBase(StrictModel):
    """Fields and behaviour every generator backend shares; each backend adds a `backend` literal and its own
    fields, and lists itself in `configs.generator.GeneratorConfig`."""

    backend: str
    """Backend discriminator (a `Literal` in each subclass)."""
    model: str
    """Model id or path (part of the image key)."""
    revision: str = ""
    """Model revision or snapshot label (part of the image key)."""
    scheduler: str = ""
    """Scheduler override (part of the image key; '' = the model's own)."""
    pool: PoolConfig = PoolConfig()
    """Actor pool for this generator."""
    defaults: GenerationDefaults = GenerationDefaults()
    """Defaults for rows that don't set them."""
    cost: CostConfig = CostConfig()
    """Pricing of this generator's images."""

    def needs(self) -> Needs:
        """What this generator needs at run time (secrets, stores); nothing by default."""
        return Needs()

    def size_multiple(self) -> int:
        """Widths and heights it makes are multiples of this: 8 for latent diffusion (the VAE's factor); a backend
        that takes any size (Gemini: an aspect ratio and a tier) says 1."""
        return 8

    @model_validator(mode="after")
    def _default_size(self) -> "GeneratorBase":
        problem = self.defaults.size_problem(self.size_multiple())
        if problem:
            raise ValueError(f"defaults: {problem}")
        return self

    def tasks(self) -> tuple[str, ...]:
        """The tasks this backend can do (a run asking another of it is refused at config load)."""
        return ("text-to-image",)

    def max_input_images(self) -> int:
        """Input images one request may carry (several = reference images); 0 for text-to-image only."""
        return 0

    def adapters(self) -> list[LoraConfig]:
        """LoRA adapters it loads (none unless the backend has them)."""
        return []

    def default_adapters(self) -> list[tuple[str, float]]:
        """(name, weight) of the adapters rows get when they don't choose."""
        return [(a.name, a.weight) for a in self.adapters() if a.default]

    def takes_strength(self) -> bool:
        """Whether image-to-image / inpaint `strength` changes what it makes (hosted APIs have no such setting)."""
        return False

    def takes_mask(self, task: str) -> bool:
        """Whether a mask can go with `task` on this backend."""
        return task == "inpaint"

    def render(self) -> str:
        """Settings beyond model, revision and scheduler that change the image (part of its key); '' = none."""
        return ""

    def online(self) -> "GeneratorBase":
        """This config as served online (Ray Serve answers each request directly); unchanged by default."""
        return self

    def concurrent_calls(self) -> int:
        """Calls one actor of this generator runs at once (1 = one batch at a time)."""
        return 1

    def sent_format(self) -> str | None:
        """The image format a hosted API sends (stored as sent when output.keep_provider_bytes): `png`, `jpeg`,
        `webp`, '' when the provider picks it; None for a generator whose pixels imagefleet encodes."""
        return None

    def estimate_usd(self, input_images: int = 0) -> float:
        """Expected price of one image at the generator's default settings, before it is generated; `input_images`
        the request carries (hosted edits bill them)."""
        return self.cost.estimate_usd(self.pool.num_gpus)


def backend_name(cls: type[GeneratorBase]) -> str:
    """The discriminator value of a backend config class."""
    default = cls.model_fields["backend"].default
    if not isinstance(default, str):
        raise TypeError(f"{cls.__name__}.backend needs a Literal default")
    return default
