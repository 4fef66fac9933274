"""Measure the world's models on held-out prompts: oracle faithfulness and time per image of the draft and heavy
pipelines, and the tiny CLIP's agreement with the oracle (ROC AUC of its score vs oracle pass).

    python -m bench.world.evaluate            # 500 prompts (seed HELD_OUT_SEED), results to models/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.world import CLIP, DRAFT, HEAVY, HELD_OUT_SEED, MODELS, TASKS, oracle, render, sample_prompts

logger = logging.getLogger(__name__)
BATCH = 8  # images per pipeline call


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def generate(folder: Path, prompts: list[str], seeds: list[int]) -> tuple[list[np.ndarray], float, dict[str, Any]]:
    """Images of `prompts` from a pipeline folder with its recorded sampling settings; seconds per image."""
    import torch
    from diffusers import AutoPipelineForText2Image

    sampling = json.loads((folder / "sampling.json").read_text())
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images: list[np.ndarray] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), BATCH):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + BATCH]]
        with torch.inference_mode():
            out = pipe(prompt=prompts[i:i + BATCH], generator=gens, output_type="np", **sampling).images
        images += list((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return images, (time.perf_counter() - t0) / len(prompts), sampling


def clip_scores(prompts: list[str], images: list[np.ndarray]) -> np.ndarray:
    """100 x cosine, computed as the product's `clip` scorer does (actors/clip_scorer.py)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(str(CLIP)).eval(), CLIPProcessor.from_pretrained(str(CLIP))
    scores = []
    for i in range(0, len(prompts), 64):
        inputs = processor(text=prompts[i:i + 64], images=images[i:i + 64], return_tensors="pt", padding=True,
                           truncation=True, max_length=model.config.text_config.max_position_embeddings)
        with torch.inference_mode():
            out = model(**inputs)
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        scores += (100 * (img * txt).sum(-1).clamp(min=0)).tolist()
    return np.array(scores)


def summarize(prompts: list[str], images: list[np.ndarray]) -> dict[str, Any]:
    """Oracle faithfulness and pass rate, overall and per GenEval task, and per fact category."""
    verdicts = [oracle(p, im) for p, im in zip(prompts, images, strict=True)]
    per_task = {t: [v for v in verdicts if v.task == t] for t in TASKS}
    facts: dict[str, list[bool]] = {}
    for v in verdicts:
        for f in v.facts:
            facts.setdefault(f.category, []).append(f.ok)
    return {
        "faithfulness": float(np.mean([v.faithfulness for v in verdicts])),
        "pass_rate": float(np.mean([v.passed for v in verdicts])),
        "per_task": {t: {"n": len(vs), "faithfulness": float(np.mean([v.faithfulness for v in vs])),
                         "pass_rate": float(np.mean([v.passed for v in vs]))} for t, vs in per_task.items()},
        "per_fact_category": {k: float(np.mean(v)) for k, v in facts.items()},
        "passed": [v.passed for v in verdicts],
    }


def save_grid(path: Path, prompts: list[str], seeds: list[int], images: dict[str, list[np.ndarray]],
              n: int = 12) -> None:
    """A PNG with one column per prompt: the rendered truth, then each model's image."""
    from PIL import Image

    rows = [[render(p, s) for p, s in zip(prompts[:n], seeds[:n], strict=True)]]
    rows += [ims[:n] for ims in images.values()]
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> None:
    """CLI: evaluate draft and heavy on `--n` held-out prompts and the CLIP scorer on the draft's images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=MODELS / "results.json")
    args = parser.parse_args(argv)
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    prompts = sample_prompts(args.n, HELD_OUT_SEED)
    seeds = [HELD_OUT_SEED + i for i in range(args.n)]
    results: dict[str, Any] = {
        "command": "python -m bench.world.evaluate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, 1 thread, batch {BATCH}",
        "load_avg_start": os.getloadavg()[0], "n": args.n, "prompt_seed": HELD_OUT_SEED,
    }
    images = {}
    for name, folder in (("draft", DRAFT), ("heavy", HEAVY)):
        images[name], seconds, sampling = generate(folder, prompts, seeds)
        results[name] = {"seconds_per_image": seconds, **sampling, **summarize(prompts, images[name])}
        logger.info("%s: faithfulness %.3f pass %.3f, %.3f s/image", name, results[name]["faithfulness"],
                    results[name]["pass_rate"], seconds)
    results["load_avg_end"] = os.getloadavg()[0]
    save_grid(args.out.with_name("samples.png"), prompts, seeds, images)
    results["samples_png_prompts"] = prompts[:12]
    clip = {}
    for name in ("draft", "heavy"):
        scores = clip_scores(prompts, images[name])
        passed = np.array(results[name].pop("passed"))
        clip[name] = {"auc": roc_auc(scores, passed), "mean_score_pass": float(scores[passed].mean()),
                      "mean_score_fail": float(scores[~passed].mean())}
        clip[name + "_scores"], clip[name + "_passed"] = scores, passed
    both = np.concatenate([clip.pop("draft_scores"), clip.pop("heavy_scores")])
    clip["pooled_auc"] = roc_auc(both, np.concatenate([clip.pop("draft_passed"), clip.pop("heavy_passed")]))
    results["clip"] = clip
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("clip AUC vs oracle pass: draft %.3f, pooled %.3f", clip["draft"]["auc"], clip["pooled_auc"])


if __name__ == "__main__":
    main()
