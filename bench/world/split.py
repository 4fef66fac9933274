"""The v2 grammar's fixed, seeded split: EVALUATION strings that no training stage renders or tokenizes as a caption
(clip, vae, draft, heavy; later the verifier), and the TRAINING pool, the rest.

    from bench.world.split import evaluation_strings, training_strings, sample_training_spec
    evaluation_strings()["position"]      # 442 strings no v2 model saw; dict[task, sorted list]
    spec = sample_training_spec(rng)      # a task uniformly, then one of its training strings uniformly

Per GenEval task, round(EVAL_SHARE x n) of its strings (at least one) are evaluation strings: single_object 1 of 4,
colors 5 of 24, counting 17 of 84, two_object 2 of 12, color_attr 72 of 360, position 442 of 2,208 (539 of 2,692).
Both dicts have bench/quality_design.grammar()'s shape, so `evaluation_rows(n, evaluation_strings())` works as is.
"""

from __future__ import annotations

import functools
import random
from itertools import permutations

from bench.world.scene import TASKS, Group, Spec, get_grammar, parse, sample_prompts, to_prompt

GRAMMAR = "v2"
SPLIT_SEED = 616_161  # shuffles each task's strings before the evaluation share is taken; used for nothing else
EVAL_SHARE = 0.2


def enumerate_strings(grammar: str) -> dict[str, list[str]]:
    """Every prompt string a grammar makes, by GenEval task, in a fixed order (checked against the parser and the
    sampler, so a changed grammar fails here rather than miscounting)."""
    gr = get_grammar(grammar)
    cs, ss = list(gr.colours), list(gr.shapes)
    specs = [Spec("single_object", (Group(1, None, s),)) for s in ss]
    specs += [Spec("colors", (Group(1, c, s),)) for c in cs for s in ss]
    specs += [Spec("counting", (Group(n, c, s),)) for n in gr.counts for c in (None, *cs) for s in ss]
    specs += [Spec("two_object", (Group(1, None, a), Group(1, None, b))) for a, b in permutations(ss, 2)]
    specs += [Spec("color_attr", (Group(1, c, a), Group(1, d, b))) for a, b in permutations(ss, 2)
              for c, d in permutations(cs, 2)]
    objects = [(c, s) for c in cs for s in ss]
    specs += [Spec("position", (Group(1, *a), Group(1, *b)), r) for a, b in permutations(objects, 2)
              for r in gr.relations]
    out: dict[str, list[str]] = {t: [] for t in TASKS}
    for spec in specs:
        text = to_prompt(spec)
        if parse(text, grammar).task != spec.task:
            raise RuntimeError(f"grammar changed: {text!r} parses as {parse(text, grammar).task}, not {spec.task}")
        out[spec.task].append(text)
    every = {p for texts in out.values() for p in texts}
    if len(every) != sum(map(len, out.values())) or not set(sample_prompts(20_000, SPLIT_SEED, grammar)) <= every:
        raise RuntimeError("grammar changed: the enumeration no longer matches the world's sampler")
    return out


@functools.cache
def _split() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    rng = random.Random(SPLIT_SEED)
    train, held = {}, {}
    for task, strings in enumerate_strings(GRAMMAR).items():
        order = sorted(strings)
        rng.shuffle(order)
        k = max(1, round(EVAL_SHARE * len(order)))
        held[task], train[task] = sorted(order[:k]), sorted(order[k:])
    return train, held


def evaluation_strings() -> dict[str, list[str]]:
    """The v2 strings kept out of every training stage, by task (sorted)."""
    return {t: list(v) for t, v in _split()[1].items()}


def training_strings() -> dict[str, list[str]]:
    """The v2 training pool (every other v2 string), by task (sorted)."""
    return {t: list(v) for t, v in _split()[0].items()}


@functools.cache
def _training_specs() -> dict[str, tuple[Spec, ...]]:
    return {t: tuple(parse(p, GRAMMAR) for p in v) for t, v in _split()[0].items()}


def sample_training_spec(rng: random.Random) -> Spec:
    """A v2 training spec: a GenEval task uniformly, then one of its training strings uniformly."""
    specs = _training_specs()
    return rng.choice(specs[rng.choice(TASKS)])


def is_evaluation(prompt: str) -> bool:
    """Whether a prompt string is one of the v2 evaluation strings."""
    held = _split()[1]
    return any(prompt in v for v in held.values())
