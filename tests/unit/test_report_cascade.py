"""report.html's cascade view, the earlier runs' timings after a rerun, and tiny runs, from manifests built in memory
(no Ray): per-route counts and cost, score histograms, escalated images beside their drafts, route labels."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagefleet.actors.layout import MANIFEST_DIR, image_rel, manifest_part
from imagefleet.actors.manifest_schema import CARRIED, FLAT_SCHEMA, typed
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.charts import MAX_BARS, histogram_svg
from imagefleet.pipelines.report import NUM_PAIRS, STAGES, Tally, write_report
from imagefleet.pipelines.report_page import STAGE_NAMES
from imagefleet.pipelines.schema import MANIFEST


def stored(root: Path, key: str, shade: int) -> str:
    path = root / image_rel(key, "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (shade % 255, 80, 160)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return str(path)


def row(i: int, root: Path | None, **extra: Any) -> dict[str, Any]:
    """One manifest row; an ok row's image is stored under `root` (None: not stored, so no thumbnail)."""
    key = f"{i:040x}"
    ok = extra.get("status", "ok") == "ok"
    base = {"id": f"r{i}", "image_key": key, "prompt": f"prompt {i}", "generator": "g1", "status": "ok",
            "error": "", "image_uri": (stored(root, key, i * 20) if root else f"/nowhere/{key}.png") if ok else "",
            "cost_usd": 0.01, "generate_ms": 100.0 + i, "generated_at": 1000.0 + i, "already_present": False,
            "clip_score": 30.0}
    return {f.name: {**base, **extra}.get(f.name) for f in MANIFEST}


def draft_row(i: int, root: Path | None, **extra: Any) -> dict[str, Any]:
    fields = {"generator": "turbo", "route": "draft", "clip_score": 40.0 + i, "width": 512, "height": 512,
              "num_steps": 1, "guidance_scale": 0.0}
    return row(i, root, **{**fields, **extra})


def escalated_row(i: int, root: Path | None, keep_draft: bool = True, **extra: Any) -> dict[str, Any]:
    draft_key = f"d{i:039x}"
    draft_uri = stored(root, draft_key, 200) if root and keep_draft else ""
    fields = {"generator": "sdxl", "route": "escalated", "clip_score": 35.0 + i, "cost_usd": 0.05, "width": 1024,
              "height": 1024, "num_steps": 30, "guidance_scale": 7.5, "draft_image_key": draft_key,
              "draft_image_uri": draft_uri, "draft_score": 10.0 + i, "draft_generator": "turbo",
              "draft_width": 512, "draft_height": 512, "draft_num_steps": 1, "draft_guidance_scale": 0.0}
    return row(i, root, **{**fields, **extra})


