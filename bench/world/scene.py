"""The procedural shapes world: vocabulary, prompt sampler and parser, and a seeded renderer."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

SIZE = 64  # image side in pixels
BACKGROUND = (255, 255, 255)
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {"a": 1, "two": 2, "three": 3}
# GenEval's task categories; every prompt belongs to exactly one
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
WORDS = ("a", "and", "two", "three", "of", "left", "right", "above", "below", *COLOURS,
         *SHAPES, *(s + "s" for s in SHAPES))
MIN_RADIUS, MAX_RADIUS = 7, 10  # half the side of an object's bounding box
RELATION_GAP = 8  # rendered "left of" etc. keep at least this many pixels between centres on that axis


@dataclass(frozen=True)
class Group:
    """`count` objects of one shape, all of `colour` when given."""

    count: int
    colour: str | None
    shape: str


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for: one or two groups, and a relation of the first to the second."""

    task: str
    groups: tuple[Group, ...]
    relation: str | None = None


def _phrase(g: Group) -> str:
    count = {1: "a", 2: "two", 3: "three"}[g.count]
    noun = g.shape + ("s" if g.count > 1 else "")
    return " ".join(w for w in (count, g.colour, noun) if w)


def to_prompt(spec: Spec) -> str:
    """The prompt text for a spec (inverse of `parse`)."""
    if spec.relation:
        return f"{_phrase(spec.groups[0])} {spec.relation} {_phrase(spec.groups[1])}"
    return " and ".join(_phrase(g) for g in spec.groups)


def sample_spec(rng: random.Random) -> Spec:
    """One spec: a task uniformly, then its words uniformly."""
    task = rng.choice(TASKS)
    colour, shape = lambda: rng.choice(list(COLOURS)), lambda: rng.choice(SHAPES)
    if task == "single_object":
        return Spec(task, (Group(1, None, shape()),))
    if task == "colors":
        return Spec(task, (Group(1, colour(), shape()),))
    if task == "counting":
        return Spec(task, (Group(rng.choice((2, 3)), colour() if rng.random() < 0.5 else None, shape()),))
    s1, s2 = rng.sample(SHAPES, 2)
    if task == "two_object":
        return Spec(task, (Group(1, None, s1), Group(1, None, s2)))
    if task == "color_attr":
        c1, c2 = rng.sample(list(COLOURS), 2)
        return Spec(task, (Group(1, c1, s1), Group(1, c2, s2)))
    # position: two coloured objects; same shape allowed when the colours differ
    a, b = (colour(), shape()), (colour(), shape())
    while a == b:
        b = (colour(), shape())
    return Spec(task, (Group(1, *a), Group(1, *b)), rng.choice(RELATIONS))


def sample_prompts(n: int, seed: int) -> list[str]:
    """`n` prompts drawn with `seed` (the same seed always gives the same list)."""
    rng = random.Random(seed)
    return [to_prompt(sample_spec(rng)) for _ in range(n)]


_GROUP = (r"(a|two|three) (?:(" + "|".join(COLOURS) + r") )?(" + "|".join(SHAPES) + r")s?")
_PROMPT = re.compile(rf"^{_GROUP}(?: (and|{'|'.join(RELATIONS)}) {_GROUP})?$")


def parse(prompt: str) -> Spec:
    """The spec a prompt of this world states.

    Raises:
        ValueError: the prompt is not in the world's grammar.
    """
    m = _PROMPT.match(" ".join(prompt.lower().split()))
    if m is None:
        raise ValueError(f"not a prompt of the shapes world: {prompt!r}")
    n1, c1, s1, joiner, n2, c2, s2 = m.groups()
    groups = [Group(NUMBERS[n1], c1, s1)]
    if joiner:
        groups.append(Group(NUMBERS[n2], c2, s2))
    relation = joiner if joiner and joiner != "and" else None
    if len(groups) == 1:
        g = groups[0]
        task = "counting" if g.count > 1 else "colors" if g.colour else "single_object"
    else:
        task = "position" if relation else "color_attr" if all(g.colour for g in groups) else "two_object"
    return Spec(task, tuple(groups), relation)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], gap: float) -> bool:
    """Whether centre `a` (x, y; y down) is `relation` centre `b` by at least `gap` pixels."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {"left of": dx >= gap, "right of": -dx >= gap, "above": dy >= gap, "below": -dy >= gap}[relation]


def _draw(canvas: np.ndarray, shape: str, colour: str, cx: float, cy: float, r: float) -> None:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    elif shape == "square":
        s = r * 0.9  # roughly the circle's area
        inside = (np.abs(xs - cx) <= s) & (np.abs(ys - cy) <= s)
    else:  # upright triangle in the box [cx - r, cx + r] x [cy - r, cy + r]
        t = (ys - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= r * t)
    canvas[inside] = COLOURS[colour]


def render_spec(spec: Spec, seed: int) -> np.ndarray:
    """A ground-truth image (SIZE x SIZE x 3 uint8) of `spec`; unstated colours are drawn at random."""
    rng = random.Random(seed)
    objects = [(g.colour or rng.choice(list(COLOURS)), g.shape) for g in spec.groups for _ in range(g.count)]
    for _ in range(1000):
        placed: list[tuple[float, float, float]] = []
        for _obj in objects:
            for _try in range(100):
                r = rng.uniform(MIN_RADIUS, MAX_RADIUS)
                cx, cy = rng.uniform(r + 1, SIZE - r - 1), rng.uniform(r + 1, SIZE - r - 1)
                if all(max(abs(cx - x), abs(cy - y)) > r + q + 3 for x, y, q in placed):
                    placed.append((cx, cy, r))
                    break
        if len(placed) == len(objects) and (spec.relation is None or relation_holds(
                spec.relation, placed[0][:2], placed[1][:2], RELATION_GAP)):
            break
    else:
        raise RuntimeError(f"could not place {spec}")
    canvas = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for (colour, shape), (cx, cy, r) in zip(objects, placed, strict=True):
        _draw(canvas, shape, colour, cx, cy, r)
    return canvas


def render(prompt: str, seed: int) -> np.ndarray:
    """A ground-truth image of `prompt` (any prompt `parse` accepts), reproducible from `seed`."""
    return render_spec(parse(prompt), seed)
