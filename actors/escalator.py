"""Escalator (CPU, one actor): the cascade's decision — re-queue low-scoring drafts for the heavy generator."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from imagefleet.actors.backend_io import parse_adapter_list
from imagefleet.actors.facts_scorer import FACTS
from imagefleet.actors.gain_model import PREDICTED
from imagefleet.actors.keys import adapters_text, key_of
from imagefleet.configs.generator_base import STRENGTH_TASKS
from imagefleet.configs.prep import GeneratorIdentity
from imagefleet.configs.request import HEAVY_SETTINGS, SHAPE_SETTINGS, numpy_dtype
from imagefleet.configs.routing import CascadeConfig
from imagefleet.configs.source import variant_size

Batch = dict[str, np.ndarray]
DRAFT_SETTINGS = {f"draft_{s}": np.dtype(numpy_dtype(s)) for s in SHAPE_SETTINGS}
ESCALATED = "escalated"
"""The route of a row sent to the heavy generator (and of one that ends as its heavy image)."""
DRAFT_ROW = ("model", "model_version", "strength", "adapters", *(s for s in HEAVY_SETTINGS if s not in SHAPE_SETTINGS))
"""What an escalation replaces that no `draft_*` column keeps (the negative prompt, and any other heavy setting):
held in `draft_row` (JSON) when the row may still end as its draft (`keep_better`)."""


def escalation_count(cfg: CascadeConfig, heavy_usd: float, num_scored: int) -> int | None:
    """How many of `num_scored` scored drafts a relative policy escalates; None for an absolute threshold.

    escalate_fraction f: ceil(f x drafts). escalate_budget_usd B: floor(B / heavy price) (all of them when the
    budget buys that many). `max_escalations` caps either."""
    if cfg.escalate_fraction is not None:
        count = math.ceil(cfg.escalate_fraction * num_scored - 1e-9)
    elif cfg.escalate_budget_usd is not None:
        count = math.floor(cfg.escalate_budget_usd / heavy_usd + 1e-9) if heavy_usd > 0 else num_scored
    else:
        return None
    count = min(count, num_scored)
    return min(count, cfg.max_escalations) if cfg.max_escalations else count


Cutoff = tuple[float, str]
"""(score, image key) of the last draft a relative policy escalates: drafts at or below it, in (score, key) order,
are the run's worst."""
NOTHING: Cutoff = (-math.inf, "")
"""A cutoff no scored draft is at or below."""


