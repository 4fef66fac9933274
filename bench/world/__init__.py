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

__all__ = ["CLIP", "DRAFT", "HEAVY", "HELD_OUT_SEED", "MODELS", "SIZE", "TASKS", "Verdict", "oracle", "parse",
           "render", "sample_prompts"]
