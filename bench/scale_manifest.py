"""Scale of the manifest-only stages, 10k → 1M → 10M rows: stage the parts, commit, build a rerun's resume index.

A whole run of 10M rows doesn't fit this machine's time (1M rows take ~8 min on 2 cores), and 10M image files
don't fit its disk (one 4 KiB block and one inode each), so this measures what happens once per run around the
generation, at sizes a whole run can't reach here:

    stage    the manifest step: typed rows written as parts of `part_rows` rows (one Ray Data write task each in
             a run; here one process, serially: the CPU per row is the figure)
    commit   the driver's commit of those parts (pipelines/commit.py), once at the end
    resume   `load_index` over the committed manifest + the image listing, as a rerun's resume index is built

Rows are ok rows of distinct keys with every column a text-to-image run writes; the image listing the resume
scan joins against is synthesized (a store whose `images/` listing names every row's object without a file on
disk: the listing's own cost per object is in the whole-run figures of bench/scale.py). Peak memory is the
process's RSS high-water rise over a step, polled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import WORK, git_rev, machine, prepare_env  # noqa: E402

SIZES = (10_000, 1_000_000, 10_000_000)
CHUNK_PARTS = 64
"""Parts built per chunk of rows (the table of 10M rows is never held at once)."""


class Peak:
    """The RSS high-water rise over a `with` block, polled every 20 ms."""

    def __enter__(self) -> Peak:
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.wall_s, self.cpu_s = time.perf_counter() - self.t0, time.process_time() - self.c0
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def rise_mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def key_of(i: int) -> str:
    return hashlib.sha256(f"scale-{i}".encode()).hexdigest()


def rows(start: int, n: int, run_id: str) -> Any:
    """`n` manifest rows from row `start` as the pipeline's last stage hands them to the manifest step (its flat
    column types): ok, one 8 px PNG each."""
    import pyarrow as pa

    from imagefleet.actors.manifest_schema import COLUMNS

    keys = [key_of(i) for i in range(start, start + n)]
    now = time.time()
    values: dict[str, Any] = {
        "id": [str(i) for i in range(start, start + n)], "image_index": [0] * n,
        "prompt": [f"p{i}" for i in range(start, start + n)], "generator": ["z"] * n, "model": ["sleep@0"] * n,
        "image_key": keys, "status": ["ok"] * n, "error": [""] * n, "sha256": keys, "bytes": [70] * n,
        "mime": ["image/png"] * n, "width": [8] * n, "height": [8] * n, "seed": list(range(start, start + n)),
        "num_steps": [1] * n, "guidance_scale": [0.0] * n, "cost_usd": [0.0] * n, "already_present": [False] * n,
        "run_id": [run_id] * n, "generated_at": [now] * n, "written_at": [now] * n,
    }
    return pa.table({c.name: pa.array(values[c.name], c.flat) if c.name in values else pa.nulls(n, c.flat)
                     for c in COLUMNS})


class ListedImages:
    """An output store whose `images/` listing names `count` objects of `key_of(i)` without files (everything else
    is the real store). The names are made before the measurement, grouped by the first hex digit of their key (the
    resume scan lists `images/<digit>` prefixes at once), as compact byte arrays: the listing's own memory is not
    the index's."""

    def __init__(self, store: Any, count: int) -> None:
        import numpy as np

        self.store, self.count = store, count
        keys = np.array([key_of(i).encode() for i in range(count)], dtype="S64")
        self.by_digit = {d: keys[np.char.startswith(keys, d.encode())] for d in "0123456789abcdef"}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        from imagefleet.actors.layout import IMAGES_DIR

        if not prefix.startswith(IMAGES_DIR):
            yield from self.store.list(prefix)
            return
        start = prefix[len(IMAGES_DIR) + 1:]
        for digit, keys in self.by_digit.items():
            if digit.startswith(start) or start.startswith(digit):
                for raw in keys:
                    k = raw.decode()
                    if k.startswith(start):
                        yield f"{IMAGES_DIR}/{k[:2]}/{k}.png", 70


def one(n: int) -> dict[str, Any]:
    from imagefleet.actors.resume_index import load_index
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.commit import Lease, commit, stage_part
    from imagefleet.pipelines.manifest import _to_manifest_rows, part_rows

    base = WORK / f"scale-manifest-{n}"
    shutil.rmtree(base, ignore_errors=True)
    store = open_store(str(base / "out"), StoreSpec(kind="local"))
    size = part_rows(n)
    lease = Lease(store, "scale", 24 * 3600.0).acquire()
    with Peak() as staged:
        for start in range(0, n, size * CHUNK_PARTS):
            chunk = rows(start, min(size * CHUNK_PARTS, n - start), lease.run_id)
            for at in range(0, chunk.num_rows, size):
                stage_part(store, lease.attempt, _to_manifest_rows(chunk.slice(at, size), lease.run_id))
    with Peak() as committed:
        parts = commit(store, lease, n)
    lease.release()
    listed = ListedImages(store, n)
    with Peak() as resumed:
        index = load_index(listed, "png")
    assert len(index) == n, (len(index), n)
    held = index.keys.nbytes + index.locs.nbytes + index.ok.nbytes
    del index, listed
    shutil.rmtree(base, ignore_errors=True)
    per = 1e6 / n
    return {"rows": n, "parts": len(parts), "part_rows": size,
            "stage_s": round(staged.wall_s, 2), "stage_cpu_us_per_row": round(staged.cpu_s * per, 2),
            "commit_s": round(committed.wall_s, 3), "commit_us_per_row": round(committed.wall_s * per, 3),
            "commit_peak_mb": committed.rise_mb,
            "resume_s": round(resumed.wall_s, 2), "resume_us_per_row": round(resumed.wall_s * per, 2),
            "resume_peak_mb": resumed.rise_mb, "resume_bytes_per_row": round(resumed.rise_mb * 2**20 / n),
            "index_bytes_per_row": round(held / n, 1)}


def growth(results: list[dict[str, Any]], key: str) -> list[float | None]:
    """`key`'s growth factor per 10× rows from each size to the next (a 100× step counts as two 10× steps:
    (b / a) ** (1 / log10(rows b / rows a))); None for the first size."""
    import math

    out: list[float | None] = [None]
    for a, b in zip(results, results[1:], strict=False):
        steps = math.log10(b["rows"] / a["rows"])
        out.append(round((b[key] / a[key]) ** (1 / steps), 2) if a[key] and b[key] and steps > 0 else None)
    return out


def run(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    prepare_env()
    results = [one(n) for n in sizes]
    return {"results": results, "at": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "commit": git_rev(),
            "growth": {k: growth(results, k) for k in ("stage_cpu_us_per_row", "commit_us_per_row",
                                                        "resume_us_per_row", "resume_bytes_per_row")}}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(str(n) for n in SIZES), help="comma-separated row counts")
    p.add_argument("--save", action="store_true",
                   help="put the result in bench/results/scale.json as its manifest_only part (the whole runs kept)")
    args = p.parse_args()
    out = run(tuple(int(s) for s in args.sizes.split(",")))
    print(json.dumps(out, indent=2))
    if args.save:
        saved = Path(__file__).resolve().parent / "results" / "scale.json"
        whole = json.loads(saved.read_text())
        whole["manifest_only"] = out
        saved.write_text(json.dumps(whole, indent=2))
    os._exit(0)
