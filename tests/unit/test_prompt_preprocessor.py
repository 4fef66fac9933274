"""PromptPreprocessor on Arrow batches, without Ray."""

from typing import Any

import pyarrow as pa
import pytest

from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.configs.loader import parse_config
from imagefleet.pipelines.slices import prep_config
from tests.helpers import tiny_job


def run(columns: dict[str, list[Any]], **job: Any) -> dict[str, list[Any]]:
    cfg = parse_config({**tiny_job("p", "m", "out"), **job})
    out = PromptPreprocessor(prep_config(cfg))(pa.table(columns))
    return {k: list(v) for k, v in out.items()}


def test_expansion_seeds_and_keys() -> None:
    out = run({"id": ["a", "b"], "prompt": ["cat", "dog"], "num_images": [3, 1]})
    assert len(out["id"]) == 4
    assert sorted(zip(out["id"], out["image_index"], strict=True)) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert len(set(out["seed"])) == 4 and len(set(out["image_key"])) == 4
    assert set(out["status"]) == {"pending"}
    again = run({"id": ["a", "b"], "prompt": ["cat", "dog"], "num_images": [3, 1]})
    assert again["image_key"] == out["image_key"] and again["seed"] == out["seed"]


def test_row_overrides_and_defaults() -> None:
    out = run({"prompt": ["x", "y"], "width": [128, None], "height": [96, None], "num_steps": [5, None],
               "guidance_scale": [2.5, None], "negative_prompt": ["blurry", None], "seed": [42, None]})
    rows = {p: i for i, p in enumerate(out["prompt"])}
    x, y = rows["x"], rows["y"]
    assert (out["width"][x], out["height"][x], out["num_steps"][x]) == (128, 96, 5)
    assert out["guidance_scale"][x] == 2.5 and out["negative_prompt"][x] == "blurry" and out["seed"][x] == 42
    assert (out["width"][y], out["height"][y], out["num_steps"][y], out["guidance_scale"][y]) == (64, 64, 2, 0.0)
    assert out["negative_prompt"][y] == ""


def test_ids_derived_when_missing() -> None:
    out = run({"prompt": ["same", "same", "other"]})
    assert out["id"][0] == out["id"][1] != out["id"][2] or len(set(out["id"])) == 2


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"prompt": [None]}, "prompt is null"),
        ({"prompt": ["   "]}, "prompt is empty"),
        ({"prompt": ["x"], "width": [100], "height": [100]}, "multiple of 8"),
        ({"prompt": ["x"], "width": [0]}, "multiple of 8"),
        ({"prompt": ["x"], "width": [100000], "height": [64]}, "maximum side"),
        ({"prompt": ["x"], "width": [8192], "height": [8192]}, "max_pixels"),
        ({"prompt": ["x"], "num_steps": [-1]}, "num_steps"),
        ({"prompt": ["x"], "num_images": [0]}, "num_images"),
        ({"prompt": ["x"], "num_images": [1000]}, "num_images"),
        ({"prompt": ["x"], "guidance_scale": [float("nan")]}, "finite"),
        ({"prompt": ["x"], "width": [64.5]}, "whole number"),
        ({"prompt": ["x" * 10_001]}, "limit"),
        ({"prompt": ["x"], "seed": [-5]}, "seed"),
    ],
)
def test_bad_rows_become_error_rows(columns: dict[str, list[Any]], message: str) -> None:
    out = run(columns)
    assert out["status"] == ["error"]
    assert message in out["error"][0]
    assert out["image_key"] == [""]


def test_good_rows_survive_next_to_bad_ones() -> None:
    out = run({"prompt": ["ok", None, "fine"], "width": [64, 64, 72]})
    assert sorted(out["status"]) == ["error", "pending", "pending"]


def test_unicode_and_path_like_ids_are_just_data() -> None:
    out = run({"id": ["../../etc/passwd", "a/b"], "prompt": ["🐱 猫", "x"]})
    assert set(out["status"]) == {"pending"}
    assert all(len(k) == 40 for k in out["image_key"])


def test_rows_sorted_by_shape_within_a_batch() -> None:
    out = run({"prompt": [f"p{i}" for i in range(6)], "width": [64, 128, 64, 128, 64, 128]})
    assert out["width"] == sorted(out["width"])


def test_column_routing_to_unknown_generator_is_an_error_row() -> None:
    out = run({"prompt": ["x", "y"], "generator": ["tiny", "huge"]},
              routing={"mode": "column"})
    by_prompt = dict(zip(out["prompt"], out["status"], strict=True))
    assert by_prompt == {"x": "pending", "y": "error"}
    assert "huge" in out["error"][out["prompt"].index("y")]


