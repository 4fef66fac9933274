"""`make demo`'s world config (configs/world_cascade.yaml, issue #32): the adaptive cascade scored by the world's
trained fact verifier, each prompt's facts in a `facts` column the demo writes, and the checks the plan makes of
both before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from bench.world.demo import write_prompts
from bench.world.verifier_data import world_facts
from imagefleet.actors.facts_scorer import FactsScorer
from imagefleet.configs.loader import load_config
from imagefleet.jobs import world_demo


def test_the_demo_config_runs_adaptive_drafts_scored_by_the_trained_verifier(tmp_path: Path) -> None:
    cfg = load_config(world_demo.CONFIG, [a.removeprefix("--set=") for a in world_demo.overrides(tmp_path)])
    assert cfg.scorer.backend == "facts" and cfg.scorer.facts_column == "facts"
    assert Path(cfg.scorer.model) == world_demo.MODELS / "verifier"
    assert json.loads((world_demo.MODELS / "verifier" / "config.json").read_text())["kind"] == \
        "imagefleet-fact-verifier"
    assert FactsScorer.check_model(cfg.scorer) == ""  # a verifier folder this version reads
    cascade = cfg.routing.cascade  # type: ignore[union-attr]
    assert cascade.max_drafts > 1 and cascade.redraw_below is not None and 0 < cascade.redraw_below < 1
    assert cascade.escalate_fraction is not None and cascade.draft == "draft" and cascade.escalate == "heavy"
    assert world_demo.available()  # the checked-in models, the verifier included


def test_the_demo_prompts_carry_each_prompts_world_facts_to_the_scorer(tmp_path: Path) -> None:
    path = write_prompts(tmp_path / "world.parquet", 24, world_demo.PROMPT_SEED)
    table = pq.read_table(path)
    prompts = table.column("prompt").to_pylist()
    assert table.column("facts").to_pylist() == [world_facts(p) for p in prompts]
    assert all(table.column("facts").to_pylist())  # every prompt has facts: none falls back to the whole prompt
    cfg = load_config(world_demo.CONFIG, [f"source.uri={path}"])
    assert FactsScorer.source_problem(cfg.scorer, cfg.source, ["facts"]) == ""  # type: ignore[arg-type]
    assert "leaves it out" in FactsScorer.source_problem(  # type: ignore[arg-type]
        cfg.scorer, cfg.source.model_copy(update={"pass_through": ["prompt"]}), [])


def test_baselines_are_priced_as_the_run_paid_each_generators_images() -> None:
    """Kept-draft rows cost their drafts (candidates: one each; null: one draft); an escalated row its drafts plus
    one heavy image — so draft-only and heavy-only points are priced like the run, not by another run's timings."""
    from bench.world.demo import unit_prices

    two = [{"seed": 1, "score": 0.1}, {"seed": 2, "score": 0.9}]
    rows = [{"status": "ok", "route": "draft", "cost_usd": 0.01, "candidates": None},
            {"status": "ok", "route": "draft", "cost_usd": 0.02, "candidates": two},
            {"status": "ok", "route": "escalated", "cost_usd": 0.12, "candidates": two},
            {"status": "ok", "route": "escalated_kept_draft", "cost_usd": 0.11, "candidates": None},
            {"status": "error", "route": "draft", "cost_usd": 5.0, "candidates": None}]
    prices = unit_prices(rows)
    assert prices["draft"] == 0.01 and abs(prices["heavy"] - 0.1) < 1e-12
    assert unit_prices(rows[2:4]) == {}  # no kept draft: no draft price, so no heavy price either
