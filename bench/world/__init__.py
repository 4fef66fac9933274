"""A procedural shapes world with an exact faithfulness oracle, and tiny models trained on it (bench only).

    from bench.world import sample_prompts, render, oracle, DRAFT, HEAVY, CLIP
    prompts = sample_prompts(500, seed=999_999)          # held-out seed: never used in training
    verdict = oracle(prompts[0], image_rgb_uint8)        # Verdict(faithfulness, passed, task, per_category)
"""

from pathlib import Path

from bench.world.oracle import Verdict, oracle
from bench.world.scene import SIZE, TASKS, parse, render, sample_prompts

MODELS = Path(__file__).parent / "models"
CLIP = MODELS / "clip"  # CLIPModel + CLIPProcessor: `scorer: {backend: clip, model: <this folder>}`
DRAFT = MODELS / "draft"  # StableDiffusionPipeline: small UNet, 4 DPM-Solver steps
HEAVY = MODELS / "heavy"  # StableDiffusionPipeline: wider UNet, 20 DPM-Solver steps
HELD_OUT_SEED = 999_999  # prompt seed for evaluation; training draws its prompts from other seeds
MODELS_V2 = Path(__file__).parent / "models_v2"  # the same models trained on the v2 grammar's training pool


def models_for(grammar: str) -> Path:
    """The folder of the models trained on `grammar` ("v1": models, "v2": models_v2)."""
    return MODELS_V2 if grammar == "v2" else MODELS


__all__ = ["CLIP", "DRAFT", "HEAVY", "HELD_OUT_SEED", "MODELS", "MODELS_V2", "SIZE", "TASKS", "Verdict",
           "models_for", "oracle", "parse", "render", "sample_prompts"]
