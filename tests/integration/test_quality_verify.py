"""bench/quality.py --verify: the quality benchmark's replay of the cascade (imagefleet's preprocessor, generators,
scorer, Redrawer and Escalator on dict batches) agrees row by row with `imagefleet.run` on the shapes world."""

from pathlib import Path

import pytest

from tests.helpers import quality_verified

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "bench" / "world" / "models"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all((MODELS / name).is_dir() for name in ("draft", "heavy", "clip")), reason="the world's models are absent")]


def test_verify_agrees_with_the_replay_on_8_rows() -> None:
    """Adaptive drafts (up to 3, redrawn below CLIP 65) then the worst quarter escalated, on 8 evaluation rows:
    the run and the replay make the same rows, routes, draft seeds, kept drafts, pixels and faithfulness."""
    quality_verified("--policy", "max_drafts=3,redraw_below=65,escalate_fraction=0.25")
