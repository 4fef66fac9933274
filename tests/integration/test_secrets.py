"""Secrets never reach logs, the manifest or run.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs import generate
from tests.helpers import sleep_job, write_config, write_prompts
from tests.integration.test_pipeline import objects

pytestmark = pytest.mark.slow

API_SECRETS = {"OPENAI_API_KEY": "sk-test-SECRET-openai-0123456789", "GEMINI_API_KEY": "g-test-SECRET-gemini-98765"}


def test_no_secret_in_logs_manifest_or_run_json(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, monkeypatch: Any, capsys: Any, caplog: Any
) -> None:
    import ray

    for key, value in API_SECRETS.items():
        monkeypatch.setenv(key, value)
    secrets = [s3_env.secret_key, *API_SECRETS.values()]
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a", None, "c"]})
    raw = sleep_job(src, f"s3://{bucket}/sec")
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
    out = capsys.readouterr()
    texts = {"stdout": out.out, "stderr": out.err, "python log": caplog.text}
    client = s3_env.client()
    for key in objects(s3_env, bucket, "sec/"):
        if not key.startswith("sec/images/"):
            texts[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("latin-1")
    assert any(k.endswith("run.json") for k in texts) and any("/part-" in k for k in texts)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for f in logs.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            texts[str(f)] = f.read_text(errors="replace")
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"secret found in {where}"
