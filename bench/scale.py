"""Scale: 10k → 100k (→ 1M with --max-rows) prompt rows on the `sleep` backend at zero latency, then the
manifest-only stages 10k → 1M → 10M (bench/scale_manifest.py).

Measures the driver's peak RSS (polled from outside), the commit time (run.json), and the resume-scan time (the
index a rerun builds from the manifest + one listing) at each size, with each figure's growth factor per 10× rows:
time per row should be flat or falling, driver RSS flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scale_manifest  # noqa: E402
from bench.common import REPO, WORK, Timer, prepare_env, write_yaml  # noqa: E402


def one(rows: int) -> dict[str, Any]:
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = WORK / f"scale-{rows}"
    shutil.rmtree(base, ignore_errors=True)
    src = base / "prompts.parquet"
    src.parent.mkdir(parents=True)
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(rows)]}), src, row_group_size=50_000)
    cfg = write_yaml(base / "job.yaml", {
        "name": f"scale-{rows}",
        "source": {"uri": str(src), "num_rows_per_block": 1000},
        "generators": {"z": {"backend": "sleep", "pool": {"min_size": 2, "max_size": 2, "initial_size": 2,
                                                          "num_gpus": 0, "num_cpus": 0.25, "batch_size": 1000},
                             "defaults": {"width": 8, "height": 8}}},
        "output": {"uri": str(base / "out"), "pool": {"min_size": 2, "max_size": 2, "num_cpus": 0.5,
                                                      "batch_size": 1000, "num_upload_threads": 4}},
        "cluster": {"address": "local", "num_cpus": 4, "temp_dir": "/tmp/ifray"},
    })
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "imagefleet.jobs.cli", "run", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    driver = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, driver.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.2)
    wall = time.time() - t0
    assert proc.returncode == 0, f"scale run {rows} failed"
    from imagefleet.actors.resume_index import load_index
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import StoreSpec

    record = json.loads((base / "out" / "run.json").read_text())
    with Timer() as scan:
        index = load_index(open_store(str(base / "out"), StoreSpec(kind="local")), "png")
    assert len(index) == rows
    shutil.rmtree(base / "out", ignore_errors=True)
    return {"rows": rows, "wall_s": round(wall, 1), "driver_peak_rss_mb": round(peak / 2**20, 1),
            "resume_scan_s": round(scan.seconds, 2), "resume_scan_us_per_row": round(scan.seconds / rows * 1e6, 1),
            "commit_s": record["summary"].get("commit_s"),
            "wall_us_per_row": round(wall / rows * 1e6, 1)}


def run(max_rows: int, manifest_sizes: tuple[int, ...] = scale_manifest.SIZES) -> dict[str, Any]:
    """Whole runs at 10k, 100k, 1M rows (up to `max_rows`); then the manifest-only stages at `manifest_sizes`
    (bench/scale_manifest.py: up to 10M rows, which a whole run can't reach on this machine)."""
    prepare_env()
    sizes = [n for n in (10_000, 100_000, 1_000_000) if n <= max_rows]
    results = [one(n) for n in sizes]
    growth = {k: scale_manifest.growth(results, k) for k in ("wall_us_per_row", "driver_peak_rss_mb",
                                                              "resume_scan_us_per_row")}
    return {"results": results, "growth": growth, "at": time.strftime("%Y-%m-%d %H:%M"),
            "manifest_only": scale_manifest.run(manifest_sizes)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--max-rows", type=int, default=100_000)
    p.add_argument("--manifest-sizes", default="10000,1000000,10000000")
    a = p.parse_args()
    print(json.dumps(run(a.max_rows, tuple(int(n) for n in a.manifest_sizes.split(","))), indent=2))
    os._exit(0)
