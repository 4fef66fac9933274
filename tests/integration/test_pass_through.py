"""Pass-through columns on Ray's actor pools (issue #33): a cascade run on the sleep backend, into S3, carries the
user's columns, typed as in the data, on every manifest row of every request, as the in-process runs of
tests/unit/test_pass_through.py do; a rerun carries them again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imagefleet
from tests.helpers import sleep_job, write_prompts

pytestmark = pytest.mark.slow


def test_a_cascade_on_ray_carries_the_users_columns(tmp_path: Path, s3_env: Any, bucket: str,
                                                   ray_cluster: None) -> None:
    n = 24
    src = write_prompts(tmp_path / "p.parquet", {
        "prompt": [("good " if i % 3 == 0 else "meh ") + f"item {i}" for i in range(n)],
        "sku": [f"sku-{i}" for i in range(n)],
        "label": pa.array([i if i % 5 else None for i in range(n)], pa.int64()),
        "weight": pa.array([i / 4 if i % 7 else None for i in range(n)], pa.float64()),
        "tags": pa.array([[f"t{i}"] * (i % 3) for i in range(n)], pa.list_(pa.string())),
        "num_images": [1 + i % 2 for i in range(n)],
    })
    raw: dict[str, Any] = sleep_job(src, f"s3://{bucket}/carried")
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model"}
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5}}
    raw["scorer"] = {"backend": "rule", "marker": "good"}
    raw["source"]["num_rows_per_block"] = 4  # several blocks through every pool
    first = imagefleet.run(raw, echo=None)
    assert "runs   : on Ray" in first.plan
    again = imagefleet.run(raw, echo=None)
    assert again.summary is not None and again.summary.num_written == 0
    source = {r["sku"]: r for r in pq.read_table(src).to_pylist()}
    for result in (first, again):
        table = result.manifest().to_table()
        assert table.num_rows == sum(r["num_images"] for r in source.values())
        for name, t in (("sku", pa.string()), ("label", pa.int64()), ("weight", pa.float64())):
            assert table.schema.field(name).type == t
        assert pa.types.is_list(table.schema.field("tags").type)
        rows = table.to_pylist()
        assert {r["route"] for r in rows} == {"draft", "escalated"}
        for row in rows:
            want = source[row["sku"]]
            assert (row["prompt"], row["label"], row["weight"], row["tags"], row["num_images"]) == (
                want["prompt"], want["label"], want["weight"], want["tags"], want["num_images"])
