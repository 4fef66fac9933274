"""Shared fixtures: a tiny offline diffusers model, an embedded SeaweedFS S3 and an isolated local Ray."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", kind="sd", seed=0)


@pytest.fixture(scope="session")
def tiny_model_xl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl", kind="sdxl", seed=1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from jobs.seaweed import S3Server

    server = S3Server.prepare(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """AWS_* variables pointing at the embedded server, for the duration of one test."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def bucket(s3_server: Any) -> str:
    """A fresh bucket per test."""
    name = "t-" + uuid.uuid4().hex[:12]
    s3_server.ensure_bucket(name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One isolated local Ray for the session: loopback, own temp dir, 4 CPUs and 2 fake GPUs."""
    import ray

    from jobs.runtime import RAY_ENV

    temp = f"/tmp/ifray/t{uuid.uuid4().hex[:6]}"
    ray.init(address="local", num_cpus=4, num_gpus=2, _temp_dir=temp, include_dashboard=False,
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": dict(RAY_ENV)})
    yield
    ray.shutdown()


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
