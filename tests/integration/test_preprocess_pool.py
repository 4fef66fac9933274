"""The preprocessor as a pool on Ray: three preprocessor actors share one run ledger, so the budget stays an exact
count (budget = k × the estimate makes exactly k images, the rest are `skipped`, and what is billed is what the
manifest says) and a rerun finds every image (nothing made, every row as the earlier run recorded it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import imagefleet
from imagefleet.pipelines import plan as plan_module
from imagefleet.pipelines.pools import PREPROCESS_POOL
from tests.helpers import sleep_job, write_prompts

pytestmark = pytest.mark.slow

KEPT = ("id", "image_key", "seed", "generator", "model", "width", "height", "image_uri", "sha256", "bytes",
        "generated_at", "cost_usd")
"""What a row says about its image: a rerun must report the same."""


def _actors(class_part: str) -> int:
    """Actors this Ray session has made whose class name holds `class_part` (alive or not)."""
    from ray._private import state

    return sum(class_part in str(a.get("ActorClassName", "")) for a in state.actors().values())


def _alive(class_part: str) -> int:
    from ray._private import state

    return sum(class_part in str(a.get("ActorClassName", "")) and a.get("State") == "ALIVE"
               for a in state.actors().values())


def _images(out: Path) -> set[str]:
    return {p.name for p in (out / "images").rglob("*.png")}


def _rows(result: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in result.to_pandas().to_dict("records")}


def test_three_preprocessors_keep_the_budget_exact_and_a_rerun_makes_nothing(
        tmp_path: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 preprocessor actors from the start, 4 rows a call: the 6 files' 24 rows go to all of them
    monkeypatch.setattr(plan_module, "PREPROCESS_POOL", PREPROCESS_POOL.__class__(
        min_size=3, max_size=3, initial_size=3, num_cpus=0.25, batch_size=4))
    for f in range(6):
        write_prompts(tmp_path / "prompts" / f"part-{f}.parquet",
                      {"id": [f"r{f}-{i}" for i in range(4)], "prompt": [f"a lamp {f} {i}" for i in range(4)]})
    out = tmp_path / "out"
    raw = sleep_job(tmp_path / "prompts", str(out))
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    raw["limits"] = {"budget_usd": 0.07}
    preprocessors, ledgers = _actors("PromptPreprocessor"), _actors("RunLedger")
    # 1 budget = 7 images' estimate: exactly 7 made whichever actor reserved them, 17 skipped
    first = imagefleet.run(raw, echo=None, progress="off")
    assert _actors("PromptPreprocessor") - preprocessors == 3 and _actors("RunLedger") - ledgers == 1
    assert _alive("RunLedger") == 0  # the ledger (the run's resume index) ended with the run
    rows = _rows(first)
    made = {i for i, r in rows.items() if r["status"] == "ok"}
    assert len(rows) == 24 and len(made) == 7 and len(_images(out)) == 7
    skipped = [r for r in rows.values() if r["status"] == "skipped"]
    assert len(skipped) == 17 and all("budget_usd=0.07 reached" in r["error"] for r in skipped)
    assert first.summary is not None and first.summary.num_written == 7
    billed = sum(r["cost_usd"] for r in rows.values() if r["status"] == "ok")
    assert first.summary.cost_usd == pytest.approx(billed) == pytest.approx(0.07)
    # 2 without a budget: the 7 are found (not paid again) and the 17 made
    raw["limits"] = {}
    second = imagefleet.run(raw, echo=None, progress="off")
    again = _rows(second)
    assert second.summary is not None and second.summary.num_written == 17 and len(_images(out)) == 24
    assert {i for i, r in again.items() if r["already_present"]} == made
    assert all({c: again[i][c] for c in KEPT} == {c: rows[i][c] for c in KEPT} for i in made)
    # 3 a rerun: every row found by the one ledger, nothing made, every row as recorded
    third = imagefleet.run(raw, echo=None, progress="off")
    assert third.summary is not None and third.summary.num_written == 0 and third.summary.cost_usd == 0
    last = _rows(third)
    assert all(r["already_present"] and r["status"] == "ok" for r in last.values()) and len(_images(out)) == 24
    assert all({c: last[i][c] for c in KEPT} == {c: again[i][c] for c in KEPT} for i in again)


def test_a_processor_dataset_consumed_twice_finds_what_its_first_consumption_made(
        tmp_path: Path, ray_cluster: None) -> None:
    """A lazy processor Dataset runs its stages again on every consumption: its preprocessor keeps its own ledger,
    made anew each time (a run's shared one is made once, with what the output held then), so the second
    consumption finds the first's images instead of making them again."""
    import ray.data

    raw = sleep_job("unused", str(tmp_path / "out"))
    raw["source"] = {"id_column": "sku"}
    rows = imagefleet.processor(raw)(ray.data.from_items([{"sku": f"S{i}", "prompt": f"a shelf {i}"}
                                                          for i in range(8)]))
    first = {r["id"]: r for r in rows.take_all()}
    again = {r["id"]: r for r in rows.take_all()}
    assert len(first) == 8 and not any(r["already_present"] for r in first.values())
    assert all(r["already_present"] and r["generated_at"] == first[i]["generated_at"] for i, r in again.items())
