"""Shared fixtures: a tiny offline diffusers model, an embedded SeaweedFS S3 and an isolated local Ray (the helpers
tests import live in tests/helpers.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# boto3's credential chain ends at the EC2 instance metadata service (169.254.169.254): tests talk to loopback only
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", kind="sd", seed=0)


@pytest.fixture(scope="session")
def tiny_model_xl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefleet.jobs.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl", kind="sdxl", seed=1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from imagefleet.jobs.seaweed import S3Server

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

    from imagefleet.jobs.runtime import RAY_ENV

    temp = f"/tmp/ifray/t{uuid.uuid4().hex[:6]}"
    ray.init(address="local", num_cpus=4, num_gpus=2, _temp_dir=temp, include_dashboard=False,
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": dict(RAY_ENV)})
    yield
    ray.shutdown()
