"""bench/quality.py --verify: the quality benchmark's replay of the cascade (imagefleet's preprocessor, generators,
scorer, Redrawer and Escalator on dict batches) agrees row by row with `imagefleet.run` on the shapes world."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "bench" / "world" / "models"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all((MODELS / name).is_dir() for name in ("draft", "heavy", "clip")), reason="the world's models are absent")]


def test_verify_agrees_with_the_replay_on_8_rows() -> None:
    """Adaptive drafts (up to 3, redrawn below CLIP 65) then the worst quarter escalated, on 8 evaluation rows:
    the run and the replay make the same rows, routes, draft seeds, kept drafts, pixels and faithfulness."""
    run = subprocess.run([sys.executable, "bench/quality.py", "--verify", "8",
                          "--policy", "max_drafts=3,redraw_below=65,escalate_fraction=0.25"],
                         cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["agree"] and result["rows"] == 8, result
    assert result["checks"] == dict.fromkeys(result["checks"], 8)
    assert result["escalated"] == 2 and result["redrawn"] >= 1, "the rows exercise neither rule: the test shows nothing"
