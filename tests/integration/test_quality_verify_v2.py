"""bench/quality.py --grammar v2: in the v2 world (models_v2, the v2 oracle), on evaluation strings no model saw,
the replay of the cascade agrees row by row with `imagefleet.run`, with world CLIP and with the v2 fact verifier
as the scorer."""

from pathlib import Path

import pytest

from tests.helpers import quality_verified

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "bench" / "world" / "models_v2"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("scorer", "redraw", "draft"), [("clip", 60, "draft"), ("verifier", 0.6, "draft"),
                                                         ("verifier", 0.6, "heavy@2")])
def test_v2_verify_agrees_with_the_replay_on_8_unseen_rows(scorer: str, redraw: float, draft: str) -> None:
    """Adaptive drafts (up to 3) then the worst quarter escalated, on 8 rows of unseen strings; with `heavy@2` the
    drafts are the heavy model's folder at 2 steps (two generators on one folder, told apart by their steps)."""
    if not all((MODELS / name).is_dir() for name in ("draft", "heavy", scorer if scorer == "clip" else "verifier")):
        pytest.skip("the v2 world's models are absent")
    quality_verified("--grammar", "v2", "--scorer", scorer, "--draft", draft,
                     "--policy", f"max_drafts=3,redraw_below={redraw},escalate_fraction=0.25")
