"""Hosted generator configs: OpenAI Images (GPT Image) and Gemini (Nano Banana). Model ids are plain strings."""

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from imagefleet.configs.base import StrictModel
from imagefleet.configs.generator_base import MASK_TASKS, CostConfig, GeneratorBase, Needs, PoolConfig
from imagefleet.configs.hosted_models import (
    RETIRED,
    ModelInfo,
    gemini_request_size,
    lookup,
    openai_image_tokens,
    openai_input_image_tokens,
    openai_size_problem,
)
from imagefleet.configs.request import GenerationDefaults


class RateLimits(StrictModel):
    """Client-side pacing, shared by every actor of a run that calls the same provider, scope and model (providers
    count limits per project/organization and model, not per key)."""

    scope: str = ""
    """What the provider counts limits against: generators with the same provider, scope and model share one
    limiter. '' = the OpenAI project (or organization) when set, else the API key."""

    requests_per_min: float = Field(default=60.0, gt=0)
    """Requests per minute (RPM) for this key and model."""
    images_per_min: float = Field(default=60.0, gt=0)
    """Images per minute (IPM)."""
    max_attempts: int = Field(default=6, ge=1, le=50)
    """Attempts per request for retryable errors (429 rate limit, 5xx, timeouts)."""
    initial_backoff_s: float = Field(default=1.0, ge=0)
    """First backoff when the server gives no retry hint; doubles up to max_backoff_s, with jitter."""
    max_backoff_s: float = Field(default=60.0, ge=0)
    """Longest single wait."""
    timeout_s: float = Field(default=180.0, gt=0)
    """Per-request timeout (image calls take tens of seconds)."""
    retry_timeouts: bool = True
    """Send a timed-out request again. The provider may have finished and billed the first one: the manifest's
    `maybe_billed_usd` says how much that could be. False: a timeout becomes an error row instead."""


class TokenPrices(StrictModel):
    """USD per 1M tokens, from the provider's price page; cost = usage x these (x batch_discount in batch mode)."""

    text_input: float = 0.0
    """Prompt text tokens."""
    image_input: float = 0.0
    """Input image tokens (edits, references)."""
    image_output: float = 0.0
    """Generated image tokens."""
    text_output: float = 0.0
    """Text and thinking tokens in the answer."""


