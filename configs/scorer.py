"""Scoring stage config: prompt-image alignment (CLIP), a vision-language model's yes (VQA-style: of the whole prompt,
or of each of its facts), behind one union."""

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


class FactsScorerConfig(StrictModel):
    """Fact-level alignment: score = the expected share of a prompt's facts the image shows (mean P(yes), 0..1).

    Each row's facts (statements such as "a red square is left of a blue circle", from a prompt-table column) are
    asked one by one as yes/no questions of a vision-language model (the `vqa` backend's kind of model, loaded the
    same way); the manifest's `facts` column records each fact's probability of yes. A row without facts is asked
    one question about its whole prompt (`prompt_question`: the `vqa` score)."""

    backend: Literal["facts"] = "facts"
    """Backend discriminator."""
    model: str
    """Hub id (e.g. llava-hf/llava-1.5-7b-hf) or local folder with the model and its processor; or a fact verifier
    folder (`imagefleet train-verifier`), which reads each fact itself (question, prompt_question, answer and dtype
    then have no effect; a row without facts is read with its prompt as the one fact)."""
    facts_column: str = Field(default="facts", min_length=1)
    """The prompt-table column holding each row's facts: a list of strings, or text with one fact per line (blank
    entries are skipped; null or empty = no facts). It reaches the scorer as a pass-through column, so
    `source.pass_through` must carry it (the default, `all`, does; the manifest keeps it as `source_facts` when it
    is named `facts`). A row whose value is not facts (a number, a list holding one, too many or too long facts)
    keeps its image unscored, its `error` saying why."""
    question: str = "Is it true of this figure that {fact}? Please answer yes or no."
    """The question asked about each fact; `{fact}` is replaced by the fact."""
    prompt_question: str = 'Does this figure show "{prompt}"? Please answer yes or no.'
    """The question asked about a row without facts; `{prompt}` is replaced by the row's prompt."""
    answer: str = "Yes"
    """The answer whose probability is each fact's (its first token, with and without a leading space)."""
    max_facts: int = Field(default=32, ge=1)
    """Most facts one row may have (each is a question: a forward pass's share of work)."""
    max_fact_chars: int = Field(default=500, ge=1)
    """Longest fact, in characters."""
    questions_per_pass: int = Field(default=32, ge=1)
    """Image-question pairs per forward pass (a batch of 32 images with 4 facts each takes 4 passes of 32)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto = bfloat16 on CUDA, float32 on CPU."""
    pool: ScorerPoolConfig = ScorerPoolConfig()
    """Actor pool."""

    @model_validator(mode="after")
    def _questions(self) -> "FactsScorerConfig":
        if "{fact}" not in self.question:
            raise ValueError("scorer.question must contain {fact} (where each fact goes)")
        if "{prompt}" not in self.prompt_question:
            raise ValueError("scorer.prompt_question must contain {prompt} (asked of rows without facts)")
        if not self.answer.strip():
            raise ValueError("scorer.answer is empty: name the answer whose probability is the score")
        if self.facts_column != self.facts_column.strip():
            raise ValueError(f"scorer.facts_column {self.facts_column!r} has spaces around it; write "
                             f"{self.facts_column.strip()!r}")
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


SCORER_CONFIGS: tuple[type[StrictModel], ...] = (ClipScorerConfig, VqaScorerConfig, FactsScorerConfig,
                                                 RuleScorerConfig)
"""Every scorer backend's config class (the union below lists the same classes)."""

ScorerConfig = Annotated[ClipScorerConfig | VqaScorerConfig | FactsScorerConfig | RuleScorerConfig,
                         Field(discriminator="backend")]
