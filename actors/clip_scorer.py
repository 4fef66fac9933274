"""ClipScorer: prompt-image alignment with a transformers CLIPModel (100 x cosine, like CLIPScore)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np

from imagefleet.actors.generation import empty_lists
from imagefleet.actors.image_writer import decode_rgb
from imagefleet.configs.scorer import ClipScorerConfig, RuleScorerConfig

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
SCORER_OUTPUT_COLUMNS = {
    "clip_score": "prompt-image alignment of the generated image (NaN when not scored)",
    "image": "best-of-N rows: the best candidate",
    "seed": "best-of-N rows: the best candidate's seed",
    "image_mime": "best-of-N rows: the best candidate's content type",
    "width": "best-of-N rows: the best candidate's width",
    "height": "best-of-N rows: the best candidate's height",
    "candidates": "best-of-N rows: JSON list of every candidate's seed and score ('' otherwise)",
    "candidate_images": "best-of-N rows: emptied (the losers' pixels are dropped here)",
}
SCORER_OPTIONAL_COLUMNS = ("candidate_images", "candidate_seeds", "candidate_mimes", "candidate_sizes", "candidates",
                           "clip_score", "image_mime", "seed")
"""Read when present: best-of-N candidates (and the kept one's seed), and a cascade's earlier scores (a second
scorer keeps the drafts')."""
IMAGE_SCORER_INPUT_COLUMNS = {"image": "raw RGB pixels, or a provider's file", "image_mime": "'' = raw pixels",
                              "width": "pixels", "height": "pixels", "prompt": "text",
                              "status": "only `generated` rows are scored"}
"""What a scorer that looks at the image reads (best-of-N rows also bring their `candidate_*` columns)."""
ScoreFn = Any
"""score_fn(pixels: list of HxWx3 uint8 arrays, prompts: list[str]) -> list of scores (or of (score, detail text)
pairs: `score_batch`'s `detail`)."""


def score_rows(batch: Batch) -> list[int]:
    """The rows to score: `generated` ones not scored yet (a cascade's second scorer sees the drafts that stayed
    final with their scores, and scores only the heavy images, whose draft score the escalator moved away)."""
    scored = batch.get("clip_score")
    return [i for i, s in enumerate(batch["status"])
            if s == "generated" and (scored is None or math.isnan(float(scored[i])))]


def with_scores(batch: Batch, rows: list[int], scores: list[float]) -> Batch:
    out = dict(batch)
    # a later scoring pass (cascade: after escalation) overwrites only the rows it scored
    col = np.array(batch["clip_score"], dtype=np.float64) if "clip_score" in batch else np.full(
        len(batch["status"]), np.nan)
    for i, s in zip(rows, scores, strict=True):
        col[i] = s
    out["clip_score"] = col
    return out


def pixels_for_scoring(batch: Batch, i: int) -> np.ndarray | None:
    """Row i's image as RGB pixels; None (left unscored) for a provider's file that decodes no further than its
    header (raw pixels of the wrong size are a bug and raise)."""
    mime = str(batch["image_mime"][i]) if "image_mime" in batch else ""  # no column: raw pixels only
    width, height = int(batch["width"][i]), int(batch["height"][i])
    if not mime:
        return decode_rgb(batch["image"][i], mime, width, height)
    try:
        return decode_rgb(batch["image"][i], mime, width, height)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a truncated file; the row is unscored
        logger.warning("row %d: %s image could not be decoded for scoring: %s", i, mime, exc)
        return None


def score_batch(batch: Batch, score_fn: ScoreFn, texts: list[str] | None = None, detail: str = "") -> Batch:
    """Score every `generated` row with `score_fn`; a best-of-N row (one with `candidate_seeds`) scores each made
    candidate and keeps the best — a finite score beats a NaN one, ties go to the earliest — with its own seed,
    content type and size, recording every candidate's seed and score in `candidates`.

    Args:
        texts: what `score_fn` is given about each row instead of its prompt (the facts scorer's questions).
        detail: a column for what `score_fn` says about each score: it then returns (score, detail text) pairs,
            and a scored row's `detail` is its kept image's (rows not scored here keep theirs; '' when none).
    """
    # 1 what to score: each fresh image, or each candidate of a best-of-N row
    n = len(batch["status"])
    picked = "candidate_seeds" in batch
    about = texts if texts is not None else [str(p) for p in batch["prompt"]]
    items: list[tuple[int, int, np.ndarray]] = []
    for i in score_rows(batch):
        for k, view in enumerate(_candidates(batch, i) if picked and batch["candidate_seeds"][i] else [batch]):
            pixels = pixels_for_scoring(view, i if view is batch else 0)
            if pixels is not None:
                items.append((i, k, pixels))
    # 2 one scoring call for all of them
    scores = score_fn([p for _, _, p in items], [about[i] for i, _, _ in items]) if items else []
    by_row: dict[int, list[tuple[int, float]]] = {}
    said: dict[tuple[int, int], str] = {}
    for (i, k, _), answer in zip(items, scores, strict=True):
        score, said[i, k] = answer if detail else (answer, "")
        by_row.setdefault(i, []).append((k, float(score)))
    kept = {i: ranked[0] if not (picked and batch["candidate_seeds"][i]) else
            max(ranked, key=lambda ks: (math.isfinite(ks[1]), ks[1], -ks[0])) for i, ranked in by_row.items()}
    if detail:
        notes = np.array(batch[detail] if detail in batch else [""] * n, dtype=object)
        for i, (k, _) in kept.items():
            notes[i] = said[i, k]
        batch = {**batch, detail: notes}
    if not picked:
        return with_scores(batch, list(kept), [s for _, s in kept.values()])
    # 3 a best-of-N row keeps its best candidate
    out = dict(batch)
    candidates = np.array(batch["candidates"] if "candidates" in batch else [""] * n, dtype=object)
    for name in ("image", "image_mime", "seed", "width", "height"):
        out[name] = np.array(batch[name], dtype=object if name in ("image", "image_mime") else None)
    for i, ranked in by_row.items():
        if not batch["candidate_seeds"][i]:
            continue
        k = kept[i][0]
        seeds = str(batch["candidate_seeds"][i]).split(",")
        mimes = str(batch["candidate_mimes"][i]).split(",")
        width, height = str(batch["candidate_sizes"][i]).split(",")[k].split("x")
        out["image"][i], out["image_mime"][i], out["seed"][i] = batch["candidate_images"][i][k], mimes[k], int(seeds[k])
        out["width"][i], out["height"][i] = int(width), int(height)
        candidates[i] = json.dumps([{"seed": int(seeds[c]), "score": round(v, 6) if math.isfinite(v) else None}
                                    for c, v in sorted(ranked)])
    out = with_scores(out, list(kept), [s for _, s in kept.values()])
    out.update(candidates=candidates, candidate_images=empty_lists(n))  # the losers' pixels are dropped here
    return out


def _candidates(batch: Batch, i: int) -> list[Batch]:
    """Row i's candidates, each as a one-row view with its own image, content type and size."""
    mimes = str(batch["candidate_mimes"][i]).split(",")
    sizes = [s.split("x") for s in str(batch["candidate_sizes"][i]).split(",")]
    return [{"image": np.array([data], dtype=object), "image_mime": np.array([mimes[k]], dtype=object),
             "width": np.array([int(sizes[k][0])]), "height": np.array([int(sizes[k][1])])}
            for k, data in enumerate(batch["candidate_images"][i])]


class ClipScorer:
    """Scores `generated` rows; everything else passes through.

    Args:
        cfg: this scorer's config slice.
    """

    CONFIG = ClipScorerConfig
    INPUT_COLUMNS = IMAGE_SCORER_INPUT_COLUMNS
    OPTIONAL_COLUMNS = SCORER_OPTIONAL_COLUMNS
    OUTPUT_COLUMNS = SCORER_OUTPUT_COLUMNS

    @staticmethod
    def check_model(cfg: ClipScorerConfig) -> str:
        """Why the model can't be loaded, for a local folder, read on the driver before any work ('' = fine; hub
        ids are left to the actor)."""
        return local_model_problem(cfg.model, lambda model_type: model_type == "clip", "a CLIP model (clip)")

    def __init__(self, cfg: ClipScorerConfig) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        load: Any = CLIPModel.from_pretrained  # Any: heavy library type (its stubs reject a path here)
        self.model: Any = load(cfg.model).to(self.device).eval()
        self.processor: Any = CLIPProcessor.from_pretrained(cfg.model)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    def __call__(self, batch: Batch) -> Batch:
        return score_batch(batch, self._score)

    def _score(self, images: list[np.ndarray], prompts: list[str]) -> list[float]:
        # 1 tokenize prompts (truncated to the text encoder's context)
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_tokens).to(self.device)
        # 2 cosine similarity of the projected embeddings
        with self.torch.inference_mode():
            out = self.model(**inputs)
            img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
            txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
            cos = (img * txt).sum(dim=-1).clamp(min=0)
        # 3 CLIPScore scale
        return [float(100 * c) for c in cos.float().cpu()]


def local_model_problem(model: str, accepts: Any, expected: str) -> str:
    """'' when `model` is a hub id or a local folder whose config names an accepted model type; else one line
    saying what is wrong (missing folder, no config.json, another kind of model)."""
    from pathlib import Path

    if not model.startswith(("/", "./", "../", "~")):
        return ""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"scorer.model: local folder {model} does not exist"
    try:
        from transformers import AutoConfig

        model_type = str(AutoConfig.from_pretrained(str(folder)).model_type)
    except Exception as exc:  # noqa: BLE001 - transformers raises several kinds for a folder it can't read
        return f"scorer.model: {model} is not a transformers model folder ({str(exc).splitlines()[0][:160]})"
    if not accepts(model_type):
        return f"scorer.model: {model} is a {model_type!r} model; the scorer needs {expected}"
    return ""


class RuleScorer:
    """Deterministic stand-in scorer for tests and benchmarks (no model): high if the prompt has a marker.

    Args:
        cfg: this scorer's config slice.
    """

    CONFIG = RuleScorerConfig
    INPUT_COLUMNS = IMAGE_SCORER_INPUT_COLUMNS  # it decodes images like the others (and scores their brightness)
    OPTIONAL_COLUMNS = SCORER_OPTIONAL_COLUMNS
    OUTPUT_COLUMNS = SCORER_OUTPUT_COLUMNS

    @staticmethod
    def check_model(cfg: RuleScorerConfig) -> str:
        """No model."""
        return ""

    def __init__(self, cfg: RuleScorerConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        return score_batch(batch, self._score)

    def _score(self, images: list[np.ndarray], prompts: list[str]) -> list[float]:
        if self.cfg.by == "brightness":
            return [float(im.mean()) / 255 for im in images]
        return [self.cfg.high if self.cfg.marker in p else self.cfg.low for p in prompts]
