"""Quality per cost on the shapes world: oracle faithfulness and measured model time of draft only, heavy only, the
cascade at several escalation policies, and best-of-N on the draft model — one set of generations, policies applied
with imagefleet's own code (seeds, candidate seeds, escalation rule), optionally checked by a real cascade run.

    python bench/quality.py [--prompts 512] [--verify 64]

Writes bench/results/quality.json and bench/results/quality.png; `python bench/run_all.py --markdown` folds them
into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, git_rev, machine  # noqa: E402

RESULTS = REPO / "bench" / "results"
MODELS = REPO / "bench" / "world" / "models"
HELDOUT_SEED = 20261201  # never used by bench/world/train.py
JOB_SEED = 7
FRACTIONS = (0.1, 0.2, 0.3, 0.5)
BEST_OF = (2, 4)


def settings(name: str) -> dict[str, Any]:
    """A world model's sampling settings, as its training script recommends (bench/world/train.py SAMPLING)."""
    from bench.world.train import SAMPLING

    s = SAMPLING[name]
    return {"width": 64, "height": 64, "num_steps": s["num_inference_steps"], "guidance_scale": s["guidance_scale"]}


def generator(name: str) -> Any:
    """The product's DiffusersGenerator on a world model (the normal from_pretrained path)."""
    from imagefleet.actors.diffusers_generator import DiffusersGenerator
    from imagefleet.configs.generator import DiffusersConfig

    s = settings(name)
    cfg = DiffusersConfig(model=str(MODELS / name), dtype="float32",
                          defaults={k: s[k] for k in ("width", "height", "num_steps", "guidance_scale")},
                          pool={"batch_size": 16, "num_gpus": 0})
    return DiffusersGenerator(cfg)


def requests(prompts: list[str], name: str, selection: str = "") -> list[Any]:
    """What imagefleet would ask generator `name` for each prompt: its seed (job seed, derived row id) and key."""
    from imagefleet.actors.backend_io import Request
    from imagefleet.actors.keys import conditioning, derive_row_id, derive_seed, image_key

    s = settings(name)
    out = []
    for p in prompts:
        seed = derive_seed(JOB_SEED, derive_row_id(p), 0)
        key = image_key(model=str(MODELS / name), revision="main", scheduler="", prompt=p, negative_prompt="",
                        seed=seed, width=s["width"], height=s["height"], num_steps=s["num_steps"],
                        guidance_scale=s["guidance_scale"], render="dtype=float32",
                        conditioning=conditioning(task="text-to-image", selection=selection))
        out.append(Request(prompt=p, negative_prompt="", seed=seed, width=s["width"], height=s["height"],
                           num_steps=s["num_steps"], guidance_scale=s["guidance_scale"], key=key))
    return out


def generate(gen: Any, reqs: list[Any], batch: int = 16) -> tuple[list[np.ndarray], float]:
    """Images for the requests, and the measured model seconds per image."""
    images: list[np.ndarray] = []
    started = time.perf_counter()
    for i in range(0, len(reqs), batch):
        images += gen._generate(reqs[i:i + batch])
    return images, (time.perf_counter() - started) / max(1, len(reqs))


def score(scorer: Any, images: list[np.ndarray], prompts: list[str], batch: int = 64) -> tuple[list[float], float]:
    """CLIP scores and the measured seconds per image."""
    out: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        out += scorer._score(images[i:i + batch], prompts[i:i + batch])
    return out, (time.perf_counter() - started) / max(1, len(images))


