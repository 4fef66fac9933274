"""The shapes world's v2 grammar (bench/world): vocabulary, oracle on true / changed / shuffled pairs, the fixed
split into evaluation strings and training pool, and training stages that never see an evaluation string."""

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.world import TASKS, oracle, parse, render, sample_prompts
from bench.world.data import _variants, perturb
from bench.world.oracle import blobs
from bench.world.scene import GRAMMARS, SIZE, Group, Spec, render_spec, sample_spec, to_prompt
from bench.world.split import (
    enumerate_strings,
    evaluation_strings,
    is_evaluation,
    sample_training_spec,
    training_strings,
)

V2 = "v2"
PROMPTS = sample_prompts(240, seed=7, grammar=V2)


def test_v2_grammar_is_a_richer_superset_of_v1() -> None:
    v2 = enumerate_strings(V2)
    assert {t: len(v) for t, v in v2.items()} == {"single_object": 4, "two_object": 12, "counting": 84,
                                                  "colors": 24, "position": 2208, "color_attr": 360}
    v1 = enumerate_strings("v1")
    assert sum(map(len, v1.values())) == 651  # v1 as it was (bench/quality_design.grammar's count)
    assert all(set(v1[t]) <= set(v2[t]) for t in TASKS)
    assert {parse(p, V2).task for p in PROMPTS} == set(TASKS)
    assert all(to_prompt(parse(p, V2)) == p for p in PROMPTS)
    assert parse("four cyan diamonds", V2) == Spec("counting", (Group(4, "cyan", "diamond"),), None, V2)
    with pytest.raises(ValueError, match="not a prompt of the shapes world: 'a purple circle'"):
        parse("a purple circle")  # v1 stays v1
    for bad in ("five squares", "a pink diamond", "a circle near a square"):
        with pytest.raises(ValueError, match=r"\(v2 grammar\)"):
            parse(bad, V2)
    with pytest.raises(ValueError, match="unknown grammar 'v3'"):
        parse("a square", "v3")


def test_v2_colours_are_distinct_directions_from_white() -> None:
    dirs = {k: 255 - np.array(v, dtype=float) for k, v in GRAMMARS[V2].colours.items()}
    for a in dirs:
        for b in dirs:
            if a < b:
                cos = dirs[a] @ dirs[b] / np.linalg.norm(dirs[a]) / np.linalg.norm(dirs[b])
                assert np.degrees(np.arccos(cos)) > 25, (a, b)


def test_v2_oracle_passes_ground_truth_of_every_task_and_shape() -> None:
    verdicts = [oracle(p, render(p, seed=i, grammar=V2), V2) for i, p in enumerate(PROMPTS)]
    assert np.mean([v.passed for v in verdicts]) >= 0.99
    for task in TASKS:
        assert np.mean([v.passed for v in verdicts if v.task == task]) >= 0.95, task
    for shape in GRAMMARS[V2].shapes:  # each shape read as itself, in every colour
        for colour in GRAMMARS[V2].colours:
            found = blobs(render(f"a {colour} {shape}", seed=3, grammar=V2), V2)
            assert [(b.colour, b.shape) for b in found] == [(colour, shape)]
    four = render("four purple diamonds", seed=1, grammar=V2)
    assert oracle("four purple diamonds", four, V2).passed and not oracle("three purple diamonds", four, V2).passed


def test_v2_oracle_reads_blurred_truth_and_fails_shuffled_pairs() -> None:
    def blur(image: np.ndarray) -> np.ndarray:
        padded = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
        return np.mean([padded[i:i + SIZE, j:j + SIZE] for i in range(3) for j in range(3)], axis=0).round()

    images = [render(p, seed=i, grammar=V2) for i, p in enumerate(PROMPTS)]
    assert np.mean([oracle(p, blur(im).astype(np.uint8), V2).passed for p, im in zip(PROMPTS, images,
                                                                                     strict=True)]) >= 0.95
    order = list(range(len(PROMPTS)))
    random.Random(0).shuffle(order)
    shuffled = [oracle(PROMPTS[j], images[i], V2) for i, j in enumerate(order)]
    assert np.mean([v.faithfulness for v in shuffled]) < 0.5
    assert np.mean([v.passed for v in shuffled]) < 0.3


def test_v2_oracle_fails_every_one_fact_change_of_the_truth() -> None:
    rng = random.Random(1)
    for i in range(150):
        spec = sample_spec(rng, V2)
        image = render_spec(spec, seed=i)
        for wrong in _variants(spec):  # all of them, not one
            assert not oracle(to_prompt(wrong), image, V2).passed, (to_prompt(spec), to_prompt(wrong))


def test_v1_reads_exactly_as_before() -> None:
    """v1's streams (what bench/world/models was trained on, replayed by bench/quality_design) are unchanged."""
    from bench.quality_design import grammar

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    # as the code before v2 made them
    assert digest("|".join(sample_prompts(5000, seed=11)).encode()) == "3dd7c95e4c6aecf6"
    assert digest(render("three red squares", seed=5).tobytes()) == "e8cedfb67a60041d"
    assert sum(map(len, grammar().values())) == 651
    spec = parse("two red circles")
    assert spec.grammar == "v1" and perturb(spec, random.Random(0)) == perturb(spec, random.Random(0), None)


