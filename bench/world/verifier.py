"""The shapes world's fact verifier: trained on oracle-labelled images of verifier-training strings
(bench/world/verifier_data.py), measured on drafts of strings it never saw — within-prompt pairwise accuracy, as
bench/quality.py measures world CLIP, next to world CLIP on the same pairs.

    python -m bench.world.verifier                      # data (cached), train, measure -> models/verifier
    python -m bench.world.verifier --measure-only       # measure the checked-in folder again
    python -m bench.world.verifier --grammar v2         # the v2 world: models_v2's pipelines, its training pool;
                                                        # measured on its evaluation strings -> models_v2/verifier

Data and training are seeded (verifier_data's seeds; `--seed` for the weights and batches) and single-threaded;
the figures and wall times go to models/verifier_results.json (one entry per attempt).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.world.verifier_data import EVAL_CANDIDATES, evaluation_set, split, training_set, world_facts

RESULTS_NAME = "verifier_results.json"  # beside the verifier folder: models/ (v1) or models_v2/ (v2)
WORK = Path(tempfile.gettempdir()) / "imagefleet-world-verifier"  # made images, cached between attempts
DEFAULTS = {"drafts": 24000, "heavies": 3000, "renders": 8000, "extra_drafts": 24000, "steps": 8000,
            "batch_images": 64, "lr": 2e-3, "seed": 0}


def folder_for(grammar: str) -> Path:
    """Where the verifier of `grammar`'s world lives (models/verifier, models_v2/verifier)."""
    from bench.world import models_for

    return models_for(grammar) / "verifier"


def scores(folder: Path, prompts: np.ndarray, images: np.ndarray, grammar: str = "v1") -> np.ndarray:
    """The facts scorer's score of each image with this verifier: mean P(yes) over its prompt's world facts."""
    from imagefleet.actors.fact_verifier import FactVerifier

    model = FactVerifier(str(folder))
    pairs = [(i, f) for i, p in enumerate(prompts) for f in world_facts(str(p), grammar)]
    imgs = [images[i] for i, _ in pairs]
    p = np.array(model.p_yes(imgs, [f for _, f in pairs], per_pass=512))
    which = np.array([i for i, _ in pairs])
    return np.bincount(which, p, len(prompts)) / np.bincount(which, minlength=len(prompts))


