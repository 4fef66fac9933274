"""bench/quality.py --grammar v2: in the v2 world (models_v2, the v2 oracle), on evaluation strings no model saw,
the replay of the cascade agrees row by row with `imagefleet.run`, with world CLIP and with the v2 fact verifier
as the scorer."""

from pathlib import Path

import pytest

from tests.helpers import quality_verified

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "bench" / "world" / "models_v2"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("scorer", "redraw"), [("clip", 60), ("verifier", 0.6)])
def test_v2_verify_agrees_with_the_replay_on_8_unseen_rows(scorer: str, redraw: float) -> None:
    """Adaptive drafts (up to 3) then the worst quarter escalated, on 8 rows of unseen strings."""
    if not all((MODELS / name).is_dir() for name in ("draft", "heavy", scorer if scorer == "clip" else "verifier")):
        pytest.skip("the v2 world's models are absent")
    quality_verified("--grammar", "v2", "--scorer", scorer,
                     "--policy", f"max_drafts=3,redraw_below={redraw},escalate_fraction=0.25")
