"""The `facts` scorer: each fact of a prompt asked of a vision-language model (a tiny random LLaVA built offline, the
real `from_pretrained` path); score = mean P(yes), each fact's P(yes) in the manifest's typed `facts` column."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.clip_scorer import score_batch
from imagefleet.actors.facts_scorer import FactsScorer, read_facts
from imagefleet.actors.manifest_types import CODECS, FACTS, decode, encode
from imagefleet.actors.pass_through import PASS_THROUGH
from imagefleet.actors.vqa_scorer import VqaScorer
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.scorer import FactsScorerConfig, VqaScorerConfig
from imagefleet.configs.storage import StoreSpec
from tests.helpers import sleep_job, write_prompts

KEY = "source_facts"  # a prompt-table column named `facts` rides (and is kept) as `source_facts`


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava")


def batch(images: list[np.ndarray], prompts: list[str], facts: list[Any], status: list[str] | None = None
          ) -> dict[str, np.ndarray]:
    """A scorer's input batch; `facts[i]` is row i's facts column value (JSON-ready; '' = no pass-through)."""
    h, w = images[0].shape[:2]
    n = len(images)
    return {"image": np.array([im.tobytes() for im in images], dtype=object),
            "image_mime": np.array([""] * n, dtype=object),
            "width": np.array([w] * n), "height": np.array([h] * n),
            "prompt": np.array(prompts, dtype=object),
            "status": np.array(status or ["generated"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object),
            PASS_THROUGH: np.array([json.dumps({KEY: f}) if f != "" else "" for f in facts], dtype=object)}


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(n)]


# -- config ------------------------------------------------------------------------------------------------------


def with_scorer(scorer: dict[str, Any], **source: Any) -> Any:
    raw = sleep_job("p.parquet", "out", scorer=scorer)
    raw["source"].update(source)
    return parse_config(raw)


@pytest.mark.parametrize(("scorer", "says"), [
    ({"bogus": 1}, "unknown key 'scorer.bogus'; valid keys here: answer, backend, dtype, facts_column,"),
    ({"facts_column": 3}, "scorer.facts_column: Input should be a valid string (got 3)"),
    ({"facts_column": ""}, "scorer.facts_column: String should have at least 1 character"),
    ({"facts_column": " facts"}, "scorer.facts_column ' facts' has spaces around it; write 'facts'"),
    ({"question": "Is it so?"}, "scorer.question must contain {fact}"),
    ({"prompt_question": "Is it so?"}, "scorer.prompt_question must contain {prompt}"),
    ({"max_facts": 0}, "scorer.max_facts: Input should be greater than or equal to 1"),
])
def test_config_refuses_what_it_cant_use_in_one_line(scorer: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_scorer({"backend": "facts", "model": "m", **scorer})
    problem = str(caught.value).splitlines()[1:]
    assert len(problem) == 1 and says in problem[0]


def test_config_defaults_and_is_frozen() -> None:
    cfg = with_scorer({"backend": "facts", "model": "m"}).scorer
    assert isinstance(cfg, FactsScorerConfig) and cfg.facts_column == "facts" and "{fact}" in cfg.question
    with pytest.raises(Exception, match="frozen"):
        cfg.facts_column = "other"


@pytest.mark.parametrize(("value", "facts", "why"), [
    (None, [], ""),
    ([], [], ""),
    (["a red square", " ", None, " a blue circle "], ["a red square", "a blue circle"], ""),
    ("a red square\n\n  a blue circle  \n", ["a red square", "a blue circle"], ""),
    (5, [], "scorer.facts_column 'facts' holds 5 in this row, not facts; write a list of statements"),
    ({"a": 1}, [], "holds {\"a\": 1} in this row, not facts"),
    (["ok", 3], [], "scorer.facts_column 'facts' holds 3 among this row's facts; each fact is a statement (text)"),
    ([["nested"]], [], "holds [\"nested\"] among this row's facts"),
    ([f"fact {k}" for k in range(4)], [], "holds 4 facts in this row (limit scorer.max_facts=3)"),
    (["x" * 21], [], "holds a fact of 21 characters in this row (limit scorer.max_fact_chars=20)"),
])
def test_a_rows_facts_are_read_or_refused_with_a_reason(value: Any, facts: list[str], why: str) -> None:
    cfg = FactsScorerConfig(model="m", max_facts=3, max_fact_chars=20)
    got, problem = read_facts(value, cfg)
    assert got == facts and (why in problem if why else problem == "")
    assert "\n" not in problem


# -- the scorer on a tiny random LLaVA ---------------------------------------------------------------------------


def test_score_is_the_mean_yes_probability_of_the_facts(tiny_vlm: Path) -> None:
    scorer = FactsScorer(FactsScorerConfig(model=str(tiny_vlm)))
    facts = [["a red square", "a blue circle", "the square is left of the circle"], ["one green triangle"]]
    out = scorer(batch(images(2), ["a red square left of a blue circle", "a green triangle"], facts))
    for i in range(2):
        recorded = json.loads(out["facts"][i])
        assert [r["fact"] for r in recorded] == facts[i]  # one result per fact, in order
        assert all(0 < r["p_yes"] < 1 for r in recorded)
        assert out["clip_score"][i] == pytest.approx(sum(r["p_yes"] for r in recorded) / len(recorded))
        assert 0 < out["clip_score"][i] < 1
    assert list(out["error"]) == ["", ""]


def test_a_row_without_facts_is_asked_about_its_whole_prompt(tiny_vlm: Path) -> None:
    scorer = FactsScorer(FactsScorerConfig(model=str(tiny_vlm)))
    vqa = VqaScorer(VqaScorerConfig(model=str(tiny_vlm)))  # same model, same whole-prompt question
    ims, prompts = images(3), ["a red fox", "two owls", "a boat"]
    out = scorer(batch(ims, prompts, [None, [], ""]))  # null, an empty list, a row carrying nothing
    whole = vqa(batch(ims, prompts, [None] * 3))["clip_score"]
    assert list(out["facts"]) == ["", "", ""]
    assert out["clip_score"] == pytest.approx(whole, rel=1e-4)


def test_a_batch_mixing_facts_no_facts_and_bad_facts(tiny_vlm: Path) -> None:
    """Each row's score is its own (left padding; pairs split over passes), whatever else is in its batch."""
    scorer = FactsScorer(FactsScorerConfig(model=str(tiny_vlm), questions_per_pass=2, max_facts=4))
    ims = images(5)
    prompts = ["a red square", "a fox", "an owl", "a <image> token", "a boat"]
    facts: list[Any] = [["a red square", "it is on the left", "the background is white"], None,
                        ["one", "two", "three", "four", "five"], ["a <image> in a fact is plain text"], ["a boat"]]
    out = scorer(batch(ims, prompts, facts, ["generated", "generated", "generated", "generated", "error"]))
    # the facts row, the whole-prompt row, the image-token row: scored as when alone
    for i in (0, 1, 3):
        alone = scorer(batch(ims[i:i + 1], prompts[i:i + 1], facts[i:i + 1]))
        assert out["clip_score"][i] == pytest.approx(alone["clip_score"][0], rel=1e-4)
        assert out["facts"][i] == alone["facts"][0] or json.loads(out["facts"][i]) == pytest.approx(
            json.loads(alone["facts"][0]))
    assert len(json.loads(out["facts"][0])) == 3 and out["facts"][1] == "" and len(json.loads(out["facts"][3])) == 1
    # too many facts: the image is kept unscored, the row says why; a row that isn't `generated` is left alone
    assert math.isnan(out["clip_score"][2]) and out["facts"][2] == "" and out["status"][2] == "generated"
    assert out["error"][2].startswith("scorer.facts_column 'facts' holds 5 facts in this row (limit")
    assert math.isnan(out["clip_score"][4]) and out["error"][4] == "" and out["facts"][4] == ""


