"""report.html's quality section (issue #32), from manifests and evaluations built in memory (no Ray): where a
cascade's rows ended (draft round k, escalated), each route's mean metric and cost per image, and the run's point
against reference runs of the same prompts (evaluations/baselines.parquet) in a quality-vs-cost chart."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from imagefleet.pipelines.report_quality import BASELINES, quality_cost_svg
from tests.unit.test_report_cascade import draft_row, escalated_row, report


def cells(page: str, start: str, end: str = "</table>") -> str:
    """The text of the page from `start` to the next `end`, tags removed, spaces collapsed."""
    part = page[page.index(start):]
    return " ".join(re.sub(r"<[^>]+>", " ", part[:part.index(end)]).split())


def adaptive_run(root: Path) -> list[dict[str, object]]:
    """Six kept drafts (rounds 1, 1, 1, 2, 2, 3) and two escalated rows, with an oracle's faithfulness."""
    rows = [draft_row(i, root, draft_round=r, cost_usd=0.01 * r) for i, r in enumerate((1, 1, 1, 2, 2, 3))]
    rows += [escalated_row(i, root, draft_round=4, cost_usd=0.14) for i in (6, 7)]
    (root / "evaluations").mkdir()
    faith = [1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 1.0, 0.5]
    pq.write_table(pa.table({"image_key": [r["image_key"] for r in rows], "faithfulness": faith}),
                   root / "evaluations" / "oracle.parquet")
    return rows


def test_rounds_quality_and_cost_per_route_and_the_chart_against_baselines(tmp_path: Path) -> None:
    rows = adaptive_run(tmp_path)
    pq.write_table(pa.Table.from_pylist([
        {"baseline": "draft only", "images": 8, "faithfulness": 0.25, "cost_usd_per_image": 0.01, "how": "alone"},
        {"baseline": "heavy only", "images": 8, "faithfulness": 0.75, "cost_usd_per_image": 0.1, "how": "alone"}]),
        tmp_path / BASELINES)
    page = report(tmp_path, rows)
    assert "<h2>Quality and cost</h2>" in page
    rounds = cells(page, "<h3>Rounds")
    assert "draft round 1 3 37.5% 0.833" in rounds  # three rows kept their first draft: (1 + 1 + 0.5) / 3
    assert "draft round 2 2 25.0% 0.250" in rounds and "draft round 3 1 12.5% 0.000" in rounds
    assert "escalated 2 25.0% 0.750" in rounds
    assert rounds.index("draft round 3") < rounds.index("escalated 2")  # rounds in order, then the routes
    routes = cells(page, "<h3>faithfulness and cost per route")
    assert "draft 6 0.500 $0.0167" in routes  # (1+1+1+2+2+3) cents over six rows
    assert "escalated 2 0.750 $0.140" in routes
    assert "all 8 0.562 $0.0475" in routes  # the run's point: mean of its final images, USD per ok image
    chart = re.search(r'<svg[^>]*aria-label="mean faithfulness against cost per image".*?</svg>', page, re.S)
    assert chart
    assert all(label in chart.group(0) for label in (">draft only 0.250<", ">heavy only 0.750<", ">this run 0.562<"))
    assert "evaluations/baselines.parquet" in page and "draft only: 8 images (alone)" in page


def test_without_baselines_no_chart_and_without_grades_only_the_rounds(tmp_path: Path) -> None:
    page = report(tmp_path, adaptive_run(tmp_path))
    assert "<h3>Rounds" in page and "<h3>faithfulness and cost per route" in page
    assert "against cost per image" not in page
    other = tmp_path / "ungraded"
    other.mkdir()
    rows = [draft_row(i, other, draft_round=r) for i, r in enumerate((1, 2))]
    page = report(other, rows)
    assert "draft round 2 1 50.0%" in cells(page, "<h3>Rounds") and "cost per route</h3>" not in page


def test_one_draft_and_no_escalation_has_no_quality_section(tmp_path: Path) -> None:
    page = report(tmp_path, [draft_row(i, tmp_path) for i in range(3)])  # draft_round null: the only draft
    assert "<h2>Quality and cost</h2>" not in page


def test_an_unreadable_baselines_file_costs_the_chart_not_the_report(tmp_path: Path) -> None:
    rows = adaptive_run(tmp_path)
    (tmp_path / BASELINES).write_bytes(b"not parquet")
    page = report(tmp_path, rows)
    assert "<h3>Rounds" in page and "against cost per image" not in page


def test_prices_read_without_e_notation() -> None:
    from imagefleet.pipelines.report_quality import _usd

    assert [_usd(v) for v in (7.99e-05, 0.0475, 0.14, 12.5, 0.0)] == ["$0.0000799", "$0.0475", "$0.140", "$12.50",
                                                                       "$0"]


def test_the_chart_puts_every_point_inside_its_axes() -> None:
    svg = quality_cost_svg([("a", 0.0, 0.0, "#000"), ("b", 2e-5, 0.9, "#111"), ("c", 1e-6, 0.3, "#222")],
                           "faithfulness")
    xs = [float(x) for x in re.findall(r'<circle cx="([0-9.]+)"', svg)]
    ys = [float(y) for y in re.findall(r'<circle cx="[0-9.]+" cy="([0-9.]+)"', svg)]
    assert len(xs) == 3 and all(0 < x < 480 for x in xs) and all(0 < y < 260 for y in ys)
    assert ">USD per image</text>" in svg and "mean faithfulness" in svg


def test_scores_between_0_and_1_get_a_histogram_of_their_own(tmp_path: Path) -> None:
    """The facts scorer's scores (0..1) spread over bars a few hundredths wide (before: one bar 1 wide)."""
    page = report(tmp_path, [draft_row(i, tmp_path, clip_score=i / 10) for i in range(11)])
    hist = re.search(r'<svg[^>]*aria-label="score histograms per route".*?</svg>', page, re.S)
    assert hist and ">score (bars 0.05 wide)</text>" in hist.group(0)
    assert hist.group(0).count("<rect") == 11  # one bar per distinct score
