"""Prompt programs (#15): a Jinja template filled from the row's columns and config lists, expanded by product,
zip or seeded sampling inside the preprocessor, each image recording the values it was made from."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.source import PromptTemplate
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.plan import Stores
from imagefleet.pipelines.slices import prep_config
from imagefleet.pipelines.text_to_image import InputError, expected_rows, inspect_source
from tests.helpers import tiny_job

TEXT = "a {{ style }} photo of a {{ object }} in {{ scene }}"
VARS = {"style": ["studio", "film"], "scene": ["kitchen", "street", "beach"]}


def job(template: dict[str, Any], source: str | Path = "p", **extra: Any) -> Any:
    raw = tiny_job(source, "m", "out", **extra)
    raw["source"]["template"] = template
    return parse_config(raw)


def prep(cfg: Any, columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    out = PromptPreprocessor(prep_config(cfg))(pa.table(columns))
    return {k: list(v) for k, v in out.items()}


def test_product_writes_every_combination_for_every_row_and_records_the_values() -> None:
    out = prep(job({"text": TEXT, "vars": VARS}), {"id": ["r1", "r2"], "object": ["cat", "mug"]})
    assert len(out["id"]) == 12 and len(set(out["image_key"])) == 12
    assert len(set(out["id"])) == 12 and all(i.startswith(("r1#", "r2#")) for i in out["id"])
    values = [json.loads(v) for v in out["template_vars"]]
    assert Counter((v["object"], v["style"]) for v in values) == {
        (o, s): 3 for o in ("cat", "mug") for s in ("studio", "film")}  # balanced by construction
    row = values[out["prompt"].index("a film photo of a mug in beach")]
    assert row == {"object": "mug", "style": "film", "scene": "beach"}
    assert set(out["template"]) == {TEXT} and set(out["status"]) == {"pending"}


def test_zip_pairs_the_lists_position_by_position() -> None:
    t = {"text": "{{ object }} by {{ artist }}, {{ year }}", "vars": {"artist": ["Monet", "Hokusai"],
                                                                     "year": [1872, 1831]}, "expand": "zip"}
    out = prep(job(t), {"object": ["a bridge"]})
    assert sorted(out["prompt"]) == ["a bridge by Hokusai, 1831", "a bridge by Monet, 1872"]


def test_sampling_draws_k_distinct_combinations_per_row_reproducibly() -> None:
    t = {"text": TEXT, "vars": VARS, "expand": "sample", "samples": 4}
    rows = {"id": [f"r{i}" for i in range(20)], "object": ["cat"] * 20}
    out = prep(job(t), rows)
    assert len(out["id"]) == 80
    by_row: dict[str, set[str]] = {}
    for rid, prompt in zip(out["id"], out["prompt"], strict=True):
        by_row.setdefault(rid.split("#")[0], set()).add(prompt)
    assert all(len(p) == 4 for p in by_row.values())  # distinct within a row
    assert len({frozenset(p) for p in by_row.values()}) > 1  # rows draw different combinations
    assert prep(job(t), rows)["image_key"] == out["image_key"]  # the same table and seed → the same requests
    assert prep(job(t, seed=8), rows)["image_key"] != out["image_key"]  # another job seed, another draw
    # a combination keeps its id whichever mode produced it (ids hash the combination's values)
    full = prep(job({"text": TEXT, "vars": VARS}), rows)
    assert set(out["prompt"]) <= set(full["prompt"]) and set(out["id"]) <= set(full["id"])


def test_a_row_the_template_cannot_fill_gives_error_rows_and_the_others_go_on() -> None:
    out = prep(job({"text": TEXT, "vars": VARS}), {"object": ["cat", None]})
    errors = [e for e, s in zip(out["error"], out["status"], strict=True) if s == "error"]
    assert len(errors) == 6 and set(errors) == {"template column 'object' is null"}
    assert out["status"].count("pending") == 6
    assert all(p == "" for p, s in zip(out["prompt"], out["status"], strict=True) if s == "error")


def test_the_sandbox_refuses_attribute_tricks_as_an_error_row() -> None:
    out = prep(job({"text": "{{ object.__class__.__mro__[1].__subclasses__() }}"}), {"object": ["cat"]})
    assert out["status"] == ["error"] and out["error"][0].startswith("template:")


def test_the_driver_counts_the_rows_the_template_makes(tmp_path: Path) -> None:
    pq.write_table(pa.table({"object": ["cat", "dog", None], "num_images": [2, 1, 1]}), tmp_path / "p.parquet")
    stores = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))
    for template in ({"text": TEXT, "vars": VARS}, {"text": TEXT, "vars": VARS, "expand": "sample", "samples": 2}):
        cfg = job(template, tmp_path / "p.parquet")
        made = prep(cfg, {"object": ["cat", "dog", None], "num_images": [2, 1, 1]})
        assert expected_rows(cfg, inspect_source(cfg, stores)) == len(made["id"])


def test_a_template_name_that_is_neither_a_list_nor_a_column_fails_before_work(tmp_path: Path) -> None:
    pq.write_table(pa.table({"thing": ["cat"]}), tmp_path / "p.parquet")
    cfg = job({"text": TEXT, "vars": VARS}, tmp_path / "p.parquet")
    stores = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))
    with pytest.raises(InputError, match="source.template uses 'object', which is neither a column"):
        inspect_source(cfg, stores)


@pytest.mark.parametrize(("template", "message"), [
    ({"text": "{{ a }", "vars": {}}, "source.template.text: unexpected '}'"),
    ({"text": "{{ a }}", "vars": {"b": ["x"]}}, "vars.b is not used by the template"),
    ({"text": "{{ a }}", "vars": {"a": []}}, "vars.a is empty"),
    ({"text": "{{ a }}{{ b }}", "vars": {"a": [1, 2], "b": [1]}, "expand": "zip"}, "lists of equal length"),
    ({"text": "{{ a }}", "vars": {"a": [1]}, "samples": 3}, "samples is for expand: sample"),
    ({"text": "{{ a }}{{ b }}{{ c }}", "vars": {n: list(range(100)) for n in "abc"}}, "1,000,000 prompts"),
])
def test_bad_templates_are_refused_at_load(template: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job(template)


def test_combinations_count_like_digits() -> None:
    t = PromptTemplate(text="{{ a }}{{ b }}", vars={"a": [1, 2], "b": ["x", "y", "z"]})
    assert [t.combination(k) for k in range(t.space())] == [
        {"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    assert PromptTemplate(text="{{ a }}", vars={"a": [1, 2, 3]}, expand="sample", samples=9).per_row() == 3


def test_adding_a_value_to_a_list_keeps_every_earlier_image() -> None:
    """Iterating on the lists is the normal workflow: a rerun must only make the new combinations."""
    rows = {"id": ["r1"], "object": ["cat"]}
    before = prep(job({"text": TEXT, "vars": VARS}), rows)
    more = {"style": ["studio", "film", "sketch"], "scene": ["kitchen", "street", "beach", "attic"]}
    after = prep(job({"text": TEXT, "vars": more}), rows)
    assert set(before["image_key"]) <= set(after["image_key"]) and len(after["image_key"]) == 12


def test_sampling_a_huge_space_is_allowed_and_cheap() -> None:
    t = {"text": "{{ a }}{{ b }}{{ c }}{{ d }}", "vars": {n: list(range(100)) for n in "abcd"}, "expand": "sample",
         "samples": 3}
    out = prep(job(t), {"id": ["r"]})
    assert len(set(out["prompt"])) == 3


def test_names_jinja_reserves_are_refused_and_odd_column_names_render() -> None:
    with pytest.raises(ConfigError, match="'self', which Jinja reserves"):
        job({"text": "a {{ self }}"})
    out = prep(job({"text": "a {{ values }} {{ render }}"}), {"values": ["cat"], "render": ["x"]})
    assert out["prompt"] == ["a cat x"] and out["status"] == ["pending"]


def test_the_preprocessor_batch_shrinks_with_the_expansion() -> None:
    from imagefleet.pipelines.plan import PREPROCESS_POOL, preprocess_pool

    cfg = job({"text": TEXT, "vars": {"style": list(range(100)), "scene": list(range(100))}})
    assert preprocess_pool(cfg).batch_size == 1  # 10,000 prompts per row: one row per batch
    cfg = job({"text": TEXT, "vars": VARS})
    assert preprocess_pool(cfg).batch_size == PREPROCESS_POOL.batch_size // 6
