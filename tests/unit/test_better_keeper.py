"""cascade.keep_better (issue #32): an escalated row whose heavy image scored below its draft keeps the draft, the
heavy image is stored too and both are paid for — the actor on batches, then whole runs in process (no Ray) whose
scores are deterministic by construction, and their reruns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefleet.actors.better_keeper import KEPT_DRAFT, BetterKeeper
from imagefleet.actors.escalator import Escalator
from imagefleet.configs.loader import parse_config
from imagefleet.pipelines.slices import prep_config
from tests.helpers import write_prompts
from tests.unit.test_fleet import batch, fleet

HEAVY_DEFAULTS = {"width": 32, "height": 24, "num_steps": 30, "guidance_scale": 7.5, "negative_prompt": "blurry"}


def cascade(**more: Any) -> Any:
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5, **more})
    raw["generators"]["sleepy"]["defaults"] = {"width": 16, "height": 16, "num_steps": 1, "guidance_scale": 0.0}
    raw["generators"]["heavy"]["defaults"] = HEAVY_DEFAULTS
    return parse_config({**raw, "scorer": {"backend": "rule"}})


def heavy_made(esc: dict[str, Any], status: list[str], scores: list[float]) -> dict[str, Any]:
    """What the heavy generator and the second scorer leave: pending rows made (grey pixels at the heavy size) or
    failed, with their scores."""
    out = dict(esc)
    pending = [s == "pending" for s in esc["status"]]
    out["status"] = np.array([new if p else old for p, new, old in zip(pending, status, esc["status"], strict=True)],
                             dtype=object)
    out["image"] = np.array([np.full((24, 32, 3), 9, np.uint8).tobytes() if p and s == "generated" else img
                             for p, s, img in zip(pending, status, esc["image"], strict=True)], dtype=object)
    out["clip_score"] = np.array([new if p else old for p, new, old in zip(pending, scores, esc["clip_score"],
                                                                            strict=True)], dtype=np.float64)
    return out


@pytest.mark.parametrize("keep_draft", [True, False])
def test_an_escalated_row_keeps_the_better_scored_of_its_draft_and_heavy_image(keep_draft: bool) -> None:
    """Drafts a..f escalate (below 0.5), g stays a draft. Heavy scores: a below its draft (keeps the draft), b tied
    and c above (heavy), d failed, f unscored (heavy outcome, as before)."""
    cfg = cascade(keep_draft=keep_draft)
    c = cfg.routing.cascade
    drafts = batch(list("abcdefg"), ["generated"] * 7, [0.1, 0.2, 0.3, 0.4, 0.45, 0.3, 0.9])
    drafts["image"] = np.array([np.full((16, 16, 3), k, np.uint8).tobytes() for k in range(7)], dtype=object)
    esc = Escalator(c, "heavy", prep_config(cfg).generators["heavy"])(drafts)
    assert list(esc["route"]) == ["escalated"] * 6 + ["draft"]
    assert all(len(esc["draft_image"][i]) for i in range(6))  # the draft's pixels ride along whatever keep_draft
    heavy_keys = list(esc["image_key"])
    made = heavy_made(esc, ["generated", "generated", "generated", "error", "generated", "generated"] + ["-"],
                      [0.05, 0.2, 0.8, np.nan, 0.9, np.nan, np.nan])
    out = BetterKeeper(c)(made)
    assert list(out["route"]) == [KEPT_DRAFT] + ["escalated"] * 5 + ["draft"]
    # a: the draft again, in every respect; its heavy image aside, to be stored under its own key
    assert out["image_key"][0] == f"{0:040x}" == out["draft_image_key"][0] and out["generator"][0] == "sleepy"
    assert out["model"][0] == "sleep@v1" and out["image"][0] == drafts["image"][0] and out["clip_score"][0] == 0.1
    assert (out["width"][0], out["height"][0], out["num_steps"][0], out["guidance_scale"][0]) == (16, 16, 1, 0.0)
    assert out["negative_prompt"][0] == "" and out["status"][0] == "generated"
    assert out["heavy_image_key"][0] == heavy_keys[0] and out["heavy_score"][0] == 0.05
    assert (out["heavy_width"][0], out["heavy_height"][0]) == (32, 24) and len(out["heavy_image"][0]) == 32 * 24 * 3
    assert out["draft_image"][0] == b""  # stored once, as the row's image
    # b, c, e, f: their heavy image; d: failed (an error row, retried by a rerun); g: a draft as before
    for i in (1, 2, 3, 4, 5):
        assert out["image_key"][i] == heavy_keys[i] and out["generator"][i] == "heavy"
        assert out["heavy_image_key"][i] == "" and out["heavy_image"][i] == b""
        assert out["negative_prompt"][i] == "blurry" and out["width"][i] == 32
        assert (len(out["draft_image"][i]) > 0) == keep_draft  # stored only if keep_draft asks
    assert out["status"][3] == "error" and out["clip_score"][2] == 0.8
    assert out["image_key"][6] == f"{6:040x}" and out["draft_image"][6] == b""


def test_keep_better_off_keeps_the_heavy_image_and_leaves_the_drafts_to_keep_draft() -> None:
    cfg = cascade(keep_better=False, keep_draft=False)
    esc = Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"])(
        batch(["a"], ["generated"], [0.1]))
    assert esc["draft_image"][0] == b"" and esc["draft_row"][0] == ""
    assert [s.kind for s in cfg.routing.steps(list(cfg.generators), True)][-1] == "score"


def tinted_cascade(tmp_path: Path, **cascade_more: Any) -> dict[str, Any]:
    """16 prompts, every draft escalated (threshold above any brightness), scored by brightness. The sleep backend's
    image is its seed's colour (red = seed % 251), and the heavy generator's default adapter (weight 3.2) adds 128
    to red modulo 256: a heavy image scores below its draft exactly when the draft's red is 128 or more."""
    (tmp_path / "tint.safetensors").write_bytes(b"stand-in adapter")
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(16)]})
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 2.0, **cascade_more})
    raw["source"] = {"uri": str(src)}
    raw["output"]["uri"] = str(tmp_path / "out")
    raw["generators"]["heavy"]["defaults"] = {"width": 24, "height": 24, "num_steps": 4}
    raw["generators"]["heavy"]["loras"] = [{"name": "tint", "path": str(tmp_path / "tint.safetensors"),
                                            "weight": 3.2}]
    raw["scorer"] = {"backend": "rule", "by": "brightness"}
    raw["cluster"]["executor"] = "in_process"
    return raw