def test_split_is_fixed_disjoint_and_covers_every_task() -> None:
    held, pool, every = evaluation_strings(), training_strings(), enumerate_strings(V2)
    assert {t: len(v) for t, v in held.items()} == {"single_object": 1, "two_object": 2, "counting": 17,
                                                    "colors": 5, "position": 442, "color_attr": 72}
    assert sum(map(len, held.values())) >= 500
    for task in TASKS:
        assert not set(held[task]) & set(pool[task])
        assert sorted(held[task] + pool[task]) == sorted(every[task])
    assert held["single_object"] == ["a diamond"] and is_evaluation("a diamond") and not is_evaluation("a square")


def test_training_sampler_and_hard_negatives_never_emit_an_evaluation_string() -> None:
    from bench.world.train import sampler

    sample, allowed = sampler(V2)
    assert sample is sample_training_spec and allowed is not None
    rng = random.Random(0)
    specs = [sample(rng) for _ in range(20_000)]
    texts = {to_prompt(s) for s in specs} | {to_prompt(perturb(s, rng, allowed)) for s in specs}
    assert not {t for t in texts if is_evaluation(t)}
    assert {s.task for s in specs} == set(TASKS) and all(s.grammar == V2 for s in specs)
    assert all(perturb(s, rng, allowed) != s for s in specs[:2000])  # every training string has a negative


