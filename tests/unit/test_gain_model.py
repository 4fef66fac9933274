"""Predictive routing without Ray (issue #32): the gain model (hashed words, ridge in closed form), its folder, and
what the preprocessor, the escalator, the plan and the cost estimate make of `routing.cascade.predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from imagefleet.actors.escalator import Escalator
from imagefleet.actors.gain_model import (
    PREDICTED,
    GainModelError,
    GainRouter,
    fit,
    hashed,
    heavy_above_for_share,
    load,
    save,
    tokens,
    train,
)
from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.configs import ConfigError
from imagefleet.configs.loader import parse_config
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.plan import PlanError, Stores, make_plan
from imagefleet.pipelines.slices import prep_config
from tests.unit.test_fleet import fleet
from tests.unit.test_golden_keys import _job

ANIMALS = {"cat": 0.3, "dog": -0.2, "bird": 0.0}


def animal_rows(n: int = 300, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Prompts whose gain is their animal's plus 0.1 when red, plus a little noise."""
    rng = np.random.default_rng(seed)
    prompts = [f"a {['red', 'blue'][i % 2]} {list(ANIMALS)[i % 3]} number {i}" for i in range(n)]
    gains = [ANIMALS[p.split()[2]] + (0.1 if "red" in p else 0.0) + rng.normal(0, 0.03) for p in prompts]
    return prompts, np.array(gains)


def model_folder(tmp_path: Path) -> Path:
    """A gain model trained on `animal_rows`: cats gain, dogs lose."""
    prompts, gains = animal_rows()
    save(tmp_path / "gm", train(prompts, gains, buckets=512), {"manifests": []})
    return tmp_path / "gm"


def test_features_are_hashed_words_and_word_pairs_deterministically() -> None:
    assert tokens("A red-Cat, sits!", 2) == ["a", "red", "cat", "sits", "a red", "red cat", "cat sits"]
    assert tokens("A red cat", 1) == ["a", "red", "cat"]
    idx, val = hashed("a red cat", 64, 2)
    again = hashed("a red cat", 64, 2)
    assert list(idx) == list(again[0]) and list(val) == list(again[1])  # no salted hash: the same in every process
    assert float(val @ val) == pytest.approx(1.0) and list(idx) == sorted(idx)
    assert len(hashed("!!", 64, 2)[0]) == 0  # no words: no features (the model predicts its intercept)


def test_ridge_learns_what_words_add_and_reports_its_held_out_fit() -> None:
    prompts, gains = animal_rows()
    trained = train(prompts, gains, buckets=512)
    fit_ = trained.fit
    assert fit_["rows"] == 300 and 30 <= fit_["held_out_prompts"] <= 90 and trained.held.sum() == fit_["held_out_rows"]
    assert fit_["held_out_r2"] > 0.8 and fit_["held_out_rank_correlation"] > 0.8
    assert fit_["lambda"] in (0.01, 0.1, 1.0, 10.0, 100.0) and set(fit_["per_lambda"]) == {"0.01", "0.1", "1.0",
                                                                                          "10.0", "100.0"}
    red_cat, blue_dog = trained.model.predict(["a red cat", "a blue dog"])
    assert red_cat > 0.25 and blue_dog < -0.1
    shares = heavy_above_for_share(trained.predicted)
    assert list(shares) == ["0.05", "0.1", "0.2", "0.3", "0.4", "0.5"]
    assert list(shares.values()) == sorted(shares.values(), reverse=True)  # a bigger share needs a lower threshold
    assert np.mean(trained.predicted > shares["0.2"]) == pytest.approx(0.2, abs=0.05)
    assert train(prompts, gains, buckets=512).model.predict_one("a red cat") == red_cat  # deterministic


def test_the_dual_and_primal_solutions_agree() -> None:
    """Fewer rows than buckets solves the n x n dual system; it is the same ridge solution."""
    prompts, gains = animal_rows(40)
    dual = fit(prompts, gains, 64, 2, 1.0)  # 40 rows < 64 buckets
    from imagefleet.actors.gain_model import features

    x = features(prompts, 64, 2)
    xc = x - x.mean(axis=0)
    w = np.linalg.solve(xc.T @ xc + np.eye(64), xc.T @ (gains - gains.mean()))
    assert np.allclose(dual.weights, w, atol=1e-9)
    assert fit(prompts * 2, np.concatenate([gains, gains]), 64, 2, 1.0).weights.shape == (64,)  # 80 rows: primal


