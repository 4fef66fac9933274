"""The fact verifier (actors/fact_verifier.py): a tiny labelled set of coloured squares trained for a few steps
(jobs/train_verifier.fit), saved as a folder, loaded by the `facts` scorer through `scorer.model` like any model;
score = mean P(yes) of the row's facts, each fact's P(yes) in `facts`; broken folders refused in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from imagefleet.actors.fact_verifier import (
    FactVerifier,
    VerifierConfig,
    fact_verifier_problem,
    is_fact_verifier,
    save_verifier,
    words,
)
from imagefleet.actors.facts_scorer import FactsScorer
from imagefleet.configs.scorer import FactsScorerConfig
from imagefleet.jobs.train_verifier import Labelled, fit, vocabulary
from tests.unit.test_facts_scorer import batch

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


def squares(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """n 32 x 32 white images with one red or blue square somewhere; which colour, per image."""
    rng = np.random.default_rng(seed)
    images, shown = [], []
    for _ in range(n):
        colour = str(rng.choice(list(COLOURS)))
        image = np.full((32, 32, 3), 255, np.uint8)
        y, x = rng.integers(2, 20, size=2)
        image[y:y + 10, x:x + 10] = COLOURS[colour]
        images.append(image)
        shown.append(colour)
    return images, shown


def labelled(images: list[np.ndarray], shown: list[str]) -> Labelled:
    facts = [(i, f"there is a {c} square", c == s) for i, s in enumerate(shown) for c in COLOURS]
    return Labelled(np.stack(images), np.array([i for i, _, _ in facts]), [f for _, f, _ in facts],
                    np.array([h for _, _, h in facts]))


@pytest.fixture(scope="module")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    data = labelled(*squares(48, seed=0))
    cfg = VerifierConfig(vocab=vocabulary(data.facts), image_size=32, trunk=(8, 16, 16), film=(16, 16, 16),
                         word_dim=8, head_dim=16)
    network, record = fit(data, cfg, steps=120, batch_images=16, seed=0, lr=5e-3)
    assert record["steps"] == 120 and record["fact_labels"] == 96
    return save_verifier(tmp_path_factory.mktemp("verifier") / "v", cfg, network, {"trained": record})


def test_the_folder_is_a_verifier_config_and_weights(verifier: Path) -> None:
    config = json.loads((verifier / "config.json").read_text())
    assert config["kind"] == "imagefleet-fact-verifier" and config["format"] == 1
    assert config["vocab"] == ["a", "blue", "is", "red", "square", "there"] and config["image_size"] == 32
    assert config["trained"]["steps"] == 120
    assert (verifier / "model.safetensors").is_file()
    assert is_fact_verifier(str(verifier)) and fact_verifier_problem(str(verifier)) == ""
    assert FactsScorer.check_model(FactsScorerConfig(model=str(verifier))) == ""


def test_words_and_tokens() -> None:
    cfg = VerifierConfig(vocab=("a", "red", "square"), max_words=4)
    assert words("A red-square, 2x!") == ["a", "red", "square", "2x"]
    assert cfg.tokens("a red square is here") == [2, 3, 4, 1]  # unknown words read as <unk> (1)
    assert cfg.tokens("red") == [3, 0, 0, 0]


def test_it_learns_the_facts_of_unseen_images(verifier: Path) -> None:
    images, shown = squares(32, seed=1)
    model = FactVerifier(str(verifier))
    p = model.p_yes([im for im in images for _ in COLOURS], [f"there is a {c} square" for _ in images for c in COLOURS])
    truth = [c == s for s in shown for c in COLOURS]
    assert np.mean([(q > 0.5) == t for q, t in zip(p, truth, strict=True)]) >= 0.9


def test_the_facts_scorer_loads_the_folder_and_scores_the_mean(verifier: Path, caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    images, shown = squares(3, seed=2)
    facts = [["there is a red square", "there is a blue square"], ["there is a red square"], None]
    with caplog.at_level(logging.WARNING):
        scorer = FactsScorer(FactsScorerConfig(model=str(verifier), answer="Oui"))
    assert "scorer.answer has no effect" in caplog.text
    out = scorer(batch(images, ["a square", "a square", "there is a blue square"], facts))
    model = FactVerifier(str(verifier))
    recorded = [json.loads(f) if f else None for f in out["facts"]]
    assert [f["fact"] for f in recorded[0]] == facts[0] and [f["fact"] for f in recorded[1]] == facts[1]
    assert recorded[2] is None  # no facts: the prompt is read as the one fact, nothing recorded
    assert out["clip_score"][0] == pytest.approx(np.mean(model.p_yes([images[0]] * 2, facts[0])), abs=1e-5)
    assert out["clip_score"][1] == pytest.approx(recorded[1][0]["p_yes"])
    assert out["clip_score"][2] == pytest.approx(model.p_yes([images[2]], ["there is a blue square"])[0], abs=1e-5)
    assert list(out["error"]) == ["", "", ""]


def test_images_of_another_size_are_resized(verifier: Path) -> None:
    big = np.full((80, 48, 3), 255, np.uint8)
    big[10:40, 10:30] = COLOURS["red"]
    p_red, p_blue = FactVerifier(str(verifier)).p_yes([big, big], ["there is a red square", "there is a blue square"])
    assert 0 <= p_blue < p_red <= 1


@pytest.mark.parametrize(("damage", "says"), [
    (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda d: (d / "config.json").write_text(json.dumps({"kind": "imagefleet-fact-verifier", "format": 9})),
     "can't read (verifier format 9; this imagefleet reads format 1)"),
    (lambda d: (d / "config.json").write_text(json.dumps({"kind": "imagefleet-fact-verifier", "format": 1})),
     "can't read (verifier config.json:"),
])
def test_a_broken_verifier_folder_is_one_line(tmp_path: Path, verifier: Path, damage: object, says: str) -> None:
    import shutil

    folder = tmp_path / "v"
    shutil.copytree(verifier, folder)
    damage(folder)  # type: ignore[operator]
    problem = FactsScorer.check_model(FactsScorerConfig(model=str(folder)))
    assert says in problem and "\n" not in problem and problem.startswith("scorer.model: ")


def test_a_folder_of_another_kind_is_left_to_the_vision_language_check(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert not is_fact_verifier(str(tmp_path))
    assert "the scorer needs a vision-language model" in FactsScorer.check_model(FactsScorerConfig(model=str(tmp_path)))