def test_best_of_n_keeps_the_best_candidates_details() -> None:
    """`score_batch(detail=...)`: a best-of-N row records what the scorer said about the candidate it keeps."""
    pixels = [np.full((4, 4, 3), v, np.uint8) for v in (10, 200, 90)]
    b = {"image": np.array([b""], dtype=object), "image_mime": np.array([""], dtype=object),
         "width": np.array([4]), "height": np.array([4]), "seed": np.array([1]),
         "prompt": np.array(["p"], dtype=object), "status": np.array(["generated"], dtype=object),
         "candidate_images": np.array([[p.tobytes() for p in pixels]], dtype=object),
         "candidate_seeds": np.array(["1,2,3"], dtype=object), "candidate_mimes": np.array([",,"], dtype=object),
         "candidate_sizes": np.array(["4x4,4x4,4x4"], dtype=object)}

    def score(ims: list[np.ndarray], texts: list[str]) -> list[tuple[float, str]]:
        assert texts == ["row 0"] * 3
        return [(float(im.mean()), f"mean {im.mean():.0f}") for im in ims]

    out = score_batch(b, score, texts=["row 0"], detail="notes")
    assert out["seed"][0] == 2 and out["clip_score"][0] == 200 and list(out["notes"]) == ["mean 200"]
    assert [c["seed"] for c in json.loads(out["candidates"][0])] == [1, 2, 3]


