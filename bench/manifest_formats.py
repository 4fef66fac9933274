"""Should the committed manifest be a Delta Lake table? Today's protocol (parts + `_manifest.json`, written last)
against `deltalake.write_deltalake` on the same typed manifest rows, on a local folder and the embedded S3:

- what a reader sees while a commit is between its copy and its index write: a glob over `manifest/*.parquet`
  against the index's parts (and, for Delta, a glob over the table folder against the Delta log);
- what committing N rows costs (the protocol's staging + commit; Delta's write of files + log);
- whether Delta's S3 commit is safe on SeaweedFS (8 writers race for the same version);
- which readers read each format with what is installed, without downloading anything.

`deltalake`, `duckdb` and `polars` must be importable (`pip install deltalake duckdb polars`; only duckdb is a dev
dependency). Run: `python -m bench.manifest_formats --rows 10000 100000`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

from bench.common import WORK, Timer, git_rev, machine, prepare_env, start_s3


def manifest_table(rows: int, run_id: str, seed: int = 0) -> Any:
    """`rows` manifest rows typed as a run commits them (pipelines/schema.py MANIFEST), with realistic values: hex
    keys and digests, prompts of ~60 characters, template maps, adapters, best-of candidates, UTC times."""
    import numpy as np
    import pyarrow as pa

    from imagefleet.pipelines.schema import MANIFEST

    rng = np.random.default_rng(seed)
    idx = np.arange(rows)
    keys = [f"{seed:08x}{i:032x}" for i in idx]
    now = int(time.time() * 1e6)
    words = np.array(["a red fox", "in the snow", "oil painting", "studio light", "wide angle", "at dusk"])
    values: dict[str, Any] = {
        "id": [f"p{i}" for i in idx], "image_index": np.zeros(rows, np.int32), "image_key": keys,
        "prompt": [" ".join(words[rng.integers(0, 6, 5)]) for _ in idx], "negative_prompt": [""] * rows,
        "template": ["{{subject}} in {{style}}"] * rows,
        "template_vars": [[("subject", "fox"), ("style", "ink" if i % 2 else "oil")] for i in idx],
        "generator": ["sdxl"] * rows, "model": ["stabilityai/sdxl-base-1.0"] * rows, "model_version": ["1.0"] * rows,
        "seed": rng.integers(0, 2**31, rows), "width": np.full(rows, 1024, np.int32),
        "height": np.full(rows, 1024, np.int32), "num_steps": np.full(rows, 30, np.int32),
        "guidance_scale": np.full(rows, 7.5), "task": ["text_to_image"] * rows, "strength": [None] * rows,
        "input_images": [[] for _ in idx], "input_sha256": [[] for _ in idx], "mask_uri": [""] * rows,
        "mask_sha256": [""] * rows, "adapters": [[{"name": "pixel", "weight": 0.8}] for _ in idx],
        "variant": [""] * rows, "status": ["ok"] * rows, "error": [""] * rows,
        "image_uri": [f"s3://bucket/run/images/{k[:2]}/{k}.png" for k in keys], "mime": ["image/png"] * rows,
        "sha256": [f"{k}{k[:24]}" for k in keys], "bytes": rng.integers(400_000, 1_600_000, rows),
        "already_present": np.zeros(rows, bool), "queue_ms": rng.random(rows) * 50,
        "generate_ms": 900 + rng.random(rows) * 200, "encode_ms": rng.random(rows) * 30,
        "upload_ms": rng.random(rows) * 40, "cost_usd": np.full(rows, 0.002), "requests": np.ones(rows, np.int32),
        "maybe_billed_usd": np.zeros(rows), "clip_score": rng.random(rows),
        "candidates": [[{"seed": int(s), "score": float(s % 100) / 100} for s in (i, i + 1, i + 2)] for i in idx],
        "generated_at": now + idx * 1000, "written_at": now + idx * 1000 + 500, "run_id": [run_id] * rows,
    }
    columns = []
    for field in MANIFEST:
        if field.name in values:
            columns.append(pa.array(values[field.name], field.type))
        else:  # the cascade's draft columns: null outside a cascade run
            columns.append(pa.nulls(rows, field.type))
    return pa.Table.from_arrays(columns, schema=MANIFEST)


def protocol_commit(uri: str, spec: Any, table: Any, run_id: str,
                    paused: Callable[[], None] | None = None) -> dict[str, float]:
    """Today's protocol: stage parts of `part_rows` rows, then commit (check, copy, index, garbage). With `paused`,
    it is called between the copy and the index write (what a reader sees then)."""
    from imagefleet.actors.stores import open_store
    from imagefleet.pipelines.commit import Lease, commit, stage_part
    from imagefleet.pipelines.manifest import part_rows

    store = open_store(uri, spec)
    size = part_rows(table.num_rows)
    with Lease(store, run_id, ttl_s=600) as lease:
        with Timer() as staging:  # in a run, Ray Data's write tasks stage these in parallel as rows finish
            for start in range(0, table.num_rows, size):
                stage_part(store, lease.attempt, table.slice(start, size))
        real_check = Lease.check

        def check(self: Lease) -> None:
            if paused is not None:
                paused()
            real_check(self)

        with Timer() as committing, mock.patch.object(Lease, "check", check):
            commit(store, lease, table.num_rows)
    return {"stage_s": staging.seconds, "commit_s": committing.seconds}


def glob_rows(uri: str, spec: Any, folder: str) -> int:
    """Rows a reader that globs `<uri>/<folder>/*.parquet` sees (no index, no log)."""
    import pyarrow.dataset as pads

    from imagefleet.actors.storage import arrow_filesystem

    fs, root = arrow_filesystem(uri, spec)
    # pyarrow's discovery skips names starting with "_" or "." (the staging folder, the index): a plain glob
    return int(pads.dataset(f"{root}/{folder}", filesystem=fs, format="parquet").count_rows())


def index_rows(uri: str, spec: Any) -> int:
    from imagefleet.actors.stores import open_store
    from imagefleet.pipelines.manifest import manifest_dataset

    return int(manifest_dataset(open_store(uri, spec)).count_rows())


def mid_commit(uri: str, spec: Any, rows: int) -> dict[str, int]:
    """Commit `rows` rows, then a second run's rows, paused before its index write: glob vs index readers."""
    protocol_commit(uri, spec, manifest_table(rows, "first", 1), "first")
    seen: dict[str, int] = {}

    def look() -> None:
        seen.update(glob_mid=glob_rows(uri, spec, "manifest"), index_mid=index_rows(uri, spec))

    protocol_commit(uri, spec, manifest_table(rows, "second", 2), "second", paused=look)
    seen.update(glob_after=glob_rows(uri, spec, "manifest"), index_after=index_rows(uri, spec))
    return seen


