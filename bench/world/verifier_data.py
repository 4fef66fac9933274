"""The world verifier's data: the grammar's strings split into verifier-training and held-out strings, the world's
fact statements (aligned with the oracle's facts), and oracle-labelled images — draft and heavy generations and
perturbed ground-truth renders of training strings — plus the evaluation drafts (held-out and training strings)
with world CLIP's scores. Everything is seeded; made images are cached under a work folder.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.world import data
from bench.world.oracle import blobs, facts
from bench.world.scene import Group, Spec, parse, render_spec, to_prompt

SPLIT_SEED = 515_151  # shuffles each task's strings before the held-out share is taken
DATA_SEED = 525_252  # strings, seeds and perturbations of the training images
EVAL_SEED = 535_353  # seeds of the evaluation drafts (no training image uses this stream)
HELD_OUT_SHARE = 0.2  # of each task's strings; at least one per task
EVAL_ROWS, EVAL_CANDIDATES = 4, 4  # evaluation rows per string, drafts per row (bench/quality.py's POOL)
EVAL_TASK_ROWS = 64  # at least this many rows per task: a task of few strings gets more rows of each
BATCH = 64  # images per pipeline call
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}  # four: the v2 grammar


def split(grammar: str = "v1") -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training strings, held-out strings) by GenEval task: round(HELD_OUT_SHARE x n) of each task's strings held
    out, at least one (single_object 1 of 3, two_object 1 of 6, colors 2 of 12, counting 6 of 30, color_attr 14 of
    72, position 106 of 528). "v2": the v2 grammar's fixed split (bench/world/split.py: the training pool every
    v2 model was trained on, and the evaluation strings none saw)."""
    if grammar == "v2":
        from bench.world import split as v2

        return v2.training_strings(), v2.evaluation_strings()
    from bench.quality_design import grammar as v1_grammar

    rng = random.Random(SPLIT_SEED)
    train, held = {}, {}
    for task, strings in sorted(v1_grammar().items()):
        order = sorted(strings)
        rng.shuffle(order)
        k = max(1, round(HELD_OUT_SHARE * len(order)))
        held[task], train[task] = sorted(order[:k]), sorted(order[k:])
    return train, held


def _phrase(g: Group) -> str:
    noun = g.shape + ("s" if g.count > 1 else "")
    return " ".join(w for w in ("a" if g.count == 1 else NUMBER_WORDS[g.count], g.colour, noun) if w)


def statements(spec: Spec) -> list[str]:
    """The world's facts of `spec` as statements, in the oracle's order (bench/world/oracle.facts): each group's
    object, then its count or colour; then the position. Unlike the oracle's short labels, a position statement
    names both objects' colours ("a red circle is left of a blue circle"), so no two differing facts read alike."""
    out = []
    for g in spec.groups:
        out.append(f"there is a {g.shape}")
        if g.count > 1:
            out.append(f"there are exactly {_phrase(g)}")
        elif g.colour:
            out.append(f"there is a {g.colour} {g.shape}")
    if spec.relation:
        a, b = spec.groups
        out.append(f"{_phrase(a)} is {spec.relation} {_phrase(b)}")
    return out


def world_facts(prompt: str, grammar: str = "v1") -> list[str]:
    """The fact statements of a prompt of the world (what a `facts` column holds for it)."""
    return statements(parse(prompt, grammar))


def labels(image: np.ndarray, specs: list[Spec]) -> list[list[tuple[str, bool]]]:
    """Each spec's (statement, holds) in one image, by the oracle (its objects found once, in the specs'
    grammar's palette and shapes)."""
    found = blobs(np.asarray(image), specs[0].grammar if specs else "v1")
    out = []
    for spec in specs:
        checked = facts(spec, found)
        said = statements(spec)
        if len(said) != len(checked):
            raise RuntimeError(f"statements of {to_prompt(spec)!r} no longer match the oracle's facts")
        out.append([(s, f.ok) for s, f in zip(said, checked, strict=True)])
    return out


def generate(folder: Path, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """Images (n x 64 x 64 x 3 uint8) from a pipeline folder at its recorded sampling settings, BATCH a call."""
    import torch
    from diffusers import AutoPipelineForText2Image

    sampling = json.loads((folder / "sampling.json").read_text())
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i in range(0, len(prompts), BATCH):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + BATCH]]
        with torch.inference_mode():
            out = pipe(prompt=prompts[i:i + BATCH], generator=gens, output_type="np", **sampling).images
        images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def _strings(rng: random.Random, by_task: dict[str, list[str]], n: int) -> list[str]:
    """n strings: a task uniformly (the benchmark's rows are task-balanced), then one of its strings."""
    tasks = sorted(by_task)
    return [rng.choice(by_task[rng.choice(tasks)]) for _ in range(n)]


def _variant(spec: Spec, rng: random.Random, allowed: set[str]) -> Spec | None:
    """A one-fact variant of `spec` whose string is allowed (a training string), or None."""
    options = [v for v in data._variants(spec) if to_prompt(v) in allowed]
    return rng.choice(options) if options else None