def test_the_folder_round_trips_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    doc = json.loads((folder / "router.json").read_text())
    assert doc["format"] == "imagefleet-gain-model/1" and doc["features"]["buckets"] == 512
    assert {"fit", "predicted_gain_quantiles", "heavy_above_for_share", "manifests", "target"} <= set(doc)
    model = load(folder)
    assert model.predict_one("a red cat") == train(*animal_rows(), buckets=512).model.predict_one("a red cat")
    with pytest.raises(GainModelError, match="has no router.json"):
        load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "router.json").write_text("{not json")
    with pytest.raises(GainModelError, match="not a readable gain model"):
        load(tmp_path / "bad")
    (folder / "router.json").write_text(json.dumps({**doc, "format": "other/9"}))
    with pytest.raises(GainModelError, match="format 'other/9'"):
        load(folder)
    (folder / "router.json").write_text(json.dumps({**doc, "features": {**doc["features"], "buckets": 64}}))
    with pytest.raises(GainModelError, match="512,\\) weights for 64 buckets"):
        load(folder)


def predicting(tmp_path: Path, raw: dict[str, Any], heavy_above: float = 0.1) -> tuple[Any, GainRouter]:
    """`raw`'s cascade with predictive routing by the animal model; the config and its router."""
    raw["routing"]["cascade"]["predict"] = {"model": str(model_folder(tmp_path)), "heavy_above": heavy_above}
    cfg = parse_config(raw)
    return cfg, GainRouter(model=load(cfg.routing.cascade.predict.model), heavy_above=heavy_above, heavy="heavy")


def test_a_predicted_row_is_keyed_as_its_escalation_and_other_keys_stay(tmp_path: Path) -> None:
    """The golden job: 'a red fox' predicted (a cat-like gain is forced by a threshold below every prediction) is
    made by the heavy generator with the key its escalation has in test_golden_keys; a row not predicted keeps its
    draft key, also with adaptive drafts (whose draft keys name the rule; the heavy key names none)."""
    for cascade in ({}, {"max_drafts": 2, "redraw_below": 0.3}):
        raw = _job(routing={"mode": "cascade", "default": "draft", "cascade": {
            "draft": "draft", "escalate": "heavy", "threshold": 0.5, **cascade}}, scorer={"backend": "rule"})
        plain_cfg = parse_config(raw)
        table = pa.table({"id": ["a", "b"], "prompt": ["a red fox", "a blue bird"], "num_steps": [None, 3]})
        plain = PromptPreprocessor(prep_config(plain_cfg))(table)
        cfg, router = predicting(tmp_path, raw)
        router = GainRouter(model=router.model, heavy_above=-1e9, heavy="heavy")  # every row predicted
        both = PromptPreprocessor(prep_config(cfg), router=router)(table)
        rows = {str(i): k for k, i in enumerate(both["id"])}
        a, b = rows["a"], rows["b"]
        assert both["image_key"][a] == "b9abfc5487fb0acf2a56ac669f1548df08de90a2"  # test_golden_keys' escalation
        assert both["image_key"][b] == "f5a08d8786a123cf9d15f8fd9a2889aab05d444e"  # its num_steps=3 kept
        assert list(both["route"]) == [PREDICTED, PREDICTED] and set(both["generator"]) == {"heavy"}
        assert (both["width"][a], both["height"][a], both["num_steps"][a]) == (128, 96, 8)
        none = GainRouter(model=router.model, heavy_above=1e9, heavy="heavy")  # no row predicted: keys unchanged
        same = PromptPreprocessor(prep_config(cfg), router=none)(table)
        assert list(same["image_key"]) == list(plain["image_key"]) and list(same["route"]) == ["", ""]
        assert "route" not in plain


def test_predicted_rows_count_at_the_heavy_price_and_keep_their_draft_when_heavy_cant_make_them(
        tmp_path: Path) -> None:
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "escalate_fraction": 0.5})
    raw["scorer"] = {"backend": "rule"}
    raw["limits"] = {"budget_usd": 0.25}
    raw["generators"]["heavy"]["defaults"] = {"width": 16, "height": 16, "max_pixels": 1024}
    cfg, router = predicting(tmp_path, raw)
    out = PromptPreprocessor(prep_config(cfg), router=router)(pa.table({
        "prompt": ["a red cat 1", "a red cat 2", "a red cat 3", "a blue dog", "a red cat big"],
        "width": [None, None, None, None, 64], "height": [None, None, None, None, 64]}))
    rows = {str(p): k for k, p in enumerate(out["prompt"])}
    big = rows["a red cat big"]  # 64x64 is over the heavy generator's max_pixels: drafted, as an escalation would
    assert out["route"][big] == "" and out["generator"][big] == "sleepy"
    heavy = [k for k in range(5) if out["route"][k] == PREDICTED]
    assert len(heavy) == 3 and {out["generator"][k] for k in heavy} == {"heavy"}
    assert out["route"][rows["a blue dog"]] == "" and out["generator"][rows["a blue dog"]] == "sleepy"
    # $0.25: two heavy images ($0.10 each) and the drafts ($0.01) fit in the order settled; the third cat doesn't
    statuses = sorted(str(out["status"][k]) for k in heavy)
    assert statuses == ["pending", "pending", "skipped"]


