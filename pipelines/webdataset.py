"""WebDataset export: the committed manifest's `ok` images packed into tar shards, then an index written last.

Layout under the output root:
    webdataset/<export_id>/shard-000000.tar ...   (one folder per export; older folders removed after commit)
    webdataset/index.json                          (the current export: shard list, sizes, sha256, url pattern;
                                                    for s3:// also a `pipe:` pattern webdataset reads)
"""

from __future__ import annotations

import bisect
import json
import shlex
from typing import TYPE_CHECKING, Any, cast

from imagefleet.actors.layout import WEBDATASET_DIR, WEBDATASET_INDEX, shard_pattern, webdataset_dir
from imagefleet.actors.shard_writer import ShardWriter
from imagefleet.actors.storage import ObjectStore
from imagefleet.configs.writer import OutputConfig, ShardWriterConfig
from imagefleet.pipelines.commit import current_parts
from imagefleet.pipelines.pools import shard_writer_kwargs

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data


def build_shards(output: OutputConfig, objects: ObjectStore, num_ok: int, export_id: str) -> ray.data.Dataset:
    """The lazy export graph: one summary row per shard written.

    Args:
        output: the output config (root and webdataset settings).
        objects: the output.
        num_ok: `ok` rows in the manifest.
        export_id: folder name of this export (the run id).
    """
    import ray.data

    # 1 the committed manifest's ok rows (a shard must never see a half-written run)
    fs, root = objects.arrow()
    parts = [f"{root}/{p}" for p in current_parts(objects)]
    ok = ray.data.read_parquet(parts, filesystem=fs).map_batches(_ok_rows, batch_format="pyarrow").materialize()
    # 2 each row's shard: runs of `samples_per_shard` keys in key order (a cap: every shard but the last is full)
    firsts = shard_starts(ok, output.webdataset.samples_per_shard)
    ds = ok.map_batches(_with_shard, fn_kwargs={"firsts": firsts}, batch_format="pyarrow")
    # 3 one tar per shard; CPU tasks (fetch + tar + upload is I/O-bound, no model to keep warm)
    num_shards = max(1, len(firsts))
    cfg = ShardWriterConfig(uri=output.uri, store=objects.spec, num_shards=num_shards, run_id=export_id)
    shards: ray.data.Dataset = ds.groupby("shard", num_partitions=min(num_shards, 64)).map_groups(
        ShardWriter, fn_constructor_kwargs={"cfg": cfg}, batch_format="pyarrow",
        **shard_writer_kwargs(output.webdataset.num_cpus),
    )
    return shards


def shard_starts(ok: ray.data.Dataset, per_shard: int) -> list[str]:
    """The first image key of each shard: every `per_shard`-th key of the sorted keys (Ray sorts them; the driver
    streams them and keeps one key per shard)."""
    firsts: list[str] = []
    seen = 0
    for batch in ok.select_columns(["image_key"]).sort("image_key").iter_batches(batch_format="pyarrow",
                                                                                  batch_size=65536):
        keys = cast("pa.Table", batch).column("image_key")
        firsts += [str(keys[j]) for j in range((-seen) % per_shard, len(keys), per_shard)]
        seen += len(keys)
    return firsts


def write_webdataset(output: OutputConfig, objects: ObjectStore, num_ok: int, export_id: str) -> str:
    """Run the export, write `webdataset/index.json` last, then drop older exports. Returns the index URI."""
    # one small row per shard comes back (not per image): the index needs them all
    shards = sorted(build_shards(output, objects, num_ok, export_id).take_all(), key=lambda r: r["shard"])
    url_pattern = objects.uri_of(shard_pattern(export_id, len(shards)))
    index: dict[str, Any] = {
        "export_id": export_id,
        "num_shards": len(shards),
        "num_samples": sum(int(s["num_samples"]) for s in shards),
        "url_pattern": url_pattern,
    }
    if objects.location.kind == "s3":
        # webdataset has no s3:// handler; its `pipe:` URLs read each shard from a command's stdout. Quoted for the
        # shell (webdataset expands the braces before it runs the command).
        index["pipe_pattern"] = f"pipe:imagefleet cat {shlex.quote(url_pattern)}"
    index["shards"] = [{"url": objects.uri_of(s["path"]), "num_samples": int(s["num_samples"]),
                        "bytes": int(s["bytes"]), "sha256": s["sha256"]} for s in shards]
    objects.put(WEBDATASET_INDEX, json.dumps(index, indent=2).encode(), "application/json")
    for rel, _ in list(objects.list(f"{WEBDATASET_DIR}/")):
        if rel != WEBDATASET_INDEX and not rel.startswith(f"{webdataset_dir(export_id)}/"):
            objects.delete(rel)
    return objects.uri_of(WEBDATASET_INDEX)


def _ok_rows(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch.column("status"), "ok"))


def _with_shard(batch: pa.Table, firsts: list[str]) -> pa.Table:
    import pyarrow as pa

    shards = [max(0, bisect.bisect_right(firsts, k) - 1) for k in batch.column("image_key").to_pylist()]
    return batch.append_column("shard", pa.array(shards, pa.int32()))


def read_index(objects: ObjectStore) -> dict[str, Any]:
    """The current export's index (for tests and tools)."""
    return dict(json.loads(objects.get(WEBDATASET_INDEX)))