def test_v2_training_stages_caption_and_render_only_training_strings(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every caption the stages tokenize and every spec they render (clip, vae, draft: smoke-sized runs)."""
    pytest.importorskip("diffusers")
    from bench.world import data, train

    tokenized: list[str] = []
    rendered: list[str] = []
    real_tokens, real_batch = train._tokens, data.batch
    monkeypatch.setattr(train, "_tokens", lambda tok, texts: (tokenized.extend(texts), real_tokens(tok, texts))[1])

    def spy_batch(rng: random.Random, n: int, sample: object = sample_spec) -> object:
        specs, images = real_batch(rng, n, sample)  # type: ignore[arg-type]
        rendered.extend(to_prompt(s) for s in specs)
        return specs, images

    monkeypatch.setattr(data, "batch", spy_batch)
    monkeypatch.setattr(train, "POOL", 256)
    train.main(["--grammar", V2, "--out", str(tmp_path), "--stage", "clip", "--steps", "3"])
    train.main(["--grammar", V2, "--out", str(tmp_path), "--stage", "vae", "--steps", "2"])
    train.main(["--grammar", V2, "--out", str(tmp_path), "--stage", "draft", "--steps", "2"])
    assert len(tokenized) > 200 and len(rendered) > 500
    assert not [t for t in tokenized + rendered if t and is_evaluation(t)]
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert sorted(log) == ["clip", "draft", "vae"] and {s["grammar"] for s in log.values()} == {V2}
    shutil.copytree(tmp_path / "draft", tmp_path / "heavy")  # the heavy stage is the draft's code, wider

    # the evaluation runs the folders on seen and unseen strings apart (a few strings here)
    from bench.world import evaluate

    held, pool = evaluation_strings(), training_strings()
    monkeypatch.setattr(evaluate, "evaluation_strings", lambda: {t: held[t][:1] for t in TASKS})
    monkeypatch.setattr(evaluate, "training_strings", lambda: {t: pool[t][:3] for t in TASKS})
    monkeypatch.setattr(evaluate, "MIN_TASK_IMAGES", 2)
    monkeypatch.setattr(evaluate, "BOOTSTRAP", 20)
    evaluate.main(["--grammar", V2, "--models", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["unseen"]["strings"] == results["seen"]["strings"] == 6
    assert results["unseen"]["images"] == 12 and (tmp_path / "samples.png").exists()
    truth = results["unseen"]["ground_truth"]["faithfulness"]
    assert truth["mean_of_tasks"] == 1.0 and truth["mean_of_tasks_ci"] == [1.0, 1.0]
    assert 0 <= results["unseen"]["ground_truth_through_vae"]["faithfulness"]["pooled"] <= 1
    assert set(results["seen"]["heavy"]["per_task"]) == set(TASKS)
    # a pipeline at other step counts: its own entry, its steps recorded, the default files left alone
    evaluate.main(["--grammar", V2, "--models", str(tmp_path), "--pipelines", "heavy@2",
                   "--out", str(tmp_path / "results_steps.json")])
    steps = json.loads((tmp_path / "results_steps.json").read_text())
    assert steps["unseen"]["heavy@2"]["num_inference_steps"] == 2 and "heavy" not in steps["unseen"]
    assert (tmp_path / "samples_steps.png").exists() and json.loads((tmp_path / "results.json").read_text()) == results
    with pytest.raises(SystemExit):
        evaluate.main(["--grammar", V2, "--pipelines", "heavy@0"])


def test_v2_tokenizer_reads_each_v2_word_as_one_token(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from bench.world.tokenizer import load_tokenizer, write_tokenizer

    write_tokenizer(tmp_path, GRAMMARS[V2].words)
    tok = load_tokenizer(tmp_path)
    for word in GRAMMARS[V2].words:
        assert len(tok(word)["input_ids"]) == 3, word
    longest = max((p for v in enumerate_strings(V2).values() for p in v), key=lambda p: len(tok(p)["input_ids"]))
    assert len(tok(longest)["input_ids"]) <= 16, longest


def test_verifier_data_takes_the_v2_split_and_labels_v2_images() -> None:
    """What the verifier's data needs to move to v2 later: the split, statements and oracle labels read v2."""
    from bench.world.verifier_data import labels, split, statements

    assert split("v2") == (training_strings(), evaluation_strings())
    assert sum(map(len, split()[1].values())) == 130  # v1's verifier split as it was
    spec = parse("four cyan diamonds", V2)
    assert statements(spec) == ["there is a diamond", "there are exactly four cyan diamonds"]
    wrong = parse("three cyan diamonds", V2)
    assert labels(render_spec(spec, seed=2), [spec, wrong]) == [
        [("there is a diamond", True), ("there are exactly four cyan diamonds", True)],
        [("there is a diamond", True), ("there are exactly three cyan diamonds", False)]]


def test_the_v2_quality_benchmark_rows_are_every_evaluation_string_and_nothing_seen() -> None:
    """bench/quality.py --grammar v2: its default 2,700 rows hold each of the 539 evaluation strings (>= 500
    distinct strings no model saw), no training-pool string; `--strings seen` draws from the pool only; the
    verifier's facts read v2's words; each run has its own results file."""
    from bench.quality import ROWS, results_name
    from bench.quality_design import evaluation_rows, strings_for, verify_rows
    from bench.world.verifier_data import world_facts

    held, pool = evaluation_strings(), training_strings()
    unseen_rows = evaluation_rows(ROWS["v2"], strings_for("v2", "unseen"))
    assert {r.prompt for r in unseen_rows} == {s for v in held.values() for s in v}
    assert len({r.id for r in unseen_rows}) == len(unseen_rows) == 2700
    seen_rows = {r.prompt for r in evaluation_rows(ROWS["v2"], strings_for("v2", "seen"))}
    assert seen_rows <= {s for v in pool.values() for s in v} and len(seen_rows) > 539
    assert all(is_evaluation(r.prompt) for r in verify_rows(ROWS["v2"], 8, strings_for("v2", "unseen")))
    assert world_facts("a purple diamond above a cyan circle", V2)[-1] == "a purple diamond is above a cyan circle"
    assert len({results_name(s, "v2", w, d) for s in ("clip", "verifier") for w in ("seen", "unseen")
                for d in ("draft", "heavy@2")} | {results_name("clip"), results_name("verifier")}) == 10


def test_a_heavy_few_step_draft_is_the_heavy_folder_at_its_own_steps() -> None:
    """bench/quality.py --draft heavy@K: the draft generator is the heavy model's folder sampled with K steps (its
    own generator, so its own image keys), the escalation stays the heavy model at its steps; anything else is
    refused before work starts."""
    from bench.quality_replay import Policy, draft_spec, job_config
    from bench.quality_v2_report import ORDER

    raw = job_config(Policy(threshold=0.0), Path("rows.parquet"), Path("out"), "verifier", Path("m"), "heavy@2")
    draft, heavy = raw["generators"]["draft"], raw["generators"]["heavy"]
    assert (draft["model"], draft["defaults"]["num_steps"]) == (str(Path("m") / "heavy"), 2)
    assert (heavy["model"], heavy["defaults"]["num_steps"]) == (str(Path("m") / "heavy"), 20)
    assert job_config(Policy(), Path("r"), Path("o"), models=Path("m"))["generators"]["draft"]["defaults"][
        "num_steps"] == 4
    assert draft_spec("draft") == ("draft", None) and draft_spec("heavy@3") == ("heavy", 3)
    with pytest.raises(ValueError, match="unknown draft generator 'heavy@20'"):
        draft_spec("heavy@20")
    assert "quality_v2_unseen_verifier_draft-heavy2.json" in ORDER


def test_a_redraw_threshold_of_zero_is_one_draft_in_the_benchmark_as_in_the_product() -> None:
    """A 0..1 scorer's low quantile rounds to redraw_below 0: no score is below it, so the Redrawer draws once; the
    benchmark's tuning once read 0 as "no threshold" (best-of-N) and chose a policy the product doesn't run."""
    import numpy as np

    from bench.quality import adaptive, stop_at
    from bench.quality_replay import Policy

    scores = np.array([[0.1, 0.9, 0.5], [0.0, 0.2, 0.3]])
    kept, drafts = adaptive(scores, 3, stop_at(Policy(max_drafts=3, redraw_below=0.0)))
    assert kept.tolist() == [0, 0] and drafts.tolist() == [1, 1]
    kept, drafts = adaptive(scores, 3, stop_at(Policy(max_drafts=3, redraw_below=None)))
    assert kept.tolist() == [1, 2] and drafts.tolist() == [3, 3]
