"""Measure the world's models on held-out prompts: oracle faithfulness and time per image of the draft and heavy
pipelines, and the tiny CLIP's agreement with the oracle (ROC AUC of its score vs oracle pass).

    python -m bench.world.evaluate            # 500 prompts (seed HELD_OUT_SEED), results to models/results.json
    python -m bench.world.evaluate --grammar v2   # models_v2: seen and unseen strings apart, models_v2/results.json
    python -m bench.world.evaluate --grammar v2 --pipelines draft@20 heavy@2 heavy@3 heavy@4 \
        --out bench/world/models_v2/results_steps.json   # the pipelines at other step counts (draft vs steps)

v2 (issue #32): SEEN strings are the training pool, UNSEEN the evaluation strings no v2 model saw
(bench/world/split.py). UNSEEN: every evaluation string; SEEN: as many training-pool strings per task (seeded draw).
Each string gets ceil(MIN_TASK_IMAGES / strings of its task) images (so "a diamond", the one unseen single_object
string, has 64); image seeds EVAL_SEED + k (unseen), + 100_000 (seen). Faithfulness and pass rate per task, as the
mean of tasks and pooled, with 95% bootstrap CIs clustered by string; the oracle on ground truth is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.world import CLIP, DRAFT, HEAVY, HELD_OUT_SEED, MODELS, MODELS_V2, TASKS, oracle, render, sample_prompts
from bench.world.split import evaluation_strings, training_strings

logger = logging.getLogger(__name__)
BATCH = 8  # images per pipeline call
EVAL_SEED = 717_171  # image seeds of the evaluation (and the draw of seen strings); no training stage uses it
MIN_TASK_IMAGES = 64
BOOTSTRAP = 2000


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def generate(folder: Path, prompts: list[str], seeds: list[int], steps: int | None = None
             ) -> tuple[list[np.ndarray], float, dict[str, Any]]:
    """Images of `prompts` from a pipeline folder with its recorded sampling settings (`steps`: that many
    denoising steps instead); seconds per image."""
    import torch
    from diffusers import AutoPipelineForText2Image

    sampling = json.loads((folder / "sampling.json").read_text()) | ({"num_inference_steps": steps} if steps else {})
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


def clip_scores(prompts: list[str], images: list[np.ndarray], folder: Path = CLIP) -> np.ndarray:
    """100 x cosine, computed as the product's `clip` scorer does (actors/clip_scorer.py)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(str(folder)).eval(), CLIPProcessor.from_pretrained(str(folder))
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


def summarize(prompts: list[str], images: list[np.ndarray], grammar: str = "v1") -> dict[str, Any]:
    """Oracle faithfulness and pass rate, overall and per GenEval task, and per fact category."""
    verdicts = [oracle(p, im, grammar) for p, im in zip(prompts, images, strict=True)]
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
              n: int = 12, grammar: str = "v1") -> None:
    """A PNG with one column per prompt: the rendered truth, then each model's image."""
    from PIL import Image

    rows = [[render(p, s, grammar) for p, s in zip(prompts[:n], seeds[:n], strict=True)]]
    rows += [ims[:n] for ims in images.values()]
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> None:
    """CLI: evaluate draft and heavy on `--n` held-out prompts and the CLIP scorer on the draft's images."""
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument("--grammar", choices=["v1", "v2"], default="v1")
    known, rest = which.parse_known_args(argv)
    if known.grammar == "v2":  # its own options (main_v2)
        main_v2(rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=MODELS / "results.json")
    parser.add_argument("--grammar", choices=["v1", "v2"], default="v1",
                        help="v2: bench/world/models_v2 on seen and unseen strings apart (see --grammar v2 -h)")
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


def v2_design(seed: int = EVAL_SEED) -> dict[str, tuple[list[str], list[str], list[int]]]:
    """{"unseen"|"seen": (prompts, tasks, image seeds)}: each unseen string, and as many seen strings per task,
    repeated so that every task has at least MIN_TASK_IMAGES images."""
    rng = random.Random(seed)
    held, pool = evaluation_strings(), training_strings()
    chosen = {"unseen": held, "seen": {t: sorted(rng.sample(pool[t], len(held[t]))) for t in TASKS}}
    out = {}
    for k, (name, by_task) in enumerate(chosen.items()):
        prompts, tasks = [], []
        for task in TASKS:
            reps = math.ceil(MIN_TASK_IMAGES / len(by_task[task]))
            prompts += [p for p in by_task[task] for _ in range(reps)]
            tasks += [task] * (reps * len(by_task[task]))
        out[name] = (prompts, tasks, [seed + 100_000 * k + i for i in range(len(prompts))])
    return out


def _ci(values: np.ndarray, prompts: list[str], tasks: list[str], rng: np.random.Generator) -> dict[str, Any]:
    """Mean of tasks and pooled mean of `values`, each with a 95% bootstrap CI: strings resampled within each task
    (a string's images move together)."""
    by_task: dict[str, dict[str, list[float]]] = {}
    for v, p, t in zip(values, prompts, tasks, strict=True):
        by_task.setdefault(t, {}).setdefault(p, []).append(float(v))
    sums = {t: np.array([sum(x) for x in d.values()]) for t, d in by_task.items()}
    counts = {t: np.array([len(x) for x in d.values()]) for t, d in by_task.items()}
    task_means, pooled = [], []
    for _ in range(BOOTSTRAP):
        s_all = n_all = 0.0
        means = []
        for t in by_task:
            idx = rng.integers(0, len(sums[t]), len(sums[t]))
            s, n = sums[t][idx].sum(), counts[t][idx].sum()
            means.append(s / n)
            s_all, n_all = s_all + s, n_all + n
        task_means.append(np.mean(means))
        pooled.append(s_all / n_all)
    point = [float(np.sum(sums[t]) / np.sum(counts[t])) for t in by_task]
    return {"mean_of_tasks": float(np.mean(point)), "mean_of_tasks_ci": [float(x) for x in
                                                                          np.percentile(task_means, [2.5, 97.5])],
            "pooled": float(np.mean(values)), "pooled_ci": [float(x) for x in np.percentile(pooled, [2.5, 97.5])]}


