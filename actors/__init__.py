"""Ray actor classes: each does one stage's work on dict-of-numpy batches and knows nothing of Ray."""

from actors.clip_scorer import ClipScorer, RuleScorer
from actors.contract import BackendActor, ScorerActor, StageActor
from actors.diffusers_generator import DiffusersGenerator
from actors.escalator import Escalator
from actors.gemini_generator import GeminiImageGenerator
from actors.image_writer import ImageWriter
from actors.input_reader import InputReader
from actors.openai_generator import OpenAIImageGenerator
from actors.prompt_preprocessor import PromptPreprocessor
from actors.sleep_generator import SleepGenerator
from actors.vqa_scorer import VqaScorer

# Each actor names the config class it is built from (`CONFIG`); the registries map that config's tag to the
# actor, so config union → config class → actor class is one chain (tests/unit/test_registry.py checks it).
GENERATOR_ACTORS: tuple[type[BackendActor], ...] = (
    DiffusersGenerator, SleepGenerator, OpenAIImageGenerator, GeminiImageGenerator)
SCORER_ACTORS: tuple[type[ScorerActor], ...] = (ClipScorer, VqaScorer, RuleScorer)

GENERATORS: dict[str, type[BackendActor]] = {
    cls.CONFIG.model_fields["backend"].default: cls for cls in GENERATOR_ACTORS}
"""Generator backend name → actor class."""
SCORERS: dict[str, type[ScorerActor]] = {cls.CONFIG.model_fields["backend"].default: cls for cls in SCORER_ACTORS}
"""Scorer backend name → actor class."""

__all__ = ["GENERATORS", "SCORERS", "BackendActor", "DiffusersGenerator", "Escalator", "ImageWriter",
           "InputReader", "PromptPreprocessor", "StageActor",
           "SleepGenerator"]