def report(root: Path, rows: list[dict[str, Any]]) -> str:
    (root / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(typed(pa.Table.from_pylist(rows, schema=FLAT_SCHEMA)), root / manifest_part("r1", 0))
    return Path(write_report(open_store(str(root), StoreSpec(kind="local")))).read_text()


def test_cascade_view(tmp_path: Path) -> None:
    rows = [draft_row(i, tmp_path) for i in range(6)]
    rows += [escalated_row(i, tmp_path) for i in range(6, 10)]
    rows += [escalated_row(10, tmp_path, status="error", error="heavy failed", clip_score=None, cost_usd=0.01),
             draft_row(11, tmp_path, status="error", error="prompt is empty", cost_usd=0.0, clip_score=None)]
    page = report(tmp_path, rows)
    assert "<h2>Cascade</h2>" in page
    # drafts: 6 kept + 5 escalated (the failed heavy render included; the empty prompt never drafted)
    assert "escalation rate 45.5% (5 of 11 drafts escalated)" in page
    assert "<tr><td>draft</td><td>7</td><td>6</td><td>$0.0600</td><td>$0.0086</td></tr>" in page
    assert "<tr><td>escalated</td><td>5</td><td>4</td><td>$0.2100</td><td>$0.0420</td></tr>" in page
    assert "<tr><td>escalated</td><td>sdxl</td><td>turbo</td><td>5</td><td>$0.2100</td></tr>" in page
    assert "<tr><td>draft</td><td>turbo</td><td>–</td><td>7</td><td>$0.0600</td></tr>" in page
    # histograms: kept drafts' scores, and both scores of escalated rows (a failed heavy image has only a draft's)
    hist = re.search(r'<svg[^>]*aria-label="score histograms per route".*?</svg>', page, re.S)
    assert hist
    assert all(s in hist.group(0) for s in ("kept drafts: 6 images", "escalated: draft score: 5 images",
                                            "escalated: final score: 4 images"))
    # axes: a shared score axis with round ticks (scores 16..45) and its title, a count axis per band
    ticks = re.findall(r'text-anchor="middle" fill="#444">([^<]+)</text>', hist.group(0))
    assert ticks == ["20", "25", "30", "35", "40", "45"], ticks
    assert ">score (bars 1 wide)</text>" in hist.group(0) and ">images</text>" in hist.group(0)
    assert re.findall(r'text-anchor="end" fill="#444">([^<]+)</text>', hist.group(0)) == ["0", "1"] * 3
    # escalated images beside their drafts, with each one's generator, score and settings
    assert page.count('<div class="pair">') == 4
    assert "<b>draft</b> · turbo · score 16.0<br/>512×512 · 1 step · cfg 0" in page
    assert "<b>final</b> · sdxl · score 41.0<br/>1024×1024 · 30 steps · cfg 7.5" in page
    assert page.count("data:image/jpeg;base64,") == 10 + 2 * 4  # contact sheet + pairs
    # contact sheet tiles say which route each image took
    assert page.count('<span class="route">draft</span>') == 6
    assert page.count('<span class="route">escalated</span>') == 4


def test_pair_sample_is_bounded_and_spread_and_shows_drafts_not_kept(tmp_path: Path) -> None:
    rows = [escalated_row(i, tmp_path, keep_draft=i % 2 == 0) for i in range(40)]
    page = report(tmp_path, rows)
    assert page.count('<div class="pair">') == NUM_PAIRS
    assert "draft not kept" in page
    assert "<p>prompt 33</p></div>" in page and "<p>prompt 36</p></div>" not in page  # 0, 3, …, 33 of 40


def test_tally_stays_bounded_over_many_batches() -> None:
    """Per-row state: timings and timestamps only; routes, histograms and samples are fixed-size."""
    tally = Tally(step=100, pair_step=50)
    for b in range(5):
        rows = [escalated_row(b * 1000 + i, None, clip_score=(i % 300) * 0.37, draft_score=-(i % 50) * 1.1)
                for i in range(500)]
        rows += [draft_row(b * 1000 + 500 + i, None, clip_score=(i % 100) * 0.5) for i in range(500)]
        tally.add(typed(pa.Table.from_pylist(rows, schema=FLAT_SCHEMA)).to_batches()[0])
    assert len(tally.pairs) == NUM_PAIRS and len(tally.routes) == 2
    assert sum(len(h) for h in tally.scores.values()) < 1000
    assert sum(tally.scores["escalated: final score"].values()) == 2500
    svg = histogram_svg([(name, tally.scores[name]) for name in tally.scores])
    assert 0 < svg.count("<rect") <= 3 * MAX_BARS


def test_no_cascade_view_without_routes(tmp_path: Path) -> None:
    page = report(tmp_path, [row(i, tmp_path) for i in range(3)])
    assert "Cascade" not in page and 'class="route"' not in page and "earlier runs" not in page
    assert "<th colspan=3>this run</th>" in page


def carried_rerun_row(i: int, root: Path) -> dict[str, Any]:
    # an already-present row: this run wrote nothing; the earlier run's timings are carried (CARRIED)
    return escalated_row(i, root, already_present=True, generated_at=2000.0 + i * 0.5, queue_ms=7.0,
                         generate_ms=900.0, encode_ms=11.0, upload_ms=13.0)


def stage_row(stage: str, *cells: str) -> str:
    """A stage timings row as the page writes it: the stage, its manifest column, then each duration."""
    return (f'<tr><td>{STAGE_NAMES[stage]} <span class="note">{stage}</span></td>'
            + "".join(f'<td class="n">{c}</td>' for c in cells) + "</tr>")


def test_rerun_with_every_image_present_keeps_the_earlier_timings(tmp_path: Path) -> None:
    page = report(tmp_path, [carried_rerun_row(i, tmp_path) for i in range(8)])
    assert "All 8 images were made by earlier runs (this run found them already present); the timings are " \
           "theirs." in page
    assert 'aria-label="images completed over time by earlier runs: 8 images in 3.5 s"' in page
    assert "<th colspan=3>earlier runs</th>" in page and "this run</th>" not in page
    for stage, ms in zip(STAGES, ("7.0 ms", "900 ms", "11 ms", "13 ms"), strict=True):
        assert stage_row(stage, ms, ms, ms) in page
    assert "escalation rate 100.0% (8 of 8 drafts escalated)" in page  # the carried route still counts


def test_partial_rerun_shows_both_runs(tmp_path: Path) -> None:
    rows = [carried_rerun_row(i, tmp_path) for i in range(4)]
    rows += [row(i, tmp_path, queue_ms=1.0, encode_ms=2.0, upload_ms=3.0) for i in range(4, 10)]
    page = report(tmp_path, rows)
    assert "6 images in 5.0 s" in page  # this run: generated_at 1004..1009
    assert "4 more images were made by earlier runs (already present)" in page and "4 images in 1.5 s" in page
    assert "<th colspan=3>this run</th><th colspan=3>earlier runs</th>" in page
    assert stage_row("queue_ms", "1.0 ms", "1.0 ms", "1.0 ms", "7.0 ms", "7.0 ms", "7.0 ms") in page


@pytest.mark.parametrize("case", ["empty", "one ok", "one cascade", "all errors", "all refused", "one present",
                                  "no score or times"])
def test_tiny_runs_never_crash(tmp_path: Path, case: str) -> None:
    rows = {
        "empty": [],
        "one ok": [row(0, tmp_path)],
        "one cascade": [escalated_row(0, tmp_path, keep_draft=False)],
        "all errors": [row(i, tmp_path, status="error", error="boom", generator=None, prompt=None) for i in range(3)],
        "all refused": [draft_row(i, tmp_path, status="refused", error="safety") for i in range(2)],
        "one present": [carried_rerun_row(0, tmp_path)],
        "no score or times": [row(0, tmp_path, clip_score=float("nan"), generated_at=None, generate_ms=None)],
    }[case]
    page = report(tmp_path, rows)
    assert f"{len(rows)} images requested" in page and page.endswith("</html>")
    assert "score nan" not in page
    if case in ("all errors", "all refused"):
        assert "no images" in page and "not enough images for a throughput chart" in page


def test_a_rerun_carries_the_stage_timings_the_report_shows() -> None:
    """_to_manifest_rows: an already-present (cached) row keeps the earlier run's timings and timestamp."""
    from imagefleet.pipelines.manifest import _to_manifest_rows

    assert {"queue_ms", "generate_ms", "encode_ms", "upload_ms", "generated_at"} <= set(CARRIED)
    from imagefleet.actors.manifest_schema import prior_text

    earlier = prior_text("s", 9, {"queue_ms": 7.0, "generate_ms": 900.0, "encode_ms": 11.0, "upload_ms": 13.0,
                                  "generated_at": 2000.0, "clip_score": float("nan"), "draft_width": 0, "route": ""})
    batch = pa.table({
        "status": ["ok", "ok"], "image_key": ["a", "b"], "prior": [earlier, ""],  # a: cached, b: made now
        "queue_ms": [0.0, 5.0], "generate_ms": [0.0, 50.0], "encode_ms": [0.0, 6.0], "upload_ms": [0.0, 8.0],
        "generated_at": [3000.0, 3001.0], "route": ["single", "single"],
    })
    out = _to_manifest_rows(batch, run_id="r2").to_pydict()
    out["generated_at"] = [t.timestamp() for t in out["generated_at"]]  # the manifest types it: UTC time
    assert [out[c][0] for c in ("queue_ms", "generate_ms", "encode_ms", "upload_ms", "generated_at")] == [
        7.0, 900.0, 11.0, 13.0, 2000.0]
    assert [out[c][1] for c in ("queue_ms", "generate_ms", "encode_ms", "upload_ms", "generated_at")] == [
        5.0, 50.0, 6.0, 8.0, 3001.0]
    # nothing recorded (NaN, 0, ''): the row's own value stays
    assert out["route"] == ["single", "single"] and out["clip_score"] == [None, None]


def test_evaluations_next_to_the_manifest_are_shown_per_route(tmp_path: Path) -> None:
    """<output>/evaluations/*.parquet (image_key + numeric metrics, e.g. an offline oracle's faithfulness):
    the report gives each metric's mean per route — kept drafts, escalated drafts, their finals, all — and the
    escalated pairs show the values of the draft and of the final."""
    rows = [draft_row(0, tmp_path), draft_row(1, tmp_path), escalated_row(2, tmp_path)]
    evals = tmp_path / "evaluations"
    evals.mkdir()
    pq.write_table(pa.table({"image_key": [rows[0]["image_key"], rows[1]["image_key"], rows[2]["image_key"],
                                           rows[2]["draft_image_key"]],
                             "faithfulness": [1.0, 0.5, 0.9, 0.25], "note": ["a", "b", "c", "d"]}),
                   evals / "oracle.parquet")
    page = report(tmp_path, rows)
    text = re.sub(r"<[^>]+>", " ", page[page.index("<h2>Evaluations"):page.index("<h2>Cascade")])
    cells = " ".join(text.split())
    assert "mean faithfulness" in cells and "mean note" not in cells  # numeric columns only
    assert "draft 2 0.750" in cells and "escalated: draft 1 0.250" in cells
    assert "escalated: final 1 0.900" in cells and "all 3 0.800" in cells  # the final images
    assert "faithfulness 0.25" in page and "faithfulness 0.90" in page  # the pair's captions