def delta_commit(uri: str, options: dict[str, str], table: Any, mode: str) -> float:
    from deltalake import write_deltalake

    with Timer() as t:
        write_deltalake(uri, table, mode=mode, storage_options=options)  # type: ignore[arg-type]
    return t.seconds


def delta_runs(uri: str, options: dict[str, str], spec: Any, rows: int) -> dict[str, Any]:
    """Two overwrites of `rows` rows (a run, then a rerun): their cost, what the Delta log and a glob read."""
    from deltalake import DeltaTable

    first = delta_commit(uri, options, manifest_table(rows, "first", 1), "error")
    second = delta_commit(uri, options, manifest_table(rows, "second", 2), "overwrite")
    table = DeltaTable(uri, storage_options=options)
    with Timer() as read:
        log_rows = table.to_pyarrow_table().num_rows
    typed = str(table.to_pyarrow_dataset().schema.field("generated_at").type)
    return {"first_s": first, "second_s": second, "log_rows": log_rows, "log_read_s": read.seconds,
            "glob_rows_after_overwrite": glob_rows(uri, spec, ""), "files": len(table.file_uris()),
            "generated_at_type": typed}


def delta_parts(uri: str, options: dict[str, str], spec: Any, rows: int) -> dict[str, Any]:
    """Delta written as a Ray run would write it: the same parts as the protocol, each put straight into the table
    folder by a write task (invisible until logged), then one log entry adds them (and removes the last run's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    from imagefleet.actors.stores import open_store
    from imagefleet.pipelines.manifest import part_rows

    store = open_store(uri, spec)
    timings: dict[str, Any] = {}
    for n, run_id in enumerate(("first", "second")):
        table, actions = manifest_table(rows, run_id, n + 1), []
        with Timer() as staging:
            for start in range(0, rows, part_rows(rows)):
                sink = pa.BufferOutputStream()
                chunk = table.slice(start, part_rows(rows))
                pq.write_table(chunk, sink)
                data, name = sink.getvalue().to_pybytes(), f"part-{uuid.uuid4().hex}.parquet"
                store.put(name, data, "application/vnd.apache.parquet")
                actions.append(AddAction(name, len(data), {}, int(time.time() * 1000), True,
                                         json.dumps({"numRecords": chunk.num_rows})))
        with Timer() as committing:
            if n == 0:
                create_table_with_add_actions(uri, Schema.from_arrow(table.schema), actions, "error",
                                              storage_options=options)
            else:
                DeltaTable(uri, storage_options=options).create_write_transaction(actions, "overwrite", table.schema)
        timings[run_id] = {"stage_s": staging.seconds, "commit_s": committing.seconds}
    with Timer() as read:
        timings["log_rows"] = DeltaTable(uri, storage_options=options).to_pyarrow_table().num_rows
    timings["log_read_s"] = read.seconds
    final = DeltaTable(uri, storage_options=options)
    timings["files"] = len(final.file_uris())
    return timings


def delta_race(uri: str, options: dict[str, str], writers: int = 8) -> dict[str, Any]:
    """`writers` handles opened at version 0 append at once: each must land as its own version (conditional put
    of the log entry), none overwritten."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    write_deltalake(uri, pa.table({"x": [0]}), storage_options=options)
    handles = [DeltaTable(uri, storage_options=options) for _ in range(writers)]
    start, errors = threading.Barrier(writers), []

    def write(i: int) -> None:
        start.wait()
        try:
            write_deltalake(handles[i], pa.table({"x": [i + 1]}), mode="append")
        except Exception as exc:  # noqa: BLE001 - counted, shown
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = DeltaTable(uri, storage_options=options)
    landed = sorted(final.to_pyarrow_table().column("x").to_pylist())
    return {"version": final.version(), "rows_landed": len(landed), "rows_written": writers + 1, "errors": errors}


