"""Scoring stage config: prompt-image alignment (CLIP) now, other scorers (VQA-style) behind the same union."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from imagefleet.configs.base import StrictModel


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


class VqaScorerConfig(StrictModel):
    """VQAScore-style alignment: a vision-language model (transformers `AutoModelForImageTextToText`, e.g. LLaVA,
    Qwen2-VL, PaliGemma, SmolVLM) is asked whether the image shows the prompt; the score is its probability of
    answering yes (0..1), read from the next-token distribution — no text is generated."""

    backend: Literal["vqa"] = "vqa"
    """Backend discriminator."""
    model: str
    """Hub id (e.g. llava-hf/llava-1.5-7b-hf) or local folder with the model and its processor."""
    question: str = 'Does this figure show "{prompt}"? Please answer yes or no.'
    """The question asked about each image; `{prompt}` is replaced by the row's prompt."""
    answer: str = "Yes"
    """The answer whose probability is the score (its first token, with and without a leading space)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto = bfloat16 on CUDA, float32 on CPU."""
    pool: ScorerPoolConfig = ScorerPoolConfig()
    """Actor pool."""

    @model_validator(mode="after")
    def _question(self) -> "VqaScorerConfig":
        if "{prompt}" not in self.question:
            raise ValueError("scorer.question must contain {prompt} (where the row's prompt goes)")
        if not self.answer.strip():
            raise ValueError("scorer.answer is empty: name the answer whose probability is the score")
        return self


class RuleScorerConfig(StrictModel):
    """Testing/benchmark stand-in: score = `high` if the prompt contains `marker`, else `low`. Deterministic."""

    backend: Literal["rule"] = "rule"
    """Backend discriminator."""
    by: Literal["prompt", "brightness"] = "prompt"
    """prompt: `high`/`low` by the marker; brightness: the image's mean pixel value / 255 (tells candidates
    apart, for best-of-N tests)."""
    marker: str = "good"
    """Substring that earns the high score."""
    high: float = 1.0
    """Score for prompts containing the marker."""
    low: float = 0.0
    """Score otherwise."""
    pool: ScorerPoolConfig = ScorerPoolConfig()
    """Actor pool."""


SCORER_CONFIGS: tuple[type[StrictModel], ...] = (ClipScorerConfig, VqaScorerConfig, RuleScorerConfig)
"""Every scorer backend's config class (the union below lists the same classes)."""

ScorerConfig = Annotated[ClipScorerConfig | VqaScorerConfig | RuleScorerConfig, Field(discriminator="backend")]
