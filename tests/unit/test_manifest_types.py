"""The committed manifest is a typed table (times, lists, maps, structs as Arrow types) that plain pyarrow reads
without a recipe; manifests written before the types (float seconds, JSON text) still read and resume."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.manifest_types import CODECS, TIMESTAMP, decode, encode
from imagefleet.configs.storage import StoreSpec
from tests.unit.test_combinations import _job

LOCAL = StoreSpec(kind="local")
TYPED = ["generated_at", "written_at", "template_vars", "input_images", "input_sha256", "adapters", "candidates"]


@pytest.mark.parametrize(("name", "flat", "typed"), [
    ("generated_at", [1.5e9 + 0.25, math.nan, 0.0], [datetime.fromtimestamp(1.5e9 + 0.25, UTC), None, None]),
    ("template_vars", ['{"n": 3, "style": "ink"}', ""],
     [[{"key": "n", "value": "3"}, {"key": "style", "value": "ink"}], None]),
    ("input_images", ['["a.png", "s3://b/c.png"]', ""], [["a.png", "s3://b/c.png"], []]),
    ("input_sha256", ["aa,bb", ""], [["aa", "bb"], []]),
    ("adapters", ["pixel:1,ink:0.5", ""], [[{"name": "pixel", "weight": 1.0}, {"name": "ink", "weight": 0.5}], []]),
    ("candidates", ['[{"seed": 7, "score": 0.5}, {"seed": 9, "score": null}]', ""],
     [[{"seed": 7, "score": 0.5}, {"seed": 9, "score": None}], None]),
])
def test_each_typed_column_encodes_and_decodes_back(name: str, flat: list[Any], typed: list[Any]) -> None:
    column = encode(name, pa.array(flat, CODECS[name].flat))
    assert column.type == CODECS[name].type and column.to_pylist() == typed
    assert encode(name, column).equals(column)  # already typed: unchanged
    back = decode(name, column).to_pylist()
    if name == "generated_at":  # "not recorded" (0, NaN) comes back as NaN, the pipeline's empty float
        assert back[0] == pytest.approx(flat[0]) and math.isnan(back[1]) and math.isnan(back[2])
    elif name == "template_vars":
        assert back == ['{"n": "3", "style": "ink"}', ""]  # a value that wasn't text is its JSON text
    else:
        assert back == flat


def _run(tmp_path: Path, name: str) -> tuple[dict[str, Any], Any]:
    import imagefleet

    raw = _job(tmp_path, name)
    result = imagefleet.run(raw, echo=None)
    return raw, result


def _current_parts(out: Path) -> list[Path]:
    import json

    return [out / p for p in json.loads((out / "manifest" / "_manifest.json").read_text())["parts"]]


@pytest.mark.parametrize("name", ["best_of", "template", "image_to_image"])
def test_plain_pyarrow_reads_typed_columns_and_a_rerun_carries_them_exactly(tmp_path: Path, name: str) -> None:
    import imagefleet

    raw, first = _run(tmp_path, name)
    table = pa.concat_tables(pq.read_table(p) for p in _current_parts(tmp_path / "out"))  # no imagefleet reader
    for column in TYPED:
        assert table.schema.field(column).type == CODECS[column].type, column
    assert table.schema.field("clip_score").type == pa.float64()  # typed even when every value is null
    rows = table.to_pylist()
    assert all(r["generated_at"].tzinfo is not None and r["written_at"] >= r["generated_at"] for r in rows)
    if name == "best_of":
        assert all(len(r["candidates"]) == 3 and r["seed"] == max(r["candidates"], key=lambda c: c["score"])["seed"]
                   for r in rows)
    if name == "template":
        assert {{kv["key"]: kv["value"] for kv in r["template_vars"]}["style"] for r in rows} == {"ink", "oil"}
    if name == "image_to_image":
        assert all(len(r["input_images"]) == 1 and len(r["input_sha256"][0]) == 64 for r in rows)
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0
    rerun = {r["image_key"]: r for r in again.manifest().to_table().to_pylist()}
    for r in rows:  # what the first run recorded, carried exactly (times to the microsecond)
        assert rerun[r["image_key"]]["generated_at"] == r["generated_at"]
        assert rerun[r["image_key"]]["candidates"] == r["candidates"]


def test_a_manifest_written_before_the_types_reads_typed_and_resumes(tmp_path: Path) -> None:
    """Parts as the previous version wrote them (float seconds, JSON text): every reader types them, the
    `manifest()` dataset reads them as they are, and a rerun finds every image and rewrites the manifest typed."""
    import imagefleet
    from imagefleet.pipelines.manifest import read_manifest_columns

    raw, first = _run(tmp_path, "best_of")
    out = tmp_path / "out"
    typed = pa.concat_tables(pq.read_table(p) for p in _current_parts(out))
    for part in _current_parts(out):  # rewrite each part flat, as before
        t = pq.read_table(part)
        for column in TYPED:
            i = t.column_names.index(column)
            t = t.set_column(i, pa.field(column, CODECS[column].flat), decode(column, t.column(i).combine_chunks()))
        pq.write_table(t, part)
    assert pq.read_schema(_current_parts(out)[0]).field("generated_at").type == pa.float64()
    read = read_manifest_columns(str(out), LOCAL, ["image_key", *TYPED])
    assert read.schema.field("generated_at").type == TIMESTAMP
    assert sorted(read.to_pylist(), key=lambda r: r["image_key"]) == sorted(
        typed.select(["image_key", *TYPED]).to_pylist(), key=lambda r: r["image_key"])
    assert first.manifest().to_table().num_rows == typed.num_rows  # the lazy dataset takes the old types
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0 and again.summary.num_already_present == 3
    assert pq.read_schema(_current_parts(out)[0]).field("generated_at").type == TIMESTAMP
    carried = {r["image_key"]: r for r in again.manifest().to_table().to_pylist()}
    assert all(carried[r["image_key"]]["candidates"] == r["candidates"]
               and carried[r["image_key"]]["generated_at"] == r["generated_at"] for r in typed.to_pylist())
