"""Adaptive drafts (issue #32): a Redrawer round keeps a row's better draft, draws another below the stop score
with the next derived seed, falls back to the earlier draft when a redraw fails, and the last round drops the
held pixels. The rule enters image keys (pinned), so a rerun finds the kept draft."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from imagefleet.actors.keys import derive_seed
from imagefleet.actors.redrawer import BEST, Redrawer, redraw_seed
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.routing import CascadeConfig

CFG = CascadeConfig(draft="d", escalate="h", threshold=0.1, max_drafts=3, redraw_below=0.5)


def drafts(scores: list[float], status: list[str] | None = None) -> dict[str, np.ndarray]:
    n = len(scores)
    return {"status": np.array(status or ["generated"] * n, dtype=object), "error": np.array([""] * n, dtype=object),
            "image": np.array([f"px{i}".encode() for i in range(n)], dtype=object),
            "image_mime": np.array([""] * n, dtype=object), "seed": np.arange(100, 100 + n),
            "width": np.full(n, 8), "height": np.full(n, 8), "clip_score": np.array(scores, dtype=np.float64),
            "image_key": np.array([f"k{i}" for i in range(n)], dtype=object)}


def generate(batch: dict[str, Any], scores: dict[int, float], fail: tuple[int, ...] = ()) -> dict[str, Any]:
    """What the draft pool and the scorer do to the rows sent back: a new image and its score (or an error)."""
    out = {k: np.array(v, copy=True) for k, v in batch.items()}
    for i, s in scores.items():
        assert out["status"][i] == "pending"
        if i in fail:
            out["status"][i], out["error"][i] = "error", "CUDA error"
        else:
            out["status"][i], out["image"][i], out["clip_score"][i] = "generated", f"new{i}".encode(), s
    return out


def test_a_round_redraws_only_rows_below_the_stop_score_with_the_next_derived_seed() -> None:
    out = Redrawer(CFG, 1)(drafts([0.9, 0.2, float("nan")], ["generated", "generated", "error"]))
    assert list(out["status"]) == ["generated", "pending", "error"]
    assert out["seed"][1] == redraw_seed(101, "k1", 1) == derive_seed(101, "k1", 1)  # best-of-N's candidate 1
    assert out["best_image"][1] == b"px1" and np.isnan(out["clip_score"][1]) and out["image"][1] == b""
    assert json.loads(out["candidates"][0]) == [{"seed": 100, "score": 0.9}] and out["draft_round"][0] == 1
    assert out["candidates"][2] == "" and not out["redrawing"][0] and out["redrawing"][1]


def test_the_better_draft_is_kept_and_a_failed_redraw_falls_back() -> None:
    first = Redrawer(CFG, 1)(drafts([0.1, 0.3, 0.4]))
    second = Redrawer(CFG, 2)(generate(first, {0: 0.05, 1: 0.45, 2: 0.0}, fail=(2,)))
    # row 0: the new draft is worse -> the first comes back, still below 0.5 -> drawn a third time
    assert second["status"][0] == "pending" and second["best_image"][0] == b"px0"
    assert second["best_clip_score"][0] == pytest.approx(0.1)
    assert second["seed"][0] == redraw_seed(100, "k0", 2)
    # row 1: better (0.45) but still below 0.5 -> kept as best and drawn again
    assert second["best_image"][1] == b"new1" and second["best_clip_score"][1] == pytest.approx(0.45)
    # row 2: the redraw failed -> its first draft stands, no error, drawn again
    assert second["best_image"][2] == b"px2" and second["error"][2] == ""
    assert [d["score"] for d in json.loads(second["candidates"][2])] == [0.4, None]
    last = Redrawer(CFG, 3)(generate(second, {0: 0.7, 1: 0.2, 2: 0.3}))
    assert list(last["status"]) == ["generated"] * 3 and not any(name in last for name in (*BEST, "redrawing"))
    assert list(last["image"]) == [b"new0", b"new1", b"px2"] and list(last["draft_round"]) == [3, 2, 1]
    assert list(last["clip_score"]) == pytest.approx([0.7, 0.45, 0.4])
    assert last["seed"][1] == redraw_seed(101, "k1", 1)  # the kept draft's own seed
    assert [d["seed"] for d in json.loads(last["candidates"][0])] == [100, redraw_seed(100, "k0", 1),
                                                                     redraw_seed(100, "k0", 2)]


@pytest.mark.parametrize(("cascade", "match"), [
    ({"max_drafts": 3}, "needs redraw_below"),
    ({"redraw_below": 0.5}, "needs max_drafts > 1"),
    ({"max_drafts": 9, "redraw_below": 0.5}, "less than or equal to 8"),
])
def test_adaptive_drafts_are_configured_whole(cascade: dict[str, Any], match: str) -> None:
    from tests.unit.test_fleet import fleet

    with pytest.raises(ConfigError, match=match):
        parse_config({**fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5,
                                                       **cascade}), "scorer": {"backend": "rule"}})


def test_the_rule_is_in_the_draft_keys_and_the_plan_has_a_round_per_draft() -> None:
    from imagefleet.pipelines.plan import make_plan
    from imagefleet.pipelines.slices import selection
    from tests.unit.test_fleet import fleet
    from tests.unit.test_plan import STORES

    def cfg(**more: Any) -> Any:
        return parse_config({**fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy",
                                                              "threshold": 0.5, **more}),
                             "scorer": {"backend": "rule"}})

    assert selection(cfg()) == ""  # one draft: keys as before (golden vectors unchanged)
    # golden: a change re-keys every image made with adaptive drafts (README migration note)
    assert selection(cfg(max_drafts=3, redraw_below=0.25)) == "drafts=3,redraw_below=0.25,scorer=rule:"
    names = [s.name for s in make_plan(cfg(max_drafts=3, redraw_below=0.25), STORES, ["prompt"], 10).stages]
    assert names == ["preprocess", "generate:sleepy", "score", "redraw", "generate:sleepy", "score", "redraw",
                     "generate:sleepy", "score", "keep best draft", "escalate", "generate:heavy", "score",
                     "keep better", "write"]