def pixel(uri: str) -> list[int]:
    from PIL import Image

    with Image.open(uri) as img:
        return [int(v) for v in np.asarray(img.convert("RGB"))[0, 0]]


COMPARED = ("id", "image_key", "image_uri", "sha256", "route", "generator", "model", "seed", "width", "height",
            "num_steps", "negative_prompt", "clip_score", "draft_image_key", "draft_image_uri", "draft_score",
            "heavy_image_key", "heavy_image_uri", "heavy_score", "cost_usd", "generated_at")


def test_a_run_keeps_the_draft_where_the_heavy_image_scored_lower_and_a_rerun_pays_nothing(tmp_path: Path) -> None:
    import imagefleet

    raw = tinted_cascade(tmp_path)
    first = imagefleet.run(raw, echo=None)
    rows = sorted(first.to_pandas().to_dict("records"), key=lambda r: r["id"])
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    kept = [r for r in rows if r["route"] == KEPT_DRAFT]
    heavy = [r for r in rows if r["route"] == "escalated"]
    assert len(kept) + len(heavy) == 16 and kept and heavy, "both outcomes must occur: the test shows nothing"
    for r in kept:  # the draft: its key, pixels, size, score; the heavy image stored beside it
        seed = int(r["seed"])
        assert seed % 251 >= 128 and pixel(r["image_uri"]) == [seed % 251, (seed // 251) % 251, (seed // 63001) % 251]
        assert r["image_key"] == r["draft_image_key"] and r["generator"] == "sleepy" and r["width"] == 16
        assert r["clip_score"] == r["draft_score"] > r["heavy_score"]
        assert Path(r["heavy_image_uri"]).is_file() and r["heavy_image_key"] in r["heavy_image_uri"]
        assert pixel(r["heavy_image_uri"])[0] == (seed % 251 + 128) % 256
        assert r["cost_usd"] == pytest.approx(0.01 + 0.10)  # both images were paid for
        assert not r["draft_image_uri"]  # the draft is the row's image: stored once
    for r in heavy:
        assert int(r["seed"]) % 251 < 128 and r["generator"] == "heavy" and r["width"] == 24
        assert r["clip_score"] > r["draft_score"] and not r["heavy_image_key"]
        assert pixel(r["image_uri"])[0] == int(r["seed"]) % 251 + 128 and Path(r["draft_image_uri"]).is_file()
        assert r["cost_usd"] == pytest.approx(0.11)
    assert first.summary is not None and first.summary.cost_usd == pytest.approx(16 * 0.11)
    images = sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.*"))
    assert len(images) == 32  # every row's draft and heavy image: nothing paid for is lost
    # a rerun finds every row under its draft key: nothing drafted, scored, escalated or stored again
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0 and again.summary.cost_usd == 0
    assert again.summary.num_already_present == 16
    same = sorted(again.to_pandas().to_dict("records"), key=lambda r: r["id"])
    for a, b in zip(rows, same, strict=True):
        differ = [c for c in COMPARED if a[c] != b[c] and not (a[c] != a[c] and b[c] != b[c])]
        assert not differ and b["already_present"], (differ, a["id"])
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.*")) == images


def test_keep_better_off_makes_every_escalated_row_its_heavy_image(tmp_path: Path) -> None:
    import imagefleet

    rows = imagefleet.run(tinted_cascade(tmp_path, keep_better=False), echo=None).to_pandas().to_dict("records")
    assert {r["route"] for r in rows} == {"escalated"} and {r["generator"] for r in rows} == {"heavy"}
    assert any(r["clip_score"] < r["draft_score"] for r in rows)  # the heavy image is final even when lower


def test_the_report_tallies_rows_that_kept_their_draft_as_a_route_of_their_own(tmp_path: Path) -> None:
    from tests.unit.test_report_cascade import draft_row, report

    kept = [draft_row(i, tmp_path, route=KEPT_DRAFT, cost_usd=0.05, draft_image_key=f"{i:040x}", draft_score=40.0 + i,
                      draft_generator="turbo", heavy_image_key=f"h{i:039x}", heavy_score=20.0 + i)
            for i in range(6, 8)]
    page = report(tmp_path, [draft_row(i, tmp_path) for i in range(6)] + kept)
    # both escalated rows count as escalations (and as drafts), the route is its own line with both images' cost
    assert "escalation rate 25.0% (2 of 8 drafts escalated; 2 kept their draft: the heavy image scored lower)" in page
    assert "<tr><td>escalated_kept_draft</td><td>2</td><td>2</td><td>$0.1000</td><td>$0.0500</td></tr>" in page
    assert "escalated, draft kept: heavy score" in page  # the heavy images' scores have their own histogram
