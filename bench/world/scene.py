"""The procedural shapes world: vocabulary, prompt sampler and parser, and a seeded renderer.

Two grammars: "v1" (4 colours, 3 shapes, counts to 3: 651 strings; what bench/world/models was trained on) and
"v2" (6 colours, 4 shapes, counts to 4: 2,692 strings; bench/world/models_v2, with evaluation strings no model saw,
see bench/world/split.py). Functions take `grammar="v1"` by default, so v1 code reads exactly as before.
"""

from __future__ import annotations

import functools
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
RADII = {"diamond": (9, 11)}  # v2's diamond is drawn larger: a small one, blurred, reads as a circle
RELATION_GAP = 8  # rendered "left of" etc. keep at least this many pixels between centres on that axis
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Grammar:
    """A vocabulary of the world: palette (name -> RGB; each a distinct direction from white, as the oracle reads
    colours), shapes, relations and the counts the counting task asks for."""

    name: str
    palette: tuple[tuple[str, tuple[int, int, int]], ...]
    shapes: tuple[str, ...]
    relations: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def colours(self) -> dict[str, tuple[int, int, int]]:
        """The palette as a dict, in order."""
        return dict(self.palette)

    @property
    def words(self) -> tuple[str, ...]:
        """Every word a prompt of this grammar can use."""
        return ("a", "and", *(COUNT_WORDS[n] for n in self.counts), "of", "left", "right", "above", "below",
                *self.colours, *self.shapes, *(s + "s" for s in self.shapes))


GRAMMARS = {
    "v1": Grammar("v1", tuple(COLOURS.items()), SHAPES, RELATIONS, (2, 3)),
    # v2: + purple and cyan (>= 27 degrees from every other colour's direction from white; v1's closest pair,
    # red and yellow, is 32), + diamond (a square on its tip: IoU <= 0.65 with the other shapes' templates),
    # counts to four
    "v2": Grammar("v2", (*COLOURS.items(), ("purple", (200, 50, 210)), ("cyan", (20, 200, 220))),
                  (*SHAPES, "diamond"), RELATIONS, (2, 3, 4)),
}


def get_grammar(grammar: str) -> Grammar:
    """The named grammar ("v1" or "v2").

    Raises:
        ValueError: an unknown name.
    """
    if grammar not in GRAMMARS:
        raise ValueError(f"unknown grammar {grammar!r}: use one of {', '.join(GRAMMARS)}")
    return GRAMMARS[grammar]


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
    grammar: str = "v1"  # the vocabulary its words come from (palette and shapes when rendered or judged)


def _phrase(g: Group) -> str:
    count = COUNT_WORDS[g.count]
    noun = g.shape + ("s" if g.count > 1 else "")
    return " ".join(w for w in (count, g.colour, noun) if w)


def to_prompt(spec: Spec) -> str:
    """The prompt text for a spec (inverse of `parse`)."""
    if spec.relation:
        return f"{_phrase(spec.groups[0])} {spec.relation} {_phrase(spec.groups[1])}"
    return " and ".join(_phrase(g) for g in spec.groups)


def sample_spec(rng: random.Random, grammar: str = "v1") -> Spec:
    """One spec: a task uniformly, then its words uniformly (v1 draws exactly as it always has)."""
    gr = get_grammar(grammar)
    task = rng.choice(TASKS)
    colour, shape = lambda: rng.choice(list(gr.colours)), lambda: rng.choice(gr.shapes)
    if task == "single_object":
        return Spec(task, (Group(1, None, shape()),), grammar=grammar)
    if task == "colors":
        return Spec(task, (Group(1, colour(), shape()),), grammar=grammar)
    if task == "counting":
        return Spec(task, (Group(rng.choice(gr.counts), colour() if rng.random() < 0.5 else None, shape()),),
                    grammar=grammar)
    s1, s2 = rng.sample(gr.shapes, 2)
    if task == "two_object":
        return Spec(task, (Group(1, None, s1), Group(1, None, s2)), grammar=grammar)
    if task == "color_attr":
        c1, c2 = rng.sample(list(gr.colours), 2)
        return Spec(task, (Group(1, c1, s1), Group(1, c2, s2)), grammar=grammar)
    # position: two coloured objects; same shape allowed when the colours differ
    a, b = (colour(), shape()), (colour(), shape())
    while a == b:
        b = (colour(), shape())
    return Spec(task, (Group(1, *a), Group(1, *b)), rng.choice(gr.relations), grammar)