class Escalator:
    """Rows whose draft scored below the threshold become `pending` rows of the escalate generator.

    An escalated row is rendered the way the heavy generator renders: its defaults for every setting the input
    row did not set itself (`explicit`), so SDXL runs 30 steps at 1024 px rather than the draft's 1 step at
    512 px. Its key is computed from those settings. The draft's pixels, score, generator and settings move to
    `draft_*` columns (pixels kept if `keep_draft` or `keep_better`; with `keep_better` the rest of what the row
    was as a draft goes to `draft_row`, for BetterKeeper). A cap or a relative policy is decided over the whole run
    (`over_run`: the lowest-scoring drafts, ranked by score and key), so any number of actors apply it exactly.

    A relative policy (`escalate_fraction`, `escalate_budget_usd`) is decided over the whole run: the stage's
    `RUN_COLUMNS` of every row are read first (every earlier stage finishes; the pipeline holds the drafts), and
    `over_run` turns them into the `cutoff` this actor escalates at or below. An absolute threshold streams.

    Args:
        cfg: the cascade settings.
        heavy_name: the escalate generator's name.
        heavy: identity of the escalate generator (for its defaults and image keys).
        cutoff: a relative policy's cut (`over_run`, from every scored draft); unused by a threshold.
    """

    INPUT_COLUMNS = {
        "clip_score": "draft score",
        "status": "`generated` rows are candidates",
        "image": "the draft's pixels (or its provider's file)",
        "image_mime": "the draft's provider file type ('' = raw pixels)",
        "image_key": "the draft's key",
        "generator": "the draft's generator",
        "model": "the draft's model",
        "explicit": "settings the input row set (kept); the others take the heavy generator's defaults",
        "prompt": "for the heavy image's key",
        "seed": "kept: the heavy image uses the draft's seed",
        **{s: "the draft's; the heavy one's unless explicit" for s in HEAVY_SETTINGS},
    }
    OPTIONAL_COLUMNS = ("task", "input_sha256", "mask_sha256", "mask_uri", "strength", "adapters", "variant",
                        "model_version", FACTS, "route")
    """Read when present (image-conditioned rows, adapters): the heavy image's key is made from the same inputs;
    `route`: rows predictive routing sent straight to the heavy generator keep `predicted_heavy`."""
    OUTPUT_COLUMNS = {
        "route": "draft | escalated | predicted_heavy (kept from the preprocessor)",
        "draft_image": "pixels (or provider file) of the draft (escalated rows with keep_draft or keep_better)",
        "draft_image_mime": "content type of a provider file in `draft_image` ('' = raw pixels)",
        "draft_image_key": "key of the draft image",
        "draft_score": "score of the draft",
        "draft_generator": "generator that made the draft",
        "draft_row": "JSON: the draft's DRAFT_ROW values, and its facts where a facts scorer wrote them (keep_better)",
        **{name: f"the draft's {name[6:]} (escalated rows)" for name in DRAFT_SETTINGS},
        "status": "escalated rows become `pending` again",
        "image_key": "escalated rows get the heavy image's key",
        "generator": "escalated rows move to the heavy generator",
        "model": "escalated rows move to the heavy model",
        "model_version": "escalated rows: the heavy model's",
        "image": "emptied for escalated rows",
        "image_mime": "emptied for escalated rows",
        "clip_score": "emptied for escalated rows (moved to draft_score; the heavy image is scored anew)",
        FACTS: "emptied for escalated rows with their score (a facts scorer's; kept in draft_row with keep_better)",
        "strength": "the heavy generator's default unless explicit",
        "adapters": "the heavy generator's default adapters unless the row chose its own",
        **{s: "the heavy generator's default unless explicit" for s in HEAVY_SETTINGS},
    }

    RUN_COLUMNS = ("status", "clip_score", "image_key")
    """What a relative policy reads of every row before the first call (`over_run`)."""

    def __init__(self, cfg: CascadeConfig, heavy_name: str, heavy: GeneratorIdentity,
                 cutoff: Cutoff | None = None) -> None:
        self.cfg = cfg
        self.heavy_name = heavy_name
        self.heavy = heavy
        self.relative = self.decides_over_run(cfg)
        if self.relative and cutoff is None:
            raise ValueError("a relative escalation policy or a capped threshold is decided over the whole run: "
                             "build the escalator "
                             "with the cutoff Escalator.over_run computes from every row's score")
        self.cutoff = cutoff or NOTHING

    @staticmethod
    def decides_over_run(cfg: CascadeConfig) -> bool:
        """Whether the stage needs every row's RUN_COLUMNS before its first call: a relative policy, or a threshold
        with a cap (`max_escalations`: the lowest-scoring drafts below the threshold escalate, not the first seen)."""
        return cfg.threshold is None or bool(cfg.max_escalations)

    @classmethod
    def over_run(cls, view: Any, cfg: CascadeConfig, heavy: GeneratorIdentity, **_: Any) -> dict[str, Any]:
        """The constructor's `cutoff` from RUN_COLUMNS of every row (`view`: an Arrow table or numpy columns):
        the scored, generated drafts ranked by (score, image key); the policy's count of the lowest escalate."""
        status = np.asarray(view["status"], dtype=object)
        scores = np.asarray(view["clip_score"], dtype=np.float64)
        keys = np.asarray(view["image_key"], dtype=object)
        ranked = sorted((float(scores[i]), str(keys[i])) for i in range(len(status))
                        if status[i] == "generated" and scores[i] == scores[i])
        if cfg.threshold is not None:  # a capped threshold: the lowest below it, up to the cap
            ranked = [r for r in ranked if r[0] < cfg.threshold]
            count = min(len(ranked), cfg.max_escalations or len(ranked))
        else:
            count = escalation_count(cfg, heavy.est_usd_per_image, len(ranked)) or 0
        return {"cutoff": ranked[count - 1] if count else NOTHING}

    def __call__(self, batch: Batch) -> Batch:
        # 1 outputs default to "stays a draft"
        n = len(batch["status"])
        out = dict(batch)
        route = np.array(["draft"] * n, dtype=object)
        if "route" in batch:  # predictive routing: rows sent straight to heavy (pending now, never escalated)
            route[np.asarray(batch["route"], dtype=object) == PREDICTED] = PREDICTED
        draft_image = np.array([b""] * n, dtype=object)
        draft_mime = np.array([""] * n, dtype=object)
        draft_key = np.array([""] * n, dtype=object)
        draft_score = np.full(n, np.nan)
        draft_gen = np.array([""] * n, dtype=object)
        draft_row = np.array([""] * n, dtype=object)
        drafted = {name: np.zeros(n, dtype=dtype) for name, dtype in DRAFT_SETTINGS.items()}
        cols = {c: np.array(batch[c], dtype=object) for c in ("status", "image_key", "generator", "model", "image")}
        # no image_mime column (a caller with pixels only): every image is raw pixels
        cols["image_mime"] = np.array(batch["image_mime"] if "image_mime" in batch else [""] * n, dtype=object)
        cols["model_version"] = np.array(batch["model_version"] if "model_version" in batch else [""] * n, dtype=object)
        settings = {s: np.array(batch[s], dtype=numpy_dtype(s)) for s in HEAVY_SETTINGS}
        strength = np.array(batch["strength"] if "strength" in batch else [np.nan] * n, dtype=np.float64)
        adapters = np.array(batch["adapters"] if "adapters" in batch else [""] * n, dtype=object)
        scores = np.array(batch["clip_score"], dtype=np.float64)
        final_scores = scores.copy()
        facts = np.array(batch[FACTS], dtype=object) if FACTS in batch else None
        # 2 low scorers (a cap is in the cutoff, decided over the run) move to the heavy generator with its settings
        for i in range(n):
            if cols["status"][i] != "generated" or not self._low(float(scores[i]), str(cols["image_key"][i])):
                continue
            heavy = self._heavy_settings(batch, i)
            if heavy is None:
                continue  # the heavy generator can't render this row's explicit size: the draft stays final
            route[i], draft_key[i], draft_score[i], draft_gen[i] = ESCALATED, cols["image_key"][i], scores[i], \
                cols["generator"][i]
            if self.cfg.keep_draft or self.cfg.keep_better:
                draft_image[i], draft_mime[i] = cols["image"][i], cols["image_mime"][i]
            if self.cfg.keep_better:
                draft_row[i] = _draft_row(cols, settings, strength, adapters, i, facts)
            for s in SHAPE_SETTINGS:
                drafted[f"draft_{s}"][i] = settings[s][i]
            for s in HEAVY_SETTINGS:
                settings[s][i] = heavy[s]
            strength[i], adapters[i] = heavy["strength"], adapters_text(heavy["adapters"])
            h = self.heavy
            cols["image_key"][i] = key_of(heavy, h, heavy["adapters"])
            cols["generator"][i], cols["model"][i] = self.heavy_name, f"{h.model}@{h.revision}"
            cols["model_version"][i] = h.version
            cols["status"][i], cols["image"][i], cols["image_mime"][i] = "pending", b"", ""
            final_scores[i] = np.nan
            if facts is not None:  # they describe the draft, as its score did
                facts[i] = ""
        # 3 same columns in, plus the cascade's
        out.update(cols, **settings, **drafted, strength=strength, adapters=adapters, clip_score=final_scores)
        if facts is not None:
            out[FACTS] = facts
        out.update(route=route, draft_image=draft_image, draft_image_mime=draft_mime,
                   draft_image_key=draft_key, draft_score=draft_score, draft_generator=draft_gen, draft_row=draft_row)
        return out

    def _low(self, score: float, key: str) -> bool:
        """Whether a draft scored low enough to escalate: below the absolute threshold, or (relative policies) at or
        below the run's cutoff."""
        if score != score:  # NaN: unscored
            return False
        if self.cfg.threshold is not None and not score < self.cfg.threshold:
            return False
        return not self.relative or (score, key) <= self.cutoff

    def _heavy_settings(self, batch: Batch, i: int) -> dict[str, Any] | None:
        """Row i as the heavy generator renders it (None when its explicit size exceeds the heavy's max_pixels, or
        it can't take the row's inputs)."""
        d = self.heavy.defaults
        explicit = set(str(batch["explicit"][i]).split(","))
        values: dict[str, Any] = {s: (batch[s][i] if s in explicit else getattr(d, s)) for s in HEAVY_SETTINGS}
        values.update(prompt=batch["prompt"][i], seed=batch["seed"][i])
        variant = str(batch["variant"][i]) if "variant" in batch else ""
        if variant:  # a campaign variant keeps its shape: the heavy generator's size in that aspect ratio
            values["width"], values["height"] = variant_size(variant, int(values["width"]), int(values["height"]))
        if int(values["width"]) * int(values["height"]) > d.max_pixels:
            return None
        return self._heavy_conditioning(batch, i, explicit, values)

    def _heavy_conditioning(self, batch: Batch, i: int, explicit: set[str], values: dict[str, Any]
                            ) -> dict[str, Any] | None:
        """The row's inputs as the heavy generator takes them: same task, input images and mask; its default strength
        and adapters unless the row set its own (None when the heavy generator can't take the row's inputs or
        lacks an adapter the row chose: the draft stays final)."""
        def value(name: str, default: Any) -> Any:
            return batch[name][i] if name in batch else default

        h, task = self.heavy, str(value("task", "text-to-image"))
        inputs, mask = str(value("input_sha256", "")), str(value("mask_sha256", ""))
        values.update(task=task, input_sha256=inputs, mask_sha256=mask)
        if len([x for x in inputs.split(",") if x]) > h.max_input_images or (mask and not h.masks):
            return None
        takes_strength = task in STRENGTH_TASKS and h.takes_strength
        values["strength"] = (float(value("strength", np.nan)) if "strength" in explicit else h.defaults.strength
                              ) if takes_strength else np.nan
        chosen = h.default_adapters
        if "loras" in explicit:
            chosen = list(parse_adapter_list(str(value("adapters", ""))))
            if any(name not in h.adapters for name, _ in chosen):
                return None
        values["adapters"] = list(chosen)
        return values


def _draft_row(cols: Batch, settings: Batch, strength: np.ndarray, adapters: np.ndarray, i: int,
               facts: np.ndarray | None = None) -> str:
    """Row i's DRAFT_ROW values before the escalation replaces them, as compact JSON (a missing strength: null),
    with its facts when a facts scorer wrote them."""
    columns = {**cols, **settings, "adapters": adapters}
    values = {name: columns[name][i] for name in DRAFT_ROW if name != "strength"}
    values = {name: v.item() if isinstance(v, np.generic) else v for name, v in values.items()}
    values["strength"] = float(strength[i]) if math.isfinite(float(strength[i])) else None
    if facts is not None:
        values[FACTS] = str(facts[i])
    return json.dumps(values, separators=(",", ":"))
