"""The shapes world (bench/world): prompt grammar, seeded renders, and the oracle on true and shuffled pairs."""

import random
from pathlib import Path

import numpy as np
import pytest

from bench.world import TASKS, oracle, parse, render, sample_prompts
from bench.world.data import perturb
from bench.world.oracle import blobs
from bench.world.scene import SIZE, WORDS, sample_spec, to_prompt

PROMPTS = sample_prompts(150, seed=7)


def test_prompts_are_seeded_cover_every_task_and_round_trip() -> None:
    assert sample_prompts(50, seed=3) == sample_prompts(50, seed=3) != sample_prompts(50, seed=4)
    assert {parse(p).task for p in PROMPTS} == set(TASKS)
    assert all(to_prompt(parse(p)) == p for p in PROMPTS)


@pytest.mark.parametrize("bad", ["a purple circle", "four squares", "a circle near a square", ""])
def test_prompts_outside_the_grammar_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a prompt of the shapes world"):
        parse(bad)


def test_renders_are_seeded_rgb_uint8() -> None:
    a = render("two red circles", seed=1)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render("two red circles", seed=1))
    assert not np.array_equal(a, render("two red circles", seed=2))


def test_oracle_passes_ground_truth() -> None:
    verdicts = [oracle(p, render(p, seed=i)) for i, p in enumerate(PROMPTS)]
    assert np.mean([v.faithfulness for v in verdicts]) >= 0.99
    assert np.mean([v.passed for v in verdicts]) >= 0.98
    for task in TASKS:  # every category, not just on average
        assert np.mean([v.passed for v in verdicts if v.task == task]) >= 0.95, task


def test_oracle_reads_blurred_truth() -> None:
    """Soft edges (blends with the background, as a decoder draws them) keep their colour and shape."""

    def blur(image: np.ndarray) -> np.ndarray:
        padded = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
        return np.mean([padded[i:i + SIZE, j:j + SIZE] for i in range(3) for j in range(3)], axis=0).round()

    verdicts = [oracle(p, blur(render(p, seed=i)).astype(np.uint8)) for i, p in enumerate(PROMPTS)]
    assert np.mean([v.passed for v in verdicts]) >= 0.95


def test_oracle_fails_shuffled_pairs() -> None:
    order = list(range(len(PROMPTS)))
    random.Random(0).shuffle(order)
    verdicts = [oracle(PROMPTS[j], render(PROMPTS[i], seed=i)) for i, j in enumerate(order)]
    assert np.mean([v.faithfulness for v in verdicts]) < 0.5
    assert np.mean([v.passed for v in verdicts]) < 0.3


def test_oracle_fails_smooth_colour_fields() -> None:
    """Blobs of a colour field are not objects on a plain background (the oracle is not fooled by mush)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (30, 8, 8, 3)).astype(np.float64)
    fields = coarse.repeat(8, axis=1).repeat(8, axis=2)
    kernel = np.ones(9) / 9  # smooth the 8x8 blocks into blobs
    for axis in (1, 2):
        fields = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), axis, fields)
    verdicts = [oracle(p, f.astype(np.uint8)) for p, f in zip(PROMPTS, fields, strict=False)]
    assert np.mean([v.faithfulness for v in verdicts]) < 0.1


def test_oracle_fails_every_one_fact_change_of_the_truth() -> None:
    rng = random.Random(1)
    for i in range(100):
        spec = sample_spec(rng)
        image = render(to_prompt(spec), seed=i)
        wrong = perturb(spec, rng)
        assert not oracle(to_prompt(wrong), image).passed, (to_prompt(spec), to_prompt(wrong))


def test_facts_and_categories() -> None:
    v = oracle("a red circle left of a blue square", render("a blue square right of a red circle", seed=0))
    assert v.passed and v.task == "position"
    assert set(v.per_category) == {"object", "colour_binding", "position"}
    v = oracle("a red circle right of a blue square", render("a red circle left of a blue square", seed=0))
    assert v.per_category["position"] == 0.0 and v.faithfulness == pytest.approx(4 / 5)
    v = oracle("two red circles", render("three red circles", seed=0))
    assert v.task == "counting" and v.per_category == {"object": 1.0, "count": 0.0}
    blank = np.full((SIZE, SIZE, 3), 255, np.uint8)
    assert oracle("a green triangle and a yellow square", blank).faithfulness == 0.0
    assert blobs(blank) == []


def test_oracle_reads_other_sizes_and_refuses_grey() -> None:
    image = render("a blue triangle", seed=3)
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # area threshold is absolute: bigger is fine
    assert oracle("a blue triangle", big).passed
    with pytest.raises(ValueError, match="HxWx3"):
        oracle("a blue triangle", image[:, :, 0])


def test_tokenizer_reads_each_world_word_as_one_token(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from bench.world.tokenizer import load_tokenizer, write_tokenizer

    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    for word in WORDS:
        assert len(tok(word)["input_ids"]) == 3, word  # start, the word, end
    assert tok.convert_ids_to_tokens(tok("a cat")["input_ids"])[-2:] == ["t</w>", "<|endoftext|>"]  # bytes
