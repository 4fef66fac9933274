"""Combinations (routing × backend × task × what a row asks for) as a table of named override sets, each run end
to end in process (no Ray: pipelines/in_process.py), then rerun: the first run makes exactly the rows it should,
all `ok`, and the rerun makes nothing and pays nothing. Ray is kept for what needs pools (tests/integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imagefleet.configs.storage import StoreSpec
from tests.helpers import sleep_job, write_prompts

PROMPTS = ["a red fox!", "a grey owl", "a green boat!"]
TWO = {"generators": {"a": {}, "c": {"model": "m-c"}}}  # a second sleep generator beside `a`
RULE = {"scorer": {"backend": "rule", "marker": "!"}}  # prompts with "!" score 1.0, others 0.0

# name → (overrides merged into the sleep job, manifest rows expected for PROMPTS)
COMBINATIONS: dict[str, tuple[dict[str, Any], int]] = {
    "single": ({}, 3),
    "single+scorer": (RULE, 3),
    "cascade": ({**TWO, **RULE, "routing": {"mode": "cascade",
                                            "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5}}}, 3),
    "best_of": ({**RULE, "routing": {"mode": "best_of", "default": "a", "candidates": 3}}, 3),
    "fanout": ({**TWO, "routing": {"mode": "fanout", "fanout": ["a", "c"]}}, 6),
    "column_routing": ({**TWO, "routing": {"mode": "column", "column": "gen", "default": "a"}}, 3),
    # 64x64's area in each shape (16x16 would round both shapes to one size: one image, two rows)
    "variants": ({"source": {"variants": ["1:1", "16:9"]},
                  "generators": {"a": {"defaults": {"width": 64, "height": 64}}}}, 6),
    "template": ({"source": {"template": {"text": "{{ style }} {{ prompt }}", "vars": {"style": ["ink", "oil"]}}}},
                 6),
    "num_images": ({"source": {"columns": {"num_images": "n"}}}, 5),
    "image_to_image": ({"source": {"task": "image-to-image"}}, 3),
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and key != "vars" else value
    return out


def _job(tmp_path: Path, name: str) -> dict[str, Any]:
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (24, 24), (200, 40, 40)).save(tmp_path / "in" / "red.png")
    write_prompts(tmp_path / "in" / "p.parquet", {"prompt": PROMPTS, "gen": ["a", "c", None], "n": [1, 3, 1],
                                                  "image": ["red.png"] * 3})
    raw = sleep_job(tmp_path / "in" / "p.parquet", str(tmp_path / "out"))
    sleepy = raw["generators"].pop("sleepy")
    overrides = COMBINATIONS[name][0]
    raw["generators"] = {g: {**sleepy, **extra} for g, extra in overrides.get("generators", {"a": {}}).items()}
    raw = _merge(raw, {k: v for k, v in overrides.items() if k != "generators"})
    raw["cluster"]["executor"] = "in_process"
    return raw


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_each_combination_runs_in_process_and_reruns_for_free(tmp_path: Path, name: str) -> None:
    import imagefleet
    from imagefleet.pipelines.manifest import read_manifest_columns

    raw = _job(tmp_path, name)
    first = imagefleet.run(raw, echo=None)
    assert first.summary is not None
    rows = read_manifest_columns(str(tmp_path / "out"), StoreSpec(kind="local"),
                                 ["image_key", "status", "error", "route"]).to_pylist()
    assert len(rows) == COMBINATIONS[name][1], rows
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows if r["status"] != "ok"]
    assert len({r["image_key"] for r in rows}) == len(rows)
    if name == "cascade":
        assert sorted(r["route"] for r in rows).count("escalated") == 1  # the one prompt without "!"
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None
    assert again.summary.num_already_present == len(rows) and again.summary.num_written == 0
    assert again.summary.cost_usd == 0


@pytest.mark.parametrize("name", ["single", "cascade", "image_to_image"])
def test_combinations_on_a_real_diffusers_pipeline(tmp_path: Path, tiny_model: Path, name: str) -> None:
    """The backend axis: generator `a` is a tiny diffusers pipeline loaded through `from_pretrained`."""
    import imagefleet
    from tests.helpers import tiny_job

    raw = _job(tmp_path, name)
    tiny = tiny_job("x", tiny_model, "y")["generators"]["tiny"]
    raw["generators"]["a"] = {**tiny, "defaults": {**tiny["defaults"], "width": 32, "height": 32}}
    first = imagefleet.run(raw, echo=None)
    assert first.summary is not None and first.summary.num_ok == COMBINATIONS[name][1] and first.summary.num_error == 0
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0
