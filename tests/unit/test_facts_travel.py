"""Per-fact results describe the image a row keeps (issue #32): a facts scorer's `facts` move with the score
wherever a cascade stage keeps, swaps or clears it — the redrawer's best draft, the escalator's draft, the better
keeper's kept draft. Without a facts scorer no stage makes the column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefleet.actors.better_keeper import KEPT_DRAFT, BetterKeeper
from imagefleet.actors.clip_scorer import score_batch
from imagefleet.actors.escalator import Escalator
from imagefleet.actors.facts_scorer import FACTS
from imagefleet.actors.redrawer import BEST_FACTS, Redrawer
from imagefleet.pipelines.slices import prep_config
from tests.helpers import write_prompts
from tests.unit.test_better_keeper import cascade, heavy_made, tinted_cascade
from tests.unit.test_fleet import batch
from tests.unit.test_redrawer import CFG, drafts, generate


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava")


def said(label: str) -> str:
    """A facts scorer's record of one image (flat JSON, as the pipeline carries it)."""
    return json.dumps([{"fact": "a red square", "p_yes": 0.5}, {"fact": label, "p_yes": 0.25}])


def scored(batch: dict[str, Any], scores: dict[int, float], round: int, fail: tuple[int, ...] = ()  # noqa: A002
           ) -> dict[str, Any]:
    """The draft pool and a facts scorer on the rows sent back: a new image, its score and its facts."""
    out = generate(batch, scores, fail)
    for i in scores:
        if i not in fail:
            out[FACTS][i] = said(f"draft {round} of row {i}")
    return out


def test_a_row_keeps_the_facts_of_the_draft_it_keeps_not_of_its_latest() -> None:
    first = drafts([0.1, 0.3, 0.9])
    first[FACTS] = np.array([said(f"draft 1 of row {i}") for i in range(3)], dtype=object)
    one = Redrawer(CFG, 1)(first)
    # rows drawn again hold their best draft's facts aside and carry none (their score is gone too)
    assert list(one[FACTS]) == ["", "", said("draft 1 of row 2")]
    assert list(one[BEST_FACTS])[:2] == [said("draft 1 of row 0"), said("draft 1 of row 1")]
    # row 0's second draft is worse, row 1's failed: both stand as their first draft, facts and all
    two = Redrawer(CFG, 2)(scored(one, {0: 0.05, 1: 0.2}, 2, fail=(1,)))
    assert list(two[BEST_FACTS])[:2] == [said("draft 1 of row 0"), said("draft 1 of row 1")]
    # the last round: row 0's third draft is worse again, row 1's better
    last = Redrawer(CFG, 3)(scored(two, {0: 0.02, 1: 0.4}, 3))
    assert list(last["draft_round"]) == [1, 3, 1] and list(last["clip_score"]) == [0.1, 0.4, 0.9]
    assert list(last[FACTS]) == [said("draft 1 of row 0"), said("draft 3 of row 1"), said("draft 1 of row 2")]
    assert BEST_FACTS not in last


def test_without_a_facts_scorer_no_stage_makes_facts() -> None:
    one = Redrawer(CFG, 1)(drafts([0.1, 0.9]))
    assert FACTS not in one and BEST_FACTS not in one
    cfg = cascade()
    esc = Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"])(
        batch(["a"], ["generated"], [0.1]))
    assert FACTS not in esc and FACTS not in json.loads(esc["draft_row"][0])
    assert FACTS not in BetterKeeper(cfg.routing.cascade)(heavy_made(esc, ["generated"], [0.05]))


def test_an_escalated_row_ends_with_the_facts_of_the_image_it_keeps() -> None:
    """Drafts a..d escalate (below 0.5), e stays a draft. Heavy images: a scores below its draft (keeps the draft),
    b ties and c beats it (heavy), d fails (an error row). A facts scorer scores the heavy images anew."""
    cfg = cascade()
    c = cfg.routing.cascade
    first = batch(list("abcde"), ["generated"] * 5, [0.1, 0.2, 0.3, 0.4, 0.9])
    first[FACTS] = np.array([said(f"draft {p}") for p in "abcde"], dtype=object)
    esc = Escalator(c, "heavy", prep_config(cfg).generators["heavy"])(first)
    assert list(esc["route"]) == ["escalated"] * 4 + ["draft"]
    assert list(esc[FACTS]) == ["", "", "", "", said("draft e")]  # cleared with the score: scored anew
    assert [json.loads(esc["draft_row"][i])[FACTS] for i in range(4)] == [said(f"draft {p}") for p in "abcd"]
    made = heavy_made(esc, ["generated", "generated", "generated", "error", "-"], [np.nan] * 5)

    def judge(images: list[np.ndarray], texts: list[str]) -> list[tuple[float, str]]:
        return [(float(t), said(f"heavy {t}")) for t in texts]

    heavy = score_batch(made, judge, texts=["0.05", "0.2", "0.8", "-", "-"], detail=FACTS)
    out = BetterKeeper(c)(heavy)
    assert list(out["route"]) == [KEPT_DRAFT, "escalated", "escalated", "escalated", "draft"]
    assert list(out["clip_score"])[:3] == [0.1, 0.2, 0.8]
    assert list(out[FACTS]) == [said("draft a"), said("heavy 0.2"), said("heavy 0.8"), "", said("draft e")]
    assert out["status"][3] == "error"  # the failed heavy image carries no draft's facts


def test_keep_better_off_clears_an_escalated_drafts_facts_all_the_same() -> None:
    cfg = cascade(keep_better=False)
    first = batch(["a", "b"], ["generated"] * 2, [0.1, 0.9])
    first[FACTS] = np.array([said("draft a"), said("draft b")], dtype=object)
    esc = Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"])(first)
    assert list(esc[FACTS]) == ["", said("draft b")] and esc["draft_row"][0] == ""


def test_a_cascade_run_records_the_facts_of_every_rows_kept_image(tmp_path: Path, tiny_vlm: Path) -> None:
    """In process, a tiny VLM as facts scorer, every row drafted three times and escalated: a row's score is the
    mean P(yes) of the facts it records, whichever draft or heavy image it kept."""
    import imagefleet

    raw = tinted_cascade(tmp_path, max_drafts=3, redraw_below=2.0)
    write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(16)],
                                           "facts": [["a red square", f"fact {i}"] for i in range(16)]})
    raw["source"]["pass_through"] = ["facts"]
    raw["scorer"] = {"backend": "facts", "model": str(tiny_vlm), "pool": {"batch_size": 8}}
    rows = imagefleet.run(raw, echo=None).to_pandas().to_dict("records")
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert {r["route"] for r in rows} <= {"escalated", KEPT_DRAFT}
    for r in rows:
        assert [f["fact"] for f in r["facts"]] == ["a red square", f"fact {r['prompt'].split()[-1]}"]
        assert r["clip_score"] == pytest.approx(sum(f["p_yes"] for f in r["facts"]) / 2), r["id"]
