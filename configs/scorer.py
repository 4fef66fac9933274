"""Scoring stage config: prompt-image alignment (CLIP) now, other scorers (VQA-style) behind the same union."""

from typing import Annotated, Literal

from pydantic import Field

from configs.base import StrictModel


class ScorerPoolConfig(StrictModel):
    """Actor pool of the scorer."""

    min_size: int = Field(default=1, ge=1)
    """Actors kept alive."""
    max_size: int = Field(default=1, ge=1)
    """Upper bound for the autoscaler."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per scorer actor (CLIP is small; a fraction of a GPU is plenty)."""
    num_cpus: float = Field(default=0.5, ge=0)
    """CPUs per scorer actor."""
    batch_size: int = Field(default=32, ge=1)
    """Images per scoring call."""


class ClipScorerConfig(StrictModel):
    """CLIP similarity between prompt and image (transformers `CLIPModel`), scaled like CLIPScore: 100 x cos."""

    backend: Literal["clip"] = "clip"
    """Backend discriminator."""
    model: str
    """Hub id (openai/clip-vit-large-patch14) or local folder."""
    pool: ScorerPoolConfig = ScorerPoolConfig()
    """Actor pool."""


class RuleScorerConfig(StrictModel):
    """Testing/benchmark stand-in: score = `high` if the prompt contains `marker`, else `low`. Deterministic."""

    backend: Literal["rule"] = "rule"
    """Backend discriminator."""
    marker: str = "good"
    """Substring that earns the high score."""
    high: float = 1.0
    """Score for prompts containing the marker."""
    low: float = 0.0
    """Score otherwise."""
    pool: ScorerPoolConfig = ScorerPoolConfig()
    """Actor pool."""


SCORER_CONFIGS: tuple[type[StrictModel], ...] = (ClipScorerConfig, RuleScorerConfig)
"""Every scorer backend's config class (the union below lists the same classes)."""

ScorerConfig = Annotated[ClipScorerConfig | RuleScorerConfig, Field(discriminator="backend")]
