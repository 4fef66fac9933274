"""The VQA-style scorer on a tiny random LLaVA built offline (the real `from_pretrained` path), and the driver's
check that a scorer model can be loaded before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefleet.actors.clip_scorer import ClipScorer
from imagefleet.actors.vqa_scorer import VqaScorer
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.scorer import ClipScorerConfig, VqaScorerConfig
from tests.helpers import sleep_job


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava")


def batch(images: list[np.ndarray], prompts: list[str], status: list[str]) -> dict[str, np.ndarray]:
    h, w = images[0].shape[:2]
    return {"image": np.array([im.tobytes() for im in images], dtype=object),
            "image_mime": np.array([""] * len(images), dtype=object),
            "width": np.array([w] * len(images)), "height": np.array([h] * len(images)),
            "prompt": np.array(prompts, dtype=object), "status": np.array(status, dtype=object)}


def test_vqa_scores_are_yes_probabilities_per_image(tiny_vlm: Path) -> None:
    scorer = VqaScorer(VqaScorerConfig(model=str(tiny_vlm)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    out = scorer(batch(images, ["a red fox", "two blue squares left of a circle", "x"],
                       ["generated", "generated", "error"]))
    scores = out["clip_score"]
    assert 0 < scores[0] < 1 and 0 < scores[1] < 1 and np.isnan(scores[2])  # only fresh images are scored
    alone = scorer(batch(images[1:2], ["two blue squares left of a circle"], ["generated"]))["clip_score"][0]
    assert alone == pytest.approx(scores[1], rel=1e-4)  # left padding: a row's score doesn't depend on its batch
    other = scorer(batch(images[:1], ["a red fox"], ["generated"]))
    assert other["clip_score"][0] == pytest.approx(scores[0], rel=1e-4)
    plain = VqaScorer(VqaScorerConfig(model=str(tiny_vlm), question="Is this {prompt}?", answer="no"))
    assert plain(batch(images[:1], ["a red fox"], ["generated"]))["clip_score"][0] != pytest.approx(scores[0])


def test_an_undecodable_provider_file_stays_unscored(tiny_vlm: Path) -> None:
    scorer = VqaScorer(VqaScorerConfig(model=str(tiny_vlm)))
    b = batch([np.zeros((32, 32, 3), np.uint8)], ["p"], ["generated"])
    b["image"] = np.array([b"\x89PNG\r\n\x1a\n truncated"], dtype=object)
    b["image_mime"] = np.array(["image/png"], dtype=object)
    assert np.isnan(scorer(b)["clip_score"][0])


def test_a_scorer_model_that_cant_load_is_refused_before_work(tiny_vlm: Path, tmp_path: Path,
                                                              tiny_model: Path) -> None:
    from imagefleet.actors.storage import StorageError
    from imagefleet.jobs.preflight import resolve_stores

    def with_scorer(scorer: dict[str, Any]) -> Any:
        raw = sleep_job("p.parquet", str(tmp_path / "out"), scorer=scorer)
        return parse_config(raw)

    assert VqaScorer.check_model(VqaScorerConfig(model=str(tiny_vlm))) == ""
    assert VqaScorer.check_model(VqaScorerConfig(model="llava-hf/llava-1.5-7b-hf")) == ""  # hub ids: the actor's
    missing = VqaScorer.check_model(VqaScorerConfig(model=str(tmp_path / "nope")))
    assert missing == f"scorer.model: local folder {tmp_path / 'nope'} does not exist"
    wrong = VqaScorer.check_model(VqaScorerConfig(model=str(tiny_model / "unet")))
    assert "is not a transformers model folder" in wrong
    clip_for_vqa = ClipScorer.check_model(ClipScorerConfig(model=str(tiny_vlm)))
    assert clip_for_vqa.endswith("is a 'llava' model; the scorer needs a CLIP model (clip)")
    with pytest.raises(StorageError, match="scorer.model: local folder .* does not exist"):
        resolve_stores(with_scorer({"backend": "vqa", "model": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="must contain {prompt}"):
        with_scorer({"backend": "vqa", "model": "m", "question": "Is it good?"})
