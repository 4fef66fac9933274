"""BetterKeeper (CPU): the cascade's last decision — an escalated row whose heavy image scored below its draft
keeps the draft; the heavy image is stored too."""

from __future__ import annotations

import json
import math

import numpy as np

from imagefleet.actors.escalator import DRAFT_ROW, ESCALATED
from imagefleet.actors.facts_scorer import FACTS
from imagefleet.configs.request import HEAVY_SETTINGS, SHAPE_SETTINGS, numpy_dtype
from imagefleet.configs.routing import CascadeConfig

Batch = dict[str, np.ndarray]
KEPT_DRAFT = "escalated_kept_draft"
"""The route of an escalated row that ended as its draft: its heavy image scored lower."""
HEAVY = {"heavy_image": "pixels (or provider file) of the heavy image a row did not keep",
         "heavy_image_mime": "content type of a provider file in `heavy_image` ('' = raw pixels)",
         "heavy_image_key": "key of the heavy image a row did not keep",
         "heavy_width": "its width (the writer encodes it)",
         "heavy_height": "its height",
         "heavy_score": "its score"}
"""The heavy image of a row that kept its draft (empty on every other row)."""
SWAPPED = ("image", "image_mime", "image_key", "generator", "clip_score", *SHAPE_SETTINGS, *DRAFT_ROW)
"""A row that keeps its draft takes these back from the draft (`draft_*` columns and `draft_row`)."""
SETTINGS = tuple(s for s in HEAVY_SETTINGS if s in DRAFT_ROW)
"""The heavy settings `draft_row` restores (typed as the request table types them)."""


def keeps_draft(route: str, status: str, heavy: float, draft: float, has_draft: bool) -> bool:
    """Whether an escalated row ends as its draft: both images made and scored, the heavy one strictly lower
    (ties, an unscored or failed heavy image keep the heavy outcome)."""
    return (route == ESCALATED and status == "generated" and has_draft and math.isfinite(heavy)
            and math.isfinite(draft) and heavy < draft)


class BetterKeeper:
    """Runs once an escalated row's heavy image is scored (`cascade.keep_better`): both images are paid for and
    scored, so the row keeps the better. One whose heavy image scored below its draft (`keeps_draft`) becomes
    the draft again — its image, key, generator, model, settings and score are the draft's, `route` is
    `escalated_kept_draft` — and the heavy image moves to `heavy_*` columns, which the writer stores under the
    heavy key (nothing paid for is lost; cost_usd counts both). Every other row keeps what it has; an escalated
    row's draft pixels go no further unless `keep_draft` stores them.

    The image key of a row that keeps its draft is its draft key, the one a rerun's preprocessor looks up
    first: the row is found as it ended, and nothing is made again.

    Args:
        cfg: the cascade settings (`keep_draft`).
    """

    INPUT_COLUMNS = {
        "route": "escalated rows are candidates",
        "status": "`generated`: the heavy image was made",
        "clip_score": "the heavy image's score",
        "draft_score": "the draft's score",
        "draft_image": "the draft's pixels (kept by the escalator for this stage)",
        "draft_image_mime": "their provider file type",
        "draft_image_key": "the draft's key",
        "draft_generator": "the draft's generator",
        "draft_row": "the draft's model, model_version, negative_prompt, strength and adapters",
        **{f"draft_{s}": f"the draft's {s}" for s in SHAPE_SETTINGS},
        **{name: "the heavy image's (swapped for the draft's)" for name in
           ("image", "image_mime", "image_key", "generator", *SHAPE_SETTINGS, *DRAFT_ROW)},
    }
    OPTIONAL_COLUMNS = (FACTS,)
    """A facts scorer's results for the heavy image (the draft's are in `draft_row`)."""
    OUTPUT_COLUMNS = {
        "route": f"{KEPT_DRAFT} for rows that keep their draft",
        **{name: "the draft's, for rows that keep it" for name in (*SWAPPED, FACTS)},
        "draft_image": "emptied where the writer needn't store it (a row's image now, or keep_draft off)",
        "draft_image_mime": "emptied with it",
        **HEAVY,
    }

    def __init__(self, cfg: CascadeConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        # 1 outputs default to "keeps what it has"
        n = len(batch["status"])
        out = dict(batch)
        cols = {name: np.array(batch[name], dtype=object) for name in
                ("route", "image", "image_mime", "image_key", "generator", "model", "model_version", "adapters",
                 "draft_image", "draft_image_mime")}
        settings = {s: np.array(batch[s], dtype=numpy_dtype(s)) for s in (*SHAPE_SETTINGS, *SETTINGS)}
        score = np.array(batch["clip_score"], dtype=np.float64)
        facts = np.array(batch[FACTS], dtype=object) if FACTS in batch else None
        strength = np.array(batch["strength"], dtype=np.float64)
        heavy: Batch = {"heavy_image": np.array([b""] * n, dtype=object),
                        "heavy_image_mime": np.array([""] * n, dtype=object),
                        "heavy_image_key": np.array([""] * n, dtype=object),
                        "heavy_width": np.zeros(n, np.int32), "heavy_height": np.zeros(n, np.int32),
                        "heavy_score": np.full(n, np.nan)}
        # 2 escalated rows whose heavy image scored lower: the draft comes back, the heavy image moves aside
        for i in range(n):
            draft = float(batch["draft_score"][i])
            if not keeps_draft(str(cols["route"][i]), str(batch["status"][i]), float(score[i]), draft,
                               len(cols["draft_image"][i]) > 0):
                continue
            heavy["heavy_image"][i], heavy["heavy_image_mime"][i] = cols["image"][i], cols["image_mime"][i]
            heavy["heavy_image_key"][i], heavy["heavy_score"][i] = cols["image_key"][i], score[i]
            heavy["heavy_width"][i], heavy["heavy_height"][i] = settings["width"][i], settings["height"][i]
            cols["image"][i], cols["image_mime"][i] = cols["draft_image"][i], cols["draft_image_mime"][i]
            cols["image_key"][i], cols["generator"][i] = batch["draft_image_key"][i], batch["draft_generator"][i]
            cols["route"][i], score[i] = KEPT_DRAFT, draft
            for s in SHAPE_SETTINGS:
                settings[s][i] = batch[f"draft_{s}"][i]
            was = json.loads(str(batch["draft_row"][i]))
            if facts is not None:  # they go with the score: the draft's (the escalator kept them in draft_row)
                facts[i] = was.get(FACTS, "")
            for name in DRAFT_ROW:
                if name == "strength":
                    strength[i] = math.nan if was[name] is None else was[name]
                else:
                    (settings if name in settings else cols)[name][i] = was[name]
            cols["draft_image"][i], cols["draft_image_mime"][i] = b"", ""  # the row's own image now
        # 3 drafts of rows that keep the heavy image are stored only if keep_draft asks
        if not self.cfg.keep_draft:
            cols["draft_image"] = np.array([b""] * n, dtype=object)
            cols["draft_image_mime"] = np.array([""] * n, dtype=object)
        out.update(cols, **settings, clip_score=score, strength=strength, **heavy)
        if facts is not None:
            out[FACTS] = facts
        return out
