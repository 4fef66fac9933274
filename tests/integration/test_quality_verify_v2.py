"""bench/quality.py --grammar v2: in the v2 world (models_v2, the v2 oracle), on evaluation strings no model saw,
the replay of the cascade agrees row by row with `imagefleet.run`, with world CLIP and with the v2 fact verifier
as the scorer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "bench" / "world" / "models_v2"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("scorer", "redraw"), [("clip", 60), ("verifier", 0.6)])
def test_v2_verify_agrees_with_the_replay_on_8_unseen_rows(scorer: str, redraw: float) -> None:
    """Adaptive drafts (up to 3) then the worst quarter escalated, on 8 rows of unseen strings."""
    if not all((MODELS / name).is_dir() for name in ("draft", "heavy", scorer if scorer == "clip" else "verifier")):
        pytest.skip("the v2 world's models are absent")
    run = subprocess.run([sys.executable, "bench/quality.py", "--grammar", "v2", "--verify", "8", "--scorer", scorer,
                          "--policy", f"max_drafts=3,redraw_below={redraw},escalate_fraction=0.25"],
                         cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["agree"] and result["rows"] == 8, result
    assert result["checks"] == dict.fromkeys(result["checks"], 8)
    assert result["escalated"] == 2 and result["redrawn"] >= 1, "the rows exercise neither rule: the test shows nothing"