def sample_prompts(n: int, seed: int, grammar: str = "v1") -> list[str]:
    """`n` prompts drawn with `seed` (the same seed always gives the same list)."""
    rng = random.Random(seed)
    return [to_prompt(sample_spec(rng, grammar)) for _ in range(n)]


@functools.cache
def _pattern(grammar: str) -> re.Pattern[str]:
    gr = get_grammar(grammar)
    numbers = "|".join(COUNT_WORDS[n] for n in (1, *gr.counts))
    group = rf"({numbers}) (?:({'|'.join(gr.colours)}) )?({'|'.join(gr.shapes)})s?"
    return re.compile(rf"^{group}(?: (and|{'|'.join(gr.relations)}) {group})?$")


def parse(prompt: str, grammar: str = "v1") -> Spec:
    """The spec a prompt of this world states (in the named grammar).

    Raises:
        ValueError: the prompt is not in the grammar.
    """
    m = _pattern(grammar).match(" ".join(prompt.lower().split()))
    if m is None:
        suffix = "" if grammar == "v1" else f" ({grammar} grammar)"
        raise ValueError(f"not a prompt of the shapes world{suffix}: {prompt!r}")
    n1, c1, s1, joiner, n2, c2, s2 = m.groups()
    numbers = {w: n for n, w in COUNT_WORDS.items()}
    groups = [Group(numbers[n1], c1, s1)]
    if joiner:
        groups.append(Group(numbers[n2], c2, s2))
    relation = joiner if joiner and joiner != "and" else None
    if len(groups) == 1:
        g = groups[0]
        task = "counting" if g.count > 1 else "colors" if g.colour else "single_object"
    else:
        task = "position" if relation else "color_attr" if all(g.colour for g in groups) else "two_object"
    return Spec(task, tuple(groups), relation, grammar)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], gap: float) -> bool:
    """Whether centre `a` (x, y; y down) is `relation` centre `b` by at least `gap` pixels."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {"left of": dx >= gap, "right of": -dx >= gap, "above": dy >= gap, "below": -dy >= gap}[relation]


def _draw(canvas: np.ndarray, shape: str, rgb: tuple[int, int, int], cx: float, cy: float, r: float) -> None:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    elif shape == "square":
        s = r * 0.9  # roughly the circle's area
        inside = (np.abs(xs - cx) <= s) & (np.abs(ys - cy) <= s)
    elif shape == "diamond":  # a square on its tip, corners on the box's edges (the triangle's area)
        inside = np.abs(xs - cx) + np.abs(ys - cy) <= r
    else:  # upright triangle in the box [cx - r, cx + r] x [cy - r, cy + r]
        t = (ys - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= r * t)
    canvas[inside] = rgb


def render_spec(spec: Spec, seed: int) -> np.ndarray:
    """A ground-truth image (SIZE x SIZE x 3 uint8) of `spec`; unstated colours are drawn at random (from the
    spec's grammar's palette)."""
    rng = random.Random(seed)
    palette = get_grammar(spec.grammar).colours
    objects = [(g.colour or rng.choice(list(palette)), g.shape) for g in spec.groups for _ in range(g.count)]
    for _ in range(1000):
        placed: list[tuple[float, float, float]] = []
        for _colour, shape in objects:
            for _try in range(100):
                r = rng.uniform(*RADII.get(shape, (MIN_RADIUS, MAX_RADIUS)))
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
        _draw(canvas, shape, palette[colour], cx, cy, r)
    return canvas


def render(prompt: str, seed: int, grammar: str = "v1") -> np.ndarray:
    """A ground-truth image of `prompt` (any prompt `parse` accepts), reproducible from `seed`."""
    return render_spec(parse(prompt, grammar), seed)