def readers(local_manifest: str, delta_uri: str, s3_files: list[str], s3_env: dict[str, str]) -> dict[str, str]:
    """Which engine reads which format here, with nothing downloaded at first use."""
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.commit import current_parts

    store = open_store(local_manifest, StoreSpec(kind="local"))
    files = [store.uri_of(p) for p in current_parts(store)]
    installed = dict(duckdb.sql("select extension_name, installed from duckdb_extensions()").fetchall())
    s3_options = {"aws_endpoint_url": s3_env["AWS_ENDPOINT_URL"], "aws_access_key_id": s3_env["AWS_ACCESS_KEY_ID"],
                  "aws_secret_access_key": s3_env["AWS_SECRET_ACCESS_KEY"], "aws_region": "us-east-1",
                  "aws_allow_http": "true"}
    out: dict[str, str] = {}
    checks: dict[str, Callable[[], Any]] = {
        "pyarrow parquet parts (local)": lambda: pq.read_table(files).num_rows,
        "duckdb read_parquet(parts) (local)": lambda: duckdb.read_parquet(files).fetchall().__len__(),
        "polars read_parquet(parts) (local)": lambda: pl.read_parquet(files).height,
        "polars read_parquet(parts) (s3)": lambda: pl.read_parquet(s3_files, storage_options=s3_options).height,
        "polars read_delta (local, needs deltalake)": lambda: pl.read_delta(delta_uri).height,
    }
    for name, check in checks.items():
        try:
            out[name] = f"ok ({check()})"
        except Exception as exc:  # noqa: BLE001 - the finding is the failure
            out[name] = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    out["duckdb httpfs (s3://) installed"] = str(installed.get("httpfs"))
    out["duckdb delta extension installed"] = str(installed.get("delta"))
    return out


def run(sizes: list[int]) -> dict[str, Any]:
    prepare_env()
    from imagefleet.actors.storage import resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config, StoreSpec
    from imagefleet.pipelines.commit import current_parts

    local_root = WORK / f"manifest-formats-{uuid.uuid4().hex[:6]}"
    server = start_s3("s3-manifest-formats")
    bucket = "formats-" + uuid.uuid4().hex[:6]
    server.ensure_bucket(bucket)
    env = server.env()
    options = {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"], "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true"}
    results: dict[str, Any] = {"at": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "commit": git_rev()}
    try:
        for rows in sizes:
            for where in ("local", "s3"):
                base = str(local_root / f"{rows}") if where == "local" else f"s3://{bucket}/{rows}"
                spec = StoreSpec(kind="local") if where == "local" else resolve_store_spec(base, S3Config(), env)
                out = f"{base}/protocol"
                protocol = {"first": protocol_commit(out, spec, manifest_table(rows, "a", 1), "a")}
                protocol["rerun"] = protocol_commit(out, spec, manifest_table(rows, "b", 2), "b")
                with Timer() as read:
                    index_rows(out, spec)
                results[f"{where} {rows}"] = {
                    "protocol": {**protocol, "parts": len(current_parts(open_store(out, spec))),
                                 "index_read_s": read.seconds},
                    "mid_commit": mid_commit(f"{base}/mid", spec, rows),
                    "delta": delta_runs(f"{base}/delta", options if where == "s3" else {}, spec, rows),
                    "delta_parts": delta_parts(f"{base}/delta-parts", options if where == "s3" else {}, spec, rows)}
        results["delta_race_s3"] = delta_race(f"s3://{bucket}/race", options)
        s3_spec = resolve_store_spec(f"s3://{bucket}/{sizes[0]}/protocol", S3Config(), env)
        s3_store = open_store(f"s3://{bucket}/{sizes[0]}/protocol", s3_spec)
        results["readers"] = readers(str(local_root / f"{sizes[0]}" / "protocol"),
                                     str(local_root / f"{sizes[0]}" / "delta"),
                                     [s3_store.uri_of(p) for p in current_parts(s3_store)], env)
    finally:
        server.stop()
        shutil.rmtree(local_root, ignore_errors=True)
    return results


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    print(json.dumps(_rounded(run(p.parse_args().rows)), indent=2))
