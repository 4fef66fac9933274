"""BENCHMARKS.md's verifier section (`python bench/quality.py --scorer verifier`, issue #32): spliced right after
the world-CLIP quality section and replaced in place, every other line left as it was; it states the verdict at
0.30 of heavy's cost and the pairwise accuracy on the verifier's held-out and training strings."""

from __future__ import annotations

import json
from pathlib import Path

from bench import quality_verifier_report as report
from bench.common import REPO

RESULTS = REPO / "bench" / "results"


def test_the_section_goes_after_the_clip_section_and_is_replaced_in_place(tmp_path: Path) -> None:
    q = json.loads((RESULTS / "quality_verifier.json").read_text())
    clip = json.loads((RESULTS / "quality.json").read_text())
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# b\n\n## Quality per cost: the shapes world, CLIP\n\nclip text\n\n## GPU\n\ngpu text\n")
    report.update_benchmarks(q, clip, doc)
    once = doc.read_text()
    heads = [line for line in once.split("\n") if line.startswith("## ")]
    assert heads == ["## Quality per cost: the shapes world, CLIP", report.TITLE, "## GPU"]
    assert "clip text" in once and "gpu text" in once
    report.update_benchmarks(q, clip, doc)
    assert doc.read_text() == once  # replaced, not added again
    text = "\n".join(report.markdown(q, clip))
    assert "**At ≤ 0.30 of heavy-only's cost" in text and ("**reached**" in text or "**not reached**" in text)
    assert "held-out** strings" in text and "training strings" in text and "perfect draft scorer" in text
    assert "seen in training by the UNets and by the CLIP" in text
