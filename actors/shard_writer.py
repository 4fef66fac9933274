"""ShardWriter (CPU): packs one shard's images and manifest rows into a WebDataset tar and uploads it."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from imagefleet.actors.layout import shard_rel
from imagefleet.actors.manifest_schema import SHARD_FIELDS
from imagefleet.actors.storage import file_sha256
from imagefleet.actors.stores import open_store
from imagefleet.configs.writer import ShardWriterConfig

if TYPE_CHECKING:
    import pyarrow as pa

NUM_FETCH_THREADS = 8  # image reads are I/O-bound


class ShardWriter:
    """Writes one tar per group of manifest rows: `<image_key>.<ext>` (the stored bytes, not re-encoded),
    `<image_key>.json` (the manifest row's SHARD_FIELDS) and `<image_key>.txt` (the prompt: the caption, as
    img2dataset and open_clip's loaders expect) per sample, in key order.

    Args:
        cfg: this stage's slice (output root, store, shard count, export id).
    """

    INPUT_COLUMNS = {"shard": "shard index", "image_key": "sample key", "image_uri": "where the image is"}
    OUTPUT_COLUMNS = {"shard": "shard index", "path": "shard object", "num_samples": "samples in it",
                      "bytes": "tar size", "sha256": "of the tar"}

    def __init__(self, cfg: ShardWriterConfig) -> None:
        self.cfg = cfg
        self.store = open_store(cfg.uri, cfg.store)

    def __call__(self, group: pa.Table) -> pa.Table:
        import pyarrow as pa

        # 1 one shard per group, samples in key order
        rows = sorted(group.to_pylist(), key=lambda r: r["image_key"])
        shard = int(rows[0]["shard"])
        # 2 fetch the stored images concurrently
        with ThreadPoolExecutor(NUM_FETCH_THREADS) as pool:
            images = list(pool.map(lambda r: self.store.get(self.store.rel_of(r["image_uri"])), rows))
        # 3 write the tar to local disk (shards can be larger than memory should hold), then upload it
        fd, tmp = tempfile.mkstemp(suffix=".tar", prefix="imagefleet-shard-")
        os.close(fd)
        try:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for row, data in zip(rows, images, strict=True):
                    ext = row["image_uri"].rsplit(".", 1)[-1]
                    meta = {k: _jsonable(row.get(k)) for k in SHARD_FIELDS}
                    _add(tar, f"{row['image_key']}.{ext}", data)
                    _add(tar, f"{row['image_key']}.json", json.dumps(meta, sort_keys=True).encode())
                    _add(tar, f"{row['image_key']}.txt", str(row.get("prompt") or "").encode())
            size = os.path.getsize(tmp)
            digest = file_sha256(tmp)
            path = shard_rel(self.cfg.run_id, shard)
            self.store.put_file(path, tmp, "application/x-tar")
        finally:
            os.unlink(tmp)
        # 4 one summary row per shard (the driver writes the index from these)
        return pa.table({"shard": [shard], "path": [path], "num_samples": [len(rows)], "bytes": [size],
                         "sha256": [digest]})


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # no clock in the bytes: a rebuilt shard with the same samples is identical
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
