"""Training data for the world's models, rendered on the fly: (image, prompt) batches and hard negatives."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

import numpy as np

from bench.world.scene import Spec, get_grammar, render_spec, sample_spec, to_prompt

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def batch(rng: random.Random, n: int,
          sample: Callable[[random.Random], Spec] = sample_spec) -> tuple[list[Spec], np.ndarray]:
    """`n` random specs (from `sample`: v1's whole grammar by default; v2 training uses the training pool,
    bench/world/split.sample_training_spec) and their renders (n x 64 x 64 x 3 uint8)."""
    specs = [sample(rng) for _ in range(n)]
    return specs, np.stack([render_spec(s, rng.getrandbits(32)) for s in specs])


def to_unit(images: np.ndarray) -> Any:
    """uint8 NHWC → float tensor NCHW in [-1, 1] (the VAE's range)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _variants(spec: Spec) -> list[Spec]:
    """Every spec that differs from `spec` in one stated fact (words from the spec's grammar)."""
    out = []
    gr = get_grammar(spec.grammar)
    for gi, g in enumerate(spec.groups):
        news = [replace(g, shape=x) for x in gr.shapes if x != g.shape]
        if g.colour:
            news += [replace(g, colour=c) for c in gr.colours if c != g.colour]
        if len(spec.groups) == 1:
            news += [replace(g, count=c) for c in gr.counts if c != g.count]  # "a square" holds for two
        out += [replace(spec, groups=tuple(n if i == gi else x for i, x in enumerate(spec.groups))) for n in news]
    if spec.relation:
        out.append(replace(spec, relation=OPPOSITE[spec.relation]))  # "above" may hold beside "left of"
        out.append(replace(spec, groups=spec.groups[::-1]))
    elif len(spec.groups) == 2 and all(g.colour for g in spec.groups):
        a, b = spec.groups
        out.append(replace(spec, groups=(replace(a, colour=b.colour), replace(b, colour=a.colour))))
    return [v for v in out if to_prompt(v) != to_prompt(spec) and (len(v.groups) == 1 or v.groups[0] != v.groups[1])]


def perturb(spec: Spec, rng: random.Random, allowed: Collection[str] | None = None) -> Spec:
    """A spec that differs from `spec` in one stated fact (a hard negative for contrastive training); with
    `allowed`, only a variant whose string is in it (v2: the training pool), else `spec` itself when none is."""
    if allowed is None:
        return rng.choice(_variants(spec))
    options = [v for v in _variants(spec) if to_prompt(v) in allowed]
    return rng.choice(options) if options else spec


def augment(images: Any, gen: Any) -> Any:
    """Blur, noise and colour jitter on [-1, 1] NCHW images, so the scorer also reads imperfect renders."""
    import torch
    import torch.nn.functional as F

    n = images.shape[0]
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=gen)
    out = images + (blur - images) * mix
    out = out + torch.randn(out.shape, generator=gen) * 0.08 * torch.rand(n, 1, 1, 1, generator=gen)
    out = out * (1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5))
    return out.clamp(-1, 1)
