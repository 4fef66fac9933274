"""A fleet job mixing a local tiny diffusers generator with both hosted backends (real SDKs → loopback fake),
on local Ray with the shared per-key limiter; and a quota-exhausted run that stops cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs import generate
from tests.conftest import REPO, tiny_job, write_config, write_prompts
from tests.integration.test_pipeline import manifest, objects
from tests.support.fake_hosted import GEMINI_KEY, OPENAI_KEY, FakeHosted

pytestmark = pytest.mark.slow


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    yield server
    server.stop()


def hosted_job(src: Path, model: Path, out: str, fake: FakeHosted) -> dict[str, Any]:
    raw = tiny_job(src, model, out)
    raw["generators"]["tiny"]["pool"].update(min_size=1, max_size=1, initial_size=1)
    fast = {"requests_per_min": 6000, "images_per_min": 6000, "initial_backoff_s": 0.05}
    pool = {"min_size": 1, "max_size": 2, "initial_size": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 4}
    raw["generators"]["oa"] = {"backend": "openai", "base_url": fake.url + "/v1", "quality": "low", "limits": fast,
                               "pool": pool, "defaults": {"width": 64, "height": 64}}
    raw["generators"]["nb"] = {"backend": "gemini", "base_url": fake.url, "limits": fast, "pool": pool,
                               "defaults": {"width": 64, "height": 64}}
    raw["routing"] = {"mode": "fanout", "fanout": ["tiny", "oa", "nb"]}
    return raw


def test_fleet_mixing_local_and_hosted(
    tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str, ray_cluster: None, fake: FakeHosted, capsys: Any
) -> None:
    prompts = [f"prompt {i}" for i in range(6)] + ["blocked [refuse]"]
    src = write_prompts(tmp_path / "p.parquet", {"id": [f"r{i}" for i in range(7)], "prompt": prompts})
    fake.knobs.rate_limit_n = 2  # the first hosted calls meet 429s with retry hints
    assert generate.main([str(write_config(tmp_path / "job.yaml", hosted_job(src, tiny_model, f"s3://{bucket}/h",
                                                                            fake)))]) == 0
    rows = manifest(s3_env, bucket, "h")
    assert len(rows) == 21
    by = {(r["id"], r["generator"]): r for r in rows}
    for gen in ("tiny", "oa", "nb"):
        for i in range(6):
            assert by[(f"r{i}", gen)]["status"] == "ok", by[(f"r{i}", gen)]
    assert by[("r6", "tiny")]["status"] == "ok"  # the local model has no safety system here
    assert by[("r6", "oa")]["status"] == "refused" and "moderation_blocked" in by[("r6", "oa")]["error"]
    assert by[("r6", "nb")]["status"] == "refused" and "blockReason" in by[("r6", "nb")]["error"]
    assert by[("r0", "oa")]["cost_usd"] > 0 and by[("r0", "nb")]["cost_usd"] > 0
    assert by[("r0", "nb")]["width"] == 512  # Gemini's 512 tier for a 64 px request
    assert len(objects(s3_env, bucket, "h/images/")) == 6 * 3 + 1
    out = capsys.readouterr()
    text = out.out + out.err
    for secret in (OPENAI_KEY, GEMINI_KEY):
        assert secret not in text
        assert all(secret not in str(r) for r in rows)


def test_quota_exhausted_stops_cleanly(tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str,
                                       fake: FakeHosted) -> None:
    """Through the CLI with a private Ray (a failed run's pools must not linger in the shared test Ray)."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(4)]})
    raw = hosted_job(src, tiny_model, f"s3://{bucket}/q", fake)
    raw["routing"] = {"mode": "single", "default": "oa"}
    del raw["generators"]["tiny"], raw["generators"]["nb"]
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/q{os.getpid()}"
    fake.knobs.quota_exhausted = True
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", str(write_config(tmp_path / "j.yaml", raw))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-2000:]
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("imagefleet: run ")]
    assert line and "insufficient_quota" in line[0]
    assert not [k for k in objects(s3_env, bucket, "q/manifest/") if "/part-" in k]
    assert OPENAI_KEY not in done.stderr and OPENAI_KEY not in done.stdout