def pairwise(S: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (candidates in columns): pairs whose oracle faithfulness differs, ordered as the oracle orders them
    (equal scores count half), and how many such pairs (bench/quality.py's definition)."""
    right, pairs = np.zeros(len(S)), np.zeros(len(S))
    for a in range(S.shape[1]):
        for b in range(a + 1, S.shape[1]):
            differ = F[:, a] != F[:, b]
            agree = np.sign(S[:, a] - S[:, b]) * np.sign(F[:, a] - F[:, b])
            right += differ * np.where(agree == 0, 0.5, agree > 0)
            pairs += differ
    return right, pairs


def measure(folder: Path, log: Any = print, grammar: str = "v1") -> dict[str, Any]:
    """Within-prompt pairwise accuracy of the verifier and of world CLIP on the same pairs, on held-out and on
    training strings, with 95% bootstrap CIs clustered by prompt string within task (bench/quality.Bootstrap)."""
    from bench.quality import Bootstrap
    from bench.quality_design import Row

    out: dict[str, Any] = {}
    for which in ("held_out", "training"):
        ev = evaluation_set(WORK, which, log, grammar)
        started = time.process_time()
        mine = scores(folder, ev["prompts"], ev["images"], grammar)
        cpu = (time.process_time() - started) / len(mine)
        F = ev["faithfulness"].reshape(-1, EVAL_CANDIDATES)
        rows = [Row(f"{which}-{k}", str(ev["prompts"][k * EVAL_CANDIDATES]), str(ev["tasks"][k * EVAL_CANDIDATES]), 0)
                for k in range(len(F))]
        _, differ = pairwise(F, F)
        paired = {r.task for r, n in zip(rows, differ, strict=True) if n}  # a task with no pair has no ratio
        keep = np.array([r.task in paired for r in rows])
        boot = Bootstrap([r for r, k in zip(rows, keep, strict=True) if k])
        entry: dict[str, Any] = {"strings": len({r.prompt for r in rows}), "rows": len(rows),
                                 "tasks_without_pairs": sorted({r.task for r in rows} - paired),
                                 "verifier_cpu_s_per_image": round(cpu, 5)}
        for name, S in (("verifier", mine), ("clip", ev["clip"])):
            right, pairs = pairwise(S.reshape(-1, EVAL_CANDIDATES), F)
            entry[name] = boot.mean(right[keep], pairs[keep])
            entry[name]["pooled"] = float(right.sum() / pairs.sum())  # every pair alike, CI clustered by string:
            entry[name]["pooled_ci"] = Bootstrap([Row(r.id, r.prompt, "all", 0) for r in rows]).mean(right, pairs)
            entry[name]["per_task"] = {t: round(float(right[m].sum() / max(1, pairs[m].sum())), 3) for t in
                                       sorted(set(ev["tasks"])) for m in [np.array([r.task == t for r in rows])]}
            entry["pairs"] = int(pairs.sum())
        v, c = entry["verifier"], entry["clip"]
        log(f"{which}: verifier {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}] (mean of tasks), "
            f"{v['pooled']:.3f} [{v['pooled_ci']['low']:.3f}, {v['pooled_ci']['high']:.3f}] (pooled) vs clip "
            f"{c['value']:.3f} / {c['pooled']:.3f} on {entry['pairs']} pairs")
        out[which] = entry
    return out


def train(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Make (or reuse) the training set, train, write the folder; the training record."""
    import torch

    from imagefleet.actors.fact_verifier import VerifierConfig, save_verifier
    from imagefleet.jobs.train_verifier import Labelled, fit, vocabulary

    started = time.process_time()
    folder = folder_for(args.grammar)
    raw = training_set(WORK, args.drafts, args.heavies, args.renders, args.extra_drafts, log, args.grammar)
    data_s = time.process_time() - started
    data = Labelled(raw["images"], raw["fact_image"], [str(f) for f in raw["facts"]], raw["holds"])
    cfg = VerifierConfig(vocab=vocabulary(data.facts), trunk=tuple(args.trunk), film=tuple(args.film),
                         word_dim=args.word_dim, head_dim=args.head_dim)
    torch.set_num_threads(1)
    start = None
    if args.resume:  # continue the checked-in verifier (same data, config and vocabulary) for another run of steps
        from safetensors.torch import load_file

        start = load_file(str(folder / "model.safetensors"))
        cfg = VerifierConfig.from_json(json.loads((folder / "config.json").read_text()))
        earlier = json.loads((folder / "config.json").read_text())["trained"]
    network, record = fit(data, cfg, args.steps, args.batch_images, args.seed, args.lr, log, start)
    if args.resume:
        record["continued"] = earlier
    train_strings, held = split(args.grammar)
    record |= {"grammar": args.grammar,
               "data": {"drafts": args.drafts, "extra_drafts": args.extra_drafts, "heavies": args.heavies,
                        "renders": args.renders,
                        "holds_share": round(float(data.holds.mean()), 3),
                        "made_cpu_s_this_call": round(data_s, 1)},
               "strings": {"training": sum(map(len, train_strings.values())), "held_out": sum(map(len, held.values()))},
               "params": sum(p.numel() for p in network.parameters())}
    save_verifier(folder, cfg, network, {"trained": {**record, "command": "python -m bench.world.verifier " +
                                                     " ".join(args.argv)}})
    return record


def main(argv: list[str] | None = None) -> None:
    """CLI: train (unless --measure-only), then measure; appends the attempt to models/verifier_results.json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--trunk", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--film", type=int, nargs="+", default=[32, 64, 64])
    p.add_argument("--word-dim", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--measure-only", action="store_true")
    p.add_argument("--no-measure", action="store_true",
                   help="train only (bench/quality.py --scorer verifier measures the ranking on its own rows)")
    p.add_argument("--resume", action="store_true", help="continue the grammar's verifier for --steps more steps")
    p.add_argument("--grammar", choices=["v1", "v2"], default="v1",
                   help="v2: train on the v2 training pool with models_v2's pipelines, measure on its evaluation "
                        "strings; the folder and results go to models_v2")
    p.add_argument("--note", default="", help="what this attempt changes (recorded)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    import torch

    torch.set_num_threads(1)
    wall = time.perf_counter()
    entry: dict[str, Any] = {"at": time.strftime("%Y-%m-%d %H:%M"), "note": args.note, "grammar": args.grammar,
                             "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch "
                                        f"{torch.__version__}, 1 thread", "load_avg_start": os.getloadavg()[0]}
    if not args.measure_only:
        entry["training"] = train(args, print)
    if not args.no_measure:
        entry["measured"] = measure(folder_for(args.grammar), print, args.grammar)
    entry["wall_s"] = round(time.perf_counter() - wall, 1)
    results = folder_for(args.grammar).parent / RESULTS_NAME
    history = json.loads(results.read_text()) if results.exists() else []
    results.write_text(json.dumps([*history, entry], indent=1) + "\n")


if __name__ == "__main__":
    main()
