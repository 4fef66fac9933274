"""ShardWriter (CPU): packs one shard's images and manifest rows into a WebDataset tar and uploads it."""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import math
import os
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from imagefleet.actors.layout import shard_rel
from imagefleet.actors.manifest_schema import NAMES, SHARD_FIELDS
from imagefleet.actors.storage import file_sha256
from imagefleet.actors.stores import open_store
from imagefleet.configs.writer import ShardWriterConfig

if TYPE_CHECKING:
    import pyarrow as pa

NUM_FETCH_THREADS = 8  # image reads are I/O-bound


class ShardWriter:
    """Writes one tar per group of manifest rows: `<image_key>.<ext>` (the stored bytes, not re-encoded),
    `<image_key>.json` (the manifest row's SHARD_FIELDS, then the run's pass-through columns: every column of
    the manifest after its own, typed as JSON allows, see `_jsonable`) and `<image_key>.txt` (the prompt: the
    caption, as img2dataset and open_clip's loaders expect) per sample, in key order.

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

        # 1 one shard per group, samples in key order; the columns after the manifest's own are the prompt
        #   table's pass-through columns (source.pass_through)
        rows = sorted(group.to_pylist(), key=lambda r: r["image_key"])
        fields = [(name, group.schema.field(name).type if name in group.column_names else pa.null()) for name in
                  (*SHARD_FIELDS, *(c for c in group.column_names if c not in NAMES and c not in self.INPUT_COLUMNS))]
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
                    meta = {name: _jsonable(row.get(name), t) for name, t in fields}
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


def _jsonable(value: Any, t: pa.DataType) -> Any:
    """A cell of Arrow type `t` (as `to_pylist` gives it) typed as JSON allows: numbers, text, booleans, lists and
    structs as themselves (NaN and infinities null), a map as an object when its keys are text (else a list of
    [key, value] pairs), dates and times as ISO 8601 text, durations as seconds, decimals as text, bytes as base64
    text."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_dictionary(t):
        return _jsonable(value, t.value_type)
    if pa.types.is_map(t):
        if pa.types.is_string(t.key_type) or pa.types.is_large_string(t.key_type):
            return {k: _jsonable(v, t.item_type) for k, v in value}
        return [[_jsonable(k, t.key_type), _jsonable(v, t.item_type)] for k, v in value]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [_jsonable(v, t.value_type) for v in value]
    if pa.types.is_struct(t):
        return {f.name: _jsonable(value.get(f.name), f.type) for f in (t.field(i) for i in range(t.num_fields))}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value
