"""Hosted generator configs: OpenAI Images (GPT Image) and Gemini (Nano Banana). Model ids are plain strings."""

from typing import Literal

from pydantic import Field, model_validator

from configs.base import StrictModel
from configs.generator_base import CostConfig, GenerationDefaults, GeneratorBase, Needs, PoolConfig


class RateLimits(StrictModel):
    """Client-side limits shared by every actor using the same API key (one limiter actor per key)."""

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
    """Fields every hosted backend shares (key handling, limits, batch mode, pool, defaults)."""

    api_key_env: str
    """Environment variable with the API key (each backend has its own default)."""
    api_key_file: str = ""
    """File holding the key (wins over the env var)."""
    limits: RateLimits = RateLimits()
    """Rate limits and retries."""
    batch_mode: bool = False
    """Use the provider's Batch API (50% cheaper, hours of latency): one API batch per actor call of
    `pool.batch_size` rows; batch ids are persisted under `<output>/_batches/` so a restarted job resumes them."""
    batch_poll_s: float = Field(default=30.0, gt=0)
    """Seconds between batch status polls."""
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    """Price factor applied to usage-based cost in batch mode."""
    pool: PoolConfig = PoolConfig(num_gpus=0, num_cpus=0.25, batch_size=4, min_size=1, max_size=4, initial_size=1)
    """Actor pool (I/O-bound: no GPU)."""
    defaults: GenerationDefaults = GenerationDefaults(width=1024, height=1024, num_steps=1, guidance_scale=0.0)
    """Defaults for rows that don't set them."""
    cost: CostConfig = CostConfig()
    """Flat fallback price per image when the response has no usage."""

    def needs(self) -> Needs:
        """An API key always; a state store (batch ids next to the outputs) in batch mode."""
        return Needs(api_key_env=self.api_key_env, api_key_file=self.api_key_file, state_store=self.batch_mode)

    def online(self) -> "HostedCommon":
        """Online requests are answered directly: Batch API mode is off when serving."""
        return self.model_copy(update={"batch_mode": False})


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
    quality: Literal["auto", "low", "medium", "high"] = "auto"
    """Image quality tier."""
    output_format: Literal["png", "jpeg", "webp"] = "png"
    """Format the API returns (imagefleet re-encodes to output.format)."""
    background: Literal["auto", "opaque", "transparent"] = "auto"
    """Background; transparent is rejected by gpt-image-2."""
    moderation: Literal["auto", "low"] = "auto"
    """Moderation strictness."""
    prices: TokenPrices = TokenPrices(text_input=5.0, image_input=8.0, image_output=30.0)
    """Token prices (gpt-image-2 defaults)."""

    def render(self) -> str:
        """Quality and background change the image the API makes."""
        parts = [f"quality={self.quality}" if self.quality != "auto" else "",
                 f"background={self.background}" if self.background != "auto" else ""]
        return ",".join(p for p in parts if p)

    @model_validator(mode="after")
    def _capabilities(self) -> "OpenAIImagesConfig":
        if self.background == "transparent" and self.output_format == "jpeg":
            raise ValueError("background=transparent needs output_format png or webp")
        if self.background == "transparent" and self.model.startswith("gpt-image-2"):
            raise ValueError(f"{self.model} rejects background=transparent; use opaque or auto")
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
    prices: TokenPrices = TokenPrices(text_input=0.5, image_output=60.0)
    """Token prices (gemini-3.1-flash-image defaults)."""