def _perturbed_render(spec: Spec, rng: random.Random, allowed: set[str]) -> np.ndarray:
    """A ground-truth render of the spec or of a one-fact variant (so facts fail for real), blurred, noised and
    colour-jittered, sometimes with an object smudged: crisp and damaged images the oracle labels exactly."""
    import torch

    shown = _variant(spec, rng, allowed) if rng.random() < 0.5 else spec
    image = render_spec(shown or spec, rng.getrandbits(32))
    gen = torch.Generator().manual_seed(rng.getrandbits(32))
    out = data.augment(data.to_unit(image[None]), gen)
    if rng.random() < 0.3:  # a soft blob of background over part of the image: shapes lose their outline
        y, x, r = rng.uniform(8, 56), rng.uniform(8, 56), rng.uniform(3, 8)
        ys, xs = np.mgrid[0:64, 0:64]
        mask = torch.from_numpy(((ys - y) ** 2 + (xs - x) ** 2 <= r * r).astype(np.float32))
        out = out * (1 - mask) + mask
    return ((out[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def training_set(work: Path, drafts: int, heavies: int, renders: int, extra_drafts: int = 0,
                 log: Any = print, grammar: str = "v1") -> dict[str, Any]:
    """Oracle-labelled training images of the training strings, cached in `work` by their counts: `drafts` draft
    and `heavies` heavy generations (a task uniformly, a string, a seed), `renders` perturbed renders; each image
    labelled on its own string's facts and on a one-fact variant's (another training string) when there is one.
    `extra_drafts` more drafts come from a stream of their own (DATA_SEED + 1), so adding them keeps the rest.
    `grammar` "v2": the v2 models (models_v2) on the v2 training pool, cached in `work`/v2."""
    work = work / grammar if grammar != "v1" else work
    out = _made(work / f"train-{drafts}-{heavies}-{renders}.npz", DATA_SEED, drafts, heavies, renders, log, grammar)
    if extra_drafts:
        more = _made(work / f"train-extra-{extra_drafts}.npz", DATA_SEED + 1, extra_drafts, 0, 0, log, grammar)
        more["fact_image"] = more["fact_image"] + len(out["images"])
        out = {k: np.concatenate([out[k], more[k]]) for k in out}
    return out


def _made(path: Path, seed: int, drafts: int, heavies: int, renders: int, log: Any, grammar: str
          ) -> dict[str, Any]:
    from bench.world import models_for

    if path.exists():
        return _load(path)
    train, _ = split(grammar)
    models = models_for(grammar)
    allowed = {s for v in train.values() for s in v}
    rng = random.Random(seed)
    parts, kinds, prompts = [], [], []
    for kind, folder, n in (("draft", models / "draft", drafts), ("heavy", models / "heavy", heavies)):
        texts, seeds = _strings(rng, train, n), [rng.getrandbits(31) for _ in range(n)]
        started = time.process_time()
        parts.append(generate(folder, texts, seeds) if n else np.zeros((0, 64, 64, 3), np.uint8))
        log(f"verifier data: {n} {kind} images in {time.process_time() - started:.0f} CPU-s")
        kinds += [kind] * n
        prompts += texts
    texts = _strings(rng, train, renders)
    parts.append(np.stack([_perturbed_render(parse(t, grammar), rng, allowed) for t in texts]) if renders else
                 np.zeros((0, 64, 64, 3), np.uint8))
    kinds += ["render"] * renders
    prompts += texts
    images = np.concatenate(parts)
    started = time.process_time()
    rows: list[tuple[int, str, bool]] = []
    for i, (image, text) in enumerate(zip(images, prompts, strict=True)):
        spec = parse(text, grammar)
        specs = [spec] + [v for v in [_variant(spec, rng, allowed)] if v is not None]
        rows += [(i, s, ok) for labelled in labels(image, specs) for s, ok in labelled]
    log(f"verifier data: {len(rows)} fact labels on {len(images)} images in {time.process_time() - started:.0f} CPU-s")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"images": images, "kinds": np.array(kinds), "prompts": np.array(prompts),
           "fact_image": np.array([r[0] for r in rows], np.int64), "facts": np.array([r[1] for r in rows]),
           "holds": np.array([r[2] for r in rows], bool)}
    np.savez(path, **out)
    return out


def evaluation_set(work: Path, which: str, log: Any = print, grammar: str = "v1") -> dict[str, Any]:
    """Evaluation drafts of the `held_out` strings (all of them) or of as many `training` strings (drawn per task
    in the same numbers): EVAL_ROWS rows per string (more in a task of few strings: EVAL_TASK_ROWS a task at
    least) of EVAL_CANDIDATES drafts each, at seeds of their own stream; each draft's oracle faithfulness and world
    CLIP score (`grammar` "v2": the v2 split, models, CLIP and oracle, cached in `work`/v2)."""
    from bench.world import models_for
    from bench.world.evaluate import clip_scores
    from bench.world.oracle import oracle

    models = models_for(grammar)
    path = (work / grammar if grammar != "v1" else work) / f"eval-{which}-{EVAL_TASK_ROWS}.npz"
    if path.exists():
        return _load(path)
    train, held = split(grammar)
    rng = random.Random(EVAL_SEED + (0 if which == "held_out" else 1))
    chosen = held if which == "held_out" else {t: sorted(rng.sample(train[t], len(held[t]))) for t in sorted(held)}
    rows = {t: max(EVAL_ROWS, -(-EVAL_TASK_ROWS // len(chosen[t]))) for t in chosen}
    texts = [s for t in sorted(chosen) for s in chosen[t] for _ in range(rows[t] * EVAL_CANDIDATES)]
    seeds = [rng.getrandbits(31) for _ in texts]
    started = time.process_time()
    images = generate(models / "draft", texts, seeds)
    log(f"verifier eval ({which}): {len(texts)} drafts in {time.process_time() - started:.0f} CPU-s")
    faith = np.array([oracle(t, im, grammar).faithfulness for t, im in zip(texts, images, strict=True)])
    out = {"images": images, "prompts": np.array(texts), "tasks": np.array([parse(t, grammar).task for t in texts]),
           "seeds": np.array(seeds), "faithfulness": faith,
           "clip": clip_scores(texts, list(images), models / "clip")}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def _load(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}

