"""ShardWriter on a local store, without Ray: tar layout, sample JSON, reproducible bytes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa

from imagefleet.actors.layout import image_rel, shard_rel
from imagefleet.actors.manifest_schema import SHARD_FIELDS
from imagefleet.actors.shard_writer import ShardWriter, shard_of
from imagefleet.configs.storage import StoreSpec
from imagefleet.configs.writer import ShardWriterConfig


def group(root: Path, n: int) -> pa.Table:
    rows = []
    for i in range(n):
        key = hashlib.sha256(str(i).encode()).hexdigest()[:40]
        rel = image_rel(key, "png")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"png-bytes-%d" % i)
        rows.append({"shard": 3, "image_key": key, "image_uri": f"{root}/{rel}", "prompt": f"p{i}", "seed": i,
                     "width": 8, "height": 8, "status": "ok", "written_at": 1000.0 + i, "clip_score": float("nan")})
    return pa.Table.from_pylist(rows)


def test_one_tar_per_group_in_key_order(tmp_path: Path) -> None:
    cfg = ShardWriterConfig(uri=str(tmp_path), store=StoreSpec(kind="local"), num_shards=4, run_id="e1")
    out = ShardWriter(cfg)(group(tmp_path, 5)).to_pylist()
    assert out[0]["shard"] == 3 and out[0]["path"] == shard_rel("e1", 3) == "webdataset/e1/shard-000003.tar"
    data = (tmp_path / out[0]["path"]).read_bytes()
    assert out[0]["bytes"] == len(data) and out[0]["sha256"] == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        stems = [n.split(".")[0] for n in names]
        assert len(names) == 10 and stems[::2] == stems[1::2] == sorted(set(stems))  # samples adjacent, in key order
        assert names[0].endswith(".png") and names[1].endswith(".json")
        assert tar.extractfile(names[0]).read().startswith(b"png-bytes-")  # type: ignore[union-attr]
        meta = json.loads(tar.extractfile(names[1]).read())  # type: ignore[union-attr]
        assert set(meta) == set(SHARD_FIELDS) and meta["clip_score"] is None  # NaN is not JSON
    # rebuilding the same samples gives the same bytes (no timestamps inside)
    again = ShardWriter(cfg.model_copy(update={"run_id": "e2"}))(group(tmp_path, 5)).to_pylist()
    assert again[0]["sha256"] == out[0]["sha256"]


def test_shards_are_balanced_and_stable() -> None:
    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:40] for i in range(4000)]
    counts = [0] * 8
    for k in keys:
        counts[shard_of(k, 8)] += 1
    assert min(counts) > 400 and max(counts) < 600
    assert [shard_of(k, 8) for k in keys[:20]] == [shard_of(k, 8) for k in keys[:20]]
