"""ShardWriter without Ray: the prompt table's pass-through columns reach each sample's JSON, typed as JSON allows."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa

from imagefleet.actors.layout import image_rel
from imagefleet.actors.manifest_schema import SHARD_FIELDS
from imagefleet.actors.shard_writer import ShardWriter
from imagefleet.configs.storage import StoreSpec
from imagefleet.configs.writer import ShardWriterConfig

UTC = datetime.timezone.utc


def test_pass_through_columns_reach_the_sample_json_typed(tmp_path: Path) -> None:
    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:40] for i in range(2)]
    for key in keys:
        (tmp_path / image_rel(key, "png")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / image_rel(key, "png")).write_bytes(b"png")
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    group = pa.table({
        "shard": pa.array([0, 0], pa.int32()),
        "image_key": keys,
        "image_uri": [f"{tmp_path}/{image_rel(k, 'png')}" for k in keys],
        "prompt": ["p0", "p1"],
        "seed": pa.array([1, 2], pa.int64()),
        "status": ["ok", "ok"],  # a manifest column outside SHARD_FIELDS stays out
        # the user's columns, after the manifest's own
        "sku": ["A1", None],
        "class_id": pa.array([7, None], pa.int64()),
        "price": [1.5, float("nan")],
        "in_stock": [True, False],
        "tags": pa.array([["red", "big"], []], pa.list_(pa.string())),
        "dims": pa.array([{"w": 2, "h": 3}, None], pa.struct([("w", pa.int32()), ("h", pa.int32())])),
        "attrs": pa.array([[("colour", "red")], None], pa.map_(pa.string(), pa.string())),
        "by_id": pa.array([[(1, 0.5)], []], pa.map_(pa.int64(), pa.float64())),
        "added": pa.array([when, None], pa.timestamp("us", tz="UTC")),
        "day": pa.array([datetime.date(2026, 1, 2), None], pa.date32()),
        "cost": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(5, 2)),
        "raw": pa.array([b"\x00\x01", None], pa.binary()),
    })
    cfg = ShardWriterConfig(uri=str(tmp_path), store=StoreSpec(kind="local"), num_shards=1, run_id="e1")
    path = ShardWriter(cfg)(group).column("path")[0].as_py()
    with tarfile.open(fileobj=io.BytesIO((tmp_path / path).read_bytes())) as tar:
        metas = {m.name.split(".")[0]: json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.name.endswith(".json")}
    first, second = metas[keys[0]], metas[keys[1]]
    user = ["sku", "class_id", "price", "in_stock", "tags", "dims", "attrs", "by_id", "added", "day", "cost", "raw"]
    assert set(first) == {*SHARD_FIELDS, *user} and "status" not in first
    assert first["seed"] == 1 and first["prompt"] == "p0"
    assert {k: first[k] for k in user} == {
        "sku": "A1", "class_id": 7, "price": 1.5, "in_stock": True, "tags": ["red", "big"], "dims": {"w": 2, "h": 3},
        "attrs": {"colour": "red"}, "by_id": [[1, 0.5]], "added": "2026-01-02T03:04:05+00:00", "day": "2026-01-02",
        "cost": "1.25", "raw": "AAE="}
    assert {k: second[k] for k in user} == {
        "sku": None, "class_id": None, "price": None, "in_stock": False, "tags": [], "dims": None, "attrs": None,
        "by_id": [], "added": None, "day": None, "cost": None, "raw": None}