def v2_judge(prompts: list[str], tasks: list[str], images: list[np.ndarray], seed: int) -> dict[str, Any]:
    """Oracle figures of one model on one set: faithfulness and pass rate (mean of tasks and pooled, CIs), per
    task, per fact category."""
    verdicts = [oracle(p, im, "v2") for p, im in zip(prompts, images, strict=True)]
    faith = np.array([v.faithfulness for v in verdicts])
    passed = np.array([v.passed for v in verdicts], dtype=float)
    rng = np.random.default_rng(seed)
    facts: dict[str, list[bool]] = {}
    for v in verdicts:
        for f in v.facts:
            facts.setdefault(f.category, []).append(f.ok)
    per_task = {t: {"strings": len({p for p, u in zip(prompts, tasks, strict=True) if u == t}),
                    "images": int(sum(u == t for u in tasks)),
                    "faithfulness": float(faith[[u == t for u in tasks]].mean()),
                    "pass_rate": float(passed[[u == t for u in tasks]].mean())} for t in TASKS}
    return {"faithfulness": _ci(faith, prompts, tasks, rng), "pass_rate": _ci(passed, prompts, tasks, rng),
            "per_task": per_task, "per_fact_category": {k: float(np.mean(v)) for k, v in facts.items()},
            "passed": passed.astype(bool).tolist()}


def vae_roundtrip(pipeline: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """Images encoded (latent means) and decoded by a pipeline folder's VAE."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(pipeline / "vae"), dtype=torch.float32).eval()
    out: list[np.ndarray] = []
    for i in range(0, len(images), 64):
        x = torch.from_numpy(np.stack(images[i:i + 64])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        with torch.inference_mode():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
        out += list(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return out


def pipeline_spec(text: str) -> str:
    """`draft`, `heavy`, or `draft@K` / `heavy@K` (K >= 1 denoising steps)."""
    name, at, steps = text.partition("@")
    if name not in ("draft", "heavy") or (at and not (steps.isdigit() and int(steps) >= 1)):
        raise argparse.ArgumentTypeError(f"{text!r}: draft, heavy, draft@K or heavy@K (K steps, K >= 1)")
    return text


def main_v2(argv: list[str] | None = None) -> None:
    """CLI (--grammar v2): draft and heavy of --models on seen and unseen v2 strings, the oracle on ground truth,
    the CLIP's AUC."""
    parser = argparse.ArgumentParser(description="evaluate the v2 models on seen and unseen strings apart")
    parser.add_argument("--models", type=Path, default=MODELS_V2)
    parser.add_argument("--out", type=Path, help="default <models>/results.json")
    parser.add_argument("--pipelines", nargs="+", type=pipeline_spec, default=["draft", "heavy"],
                        help="draft, heavy, or NAME@K: that pipeline at K denoising steps (e.g. heavy@2 draft@20)")
    args = parser.parse_args(argv)
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = args.out or args.models / "results.json"
    results: dict[str, Any] = {
        "command": "python -m bench.world.evaluate --grammar v2 " + " ".join(argv if argv is not None
                                                                             else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, 1 thread", "load_avg_start": os.getloadavg()[0], "seed": EVAL_SEED}
    grid: dict[str, list[np.ndarray]] = {}
    for set_name, (prompts, tasks, seeds) in v2_design().items():
        section: dict[str, Any] = {"strings": len(set(prompts)), "images": len(prompts)}
        truth = [render(p, s, "v2") for p, s in zip(prompts, seeds, strict=True)]
        section["ground_truth"] = v2_judge(prompts, tasks, truth, EVAL_SEED)
        section["ground_truth"].pop("passed")
        through = vae_roundtrip(args.models / "draft", truth)  # what any pipeline of these folders can reach
        section["ground_truth_through_vae"] = v2_judge(prompts, tasks, through, EVAL_SEED)
        section["ground_truth_through_vae"].pop("passed")
        for model in args.pipelines:
            folder, _, steps = model.partition("@")
            images, seconds, sampling = generate(args.models / folder, prompts, seeds, int(steps) if steps else None)
            figures = v2_judge(prompts, tasks, images, EVAL_SEED)
            scores = clip_scores(prompts, images, args.models / "clip")
            passed = np.array(figures.pop("passed"))
            figures["clip_auc"] = roc_auc(scores, passed)
            section[model] = {"seconds_per_image": seconds, **sampling, **figures}
            logger.info("%s %s: faithfulness %.3f (mean of tasks), pass %.3f, %.4f s/image", set_name, model,
                        figures["faithfulness"]["mean_of_tasks"], figures["pass_rate"]["mean_of_tasks"], seconds)
            if set_name == "unseen":
                grid[model] = images[::max(1, len(images) // 12)][:12]
        if set_name == "unseen":
            picks = prompts[::max(1, len(prompts) // 12)][:12]
            save_grid(out.with_name(out.stem.replace("results", "samples") + ".png"), picks,
                      seeds[::max(1, len(prompts) // 12)][:12], grid, grammar="v2")
            results["samples_png_prompts"] = picks
        results[set_name] = section
    results["load_avg_end"] = os.getloadavg()[0]
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
