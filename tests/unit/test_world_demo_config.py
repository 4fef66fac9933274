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


def test_a_local_scorer_folder_enters_keys_by_content_not_by_path(tmp_path: Path) -> None:
    """With adaptive drafts the scorer decides which draft is kept, so it is part of image keys. It was named by its
    model path as written: the demo passes an absolute path, so another checkout of the same files made other keys
    and redrew everything. Now a local folder is named by its content digest (as generator folders are)."""
    import shutil

    from imagefleet.jobs.preflight import scorer_digest
    from imagefleet.pipelines.slices import selection

    copies = [tmp_path / "a" / "verifier", tmp_path / "b" / "v"]
    for copy in copies:
        shutil.copytree(world_demo.MODELS / "verifier", copy)
    made = []
    for copy in copies:
        cfg = load_config(world_demo.CONFIG, [f"scorer.model={copy}"])
        made.append(selection(cfg, scorer_digest(cfg)))
    assert made[0] == made[1] and "scorer=facts:sha256:" in made[0] and str(tmp_path) not in made[0]
    (copies[1] / "config.json").write_text((copies[1] / "config.json").read_text() + "\n")  # other bytes
    cfg = load_config(world_demo.CONFIG, [f"scorer.model={copies[1]}"])
    assert selection(cfg, scorer_digest(cfg)) != made[0]
    hub = load_config(world_demo.CONFIG, ["scorer.model=org/verifier"])  # not a folder here: a hub id, by name
    assert scorer_digest(hub) == "" and "scorer=facts:org/verifier" in selection(hub, scorer_digest(hub))
