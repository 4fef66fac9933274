"""Ray actor classes: each does one stage's work on dict-of-numpy batches and knows nothing of Ray.

The names below load on first use (PEP 562): a Ray worker that unpickles one stage's class imports that
stage's module, not every actor's (each worker used to pay ~0.4 s of CPU for the others, at run start when
every actor starts at once).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagefleet.actors.better_keeper import BetterKeeper
    from imagefleet.actors.clip_scorer import ClipScorer, RuleScorer
    from imagefleet.actors.contract import BackendActor, ScorerActor, StageActor
    from imagefleet.actors.diffusers_generator import DiffusersGenerator
    from imagefleet.actors.escalator import Escalator
    from imagefleet.actors.facts_scorer import FactsScorer
    from imagefleet.actors.gemini_generator import GeminiImageGenerator
    from imagefleet.actors.image_writer import ImageWriter
    from imagefleet.actors.input_reader import InputReader
    from imagefleet.actors.openai_generator import OpenAIImageGenerator
    from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
    from imagefleet.actors.redrawer import Redrawer
    from imagefleet.actors.sleep_generator import SleepGenerator
    from imagefleet.actors.vqa_scorer import VqaScorer

    GENERATOR_ACTORS: tuple[type[BackendActor], ...]
    SCORER_ACTORS: tuple[type[ScorerActor], ...]
    GENERATORS: dict[str, type[BackendActor]]
    SCORERS: dict[str, type[ScorerActor]]

_HOMES = {
    "BetterKeeper": "better_keeper", "ClipScorer": "clip_scorer", "RuleScorer": "clip_scorer",
    "BackendActor": "contract",
    "ScorerActor": "contract", "StageActor": "contract", "DiffusersGenerator": "diffusers_generator",
    "Escalator": "escalator", "GeminiImageGenerator": "gemini_generator", "ImageWriter": "image_writer",
    "InputReader": "input_reader", "OpenAIImageGenerator": "openai_generator",
    "PromptPreprocessor": "prompt_preprocessor", "Redrawer": "redrawer", "SleepGenerator": "sleep_generator",
    "VqaScorer": "vqa_scorer",
    "FactsScorer": "facts_scorer",
}
_GENERATOR_NAMES = ("DiffusersGenerator", "SleepGenerator", "OpenAIImageGenerator", "GeminiImageGenerator")
_SCORER_NAMES = ("ClipScorer", "VqaScorer", "FactsScorer", "RuleScorer")


def _registries() -> dict[str, Any]:
    """Each actor names the config class it is built from (`CONFIG`); the registries map that config's tag to
    the actor, so config union → config class → actor class is one chain (tests/unit/test_registry.py)."""
    generators = tuple(__getattr__(n) for n in _GENERATOR_NAMES)
    scorers = tuple(__getattr__(n) for n in _SCORER_NAMES)
    return {
        "GENERATOR_ACTORS": generators,
        "SCORER_ACTORS": scorers,
        # generator backend name → actor class; scorer backend name → actor class
        "GENERATORS": {cls.CONFIG.model_fields["backend"].default: cls for cls in generators},
        "SCORERS": {cls.CONFIG.model_fields["backend"].default: cls for cls in scorers},
    }


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f"imagefleet.actors.{_HOMES[name]}"), name)
    elif name in ("GENERATOR_ACTORS", "SCORER_ACTORS", "GENERATORS", "SCORERS"):
        value = _registries()[name]
    else:
        raise AttributeError(f"module 'imagefleet.actors' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["GENERATORS", "GENERATOR_ACTORS", "SCORERS", "SCORER_ACTORS", "BackendActor", "BetterKeeper",
           "ClipScorer", "DiffusersGenerator", "Escalator", "GeminiImageGenerator", "ImageWriter", "InputReader",
           "OpenAIImageGenerator", "PromptPreprocessor", "Redrawer", "RuleScorer", "ScorerActor", "SleepGenerator",
           "StageActor", "VqaScorer", "FactsScorer"]
