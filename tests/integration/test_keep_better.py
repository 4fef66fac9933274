"""cascade.keep_better on Ray's actor pools, into S3 (issue #32): an escalated row whose heavy image scored below its
draft keeps the draft, the heavy image is stored too, both are paid for; Ray and in process make the same rows, and
a rerun makes, stores and pays nothing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from imagefleet.jobs import generate
from tests.helpers import write_config, write_prompts
from tests.integration.test_fleet import run_on, two_sleepers
from tests.integration.test_pipeline import manifest, objects

pytestmark = pytest.mark.slow
KEPT_DRAFT = "escalated_kept_draft"
SAME = ("image_key", "sha256", "route", "generator", "seed", "width", "clip_score", "draft_image_key", "draft_score",
        "heavy_image_key", "heavy_score", "cost_usd")


def tinted_cascade(tmp_path: Path, bucket: str) -> str:
    """16 prompts, every draft escalated (threshold above any brightness) and scored by brightness. A sleep image is
    its seed's colour (red = seed % 251); the heavy generator's default adapter (weight 3.2) adds 128 to red modulo
    256, so a heavy image scores below its draft exactly when the draft's red is 128 or more."""
    (tmp_path / "tint.safetensors").write_bytes(b"stand-in adapter")
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(16)]})
    raw = two_sleepers(src, f"s3://{bucket}/unused", mode="cascade",
                       cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 2.0})
    raw["generators"]["heavy"]["defaults"] = {"width": 24, "height": 24, "num_steps": 4}
    raw["generators"]["heavy"]["loras"] = [{"name": "tint", "path": str(tmp_path / "tint.safetensors"),
                                            "weight": 3.2}]
    raw["scorer"] = {"backend": "rule", "by": "brightness", "pool": {"num_cpus": 0.1}}
    return str(write_config(tmp_path / "job.yaml", raw))


def same(r: dict[str, Any]) -> dict[str, Any]:
    """The SAME columns of a row (a missing score as None, so rows compare equal)."""
    return {c: None if isinstance(r[c], float) and r[c] != r[c] else r[c] for c in SAME}


def red(s3: Any, bucket: str, uri: str) -> int:
    from PIL import Image

    body = s3.client().get_object(Bucket=bucket, Key=uri.split("/", 3)[3])["Body"].read()
    return int(np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))[0, 0, 0])


def test_keep_better_on_ray_keeps_drafts_that_beat_their_heavy_image_and_reruns_for_free(
        tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any) -> None:
    config = tinted_cascade(tmp_path, bucket)
    assert yaml.safe_load(Path(config).read_text())["routing"]["cascade"].get("keep_better") is None  # the default
    made = {}
    for executor, out in (("ray", "kb"), ("in_process", "kb-here")):
        rows = sorted(run_on(config, executor, s3_env, bucket, out), key=lambda r: r["id"])
        assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
        made[executor] = [same(r) for r in rows]
    rows = sorted(manifest(s3_env, bucket, "kb"), key=lambda r: r["id"])
    kept = [r for r in rows if r["route"] == KEPT_DRAFT]
    assert kept and len(kept) < 16, "both outcomes must occur: the test shows nothing"
    for r in rows:
        seed = int(r["seed"])
        assert r["cost_usd"] == pytest.approx(0.11)  # draft + heavy, whichever the row kept
        if r["route"] == KEPT_DRAFT:  # the draft (key, pixels, size, score); the heavy image stored beside it
            assert seed % 251 >= 128 and r["image_key"] == r["draft_image_key"] and r["generator"] == "sleepy"
            assert red(s3_env, bucket, r["image_uri"]) == seed % 251 and r["width"] == 16
            assert red(s3_env, bucket, r["heavy_image_uri"]) == (seed % 251 + 128) % 256
            assert r["clip_score"] == r["draft_score"] > r["heavy_score"] and not r["draft_image_uri"]
        else:
            assert r["route"] == "escalated" and seed % 251 < 128 and r["generator"] == "heavy"
            assert red(s3_env, bucket, r["image_uri"]) == seed % 251 + 128 and not r["heavy_image_key"]
    assert made["ray"] == made["in_process"]
    stored = set(objects(s3_env, bucket, "kb/images/"))
    assert len(stored) == 32  # every row's draft and heavy image
    # a rerun: every row found under its draft key; nothing made, stored or paid, the same rows
    capsys.readouterr()
    assert generate.main([config, f"--set=output.uri=s3://{bucket}/kb", "--run-id", "again",
                          "--set=cluster.executor=ray", "--progress", "off"]) == 0
    out = capsys.readouterr().out
    assert "0 written, 16 already present" in out and "cost: $0.0000" in out
    again = sorted(manifest(s3_env, bucket, "kb"), key=lambda r: r["id"])
    assert [same(r) for r in again] == made["ray"]
    assert all(r["already_present"] and r["run_id"] == "again" for r in again)
    assert [r["heavy_image_uri"] for r in again] == [r["heavy_image_uri"] for r in rows]
    assert set(objects(s3_env, bucket, "kb/images/")) == stored