class HostedCommon(GeneratorBase):
    """Fields every hosted backend shares (key handling, limits, batch mode, prices, pool, defaults)."""

    api_key_env: str
    """Environment variable with the API key (each backend has its own default)."""
    api_key_file: str = ""
    """File holding the key (wins over the env var)."""
    like: str = ""
    """For a model id imagefleet's table doesn't know: a known id whose sizes and options it shares."""
    limits: RateLimits = RateLimits()
    """Rate limits and retries."""
    batch_mode: bool = False
    """Use the provider's Batch API (50% cheaper, minutes to 24 h of latency). Each actor keeps up to
    `batch_in_flight` provider batches of `pool.batch_size` requests submitted at once; every batch id is persisted
    under `<output>/_batches/` before it is polled, so a restarted job collects it instead of paying again."""
    batch_in_flight: int = Field(default=32, ge=1, le=256)
    """Provider batches one actor keeps submitted at the same time (batch mode)."""
    batch_poll_s: float = Field(default=30.0, gt=0)
    """Seconds between batch status polls."""
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    """Price factor of batch requests (both providers bill batches at 50%)."""
    prices: TokenPrices | None = None
    """USD per 1M tokens; None = the model's prices from imagefleet's table (configs/hosted_models.py). Required for
    a model the table doesn't know: such a model is refused rather than billed at $0."""
    pool: PoolConfig = PoolConfig(num_gpus=0, num_cpus=0.25, batch_size=4, min_size=1, max_size=4, initial_size=1)
    """Actor pool (I/O-bound: no GPU)."""
    defaults: GenerationDefaults = GenerationDefaults(width=1024, height=1024, num_steps=1, guidance_scale=0.0)
    """Defaults for rows that don't set them."""
    cost: CostConfig = CostConfig()
    """`usd_per_image`: a flat price for responses without usage, and the estimate when set."""

    def needs(self) -> Needs:
        """An API key always; a state store (batch ids next to the outputs) in batch mode."""
        return Needs(api_key_env=self.api_key_env, api_key_file=self.api_key_file, state_store=self.batch_mode,
                     spend=True)

    def online(self) -> "HostedCommon":
        """Online requests are answered directly: Batch API mode is off when serving."""
        return self.model_copy(update={"batch_mode": False})

    def sent_format(self) -> str | None:
        """'' = the provider picks the format of what it sends (stored as sent)."""
        return ""

    def concurrent_calls(self) -> int:
        """Batch mode: each call waits on its own provider batch, so an actor holds `batch_in_flight` of them."""
        return self.batch_in_flight if self.batch_mode else 1

    @property
    def provider(self) -> str:
        """The provider's name in the model table."""
        return self.backend

    def info(self) -> ModelInfo | None:
        """The model's table entry (or `like`'s); None for an unknown id with configured prices."""
        return lookup(self.provider, self.model, self.like)

    def token_prices(self) -> TokenPrices:
        """Prices in force: the configured ones, else the table's."""
        if self.prices is not None:
            return self.prices
        info = self.info()
        assert info is not None, "checked at load"
        p = info.prices
        return TokenPrices(text_input=p.text_input, image_input=p.image_input, image_output=p.image_output,
                           text_output=p.text_output)

    def price_factor(self) -> float:
        """Batch requests are discounted."""
        return self.batch_discount if self.batch_mode else 1.0

    def tasks(self) -> tuple[str, ...]:
        """text-to-image, plus edit (reference images) where the model takes input images, plus inpaint where it
        also takes a mask (configs/hosted_models.py)."""
        info = self.info()
        if info is None or info.max_input_images == 0:
            return ("text-to-image",)
        return ("text-to-image", "edit", "inpaint") if info.masks else ("text-to-image", "edit")

    def max_input_images(self) -> int:
        """Input images one request may carry (the provider's per-request maximum)."""
        info = self.info()
        return info.max_input_images if info is not None else 0

    def takes_mask(self, task: str) -> bool:
        """A mask goes with inpaint and edit where the provider takes one (OpenAI); Gemini has no mask parameter
        (its edits are instructions against the reference images)."""
        info = self.info()
        return task in MASK_TASKS and info is not None and info.masks

    def estimate_tokens(self, width: int, height: int) -> tuple[int, int]:
        """(image output, text output) tokens one image is expected to take (text input comes from the prompt)."""
        raise NotImplementedError

    def estimate_input_image_tokens(self, sizes: Sequence[tuple[int, int]]) -> int:
        """Input tokens the input images of one request are expected to take."""
        raise NotImplementedError

    def estimate_image_usd(self, width: int, height: int, prompt_chars: int = 400,
                           input_images: Sequence[tuple[int, int]] = ()) -> float:
        """Expected price of one WxH image before it is made (the response's usage is what is billed);
        `input_images` are the (width, height) of the request's input images (edits bill them as input)."""
        if self.cost.usd_per_image > 0:
            return self.cost.usd_per_image * self.price_factor()
        p = self.token_prices()
        image_out, text_out = self.estimate_tokens(width, height)
        text_in = max(1, prompt_chars // 4)
        image_in = self.estimate_input_image_tokens(input_images) if input_images else 0
        usd = (text_in * p.text_input + image_in * p.image_input + image_out * p.image_output
               + text_out * p.text_output) / 1e6
        return usd * self.price_factor()

    def estimate_usd(self, input_images: int = 0) -> float:
        """Expected price of one image at the default size (dry run, budget), with `input_images` of that size."""
        size = (self.defaults.width, self.defaults.height)
        return self.estimate_image_usd(*size, input_images=[size] * input_images)

    def size_problem(self, width: int, height: int) -> str:
        """Why the model can't make a WxH image ('' when it can)."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _known_model(self) -> "HostedCommon":
        if self.model in RETIRED:
            raise ValueError(f"model {self.model!r} is {RETIRED[self.model]}")
        if self.like and lookup(self.provider, self.like) is None:
            raise ValueError(f"like={self.like!r} is not a known {self.provider} image model")
        if self.info() is None and self.prices is None:
            raise ValueError(
                f"model {self.model!r} is not in imagefleet's {self.provider} price table: set `prices` (USD per 1M "
                f"tokens, from the provider's price page) and `like` (a known model id with the same options), so "
                f"its images are not billed at $0")
        problem = self.size_problem(self.defaults.width, self.defaults.height)
        if problem:
            raise ValueError(f"defaults: {problem}")
        return self


class OpenAIImagesConfig(HostedCommon):
    """OpenAI Images API (`POST /v1/images/generations`), e.g. gpt-image-2."""

    backend: Literal["openai"] = "openai"
    """Backend discriminator."""
    model: str = "gpt-image-2"
    """Model id (a string: ids are retired often; see shared/HOSTED_APIS.md)."""
    base_url: str = ""
    """API base incl. /v1; empty = the SDK default (or OPENAI_BASE_URL)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable with the API key."""
    organization: str = ""
    """OpenAI organization id (sent as OpenAI-Organization; rate limits are counted per organization/project)."""
    project: str = ""
    """OpenAI project id (sent as OpenAI-Project)."""
    quality: str = "auto"
    """Image quality tier: auto, low, medium, high (xhigh and max on the 2.5/2.6 models)."""
    output_format: Literal["png", "jpeg", "webp"] = "png"
    """Format the API returns; stored as it comes unless output.keep_provider_bytes is false."""
    output_compression: int = Field(default=100, ge=0, le=100)
    """jpeg/webp compression level (100 = the API default; ignored for png)."""
    background: Literal["auto", "opaque", "transparent"] = "auto"
    """Background; transparent needs a model that supports it and png or webp."""
    moderation: Literal["auto", "low"] = "auto"
    """Moderation strictness."""

    def sent_format(self) -> str | None:
        return self.output_format

    def render(self) -> str:
        """Quality, background and output format change the image the API makes."""
        parts = [f"quality={self.quality}" if self.quality != "auto" else "",
                 f"background={self.background}" if self.background != "auto" else "",
                 f"format={self.output_format}" if self.output_format != "png" else ""]
        return ",".join(p for p in parts if p)

    def estimate_tokens(self, width: int, height: int) -> tuple[int, int]:
        info = self.info()
        return (openai_image_tokens(info, self.quality, width, height) if info is not None else 0), 0

    def estimate_input_image_tokens(self, sizes: Sequence[tuple[int, int]]) -> int:
        info = self.info()
        return sum(openai_input_image_tokens(info, w, h) for w, h in sizes) if info is not None else 0

    def size_problem(self, width: int, height: int) -> str:
        return openai_size_problem(self.info(), self.model, width, height)

    @model_validator(mode="after")
    def _capabilities(self) -> "OpenAIImagesConfig":
        info = self.info()
        if info is not None and self.quality not in info.qualities:
            raise ValueError(f"quality={self.quality!r} is not offered by {self.model}; "
                             f"choose one of {', '.join(info.qualities)}")
        if self.background == "transparent":
            if self.output_format == "jpeg":
                raise ValueError("background=transparent needs output_format png or webp")
            if info is not None and not info.transparent:
                raise ValueError(f"{self.model} rejects background=transparent; use opaque or auto "
                                 f"(gpt-image-2.5/2.6 and gpt-image-1.5 make transparent images)")
        if info is not None and self.output_format not in info.formats:
            raise ValueError(f"output_format={self.output_format} is not offered by {self.model}")
        if (self.prices is None and info is not None and not info.tokens_1024 and not info.token_formula
                and self.cost.usd_per_image <= 0):
            raise ValueError(f"no token estimate for {self.model}: set cost.usd_per_image")
        return self


class GeminiImageConfig(HostedCommon):
    """Gemini generateContent with image output, e.g. gemini-3.1-flash-image (Nano Banana 2)."""

    backend: Literal["gemini"] = "gemini"
    """Backend discriminator."""
    model: str = "gemini-3.1-flash-image"
    """Model id."""
    base_url: str = ""
    """API base without version; empty = the SDK default."""
    api_version: str = "v1beta"
    """API version path segment (pinned: SDK defaults differ across versions)."""
    api_key_env: str = "GEMINI_API_KEY"
    """Environment variable with the API key."""
    batch_input: Literal["auto", "inline", "file"] = "auto"
    """Batch mode: requests inline in the create call (results matched by key or position) or as an uploaded JSONL
    file (each result line carries its key). auto = a file above 100 requests."""

    def estimate_tokens(self, width: int, height: int) -> tuple[int, int]:
        info = self.info()
        if info is None:
            return 1120, 150
        _, tier, _ = gemini_request_size(info, self.model, width, height)
        return info.tiers[tier], info.thinking_tokens

    def estimate_input_image_tokens(self, sizes: Sequence[tuple[int, int]]) -> int:
        info = self.info()
        return len(sizes) * (info.input_image_tokens if info is not None else 1120)

    def size_problem(self, width: int, height: int) -> str:
        return gemini_request_size(self.info(), self.model, width, height)[2]

    def size_multiple(self) -> int:
        """Any size: Gemini takes an aspect ratio and a size tier (e.g. 1200x628, an ad size, is 16:9 at 1K)."""
        return 1