def auc(scores: list[float], labels: list[bool]) -> float:
    """ROC AUC of scores against binary labels (Mann-Whitney U; ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def auc_within(scores: list[float], labels: list[bool], groups: list[str]) -> float:
    """Mean ROC AUC within each group (the prompt's GenEval task): a score that only knows which kind of prompt is
    harder ranks groups, not images, and gets 0.5 here (across prompts it can look good)."""
    values = []
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        a = auc([scores[i] for i in idx], [labels[i] for i in idx])
        if a == a:  # groups with both outcomes
            values.append(a)
    return float(np.mean(values)) if values else float("nan")


def cascade_choice(scores: list[float], fraction: float, heavy_usd: float) -> list[bool]:
    """Which drafts imagefleet's Escalator escalates under `escalate_fraction`: its public run-wide decision
    (`Escalator.over_run`: the worst share of the run's scored drafts, ties broken by key) applied to every row."""
    from imagefleet.actors.escalator import Escalator
    from imagefleet.configs.prep import GeneratorIdentity
    from imagefleet.configs.routing import CascadeConfig

    cfg = CascadeConfig(draft="draft", escalate="heavy", escalate_fraction=fraction)
    heavy = GeneratorIdentity(model="heavy", revision="main", scheduler="", defaults={}, est_usd_per_image=heavy_usd)
    keys = [f"{i:012d}" for i in range(len(scores))]
    view = {"status": ["generated"] * len(scores), "clip_score": scores, "image_key": keys}
    cutoff = Escalator.over_run(view, cfg, heavy)["cutoff"]
    return [(s, k) <= cutoff for s, k in zip(scores, keys, strict=True)]


def vqa_agreement(model: str, prompts: list[str], images: list[np.ndarray], passed: list[bool],
                  tasks: list[str]) -> tuple[float, float]:
    """ROC AUC (across prompts, and within each prompt task) of a VQA scorer — the product's `vqa` backend on any
    vision-language model folder or id — against the oracle's pass on the same draft images."""
    from imagefleet.actors.vqa_scorer import VqaScorer
    from imagefleet.configs.scorer import VqaScorerConfig

    scores, _ = score(VqaScorer(VqaScorerConfig(model=model)), images, prompts, batch=16)
    return auc(scores, passed), auc_within(scores, passed, tasks)


def run(n_prompts: int, vqa_model: str = "") -> dict[str, Any]:
    from bench.world.oracle import oracle
    from bench.world.scene import sample_prompts
    from imagefleet.actors.clip_scorer import ClipScorer
    from imagefleet.actors.generation import candidate_seed
    from imagefleet.configs.scorer import ClipScorerConfig

    prompts = sample_prompts(n_prompts, seed=HELDOUT_SEED)
    scorer = ClipScorer(ClipScorerConfig(model=str(MODELS / "clip")))
    clip_id = f"clip:{MODELS / 'clip'}"
    # 1 every image once: drafts, heavies, and the extra best-of candidates (candidate 0 is the request's seed)
    draft, heavy = generator("draft"), generator("heavy")
    draft_images, draft_s = generate(draft, requests(prompts, "draft"))
    heavy_images, heavy_s = generate(heavy, requests(prompts, "heavy"))
    draft_scores, score_s = score(scorer, draft_images, prompts)
    drafts = [oracle(p, im) for p, im in zip(prompts, draft_images, strict=True)]  # each image judged once
    faith = {"draft": [v.faithfulness for v in drafts],
             "heavy": [oracle(p, im).faithfulness for p, im in zip(prompts, heavy_images, strict=True)]}
    passed, tasks = [v.passed for v in drafts], [v.task for v in drafts]
    rows: list[dict[str, Any]] = [
        {"policy": "draft only", "faithfulness": float(np.mean(faith["draft"])), "seconds_per_image": draft_s},
        {"policy": "heavy only", "faithfulness": float(np.mean(faith["heavy"])), "seconds_per_image": heavy_s},
    ]
    # 2 the cascade: draft + score every image, heavy for the escalated ones (same seed: the heavy-only image)
    for fraction in FRACTIONS:
        up = cascade_choice(draft_scores, fraction, heavy_usd=1.0)
        final = [h if u else d for d, h, u in zip(faith["draft"], faith["heavy"], up, strict=True)]
        cost = draft_s + score_s + np.mean(up) * (heavy_s + score_s)  # escalations are scored again
        rows.append({"policy": f"cascade, escalate_fraction {fraction}", "faithfulness": float(np.mean(final)),
                     "seconds_per_image": float(cost), "escalated": float(np.mean(up))})
    # 2b the same budget routed by the truth: the 30% of rows the heavy model improves most (the scorer's ceiling)
    gain = np.array(faith["heavy"]) - np.array(faith["draft"])
    top = set(np.argsort(-gain, kind="stable")[: int(round(0.3 * len(prompts)))].tolist())
    ideal = [h if i in top else d for i, (d, h) in enumerate(zip(faith["draft"], faith["heavy"], strict=True))]
    rows.append({"policy": "cascade 0.3 routed by the oracle (ceiling, not a product mode)",
                 "faithfulness": float(np.mean(ideal)), "seconds_per_image": float(draft_s + 0.3 * heavy_s),
                 "escalated": 0.3})
    # 3 best-of-N on the draft model: candidates with imagefleet's derived seeds, the best CLIP score kept
    within_prompt = float("nan")
    for n in BEST_OF:
        base = requests(prompts, "draft", selection=f"best_of={n},scorer={clip_id}")
        pools = [[d] for d in draft_images]  # candidate 0 = the request's own seed = the draft image
        extra = [replace(r, seed=candidate_seed(r, k)) for k in range(1, n) for r in base]
        images, _ = generate(draft, extra)
        for j, image in enumerate(images):
            pools[j % len(prompts)].append(image)
        flat = [im for pool in pools for im in pool]
        flat_scores, _ = score(scorer, flat, [p for p in prompts for _ in range(n)])
        best = [int(np.argmax(flat_scores[i * n:(i + 1) * n])) for i in range(len(prompts))]
        final = [oracle(p, pools[i][best[i]]).faithfulness for i, p in enumerate(prompts)]
        if n == max(BEST_OF):  # the scorer's judgement of images, prompt held fixed: candidates of one prompt
            wins = ties = pairs = 0
            for i, p in enumerate(prompts):
                judged = [(flat_scores[i * n + k], oracle(p, pools[i][k]).faithfulness) for k in range(n)]
                for a in range(n):
                    for b in range(n):
                        if judged[a][1] > judged[b][1]:
                            pairs += 1
                            wins += judged[a][0] > judged[b][0]
                            ties += judged[a][0] == judged[b][0]
            within_prompt = (wins + 0.5 * ties) / pairs if pairs else float("nan")
        rows.append({"policy": f"best-of-{n} (draft)", "faithfulness": float(np.mean(final)),
                     "seconds_per_image": float(n * (draft_s + score_s))})
    vqa = dict(zip(("vqa_auc_vs_oracle_pass", "vqa_auc_within_task"),
                   vqa_agreement(vqa_model, prompts, draft_images, passed, tasks), strict=True)) if vqa_model else {}
    heavy_row = rows[1]
    for r in rows:
        r["cost_vs_heavy"] = r["seconds_per_image"] / heavy_row["seconds_per_image"]
    return {"at": time.strftime("%Y-%m-%d %H:%M"), "prompts": len(prompts), "heldout_seed": HELDOUT_SEED,
            "draft": settings("draft"), "heavy": settings("heavy"), "scorer_seconds_per_image": score_s,
            "clip_auc_vs_oracle_pass": auc(draft_scores, passed),
            "clip_auc_within_task": auc_within(draft_scores, passed, tasks),
            "clip_auc_within_prompt": within_prompt, "draft_pass_rate": float(np.mean(passed)),
            "vqa_model": vqa_model, **vqa, "rows": rows}


def plot(result: dict[str, Any], path: Path) -> None:
    """Faithfulness against cost (relative to heavy only), one labelled point per policy, drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h, m = 900, 560, 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [r["cost_vs_heavy"] for r in result["rows"]]
    ys = [r["faithfulness"] for r in result["rows"]]
    x_max, y_lo, y_hi = max(xs) * 1.1, min(ys) - 0.05, min(1.0, max(ys) + 0.05)

    def at(x: float, y: float) -> tuple[float, float]:
        return m + (w - 2 * m) * x / x_max, h - m - (h - 2 * m) * (y - y_lo) / (y_hi - y_lo)

    d.line([at(0, y_lo), at(x_max, y_lo)], fill="black")
    d.line([at(0, y_lo), at(0, y_hi)], fill="black")
    for k in range(6):
        x, y = x_max * k / 5, y_lo + (y_hi - y_lo) * k / 5
        d.text((at(x, y_lo)[0] - 10, h - m + 8), f"{x:.2f}", fill="black")
        d.text((8, at(0, y)[1] - 6), f"{y:.2f}", fill="black")
    d.text((w // 2 - 120, h - 30), "model time per image / heavy only's", fill="black")
    d.text((8, 20), f"oracle faithfulness ({result['prompts']} held-out prompts)", fill="black")
    colours = {"draft": "blue", "heavy": "red", "cascade": "green", "best": "purple"}
    for r, x, y in zip(result["rows"], xs, ys, strict=True):
        c = next(v for k, v in colours.items() if r["policy"].startswith(k))
        px, py = at(x, y)
        d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=c)
        d.text((px + 8, py - 6), r["policy"].replace(", escalate_fraction ", " f="), fill=c)
    img.save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--vqa", default="", metavar="MODEL",
                   help="also measure a VQA scorer (any vision-language model folder or hub id) against the oracle")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)  # one core, like one generator actor (Ray sets OMP_NUM_THREADS=1)
    result = run(args.prompts, args.vqa)
    result["machine"], result["commit"] = machine(), git_rev()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "quality.png")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
