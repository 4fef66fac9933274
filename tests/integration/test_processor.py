"""`imagefleet.processor`: the batch run's stages over a user's own Ray Dataset, lazy and composable like Ray's LLM
processors; images are made exactly once however the result is consumed, and `commit` ends it like a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import imagefleet
from imagefleet.configs.storage import StoreSpec
from tests.helpers import sleep_job

pytestmark = pytest.mark.slow


def _config(out: Path) -> dict[str, Any]:
    raw = sleep_job("unused", str(out))
    del raw["source"]  # a processor reads no file: `source` only names the Dataset's columns
    raw["source"] = {"id_column": "sku"}
    return raw


def _images(out: Path) -> set[str]:
    return {p.name for p in (out / "images").rglob("*.png")}


def _dataset() -> Any:
    import ray.data

    items = [{"sku": f"S{i:03d}", "prompt": f"a product shot {i % 9}", "label": i % 3} for i in range(12)]
    # the user's own lazy step before the processor: a column the manifest should carry
    return ray.data.from_items(items).map(lambda r: {**r, "shelf": f"aisle-{r['label']}"})


def test_a_users_dataset_through_the_processor_then_again_then_committed(tmp_path: Path, ray_cluster: None) -> None:
    from imagefleet.pipelines.manifest import read_manifest_columns

    out = tmp_path / "out"
    proc = imagefleet.processor(_config(out))
    # 1 lazy: nothing runs until the rows are consumed; the result composes with the user's own steps
    rows_ds = proc(_dataset())
    assert not _images(out)
    rows = rows_ds.take_all()
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    assert sorted(r["id"] for r in rows) == [f"S{i:03d}" for i in range(12)]  # the user's id column
    assert all(r["shelf"] == f"aisle-{r['label']}" for r in rows)  # the user's columns ride along, typed
    assert len({r["image_key"] for r in rows}) == 12 and len(_images(out)) == 12
    assert proc(_dataset()).filter(expr="label == 0").count() == 4
    # 2 consumed again (and a second time above): every image was found, none made twice
    again = proc(_dataset()).take_all()
    assert all(r["already_present"] for r in again) and len(_images(out)) == 12
    assert {r["image_key"] for r in again} == {r["image_key"] for r in rows}
    # 3 committed like a run: the output's manifest holds one row per image, with the user's columns
    summary = proc.commit(_dataset())
    assert summary.num_rows == 12 and summary.num_ok == 12 and summary.num_written == 0
    table = read_manifest_columns(str(out), StoreSpec(kind="local"), ["id", "image_key", "shelf", "status"])
    assert sorted(table.column("id").to_pylist()) == [f"S{i:03d}" for i in range(12)]
    assert set(table.column("shelf").to_pylist()) == {"aisle-0", "aisle-1", "aisle-2"}
    rerun = proc.commit(_dataset())
    assert rerun.num_written == 0 and rerun.num_already_present == 12 and len(_images(out)) == 12


def test_the_processor_makes_what_a_run_makes_and_refuses_a_dataset_without_prompts(
        tmp_path: Path, ray_cluster: None) -> None:
    """The same rows through `imagefleet run` (a Parquet file) and through the processor (a Dataset) are the same
    images; a Dataset the config can't read is one line before any work."""
    import ray.data

    from tests.helpers import write_prompts

    prompts = [f"a lamp {i}" for i in range(6)]
    src = write_prompts(tmp_path / "p.parquet", {"id": [f"r{i}" for i in range(6)], "prompt": prompts})
    ran = imagefleet.run(sleep_job(src, str(tmp_path / "run")), echo=None)
    made = {r["id"]: r["image_key"] for r in ran.to_pandas().to_dict("records")}
    raw = sleep_job("unused", str(tmp_path / "proc"))
    del raw["source"]
    processed = imagefleet.processor(raw)(ray.data.read_parquet(str(src)), num_rows=6).take_all()
    assert {r["id"]: r["image_key"] for r in processed} == made
    with pytest.raises(imagefleet.InputInvalid, match="prompt"):
        imagefleet.processor(raw)(ray.data.from_items([{"text": "no prompt column"}]))
