"""Helpers tests import: the repository root, prompt tables and config files, small job configs, stopping a Ray
head we started. Fixtures live in tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

CLI = [sys.executable, "-m", "imagefleet.jobs.cli"]
"""The command line as a subprocess runs it (the installed entry point is `imagefleet`)."""
REPO = Path(__file__).resolve().parents[1]


def write_prompts(path: Path, columns: dict[str, list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tiny_job(source: str | Path, model: str | Path, output_uri: str, **extra: Any) -> dict[str, Any]:
    """A small job config dict for the tiny model on 2 fake GPUs."""
    raw: dict[str, Any] = {
        "name": "test",
        "seed": 7,
        "source": {"uri": str(source)},
        "generators": {
            "tiny": {
                "backend": "diffusers",
                "model": str(model),
                "dtype": "float32",
                "pool": {"min_size": 1, "max_size": 2, "initial_size": 2, "num_gpus": 1, "num_cpus": 0.5,
                         "batch_size": 4},
                "defaults": {"width": 64, "height": 64, "num_steps": 2, "guidance_scale": 0.0},
                "cost": {"usd_per_gpu_hour": 3.0},
            }
        },
        "output": {"uri": output_uri, "pool": {"min_size": 1, "max_size": 1, "batch_size": 8}},
        "cluster": {"address": "local", "num_cpus": 4, "num_gpus": 2, "executor": "ray"},
    }
    for key, value in extra.items():
        raw[key] = value
    return raw


def sleep_job(source: str | Path, output_uri: str, latency_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A job on the `sleep` stand-in backend (no model, no CPU while "generating")."""
    raw: dict[str, Any] = {
        "name": "sleep-test",
        "seed": 3,
        "source": {"uri": str(source)},
        "generators": {
            "sleepy": {
                "backend": "sleep",
                "base_latency_s": latency_s,
                "pool": {"min_size": 2, "max_size": 2, "initial_size": 2, "num_gpus": 1, "num_cpus": 0,
                         "batch_size": 4},
                "defaults": {"width": 16, "height": 16},
            }
        },
        "output": {"uri": output_uri, "pool": {"min_size": 1, "max_size": 1, "batch_size": 16}},
        "cluster": {"address": "local", "num_cpus": 4, "num_gpus": 2, "executor": "ray"},
    }
    raw.update(extra)
    return raw


def stop_ray_head(head: Any, temp_dir: str) -> None:
    """Stop a `ray start --head --block` we started, and every process of its session (fake autoscaled
    nodes included), by PID. Never `ray stop`: that kills every Ray on the machine."""
    import signal
    import time

    import psutil

    procs = psutil.Process(head.pid).children(recursive=True) if psutil.pid_exists(head.pid) else []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    time.sleep(3)
    ours = [q for q in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(q.info["cmdline"] or [])]
    for p in [*procs, *ours]:
        with contextlib.suppress(psutil.Error):
            p.kill()


def send_until_answered(sock: Any, chunks: Any, sent: list[int] | None = None) -> bytes:
    """Send `chunks` on a non-blocking socket until the server answers or closes the connection (a server that
    refuses a request early must not have to read the rest); what it answered so far. `sent` gets each chunk's
    size as it is sent."""
    sock.setblocking(False)
    reply = b""
    for chunk in chunks:
        with contextlib.suppress(BlockingIOError):
            reply += sock.recv(65536)
        if reply:
            break
        try:
            sock.sendall(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            break
        if sent is not None:
            sent.append(len(chunk))
    return reply


def quality_verified(*args: str) -> None:
    """`bench/quality.py --verify 8 ARGS` exits 0 and its JSON says the run and the replay agree on all 8 rows, with 2
    escalated and at least one redrawn (else the rows exercise neither rule and the check shows nothing)."""
    import json
    import subprocess

    run = subprocess.run([sys.executable, "bench/quality.py", "--verify", "8", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["agree"] and result["rows"] == 8, result
    assert result["checks"] == dict.fromkeys(result["checks"], 8)
    assert result["escalated"] == 2 and result["redrawn"] >= 1, "the rows exercise neither rule: the test shows nothing"
