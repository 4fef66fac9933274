"""The exact oracle: parse a prompt's facts and check each one in the pixels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.world.scene import Group, Spec, get_grammar, parse, relation_holds

MIN_AREA = 50  # pixels; smaller colour blobs are noise, not objects (a rendered object has >= ~95)
MIN_IOU = 0.75  # overlap with the fitted ideal shape needed to call a blob that shape
MAX_RESIDUAL = 60.0  # RGB distance from the nearest white-to-colour blend; further pixels are no colour
MIN_BACKGROUND_RING = 0.6  # share of a blob's outline pixels that must be background
MAX_ASPECT = 1.35  # bounding boxes more elongated than this are not one object of the world
POSITION_GAP = 3.0  # pixels between centres for "left of" etc.


@dataclass(frozen=True)
class Blob:
    """One connected component of a single palette colour."""

    colour: str
    shape: str  # circle | square | triangle | diamond (v2) | unknown
    centre: tuple[float, float]  # x, y
    area: int


@dataclass(frozen=True)
class Fact:
    """One checkable statement of a prompt and whether the image satisfies it."""

    text: str
    category: str  # object | count | colour | position | colour_binding
    ok: bool


@dataclass(frozen=True)
class Verdict:
    """The oracle's judgement of one image against one prompt.

    `faithfulness` is the share of facts satisfied, `passed` whether all are (GenEval's per-prompt score),
    `task` the prompt's GenEval category, `per_category` the share satisfied per fact category.
    """

    faithfulness: float
    passed: bool
    task: str
    per_category: dict[str, float]
    facts: list[Fact] = field(repr=False)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labels of a boolean mask (0 = not in mask) by min-label propagation."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        pad = np.pad(labels, 1, constant_values=big)
        nxt = np.minimum.reduce([labels, pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
        nxt = np.where(mask, nxt, big)
        if np.array_equal(nxt, labels):
            break
        labels = nxt
    uniq, inverse = np.unique(np.where(mask, labels, 0), return_inverse=True)
    out = inverse.reshape(h, w)
    return out if uniq[0] == 0 else out + 1, len(uniq) - (1 if uniq[0] == 0 else 0)


def _shape(ys: np.ndarray, xs: np.ndarray, shapes: tuple[str, ...]) -> str:
    """Shape by geometry: the ideal shape of the grammar (square, circle, upright triangle, diamond) fitted to the
    blob's bounding box that overlaps it best, if it overlaps well (IoU >= MIN_IOU); amorphous or elongated blobs
    are "unknown"."""
    y0, x0 = ys.min(), xs.min()
    h, w = ys.max() - y0 + 1, xs.max() - x0 + 1
    if max(h, w) > MAX_ASPECT * min(h, w):
        return "unknown"
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    blob = np.zeros((h, w), dtype=bool)
    blob[ys - y0, xs - x0] = True
    u, v = (gx - w / 2) / (w / 2), gy / h  # u in [-1, 1] across, v in [0, 1] down
    templates = {"square": np.ones((h, w), dtype=bool), "circle": u**2 + ((v - 0.5) * 2) ** 2 <= 1,
                 "triangle": np.abs(u) <= v, "diamond": np.abs(u) + np.abs(v - 0.5) * 2 <= 1}
    ious = {k: (blob & t).sum() / (blob | t).sum() for k, t in templates.items() if k in shapes}
    best = max(ious, key=lambda k: ious[k])
    return best if ious[best] >= MIN_IOU else "unknown"


def _classify(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Per pixel: 0 background, k = the k-th palette colour, -1 neither.

    A pixel is read as a blend of white and one palette colour (anti-aliasing, blur): the colour whose line
    from white passes closest to it, if close (MAX_RESIDUAL) and at least half-way from white (else background).
    """
    offset = image.astype(np.float32) - palette[0]  # from white
    dirs = palette[1:] - palette[0]  # colours x 3
    alpha = np.clip(offset @ dirs.T / (dirs**2).sum(-1), 0.0, 1.0)  # H x W x colours
    residual = np.linalg.norm(offset[:, :, None, :] - alpha[..., None] * dirs, axis=-1)
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    labels = np.where(best_alpha >= 0.5, best + 1, 0)
    return np.where(residual.min(-1) <= MAX_RESIDUAL, labels, -1)


def blobs(image: np.ndarray, grammar: str = "v1") -> list[Blob]:
    """The coloured objects in an RGB uint8 image (connected pixels of one colour of the grammar's palette)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    gr = get_grammar(grammar)
    nearest = _classify(image, np.array([(255, 255, 255), *gr.colours.values()], dtype=np.float32))
    found = []
    background = nearest == 0
    for k, name in enumerate(gr.colours, start=1):
        labels, n = _components(nearest == k)
        for i in range(1, n + 1):
            mask = labels == i
            ys, xs = np.nonzero(mask)
            if len(ys) < MIN_AREA:
                continue
            pad = np.pad(mask, 1)
            ring = (pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]) & ~mask
            # an object of the world sits on the plain background; a patch of a colour field does not
            shape = _shape(ys, xs, gr.shapes) if background[ring].mean() >= MIN_BACKGROUND_RING else "unknown"
            centre = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
            found.append(Blob(name, shape, centre, len(ys)))
    return found


def _matches(b: Blob, g: Group) -> bool:
    return b.shape == g.shape and (g.colour is None or b.colour == g.colour)


def facts(spec: Spec, found: list[Blob]) -> list[Fact]:
    """Each fact of `spec` checked against the objects found."""
    out = []
    binding = len(spec.groups) > 1
    for g in spec.groups:
        out.append(Fact(f"there is a {g.shape}", "object", any(b.shape == g.shape for b in found)))
        if g.count > 1:
            n = sum(_matches(b, g) for b in found)
            what = f"{g.colour} {g.shape}s" if g.colour else f"{g.shape}s"
            out.append(Fact(f"exactly {g.count} {what}", "count", n == g.count))
        elif g.colour:
            out.append(Fact(f"the {g.shape} is {g.colour}", "colour_binding" if binding else "colour",
                            any(_matches(b, g) for b in found)))
    if spec.relation:
        a, b = spec.groups
        ok = any(relation_holds(spec.relation, x.centre, y.centre, POSITION_GAP)
                 for x in found if _matches(x, a) for y in found if _matches(y, b) and y is not x)
        out.append(Fact(f"{a.shape} {spec.relation} {b.shape}", "position", ok))
    return out


def oracle(prompt: str, image: np.ndarray, grammar: str = "v1") -> Verdict:
    """Judge an RGB uint8 image (any size; the world renders 64 x 64) against a prompt of the world, reading
    colours and shapes of the named grammar ("v1" or "v2").

    Raises:
        ValueError: the prompt is not in the grammar, or the image is not HxWx3.
    """
    spec = parse(prompt, grammar)
    checked = facts(spec, blobs(np.asarray(image), grammar))
    per: dict[str, list[bool]] = {}
    for f in checked:
        per.setdefault(f.category, []).append(f.ok)
    n_ok = sum(f.ok for f in checked)
    return Verdict(faithfulness=n_ok / len(checked), passed=n_ok == len(checked), task=spec.task,
                   per_category={k: sum(v) / len(v) for k, v in per.items()}, facts=checked)
