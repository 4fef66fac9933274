"""Shared helpers for the benchmarks: environment, embedded S3, steady-state rates from a manifest."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("IMAGEFLEET_BENCH_DIR", "/tmp/imagefleet-bench"))


def prepare_env() -> None:
    """Loopback Ray, offline HF, and the repo on PYTHONPATH so Ray workers can import bench-only actors."""
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    from imagefleet.jobs.runtime import prepare_environment

    prepare_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpus} cores, {mem:.0f} GiB, {platform.python_version()}"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def steady_rate(timestamps: list[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Images/s between the lo and hi quantiles of completion times (drops warm-up and drain)."""
    ts = sorted(timestamps)
    if len(ts) < 10:
        return 0.0
    i, j = int(len(ts) * lo), int(len(ts) * hi) - 1
    return (j - i) / (ts[j] - ts[i]) if ts[j] > ts[i] else 0.0


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def start_s3(name: str) -> Any:
    from imagefleet.jobs.seaweed import S3Server

    server = S3Server.prepare(WORK / name)
    if not server.running():
        server.start()
    os.environ.update(server.env())
    return server


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