def test_settings_read_from_differently_named_columns() -> None:
    """`source.columns` maps every per-row setting onto the data's own column names (#15)."""
    columns = {"seed": "row_seed", "width": "w_px", "height": "h_px", "num_steps": "steps", "guidance_scale": "cfg",
               "num_images": "n"}
    job = tiny_job("p", "m", "out")
    job["source"]["columns"] = columns
    cfg = parse_config(job)
    data = {"prompt": ["x"], "row_seed": [42], "w_px": [128], "h_px": [96], "steps": [5], "cfg": [2.5], "n": [2],
            "width": [999]}  # a column named like a setting but not mapped to it is just data
    out = {k: list(v) for k, v in PromptPreprocessor(prep_config(cfg))(pa.table(data)).items()}
    assert len(out["id"]) == 2 and set(out["width"]) == {128} and set(out["height"]) == {96}
    assert set(out["num_steps"]) == {5} and set(out["guidance_scale"]) == {2.5} and 42 in out["seed"]
    plain = run({"prompt": ["x"], "row_seed": [42], "w_px": [128], "steps": [5], "n": [2]})  # not mapped: ignored
    assert len(plain["id"]) == 1 and plain["width"] == [64] and plain["num_steps"] == [2]
    # the same image as when the columns carry the canonical names (the key is about the image, not the table)
    canonical = run({"prompt": ["x"], "seed": [42], "width": [128], "height": [96], "num_steps": [5],
                     "guidance_scale": [2.5], "num_images": [2]})
    assert sorted(canonical["image_key"]) == sorted(out["image_key"])


def test_a_mapped_column_with_a_bad_value_is_an_error_row_naming_the_setting() -> None:
    job = tiny_job("p", "m", "out")
    job["source"]["columns"] = {"num_steps": "steps"}
    out = PromptPreprocessor(prep_config(parse_config(job)))(pa.table({"prompt": ["x"], "steps": [2.5]}))
    assert list(out["status"]) == ["error"] and "num_steps=2.5" in out["error"][0]


def test_column_mapping_is_checked_at_load() -> None:
    from imagefleet.configs.loader import ConfigError

    job = tiny_job("p", "m", "out")
    job["source"]["columns"] = {"steps": "x"}
    with pytest.raises(ConfigError, match="steps"):
        parse_config(job)
    job["source"]["columns"] = {"width": "size", "height": "size"}
    with pytest.raises(ConfigError, match="columns.width and source.columns.height both read column 'size'"):
        parse_config(job)
    job["source"]["columns"] = {"seed": "prompt"}
    with pytest.raises(ConfigError, match="prompt_column and source.columns.seed"):
        parse_config(job)


def test_source_checks_follow_the_mapping(tmp_path: Any) -> None:
    """The schema check names the data's column and the setting; the image count reads the mapped column."""
    import pyarrow.parquet as pq

    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.plan import Stores
    from imagefleet.pipelines.text_to_image import InputError, inspect_source

    job = tiny_job(tmp_path / "p.parquet", "m", str(tmp_path / "out"))
    job["source"]["columns"] = {"num_images": "copies", "guidance_scale": "cfg"}
    cfg = parse_config(job)
    stores = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))
    pq.write_table(pa.table({"prompt": ["a", "b"], "copies": [3, 2], "cfg": [1.0, 2.0]}), tmp_path / "p.parquet")
    assert inspect_source(cfg, stores).num_images == 5
    pq.write_table(pa.table({"prompt": ["a"], "copies": [1], "cfg": ["high"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"column 'cfg' \(source.columns.guidance_scale\) has type string"):
        inspect_source(cfg, stores)


def test_a_bad_row_gives_one_error_row_per_image_it_asked_for() -> None:
    """The driver counts a row's valid num_images before the run and the commit wants exactly that many rows:
    a row with a bad prompt and num_images=3 must give 3 error rows, not 1 (it used to fail the whole commit)."""
    out = run({"prompt": [None, "ok", "x"], "num_images": [3, 2, 0], "width": [64, 64, 100]})
    status = sorted(zip(out["prompt"], out["image_index"], out["status"], strict=True))
    assert status == [("", 0, "error"), ("", 1, "error"), ("", 2, "error"), ("ok", 0, "pending"),
                      ("ok", 1, "pending"), ("x", 0, "error")]  # num_images=0 is itself the error: one row


def test_the_driver_count_equals_the_rows_the_preprocessor_makes(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.plan import Stores
    from imagefleet.pipelines.text_to_image import expected_rows, inspect_source

    data = {"prompt": [None, "ok", "", "y", "z" * 20_000, "w"], "num_images": [3, 2, 4, None, 2, 99],
            "width": [64, 64, 64, 64, 64, 63]}
    pq.write_table(pa.table(data), tmp_path / "p.parquet")
    cfg = parse_config(tiny_job(tmp_path / "p.parquet", "m", str(tmp_path / "out")))
    counted = expected_rows(cfg, inspect_source(cfg, Stores(source=StoreSpec(kind="local"),
                                                            output=StoreSpec(kind="local"))))
    assert counted == len(run(data)["id"]) == 3 + 2 + 4 + 1 + 2 + 1
