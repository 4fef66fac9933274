"""Ray actor classes: each does one stage's work on dict-of-numpy batches and knows nothing of Ray."""

from actors.diffusers_generator import DiffusersGenerator
from actors.gemini_generator import GeminiImageGenerator
from actors.image_writer import ImageWriter
from actors.openai_generator import OpenAIImageGenerator
from actors.prompt_preprocessor import PromptPreprocessor
from actors.sleep_generator import SleepGenerator

GENERATORS: dict[str, type] = {
    "diffusers": DiffusersGenerator,
    "sleep": SleepGenerator,
    "openai": OpenAIImageGenerator,
    "gemini": GeminiImageGenerator,
}
HOSTED_BACKENDS = ("openai", "gemini")

__all__ = ["GENERATORS", "HOSTED_BACKENDS", "DiffusersGenerator", "ImageWriter", "PromptPreprocessor", "SleepGenerator"]
