"""The shapes world's fact statements (bench/world/verifier_data.py): one per oracle fact, in the oracle's order,
so a graded image's labels are the oracle's verdict fact by fact; and the verifier's string split."""

from __future__ import annotations

from bench.quality_design import grammar
from bench.world.oracle import oracle
from bench.world.scene import parse, render
from bench.world.verifier_data import labels, split, world_facts


def test_every_string_of_the_grammar_has_one_statement_per_oracle_fact() -> None:
    for strings in grammar().values():
        for k, prompt in enumerate(strings):
            image = render(prompt, seed=k)
            verdict = oracle(prompt, image)
            said = world_facts(prompt)
            assert len(said) == len(verdict.facts), prompt
            assert labels(image, [parse(prompt)]) == [[(s, True) for s in said]], prompt  # ground truth holds


def test_statements_read_as_the_prompt_says() -> None:
    assert world_facts("three red squares") == ["there is a square", "there are exactly three red squares"]
    assert world_facts("a red circle left of a blue circle") == [
        "there is a circle", "there is a red circle", "there is a circle", "there is a blue circle",
        "a red circle is left of a blue circle"]  # position names both objects: no two differing facts read alike
    assert world_facts("a triangle and a circle") == ["there is a triangle", "there is a circle"]


def test_a_wrong_image_fails_its_facts() -> None:
    image = render("a blue triangle", seed=1)
    assert labels(image, [parse("a red square")]) == [[("there is a square", False),
                                                       ("there is a red square", False)]]


def test_the_split_holds_out_a_fifth_of_each_task_and_never_overlaps() -> None:
    train, held = split()
    every = grammar()
    assert {t: len(v) for t, v in held.items()} == {"color_attr": 14, "colors": 2, "counting": 6, "position": 106,
                                                   "single_object": 1, "two_object": 1}
    for task in every:
        assert sorted(train[task] + held[task]) == sorted(every[task]) and not set(train[task]) & set(held[task])
    assert split() == (train, held)  # seeded