def test_the_escalator_keeps_predicted_rows_out_of_the_draft_population(tmp_path: Path) -> None:
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "escalate_fraction": 0.5})
    cfg, router = predicting(tmp_path, {**raw, "scorer": {"backend": "rule"}})
    batch = {k: np.asarray(v) for k, v in PromptPreprocessor(prep_config(cfg), router=router)(pa.table({
        "prompt": ["a red cat", "a blue dog 1", "a blue dog 2", "a blue dog 3", "a blue dog 4"]})).items()}
    drafted = batch["route"] != PREDICTED
    assert drafted.sum() == 4
    batch["status"] = np.where(drafted, "generated", "pending").astype(object)
    batch["clip_score"] = np.where(drafted, np.arange(5) / 10, np.nan)
    batch["image"] = np.array([b"x" if d else b"" for d in drafted], dtype=object)
    cut = Escalator.over_run(batch, cfg.routing.cascade, prep_config(cfg).generators["heavy"])
    out = Escalator(cfg.routing.cascade, "heavy", prep_config(cfg).generators["heavy"], **cut)(batch)
    assert sorted(out["route"]) == ["draft", "draft", "escalated", "escalated", PREDICTED]  # half of the 4 drafts
    predicted = int(np.flatnonzero(~drafted)[0])
    assert out["status"][predicted] == "pending" and out["draft_image_key"][predicted] == ""
    assert out["image_key"][predicted] == batch["image_key"][predicted]


def test_the_cost_range_spans_every_split_between_drafts_and_heavy(tmp_path: Path) -> None:
    per_image = {"sleepy": 0.01, "heavy": 0.10}
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "escalate_fraction": 0.2})
    plain = parse_config({**raw, "scorer": {"backend": "rule"}}).routing
    assert plain.cost_range(per_image, 100) == pytest.approx((1.0, 3.0))
    cfg, _ = predicting(tmp_path, {**raw, "scorer": {"backend": "rule"}})
    assert cfg.routing.cost_range(per_image, 100) == pytest.approx((1.0, 10.0))  # all drafted .. all heavy
    raw["routing"]["cascade"] = {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5, "max_escalations": 10}
    cfg, _ = predicting(tmp_path, {**raw, "scorer": {"backend": "rule"}})
    # the most: 90 rows straight to heavy and 10 drafts all escalated ($9.00 + $0.10 + $1.00)
    assert cfg.routing.cost_range(per_image, 100) == pytest.approx((1.0, 10.1))


def test_the_option_is_typed_and_a_bad_folder_stops_the_plan(tmp_path: Path) -> None:
    raw = fleet(mode="cascade", cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5,
                                         "predict": {"model": "m", "heavy_above": 0.1, "share": 0.2}})
    with pytest.raises(ConfigError, match="share"):
        parse_config({**raw, "scorer": {"backend": "rule"}})
    raw["routing"]["cascade"]["predict"] = {"model": "m"}
    with pytest.raises(ConfigError, match="heavy_above"):
        parse_config({**raw, "scorer": {"backend": "rule"}})
    raw["routing"]["cascade"]["predict"] = {"model": str(tmp_path / "absent"), "heavy_above": 0.1}
    cfg = parse_config({**raw, "scorer": {"backend": "rule"}})
    stores = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))
    with pytest.raises(PlanError, match=r"^routing.cascade.predict.model: .*absent has no router.json"):
        make_plan(cfg, stores, ["prompt"], 8)
    cfg, _ = predicting(tmp_path, {**raw, "scorer": {"backend": "rule"}})
    plan = make_plan(cfg, stores, ["prompt"], 8)
    plan.check()
    prep = plan.stages[0]
    assert "route" in prep.writes and isinstance(prep.kwargs["router"], GainRouter)
    assert prep.kwargs["router"].heavy == "heavy" and prep.kwargs["router"].heavy_above == 0.1
