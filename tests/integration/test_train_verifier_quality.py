"""bench/quality.py --scorer verifier: the world's trained fact verifier as the cascade's `facts` scorer (each row's
world facts in a `facts` column); the replay agrees row by row with `imagefleet.run` on the shapes world."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "bench" / "world" / "models"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all((MODELS / name).is_dir() for name in ("draft", "heavy", "verifier")),
    reason="the world's models are absent")]


def test_verify_with_the_verifier_agrees_with_the_replay_on_8_rows() -> None:
    """Adaptive drafts (up to 3, redrawn below a verifier score of 0.6) then the worst quarter escalated."""
    run = subprocess.run([sys.executable, "bench/quality.py", "--verify", "8", "--scorer", "verifier",
                          "--policy", "max_drafts=3,redraw_below=0.6,escalate_fraction=0.25"],
                         cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["agree"] and result["rows"] == 8, result
    assert result["escalated"] == 2 and result["redrawn"] >= 1, "the rows exercise neither rule: the test shows nothing"
