"""Prompt templates within bounds (#30 item 11): a row's template can't take the preprocessor's memory or time, and
error rows keep an over-long prompt as its start and length, never whole."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pyarrow as pa
import pytest

from imagefleet.actors.bounded_template import MAX_STEPS, TemplateLimit, compile_template
from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.pipelines.slices import prep_config
from tests.helpers import REPO, tiny_job

LIMIT = 10_000  # source.max_prompt_chars' default


def preprocessor(template: str | None = None) -> PromptPreprocessor:
    raw = tiny_job("p", "m", "out")
    if template is not None:
        raw["source"]["template"] = {"text": template}
    return PromptPreprocessor(prep_config(parse_config(raw)))


def traced(prep: PromptPreprocessor, columns: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], int]:
    """The preprocessor's rows for `columns`, and the most memory Python held while making them (bytes)."""
    table = pa.table(columns)
    tracemalloc.start()
    try:
        out = prep(table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {k: list(v) for k, v in out.items()}, peak


@pytest.mark.parametrize(("template", "message"), [
    # one line that would write 300 MB, 1 GB, ... : refused before the value is made
    ("{{ object * 100000000 }}", "'*' would make 300,000,000 characters"),
    ("{{ object|center(1000000000) }}", "filter 'center' would make 1,000,000,000"),
    ("{{ '%*s' % (1000000000, object) }}", "'%' formatting would make 1,000,000,000"),
    ("{{ '{:>1000000000}'.format(object) }}", "str.format would make 1,000,000,000"),
    ("{{ object.ljust(1000000000) }}", "str.ljust would make 1,000,000,000"),
    ("{{ object|replace('', object * 3000) }}", "filter 'replace' would make 36,003 characters"),
    ("{{ range(100000)|join(object * 3000) }}", "filter 'join' would make"),
    ("{{ 9 ** (9 ** 9) }}", "'**' would make a number of over 4096 bits"),
    # writing in a loop: the prompt stops as soon as it passes the limit
    ("{% for i in range(100000) %}{{ object }}{% endfor %}", "the prompt is over 10,000 characters"),
    # inside a macro (not streamed): every character written anywhere is counted
    ("{% macro m() %}{% for i in range(100000) %}{{ object }} {% endfor %}{% endmacro %}{{ m()|length }}",
     "wrote over 40,000 characters"),
    # a namespace carries a value across iterations: doubling it 60 times stops at the limit
    ("{% set ns = namespace(s=object) %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
     "{{ ns.s|length }}", "namespace value 's' would make"),
])
def test_a_template_that_explodes_is_an_error_row_in_bounded_memory(template: str, message: str) -> None:
    prep = preprocessor(template)
    out, peak = traced(prep, {"object": ["cat", "dog"]})
    assert out["status"] == ["error", "error"]
    assert all(e.startswith("template: ") and message in e for e in out["error"]), out["error"]
    assert out["prompt"] == ["", ""]
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB"  # the template alone would need 300 MB .. 1 GB


def test_nested_loops_stop_after_a_bounded_number_of_steps() -> None:
    """10^5 x 10^5 iterations a row: stopped after MAX_STEPS (counted here with a call in the inner loop)."""
    calls = []

    def tick() -> str:
        calls.append(1)
        return ""

    render = compile_template("{% for i in range(100000) %}{% for j in range(100000) %}{{ tick() }}{% endfor %}"
                              "{% endfor %}", LIMIT)
    with pytest.raises(TemplateLimit, match=f"over {MAX_STEPS:,} steps"):
        render({"tick": tick})
    assert 0 < len(calls) < MAX_STEPS
    # through the preprocessor: an error row, and the next row goes on
    prep = preprocessor("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                        "{{ object }}")
    out, peak = traced(prep, {"object": ["cat", "dog"]})
    assert out["status"] == ["error", "error"] and f"over {MAX_STEPS:,} steps" in out["error"][0]
    assert peak < 8 * 2**20


def test_ordinary_templates_render_as_before() -> None:
    render = compile_template("a {{ style|title }} photo of {% for t in tags %}{{ t }}{% if not loop.last %}, "
                              "{% endif %}{% endfor %} {{ '%s-%02d'|format(object, 3) }} {{ '{}!'.format(n) }}",
                              LIMIT)
    assert render({"style": "film", "tags": ["a cat", "a mug"], "object": "x", "n": 2}) == \
        "a Film photo of a cat, a mug x-03 2!"
    # a prompt of exactly the limit is fine; one more character is not
    assert len(compile_template("{{ object * 10000 }}", LIMIT)({"object": "x"})) == LIMIT
    with pytest.raises(TemplateLimit):
        compile_template("{{ object * 10000 }}!", LIMIT)({"object": "x"})


def test_a_30_mb_prompt_is_kept_as_its_start_and_length_in_its_error_row() -> None:
    huge = "x" * 30_000_000
    out, _ = traced(preprocessor(), {"prompt": [huge, "fine"], "negative_prompt": [huge, None]})
    bad = out["status"].index("error")
    assert out["prompt"][bad] == "x" * 1_000 + "… (30,000,000 characters)"
    assert out["negative_prompt"][bad] == "x" * 1_000 + "… (30,000,000 characters)"
    assert "prompt has 30,000,000 characters; the limit is 10,000" in out["error"][bad]
    assert out["status"].count("pending") == 1


def test_an_over_long_negative_prompt_or_id_is_an_error_row_kept_clipped() -> None:
    """The negative prompt and the row id had no limit: a 3 MB cell went into the image key, the manifest and the
    generator. Now: error rows naming the cell and its limit, kept as their start and length."""
    big = 3_000_000
    out, _ = traced(preprocessor(), {"prompt": ["a", "b", "c"], "id": ["i" * big, "short", "x" * 4_096],
                                     "negative_prompt": ["", "n" * big, None]})
    by_prompt = {p: k for k, p in enumerate(out["prompt"])}
    long_id, long_neg, fine = by_prompt["a"], by_prompt["b"], by_prompt["c"]
    assert out["error"][long_id] == "id has 3,000,000 characters; the limit is 4,096: give rows shorter ids"
    assert out["id"][long_id] == "i" * 1_000 + "… (3,000,000 characters)"
    assert out["error"][long_neg] == ("negative_prompt has 3,000,000 characters; the limit is 10,000 "
                                      "(source.max_prompt_chars)")
    assert out["negative_prompt"][long_neg] == "n" * 1_000 + "… (3,000,000 characters)"
    assert out["status"][fine] == "pending" and len(out["id"][fine]) == 4_096  # at the limit: fine


def test_a_30_mb_template_value_is_an_error_row_recorded_clipped() -> None:
    huge = "y" * 30_000_000
    out, _ = traced(preprocessor("a {{ object|truncate(20) }}"), {"object": [huge, "mug"]})
    bad = out["status"].index("error")
    assert out["error"][bad] == "template: 'object' has 30,000,000 characters; the limit is 10,000 " \
                                "(source.max_prompt_chars)"
    assert json.loads(out["template_vars"][bad]) == {"object": "y" * 1_000 + "… (30,000,000 characters)"}
    assert out["prompt"][1 - bad] == "a mug"


def test_recursive_loops_are_refused_at_load() -> None:
    raw = tiny_job("p", "m", "out")
    raw["source"]["template"] = {"text": "{% for x in object recursive %}{{ loop(x) }}{% endfor %}"}
    with pytest.raises(ConfigError, match="recursive loops are not supported"):
        parse_config(raw)


def test_random_and_lipsum_give_a_row_the_same_prompt_in_every_run_and_process() -> None:
    """Jinja's own `random` filter and `lipsum` draw from the process's generator: the same row got another prompt,
    so another image key, in every run — a rerun remade (and paid for) every such image. Now they draw from the
    row's values: the same row renders the same text in any process (pinned here), other rows still vary."""
    import subprocess
    import sys

    text = "a {{ ['red', 'green', 'blue', 'gold'] | random }} {{ animal }}, {{ lipsum(1, false, 3, 6) }}"
    render = compile_template(text, LIMIT)
    fox = render({"animal": "fox"})
    assert fox == render({"animal": "fox"}) == "a gold fox, Placerat sed odio phasellus porta."
    code = ("from imagefleet.actors.bounded_template import compile_template as c; "
            f"print(c({text!r}, {LIMIT})({{'animal': 'fox'}}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "random", "PATH": ""}, cwd=str(REPO))
    assert other.stdout.strip() == fox
    assert len({render({"animal": f"animal {i}"}).split()[1] for i in range(40)}) == 4  # rows still vary
    with pytest.raises(ValueError, match="empty sequence"):
        compile_template("{{ [] | random }}", LIMIT)({})
