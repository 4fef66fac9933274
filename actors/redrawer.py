"""Redrawer (CPU): one round of a cascade's adaptive drafts — keep the better of a row's drafts, and send the row
back to the draft generator while its best draft scores below the stop score."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from imagefleet.actors.facts_scorer import FACTS
from imagefleet.actors.keys import derive_seed
from imagefleet.configs.routing import CascadeConfig

Batch = dict[str, np.ndarray]
KEPT = ("image", "image_mime", "seed", "width", "height", "clip_score")
"""What a row's best draft so far is made of (held in `best_<name>` while the next draft is drawn)."""
BEST = tuple(f"best_{name}" for name in KEPT)
BEST_FACTS = f"best_{FACTS}"
"""A facts scorer's per-fact results go with the score: kept, held and restored with the draft they describe."""


def redraw_seed(first_seed: int, image_key: str, k: int) -> int:
    """The seed of a row's draft k (0 = its own seed): derived from its first seed and image key, as best-of-N's
    candidate k is (never a neighbouring image's seed)."""
    return first_seed if k == 0 else derive_seed(first_seed, image_key, k)


class Redrawer:
    """Round `round` of adaptive drafts: it runs once `round` drafts of a row can have been made and scored.

    A row redrawn by the previous round keeps the better of its new draft and its best before (a finite score
    beats a missing one, ties keep the earlier; a redraw that failed or was skipped keeps the earlier draft — its
    cost stays counted). Every scored draft is listed in `candidates` (seed and score, in order) and `draft_round`
    names the one kept. Then, unless this is the last round (`round` = max_drafts: it only keeps the best), a
    generated row whose best scores below `redraw_below` goes back to the draft generator (`pending`, the next
    derived seed, no score) with its best draft held in `best_*` columns. The row's image key names the rule, not
    the round, so the kept draft is stored once under it and a rerun finds it.

    Args:
        cfg: the cascade settings (`max_drafts`, `redraw_below`).
        round: drafts a row can have had when this stage runs (1 .. max_drafts).
    """

    INPUT_COLUMNS = {
        "status": "`generated` rows are drafts; a redraw that failed keeps the earlier draft",
        "clip_score": "the draft's score",
        "image_key": "derives the next draft's seed",
        "error": "cleared when a failed redraw falls back to the earlier draft",
        **{name: "the draft's (kept, or restored from best_*)" for name in KEPT if name != "clip_score"},
    }
    OPTIONAL_COLUMNS = ("candidates", "draft_round", "redrawing", *BEST, FACTS, BEST_FACTS)
    """The earlier rounds' record, when an earlier round wrote it."""
    OUTPUT_COLUMNS = {
        "status": "rows drawn again become `pending`",
        "error": "'' when a failed redraw fell back to the earlier draft",
        "candidates": "JSON list of every scored draft's seed and score, in order",
        "draft_round": "which draft (1 = the first) the row keeps",
        "redrawing": "the row was sent back for another draft by this round",
        **{name: "the kept draft's; the next draft's seed for rows drawn again" for name in KEPT},
        **{f"best_{name}": "the best draft's while the next is drawn" for name in KEPT},
        FACTS: "the kept draft's per-fact results, with its score ('' for rows drawn again; a facts scorer's)",
        BEST_FACTS: "the best draft's facts while the next is drawn (a facts scorer's)",
    }

    def __init__(self, cfg: CascadeConfig, round: int) -> None:  # noqa: A002 - the round of the cascade
        if not 1 <= round <= cfg.max_drafts:
            raise ValueError(f"round {round} is outside 1..max_drafts={cfg.max_drafts}")
        self.cfg = cfg
        self.round = round
        self.last = round == cfg.max_drafts
        self.stop = float(cfg.redraw_below) if cfg.redraw_below is not None else -math.inf

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        out = dict(batch)
        cols: dict[str, np.ndarray] = {name: np.array(batch[name], dtype=object) for name in
                                       ("status", "error", "image", "image_mime")}
        for name in ("seed", "width", "height"):
            cols[name] = np.array(batch[name], dtype=np.int64)
        cols["clip_score"] = np.array(batch["clip_score"], dtype=np.float64)
        kept: tuple[str, ...] = KEPT
        best = self._best(batch, n)
        if FACTS in batch:  # a facts scorer's results describe the draft they were asked of: they move with it
            kept = (*KEPT, FACTS)
            cols[FACTS] = np.array(batch[FACTS], dtype=object)
            best[BEST_FACTS] = np.array(batch[BEST_FACTS] if BEST_FACTS in batch else [""] * n, dtype=object)
        candidates = np.array(batch["candidates"] if "candidates" in batch else [""] * n, dtype=object)
        kept_round = np.array(batch["draft_round"] if "draft_round" in batch else [0] * n, dtype=np.int32)
        redrawing = np.array(batch["redrawing"] if "redrawing" in batch else [False] * n, dtype=bool)
        for i in range(n):
            drafts = json.loads(candidates[i]) if candidates[i] else []
            if redrawing[i]:  # 1 the row's newest draft against its best before
                self._settle(cols, best, i, drafts, kept_round, kept)
            elif cols["status"][i] == "generated" and not drafts:  # its first draft
                drafts.append(_entry(int(cols["seed"][i]), float(cols["clip_score"][i])))
                kept_round[i] = 1
            redrawing[i] = False
            if drafts:
                candidates[i] = json.dumps(drafts)
            if not self.last and self._again(cols, i):  # 2 below the stop score: another draft
                for name in kept:
                    best[f"best_{name}"][i] = cols[name][i]
                cols["seed"][i] = redraw_seed(int(drafts[0]["seed"]), str(batch["image_key"][i]), len(drafts))
                cols["status"][i], cols["image"][i], cols["image_mime"][i] = "pending", b"", ""
                cols["clip_score"][i] = np.nan
                if FACTS in cols:
                    cols[FACTS][i] = ""
                redrawing[i] = True
        out.update(cols, candidates=candidates, draft_round=kept_round, redrawing=redrawing)
        if self.last:  # nothing is drawn again: the held drafts' pixels go no further
            for name in (*BEST, BEST_FACTS, "redrawing"):
                out.pop(name, None)
        else:
            out.update(best)
        return out

    def _again(self, cols: dict[str, np.ndarray], i: int) -> bool:
        score = float(cols["clip_score"][i])
        return bool(cols["status"][i] == "generated" and math.isfinite(score) and score < self.stop)

    def _settle(self, cols: dict[str, np.ndarray], best: dict[str, np.ndarray], i: int, drafts: list[dict[str, Any]],
                kept_round: np.ndarray, kept: tuple[str, ...] = KEPT) -> None:
        """Row i's new draft is kept if it was made and beats the best before; else the best comes back."""
        new = float(cols["clip_score"][i])
        made = cols["status"][i] == "generated"
        drafts.append(_entry(int(cols["seed"][i]), new if made else math.nan))
        before = float(best["best_clip_score"][i])
        if made and math.isfinite(new) and (not math.isfinite(before) or new > before):
            kept_round[i] = len(drafts)
            return
        for name in kept:
            cols[name][i] = best[f"best_{name}"][i]
        cols["status"][i], cols["error"][i] = "generated", ""

    @staticmethod
    def _best(batch: Batch, n: int) -> dict[str, np.ndarray]:
        if "best_image" in batch:
            return {name: np.array(batch[name], dtype=object if name in ("best_image", "best_image_mime")
                                   else np.float64 if name == "best_clip_score" else np.int64) for name in BEST}
        return {"best_image": np.array([b""] * n, dtype=object), "best_image_mime": np.array([""] * n, dtype=object),
                "best_seed": np.zeros(n, np.int64), "best_width": np.zeros(n, np.int64),
                "best_height": np.zeros(n, np.int64), "best_clip_score": np.full(n, np.nan)}


def _entry(seed: int, score: float) -> dict[str, Any]:
    return {"seed": seed, "score": round(score, 6) if math.isfinite(score) else None}
