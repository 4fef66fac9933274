"""`imagefleet init`: a starter config from a prompt table, which the real loader accepts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.configs.loader import load_config
from imagefleet.jobs import init


def table(path: Path, columns: dict[str, list[object]]) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize("backend", ["diffusers", "openai", "gemini"])
def test_init_picks_columns_and_the_config_loads(tmp_path: Path, backend: str) -> None:
    src = table(tmp_path / "ads.parquet", {"sku": [1, 2], "Caption": ["a", "b"], "negative": ["", "x"],
                                           "width": [512, 768], "uid": ["u1", "u2"]})
    out = tmp_path / "job.yaml"
    assert init.main([src, "-o", str(out), "--backend", backend]) == 0
    cfg = load_config(out)
    assert cfg.source.prompt_column == "Caption" and cfg.source.id_column == "uid"
    assert cfg.source.negative_prompt_column == "negative"
    assert cfg.generators["main"].backend == backend
    assert "per-row columns found" in out.read_text() and "width" in out.read_text()


def test_init_never_overwrites_and_explains_bad_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job.yaml"
    out.write_text("mine")
    src = table(tmp_path / "t.parquet", {"prompt": ["a"]})
    assert init.main([src, "-o", str(out)]) == 2 and out.read_text() == "mine"
    numbers = table(tmp_path / "n.parquet", {"x": [1]})
    assert init.main([numbers, "-o", str(tmp_path / "n.yaml")]) == 2
    assert init.main([str(tmp_path / "missing.parquet"), "-o", str(tmp_path / "m.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "never overwrites" in err[0] and "no text column" in err[1] and "can't read" in err[2]
    assert not (tmp_path / "n.yaml").exists()


def test_api_refuses_a_bad_run_id_with_a_typed_error(tmp_path: Path) -> None:
    """`imagefleet.run(run_id=...)` says what the CLI says, as ConfigInvalid (not argparse's exception)."""
    import imagefleet

    src = table(tmp_path / "t.parquet", {"prompt": ["a"]})
    with pytest.raises(imagefleet.ConfigInvalid, match="not a valid run id"):
        imagefleet.run({"source": {"uri": src}, "generators": {"s": {"backend": "sleep"}},
                        "output": {"uri": str(tmp_path / "o")}}, run_id="../escape", echo=None)


def test_init_maps_settings_named_the_diffusers_way(tmp_path: Path) -> None:
    src = table(tmp_path / "t.parquet", {"prompt": ["a"], "num_inference_steps": [4], "cfg_scale": [1.5],
                                         "num_images_per_prompt": [2], "seed": [1]})
    out = tmp_path / "job.yaml"
    assert init.main([src, "-o", str(out)]) == 0
    cfg = load_config(out)
    assert cfg.source.columns.num_steps == "num_inference_steps" and cfg.source.columns.guidance_scale == "cfg_scale"
    assert cfg.source.columns.num_images == "num_images_per_prompt" and cfg.source.columns.seed == "seed"


@pytest.mark.parametrize(("backend", "task"), [("diffusers", "inpaint"), ("openai", "inpaint"), ("gemini", "edit")])
def test_init_finds_input_images_and_picks_a_task_the_backend_can_do(tmp_path: Path, backend: str, task: str
                                                                     ) -> None:
    src = table(tmp_path / "t.parquet", {"prompt": ["a"], "init_image": ["a.png"], "mask_image": ["m.png"],
                                         "denoising_strength": [0.5]})
    out = tmp_path / "job.yaml"
    assert init.main([src, "-o", str(out), "--backend", backend]) == 0
    cfg = load_config(out)
    assert cfg.source.task == task and cfg.source.columns.image == "init_image"
    assert cfg.source.columns.mask == "mask_image" and cfg.source.columns.strength == "denoising_strength"


def test_init_proposes_a_unique_column_that_names_rows_as_the_id(tmp_path: Path) -> None:
    """Issue #33: a table keyed by a unique `sku` gets `id_column: sku` (distinct SKUs sharing a prompt stay two
    images); a column named like an id whose values repeat, or one with a null, is never proposed, and the config
    says why; a unique column whose name says nothing is only mentioned."""
    src = table(tmp_path / "shop.parquet", {"prompt": ["a red chair", "a red chair", "a lamp"],
                                            "sku": ["S1", "S2", "S3"], "label": [3, 1, 2]})
    out = tmp_path / "shop.yaml"
    assert init.main([src, "-o", str(out)]) == 0
    assert load_config(out).source.id_column == "sku" and "id_column: sku" in out.read_text()
    # a repeated `product_id` loses to a unique `ProductCode`
    src = table(tmp_path / "codes.parquet", {"prompt": ["a", "b"], "product_id": [7, 7], "ProductCode": [1, 2]})
    out = tmp_path / "codes.yaml"
    assert init.main([src, "-o", str(out)]) == 0
    assert load_config(out).source.id_column == "ProductCode"
    # `id` repeats, nothing else names rows: not proposed, and the config says what that means
    src = table(tmp_path / "dup.parquet", {"prompt": ["a", "a"], "id": ["x", "x"], "title": ["t1", "t2"]})
    out = tmp_path / "dup.yaml"
    assert init.main([src, "-o", str(out)]) == 0
    text = out.read_text()
    assert "\n  id_column:" not in text and "column id is not unique" in text
    # a null makes a column no id; a unique one with a plain name is mentioned, not used
    src = table(tmp_path / "null.parquet", {"prompt": ["a", "b"], "sku": ["S1", None], "title": ["t1", "t2"]})
    out = tmp_path / "null.yaml"
    assert init.main([src, "-o", str(out)]) == 0
    text = out.read_text()
    cfg = load_config(out)  # (a table named null.parquet: its name is quoted, not YAML's null)
    assert cfg.source.id_column == "id" and cfg.name == "null"  # the default: no such column, ids from the prompt
    assert "unique columns that could be the id: title" in text and "sku" not in text


def test_the_proposed_id_keeps_skus_that_share_a_prompt_apart(tmp_path: Path) -> None:
    """What init writes, run: two SKUs with the same prompt are two images (ids from the prompt made them one)."""
    import imagefleet

    src = table(tmp_path / "shop.parquet", {"prompt": ["a red chair", "a red chair"], "sku": ["S1", "S2"]})
    out = tmp_path / "shop.yaml"
    assert init.main([src, "-o", str(out), "--output-uri", str(tmp_path / "out")]) == 0
    raw = {**load_config(out).model_dump(), "generators": {"s": {"backend": "sleep"}},
           "cluster": {"executor": "in_process"}}
    manifest = imagefleet.run(raw, echo=None).manifest().to_table()
    assert sorted(manifest.column("id").to_pylist()) == ["S1", "S2"]
    assert len(set(manifest.column("image_key").to_pylist())) == 2
