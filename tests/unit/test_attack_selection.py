"""Adversarial tests of #14: best-of-N selection (generation + scoring), the VQA scorer, report evaluations.

Unit level, no Ray: run_generation with a fake backend, score_batch with a fake score function.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.backend_io import Outcome, Request, encoded_info
from imagefleet.actors.clip_scorer import score_batch
from imagefleet.actors.generation import candidate_seed, run_generation

W = H = 16


def rows(n: int = 1, candidates: int = 3, seed: int = 1234) -> dict[str, np.ndarray]:
    """n pending best-of rows as the preprocessor makes them."""
    return {
        "status": np.array(["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "prompt": np.array([f"p{i}" for i in range(n)], dtype=object),
        "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.array([seed + i for i in range(n)], dtype=np.int64),
        "width": np.array([W] * n, dtype=np.int32),
        "height": np.array([H] * n, dtype=np.int32),
        "num_steps": np.array([1] * n, dtype=np.int32),
        "guidance_scale": np.array([0.0] * n),
        "image_key": np.array([f"{i:040x}" for i in range(n)], dtype=object),
        "generator": np.array(["g"] * n, dtype=object),
        "enqueued_at": np.array([0.0] * n),
        "num_candidates": np.array([candidates] * n, dtype=np.int32),
    }


def generate_with(answer: Any) -> Any:
    """A backend whose answer for each candidate request is `answer(request)`."""
    def generate(requests: Sequence[Request]) -> list[Any]:
        return [answer(r) for r in requests]
    return generate


def run(batch: dict[str, np.ndarray], generate: Any, usd_per_image: float = 0.01) -> dict[str, np.ndarray]:
    return run_generation(batch, batch_size=8, generate=generate, is_fatal=lambda e: False, usd_per_second=0.0,
                          usd_per_image=usd_per_image, name="g")


def brightness(images: list[np.ndarray], prompts: list[str]) -> list[float]:
    return [float(im.mean()) / 255 for im in images]


def grey(level: int, w: int = W, h: int = H) -> np.ndarray:
    return np.full((h, w, 3), level, np.uint8)


def request_of(batch: dict[str, np.ndarray], i: int = 0) -> Request:
    return Request(prompt=str(batch["prompt"][i]), negative_prompt="", seed=int(batch["seed"][i]), width=W,
                   height=H, num_steps=1, guidance_scale=0.0, key=str(batch["image_key"][i]))


# -- best-of-N: which candidate's seed is recorded -----------------------------------------------------------------

def test_best_of_a_lone_surviving_candidate_is_recorded_with_its_own_seed() -> None:
    """Candidates 0 and 2 fail, candidate 1 is made: the kept image is candidate 1's, so `seed` must be candidate 1's
    seed (the manifest says `seed` is the winner's) and `candidates` must list it."""
    b = rows(candidates=3)
    req = request_of(b)
    survivor = candidate_seed(req, 1)

    def answer(r: Request) -> Any:
        return grey(100) if r.seed == survivor else Outcome(error="transient provider error")

    generated = run(b, generate_with(answer))
    assert generated["status"][0] == "generated"
    scored = score_batch(generated, brightness)
    assert np.frombuffer(scored["image"][0], np.uint8).mean() == 100  # candidate 1's image is kept ...
    assert int(scored["seed"][0]) == survivor, (  # ... but the row reports candidate 0's (failed) seed
        f"kept image was made with seed {survivor}, manifest seed says {int(scored['seed'][0])}")
    assert scored["candidates"][0], "the candidates column is empty for a best-of row that made one candidate"


# -- best-of-N: rows whose candidates were all skipped or refused --------------------------------------------------

def test_best_of_every_candidate_skipped_by_budget_is_a_skipped_row() -> None:
    """A hosted generator skips requests once the run's budget is spent by actual spend (Outcome.skipped); a plain
    row then becomes `skipped`, which a rerun with a bigger budget redoes. A best-of row whose every candidate was
    skipped must be `skipped` too — as `error` it is carried over as a failure by every rerun (resume_index keeps
    error rows unless --retry-failed) and it counts toward max_error_fraction."""
    skip = Outcome(skipped="limits.budget_usd=1 reached by actual spend; rerun with a larger budget to continue")
    plain = run({**rows(candidates=1)}, generate_with(lambda r: skip))
    assert plain["status"][0] == "skipped"  # the single-candidate behaviour
    best = run(rows(candidates=3), generate_with(lambda r: skip))
    assert best["status"][0] == "skipped", f"got {best['status'][0]!r}: {best['error'][0]!r}"


def test_best_of_every_candidate_refused_is_a_refused_row() -> None:
    """Content-policy refusals: a plain row is `refused` (not an error; a rerun tries again); a best-of row whose
    every candidate was refused must not turn into an `error` row."""
    refuse = Outcome(refusal="content policy", requests=1)
    plain = run(rows(candidates=1), generate_with(lambda r: refuse))
    assert plain["status"][0] == "refused"
    best = run(rows(candidates=2), generate_with(lambda r: refuse))
    assert best["status"][0] == "refused", f"got {best['status'][0]!r}: {best['error'][0]!r}"


# -- best-of-N: scores -----------------------------------------------------------------------------------------------

def test_best_of_a_nan_score_never_beats_a_real_one() -> None:
    """A scorer can answer NaN for one candidate (fp16 overflow, a degenerate image). max() with NaN keeps whatever
    came first, so candidate 0 (NaN) wins over candidate 1 (0.9) and the row's score becomes NaN (a cascade would
    then never escalate it, and the report drops it)."""
    b = rows(candidates=2)
    generated = run(b, generate_with(lambda r: grey(10 if r.seed == int(b["seed"][0]) else 200)))
    scored = score_batch(generated, lambda images, prompts: [math.nan if im.mean() < 50 else 0.9 for im in images])
    assert scored["clip_score"][0] == pytest.approx(0.9), f"row score {scored['clip_score'][0]}"
    assert np.frombuffer(scored["image"][0], np.uint8).mean() == 200
    assert int(scored["seed"][0]) == candidate_seed(request_of(b), 1)


# -- best-of-N: provider files ----------------------------------------------------------------------------------------

def encoded(level: int, w: int, h: int, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grey(level, w, h)).save(buf, format=fmt)
    return buf.getvalue()


def test_best_of_provider_file_winner_keeps_its_own_type_and_size() -> None:
    """Hosted candidates are provider files whose size and type come from the file (Gemini picks sizes). The row's
    image_mime/width/height must describe the kept file; they are the last candidate's instead, so the writer
    stores a PNG under the JPEG candidate's type and the manifest records the wrong size."""
    b = rows(candidates=2)
    first = int(b["seed"][0])

    def answer(r: Request) -> Outcome:
        if r.seed == first:  # bright PNG 16x16: the best
            return Outcome(encoded=encoded(230, 16, 16, "PNG"), mime="image/png", requests=1, cost_usd=0.04)
        return Outcome(encoded=encoded(20, 24, 16, "JPEG"), mime="image/jpeg", requests=1, cost_usd=0.04)

    scored = score_batch(run(b, generate_with(answer)), brightness)
    assert scored["cost_usd"][0] == pytest.approx(0.08)  # both paid
    mime, w, h = encoded_info(scored["image"][0]) or ("", 0, 0)
    assert mime == "image/png" and (w, h) == (16, 16)  # the kept file is candidate 0's PNG
    got = (str(scored["image_mime"][0]), int(scored["width"][0]), int(scored["height"][0]))
    assert got == ("image/png", 16, 16), f"row says {got} for a 16x16 PNG"


# -- VQA scorer -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava")


def test_vqa_a_prompt_naming_the_image_token_is_not_a_broken_scorer(tiny_vlm: Path) -> None:
    """Prompts are user data. A prompt containing the processor's image token (`<image>`, e.g. from HTML-ish
    product copy) makes LLaVA's processor count two image slots for one image and raise, and the exception fails
    the whole scoring batch (every row of it, and the run: a broken actor). It must be scored (the token in the
    prompt is text) or at worst leave that row unscored."""
    from imagefleet.actors.vqa_scorer import VqaScorer
    from imagefleet.configs.scorer import VqaScorerConfig

    scorer = VqaScorer(VqaScorerConfig(model=str(tiny_vlm)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(2)]
    batch = {"image": np.array([im.tobytes() for im in images], dtype=object),
             "image_mime": np.array(["", ""], dtype=object), "width": np.array([48, 48]),
             "height": np.array([40, 40]), "prompt": np.array(["a sign reading <image>", "a red fox"], dtype=object),
             "status": np.array(["generated", "generated"], dtype=object)}
    out = scorer(batch)
    assert np.isfinite(out["clip_score"][1])  # the innocent neighbour is scored


# -- report evaluations ---------------------------------------------------------------------------------------------

def evaluations_store(tmp_path: Path) -> Any:
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import StoreSpec

    return open_store(str(tmp_path), StoreSpec(kind="local"))


def write_eval(tmp_path: Path, name: str, table: pa.Table) -> None:
    (tmp_path / "evaluations").mkdir(exist_ok=True)
    pq.write_table(table, tmp_path / "evaluations" / name)


def test_report_evaluations_skip_a_corrupt_file(tmp_path: Path) -> None:
    """evaluations/ holds files other tools drop next to the manifest. One unreadable file (a partial upload)
    makes read_evaluations raise, so write_report fails and the whole report is lost (the run says "report not
    written", and `imagefleet report` fails the same way) instead of skipping that file."""
    from imagefleet.pipelines.report import read_evaluations

    write_eval(tmp_path, "a_oracle.parquet", pa.table({"image_key": ["k1"], "oracle": [0.5]}))
    (tmp_path / "evaluations" / "b_partial.parquet").write_bytes(b"PAR1 not really parquet")
    got = read_evaluations(evaluations_store(tmp_path))
    assert got == {"k1": {"oracle": 0.5}}


def test_report_evaluations_nan_is_not_a_measurement(tmp_path: Path) -> None:
    """A NaN metric (an oracle that could not grade an image) is taken as a value: the per-route mean becomes nan
    for every route that image is in. Nulls are skipped; NaN should be too."""
    from imagefleet.pipelines.report import Tally, read_evaluations
    from imagefleet.pipelines.report_page import evaluations_html

    write_eval(tmp_path, "oracle.parquet", pa.table({"image_key": ["k1", "k2"], "oracle": [1.0, math.nan]}))
    evaluations = read_evaluations(evaluations_store(tmp_path))
    tally = Tally(step=1, evaluations=evaluations)
    table = pa.table({"image_key": ["k1", "k2"], "route": ["draft", "draft"], "draft_image_key": ["", ""]})
    tally._metrics(table, np.array([True, True]))
    page = evaluations_html(tally)
    assert "nan" not in page, page


def test_candidates_json_round_trips() -> None:
    """Sanity (holds): the candidates column is valid JSON with one entry per scored candidate."""
    b = rows(candidates=3)
    scored = score_batch(run(b, generate_with(lambda r: grey(r.seed % 200))), brightness)
    cands = json.loads(scored["candidates"][0])
    assert [c["seed"] for c in cands] == [candidate_seed(request_of(b), k) for k in range(3)]
