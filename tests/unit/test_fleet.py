"""Fleet routing (rules, fan-out), budget, the cascade's Escalator, and the scorers — without Ray."""

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from imagefleet.actors.clip_scorer import ClipScorer, RuleScorer
from imagefleet.actors.escalator import Escalator, escalation_count
from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.configs import ConfigError
from imagefleet.configs.loader import parse_config
from imagefleet.configs.scorer import ClipScorerConfig, RuleScorerConfig
from imagefleet.pipelines.slices import prep_config
from tests.helpers import sleep_job


def fleet(**routing: Any) -> dict[str, Any]:
    raw = sleep_job("p", "out")
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model"}
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    raw["generators"]["heavy"]["cost"] = {"usd_per_image": 0.10}
    raw["routing"] = routing
    return raw


def pre(raw: dict[str, Any], columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    out = PromptPreprocessor(prep_config(parse_config(raw)))(pa.table(columns))
    return {k: list(v) for k, v in out.items()}


def test_rules_route_by_size() -> None:
    raw = fleet(mode="rules", default="sleepy",
                rules=[{"field": "pixels", "op": ">=", "value": 1024 * 1024, "generator": "heavy"}])
    out = pre(raw, {"prompt": ["small", "big"], "width": [512, 1024], "height": [512, 1024]})
    assert dict(zip(out["prompt"], out["generator"], strict=True)) == {"small": "sleepy", "big": "heavy"}
    keys = dict(zip(out["prompt"], out["image_key"], strict=True))
    assert keys["small"] != keys["big"]


def test_fanout_sends_every_row_to_every_generator() -> None:
    out = pre(fleet(mode="fanout", fanout=["sleepy", "heavy"]), {"id": ["a", "b"], "prompt": ["x", "y"]})
    assert sorted(zip(out["id"], out["generator"], strict=True)) == [
        ("a", "heavy"), ("a", "sleepy"), ("b", "heavy"), ("b", "sleepy")]
    assert len(set(out["image_key"])) == 4
    # same seed for the same request on both generators: a fair A/B comparison
    seeds = {(i, g): s for i, g, s in zip(out["id"], out["generator"], out["seed"], strict=True)}
    assert seeds[("a", "sleepy")] == seeds[("a", "heavy")]


def test_budget_skips_rows_past_the_estimate() -> None:
    raw = fleet(mode="single", default="heavy")
    raw["limits"] = {"budget_usd": 0.35}
    out = pre(raw, {"prompt": [f"p{i}" for i in range(5)]})
    assert out["status"].count("pending") == 3 and out["status"].count("skipped") == 2
    assert "budget_usd" in out["error"][out["status"].index("skipped")]


@pytest.mark.parametrize(
    ("routing", "match"),
    [
        ({"mode": "rules", "default": "sleepy"}, "needs routing.rules"),
        ({"mode": "fanout", "fanout": ["sleepy"]}, "at least two"),
        ({"mode": "fanout", "fanout": ["sleepy", "nope"]}, "'nope'"),
        ({"mode": "cascade"}, "routing.cascade: Field required"),
        ({"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 1}}, "scorer"),
        ({"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "sleepy", "threshold": 1}}, "different"),
    ],
)
def test_routing_config_errors(routing: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(fleet(**routing))


def batch(prompts: list[str], status: list[str], scores: list[float]) -> dict[str, np.ndarray]:
    n = len(prompts)
    return {
        "prompt": np.array(prompts, dtype=object), "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.arange(n), "width": np.full(n, 16), "height": np.full(n, 16), "num_steps": np.full(n, 1),
        "guidance_scale": np.zeros(n), "status": np.array(status, dtype=object),
        "image_key": np.array([f"{i:040x}" for i in range(n)], dtype=object),
        "generator": np.array(["sleepy"] * n, dtype=object), "model": np.array(["sleep@v1"] * n, dtype=object),
        "explicit": np.array([""] * n, dtype=object),
        "image": np.array([np.zeros((16, 16, 3), np.uint8).tobytes()] * n, dtype=object),
        "clip_score": np.array(scores, dtype=np.float64),
    }


def test_escalator_threshold_cap_and_draft() -> None:
    cfg = parse_config({**fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5,
                                                         "max_escalations": 2}),
                        "scorer": {"backend": "rule"}})
    heavy = prep_config(cfg).generators["heavy"]
    rows = batch(["a", "b", "c", "d", "e"], ["generated", "generated", "generated", "error", "generated"],
                 [0.1, 0.9, 0.2, np.nan, 0.0])
    # the cap is decided over the whole run: the 2 lowest drafts below the threshold, not the first 2 seen
    decided = Escalator.over_run(rows, cfg.routing.cascade, heavy)  # type: ignore[arg-type]
    esc = Escalator(cfg.routing.cascade, "heavy", heavy, **decided)  # type: ignore[arg-type]
    out = esc(rows)
    assert list(out["route"]) == ["escalated", "draft", "draft", "draft", "escalated"]
    assert list(out["status"]) == ["pending", "generated", "generated", "error", "pending"]
    assert list(out["generator"])[:3] == ["heavy", "sleepy", "sleepy"] and out["draft_score"][0] == 0.1
    assert out["draft_image_key"][0] == f"{0:040x}" and out["image_key"][0] != f"{0:040x}"
    assert len(out["draft_image"][0]) > 0 and out["image"][0] == b""
    with pytest.raises(ValueError, match="decided over the whole run"):
        Escalator(cfg.routing.cascade, "heavy", heavy)  # type: ignore[arg-type]


def cascade_config(heavy_defaults: dict[str, Any]) -> Any:
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5})
    raw["generators"]["sleepy"]["defaults"] = {"width": 16, "height": 16, "num_steps": 1, "guidance_scale": 0.0}
    raw["generators"]["heavy"]["defaults"] = heavy_defaults
    return parse_config({**raw, "scorer": {"backend": "rule"}})


def test_escalated_rows_render_with_the_heavy_generators_settings() -> None:
    """The flagship cascade bug: an escalation kept the draft's 1 step / guidance 0 / small size. It must get
    the heavy generator's defaults for every setting the input row did not set, and a key from those."""
    from imagefleet.actors.keys import image_key

    cfg = cascade_config({"width": 64, "height": 48, "num_steps": 30, "guidance_scale": 7.5,
                          "negative_prompt": "blurry"})
    prep = pre(cfg.model_dump(), {"prompt": ["plain", "sized"], "width": [None, 32], "num_steps": [None, 2]})
    rows = {p: i for i, p in enumerate(prep["prompt"])}
    assert prep["explicit"][rows["plain"]] == "" and prep["explicit"][rows["sized"]] == "width,num_steps"
    drafts = {k: np.array(v, dtype=object if isinstance(v[0], str) else None) for k, v in prep.items()}
    drafts.update(status=np.array(["generated"] * 2, dtype=object), clip_score=np.zeros(2),
                  image=np.array([b"x", b"y"], dtype=object))
    heavy = prep_config(cfg).generators["heavy"]
    out = Escalator(cfg.routing.cascade, "heavy", heavy)(drafts)  # type: ignore[attr-defined]
    plain, sized = rows["plain"], rows["sized"]
    # unset fields: the heavy generator's defaults; explicit ones: the row's
    assert (out["width"][plain], out["height"][plain], out["num_steps"][plain]) == (64, 48, 30)
    assert out["guidance_scale"][plain] == 7.5 and out["negative_prompt"][plain] == "blurry"
    assert (out["width"][sized], out["height"][sized], out["num_steps"][sized]) == (32, 48, 2)
    # the draft's settings are recorded
    assert (out["draft_width"][plain], out["draft_num_steps"][plain], out["draft_guidance_scale"][plain]) == (16, 1, 0)
    # the key names what is rendered
    assert out["image_key"][plain] == image_key(
        model="heavy-model", revision=heavy.revision, scheduler="", prompt="plain", negative_prompt="blurry",
        seed=int(out["seed"][plain]), width=64, height=48, num_steps=30, guidance_scale=7.5)


def test_an_explicit_size_the_heavy_generator_cant_render_stays_a_draft() -> None:
    cfg = cascade_config({"width": 64, "height": 64, "max_pixels": 64 * 64})
    b = batch(["big"], ["generated"], [0.0])
    b.update(width=np.array([128]), height=np.array([128]), explicit=np.array(["width,height"], dtype=object))
    out = Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"])(b)  # type: ignore[attr-defined]
    assert list(out["route"]) == ["draft"] and list(out["status"]) == ["generated"]


def test_rule_scorer() -> None:
    out = RuleScorer(RuleScorerConfig(marker="good"))(batch(["good x", "bad", "good"], ["generated", "generated",
                                                                                       "error"], [np.nan] * 3))
    assert out["clip_score"][0] == 1.0 and out["clip_score"][1] == 0.0 and np.isnan(out["clip_score"][2])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_clip_scorer_on_mixed_sizes(tiny_clip: Path) -> None:
    scorer = ClipScorer(ClipScorerConfig(model=str(tiny_clip)))
    b = batch(["a cat " * 50, "a dog"], ["generated", "generated"], [np.nan, np.nan])
    b["width"] = np.array([16, 32])
    b["image"] = np.array([np.zeros((16, 16, 3), np.uint8).tobytes(),
                           np.full((16, 32, 3), 200, np.uint8).tobytes()], dtype=object)
    out = scorer(b)
    assert np.isfinite(out["clip_score"]).all() and (out["clip_score"] >= 0).all()
    assert np.allclose(scorer(b)["clip_score"], out["clip_score"])  # deterministic


def relative_cascade(**policy: Any) -> Any:
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", **policy})
    return parse_config({**raw, "scorer": {"backend": "rule"}})


def scored(scores: list[float]) -> dict[str, np.ndarray]:
    return batch([f"p{i}" for i in range(len(scores))], ["generated"] * len(scores), scores)


def decided(cfg: Any, scores: list[float], status: list[str] | None = None) -> Escalator:
    """The run's escalator as the pipeline builds it: `over_run` over every row's score first."""
    heavy = prep_config(cfg).generators["heavy"]
    view = {"status": status or ["generated"] * len(scores), "clip_score": scores,
            "image_key": [f"{i:040x}" for i in range(len(scores))]}  # as `batch` keys them
    return Escalator(cfg.routing.cascade, "heavy", heavy, **Escalator.over_run(view, cfg.routing.cascade, heavy))


def test_escalate_the_worst_fraction_of_the_runs_drafts() -> None:
    """escalate_fraction 0.25 over 8 drafts: the 2 lowest of the whole run, whatever order they stream in — a
    high-scoring early draft is never escalated (before: a running quantile escalated the first drafts it saw, 0.9
    among them, and left lower ones later as drafts)."""
    cfg = relative_cascade(escalate_fraction=0.25)
    scores = [0.9, 0.1, 0.8, 0.7, 0.05, 0.6, 0.95, 0.02]
    esc = decided(cfg, scores)
    first, second = esc(scored(scores[:4])), esc(scored(scores[4:]))
    routes = list(first["route"]) + list(second["route"])
    assert [s for s, r in zip(scores, routes, strict=True) if r == "escalated"] == [0.05, 0.02]


def test_the_fraction_counts_scored_drafts_only_and_ties_break_by_key() -> None:
    """Unscored drafts, errors and cached rows are not drafts to rank; equal scores are ranked by image key, so
    the count is exact: ceil(0.5 x 4 scored) = 2 of four equal scores, the two smallest keys."""
    cfg = relative_cascade(escalate_fraction=0.5)
    scores = [0.3, 0.3, float("nan"), 0.3, 0.3, 0.1]
    status = ["generated", "generated", "generated", "generated", "generated", "error"]
    esc = decided(cfg, scores, status)
    b = scored(scores)
    b["status"] = np.array(status, dtype=object)
    assert list(esc(b)["route"]) == ["escalated", "escalated", "draft", "draft", "draft", "draft"]


def test_a_relative_policy_is_never_decided_from_part_of_the_run() -> None:
    cfg = relative_cascade(escalate_fraction=0.25)
    with pytest.raises(ValueError, match="decided over the whole run"):
        Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"])  # type: ignore[attr-defined]


def test_escalations_a_budget_buys() -> None:
    cfg = relative_cascade(escalate_budget_usd=0.25)  # heavy images cost $0.10: two of them
    assert escalation_count(cfg.routing.cascade, 0.10, 4) == 2  # type: ignore[attr-defined]
    out = decided(cfg, [0.0, 0.0, 0.0, 0.0])(scored([0.0, 0.0, 0.0, 0.0]))
    assert list(out["route"]).count("escalated") == 2
    low, high = cfg.routing.cost_range({"sleepy": 0.01, "heavy": 0.10}, 4)
    assert (low, high) == pytest.approx((0.04, 0.24))


@pytest.mark.parametrize(("policy", "match"), [
    ({}, "set exactly one of threshold"),
    ({"threshold": 0.5, "escalate_fraction": 0.2}, "set exactly one of threshold"),
    ({"escalate_fraction": 1.5}, "less than or equal to 1"),
])
def test_one_escalation_policy(policy: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        relative_cascade(**policy)