def test_facts_codec_round_trips() -> None:
    flat = ['[{"fact": "a red square", "p_yes": 0.25}, {"fact": "ünïcode", "p_yes": null}]', ""]
    typed = encode("facts", pa.array(flat, pa.string()))
    assert typed.type == CODECS["facts"].type == FACTS
    assert typed.to_pylist() == [[{"fact": "a red square", "p_yes": 0.25}, {"fact": "ünïcode", "p_yes": None}], None]
    assert decode("facts", typed).to_pylist() == flat


# -- the plan and a run ------------------------------------------------------------------------------------------


def test_the_plan_refuses_a_facts_column_that_wont_reach_the_scorer() -> None:
    from imagefleet.pipelines.plan import PlanError, make_plan
    from tests.unit.test_plan import STORES

    scorer = {"backend": "facts", "model": "m"}
    assert make_plan(with_scorer(scorer), STORES, ["prompt", "facts"], 10).stages[-2].actor is FactsScorer
    with pytest.raises(PlanError, match=r"^scorer.facts_column 'facts' is not a column of the data the run can "
                                        r"carry \(missing, or read as the prompt"):
        make_plan(with_scorer(scorer), STORES, ["prompt"], 10)
    with pytest.raises(PlanError, match=r"^scorer.facts_column 'claims' reaches the scorer as a pass-through column, "
                                        r"but source.pass_through=\['sku'\] leaves it out; add 'claims' to it$"):
        make_plan(with_scorer({**scorer, "facts_column": "claims"}, pass_through=["sku"]), STORES, ["prompt", "sku"],
                  10)
    assert make_plan(with_scorer(scorer, pass_through=["facts"]), STORES, ["prompt", "facts"], 10)


def test_a_run_records_typed_facts_and_a_rerun_carries_them(tmp_path: Path, tiny_vlm: Path) -> None:
    """In process: facts from the table's list<string> column, scored; plain pyarrow reads the typed column (and
    the table's own column, kept as `source_facts`); a rerun makes nothing and carries every row's facts."""
    import imagefleet

    facts = [["a red fox", "the fox sits"], None, [], ["an owl", "at night", "on a branch"]]
    write_prompts(tmp_path / "in" / "p.parquet", {"prompt": ["a red fox sitting", "a boat", "a tree", "an owl"],
                                                  "facts": pa.array(facts, pa.list_(pa.string()))})
    raw = sleep_job(tmp_path / "in" / "p.parquet", str(tmp_path / "out"),
                    scorer={"backend": "facts", "model": str(tiny_vlm), "pool": {"batch_size": 3}})
    raw["cluster"]["executor"] = "in_process"
    first = imagefleet.run(raw, echo=None)
    assert first.summary is not None and first.summary.num_ok == 4
    parts = json.loads((tmp_path / "out" / "manifest" / "_manifest.json").read_text())["parts"]
    table = pa.concat_tables(pq.read_table(tmp_path / "out" / p) for p in parts)  # no imagefleet reader
    assert table.schema.field("facts").type == FACTS
    assert table.schema.field("source_facts").type == pa.list_(pa.string())
    rows = {r["prompt"]: r for r in table.to_pylist()}
    for prompt, asked in zip(["a red fox sitting", "a boat", "a tree", "an owl"], facts, strict=True):
        r = rows[prompt]
        assert r["status"] == "ok" and r["error"] == "" and 0 < r["clip_score"] < 1
        if asked:
            assert [f["fact"] for f in r["facts"]] == asked
            assert r["clip_score"] == pytest.approx(sum(f["p_yes"] for f in r["facts"]) / len(asked))
        else:
            assert r["facts"] is None  # asked about the whole prompt
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0 and again.summary.num_already_present == 4
    from imagefleet.pipelines.manifest import read_manifest_columns

    rerun = read_manifest_columns(str(tmp_path / "out"), StoreSpec(kind="local"),
                                  ["prompt", "facts", "clip_score"]).to_pylist()
    assert {r["prompt"]: (r["facts"], r["clip_score"]) for r in rerun} == {
        p: (r["facts"], r["clip_score"]) for p, r in rows.items()}
