"""The quality benchmark's evaluation set: the shapes world's grammar enumerated, the prompt strings each trained
model saw (bench/world/train.py's seeded streams replayed), and the rows — rows/6 per GenEval task, a task's strings
shuffled and cycled, each row its own id (so its own derived seed), each task's rows split into two folds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import permutations
from typing import Any

DESIGN_SEED = 20261201  # shuffles the grammar's strings into rows and folds; no training stage uses it


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str
    task: str
    fold: int


def grammar() -> dict[str, list[str]]:
    """Every prompt string the world's grammar makes, by GenEval task (checked against the world's parser and
    sampler, so a changed grammar fails here rather than miscounting)."""
    from bench.world.scene import COLOURS, RELATIONS, SHAPES, Group, Spec, parse, sample_prompts, to_prompt

    cs, ss = list(COLOURS), list(SHAPES)
    specs = [Spec("single_object", (Group(1, None, s),)) for s in ss]
    specs += [Spec("colors", (Group(1, c, s),)) for c in cs for s in ss]
    specs += [Spec("counting", (Group(n, c, s),)) for n in (2, 3) for c in (None, *cs) for s in ss]
    specs += [Spec("two_object", (Group(1, None, a), Group(1, None, b))) for a, b in permutations(ss, 2)]
    specs += [Spec("color_attr", (Group(1, c, a), Group(1, d, b))) for a, b in permutations(ss, 2)
              for c, d in permutations(cs, 2)]
    objects = [(c, s) for c in cs for s in ss]
    specs += [Spec("position", (Group(1, *a), Group(1, *b)), r) for a, b in permutations(objects, 2)
              for r in RELATIONS]
    out: dict[str, list[str]] = {}
    for spec in specs:
        text = to_prompt(spec)
        if parse(text).task != spec.task:
            raise RuntimeError(f"grammar changed: {text!r} parses as {parse(text).task}, not {spec.task}")
        out.setdefault(spec.task, []).append(text)
    every = {p for texts in out.values() for p in texts}
    if len(every) != sum(map(len, out.values())) or not set(sample_prompts(20_000, DESIGN_SEED)) <= every:
        raise RuntimeError("grammar changed: the enumeration no longer matches the world's sampler")
    return out


def training_strings() -> dict[str, set[str]]:
    """The prompt strings each trained model saw, by replaying bench/world/train.py's seeded streams (specs are
    drawn, then one render seed each; renders draw from their own seed, so they are skipped): the CLIP's 1500 x 64
    pairs and their hard negatives, and each UNet's pool of 16384 renders. (The VAE reads no prompts.)"""
    from bench.world import data
    from bench.world.scene import sample_spec, to_prompt
    from bench.world.train import DEFAULT_STEPS, SEEDS
    from bench.world.train import POOL as UNET_POOL

    def batch(rng: random.Random, n: int) -> list[Any]:
        specs = [sample_spec(rng) for _ in range(n)]
        for _ in specs:
            rng.getrandbits(32)
        return specs

    seen: dict[str, set[str]] = {}
    for name in ("draft", "heavy"):
        rng = random.Random(SEEDS[name])
        seen[name] = {to_prompt(s) for _ in range(UNET_POOL // 256) for s in batch(rng, 256)}
    rng, clip = random.Random(SEEDS["clip"]), set()
    steps, size = DEFAULT_STEPS["clip"]
    for _ in range(steps):
        specs = batch(rng, size)
        clip |= {to_prompt(s) for s in specs} | {to_prompt(data.perturb(s, rng)) for s in specs}
    seen["clip"] = clip
    return seen


def evaluation_rows(n_rows: int, strings: dict[str, list[str]]) -> list[Row]:
    """n_rows/6 rows per task; a task's strings shuffled and cycled; each task's rows split into two folds."""
    rng = random.Random(DESIGN_SEED)
    per_task, rows = n_rows // len(strings), []
    for task in sorted(strings):
        texts = list(strings[task])
        rng.shuffle(texts)
        folds = [k % 2 for k in range(per_task)]
        rng.shuffle(folds)
        rows += [Row(f"{task}-{j:04d}", texts[j % len(texts)], task, folds[j]) for j in range(per_task)]
    return rows


def strings_for(world: str = "v1", which: str = "unseen") -> dict[str, list[str]]:
    """The benchmark's prompt strings: v1, the whole grammar (every string seen in training); v2, its evaluation
    strings that no model saw (`unseen`) or its training pool (`seen`; bench/world/split.py)."""
    if world == "v1":
        return grammar()
    from bench.world import split

    return split.evaluation_strings() if which == "unseen" else split.training_strings()


def verify_rows(n_rows: int, count: int, strings: dict[str, list[str]] | None = None) -> list[Row]:
    """`count` rows of fold 0 (the rows the winner's fold-0 policy was reported on), taken across tasks in turn."""
    rows = [r for r in evaluation_rows(n_rows, strings or grammar()) if r.fold == 0]
    by_task: dict[str, list[Row]] = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r)
    turns = [r for k in range(len(rows)) for task in sorted(by_task) for r in by_task[task][k:k + 1]]
    return turns[:count]
