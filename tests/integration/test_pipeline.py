"""End to end on real components: local Ray (fake GPUs), SeaweedFS S3, tiny diffusers model."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagefleet.actors.layout import IMAGES_DIR, MANIFEST_INDEX, REPORT_HTML, RUN_JSON, STAGING_DIR
from imagefleet.jobs import generate
from tests.helpers import REPO, tiny_job, write_config, write_prompts

pytestmark = pytest.mark.slow

SIZES = [(64, 64), (96, 64), (64, 96), (128, 64)]


def objects(server: Any, bucket: str, prefix: str = "") -> dict[str, Any]:
    client = server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj
    return out


def manifest(server: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    import json

    import pyarrow.parquet as pq

    client = server.client()
    rows: list[dict[str, Any]] = []
    stored = objects(server, bucket, f"{prefix}/manifest/")
    parts = [k for k in stored if k.rsplit("/", 1)[-1].startswith("part-") and k.count("/") == prefix.count("/") + 2]
    if f"{prefix}/manifest/_manifest.json" in stored:  # readers follow the index (the commit point)
        index = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/manifest/_manifest.json")["Body"].read())
        listed = [f"{prefix}/{p}" for p in index["parts"]]
        assert set(listed) <= set(parts)
        parts = listed
    for key in parts:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        rows.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    return rows


def test_100_prompts_mixed_sizes_then_idempotent_rerun(
    tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    prompts = write_prompts(tmp_path / "p.parquet", {
        "id": [f"r{i}" for i in range(100)],
        "prompt": [f"prompt number {i}" for i in range(100)],
        "width": [SIZES[i % 4][0] for i in range(100)],
        "height": [SIZES[i % 4][1] for i in range(100)],
    })
    cfg = write_config(tmp_path / "job.yaml", tiny_job(prompts, tiny_model, f"s3://{bucket}/run"))
    # first run
    assert generate.main([str(cfg)]) == 0
    rows = manifest(s3_env, bucket, "run")
    assert len(rows) == 100
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["image_key"] for r in rows}) == 100
    client = s3_env.client()
    for r in rows:
        assert r["image_uri"].startswith(f"s3://{bucket}/run/images/")
        body = client.get_object(Bucket=bucket, Key=r["image_uri"][len(f"s3://{bucket}/"):])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == r["sha256"] and len(body) == r["bytes"]
        assert Image.open(io.BytesIO(body)).size == (r["width"], r["height"])
        assert r["generate_ms"] > 0 and r["cost_usd"] > 0 and r["model"].endswith("@main")
    images_before = objects(s3_env, bucket, f"run/{IMAGES_DIR}/")
    assert len(images_before) == 100
    run_json = json.loads(client.get_object(Bucket=bucket, Key=f"run/{RUN_JSON}")["Body"].read())
    assert run_json["summary"]["num_ok"] == 100 and run_json["summary"]["num_written"] == 100
    # the parts were written where they live and the index lists exactly them: no staging, no leftovers
    index = json.loads(client.get_object(Bucket=bucket, Key=f"run/{MANIFEST_INDEX}")["Body"].read())
    assert sorted(k for k in objects(s3_env, bucket, "run/manifest/") if "/part-" in k) == sorted(
        f"run/{p}" for p in index["parts"])
    assert not [k for k in objects(s3_env, bucket, f"run/{STAGING_DIR}/")]
    report = client.get_object(Bucket=bucket, Key=f"run/{REPORT_HTML}")["Body"].read().decode()
    assert "Contact sheet" in report and report.count("data:image/jpeg;base64,") >= 40
    assert "Throughput over time" in report and "<svg" in report and "generate_ms" in report
    # identical rerun: nothing new is written, everything reported as already present (in process: what a rerun
    # skips is decided by the plan's preprocessor, the same on either executor; other reruns here go through Ray)
    assert generate.main([str(cfg), "--set", "cluster.executor=in_process"]) == 0
    out = capsys.readouterr().out
    assert "0 written, 100 already present" in out
    images_after = objects(s3_env, bucket, "run/images/")
    assert images_after.keys() == images_before.keys()
    assert all(images_after[k]["LastModified"] == images_before[k]["LastModified"] for k in images_after)
    rows2 = manifest(s3_env, bucket, "run")
    assert len(rows2) == 100 and all(r["already_present"] for r in rows2)
    assert {r["sha256"] for r in rows2} == {r["sha256"] for r in rows}


def test_bad_rows_become_error_rows_and_the_run_finishes(
    tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str, ray_cluster: None
) -> None:
    prompts = write_prompts(tmp_path / "p.parquet", {
        "prompt": ["good one", None, "size", "steps", "zero", "good two", "🐱 unicode ok"],
        "width": [64, 64, 100, 64, 64, 64, 64],
        "height": [64, 64, 100, 64, 64, 64, 64],
        "num_steps": [2, 2, 2, -3, 2, 2, 2],
        "num_images": [1, 1, 1, 1, 0, 2, 1],
    })
    cfg = write_config(tmp_path / "job.yaml", tiny_job(prompts, tiny_model, f"s3://{bucket}/bad"))
    assert generate.main([str(cfg)]) == 0
    rows = manifest(s3_env, bucket, "bad")
    by_status: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["ok"]) == 4  # good one, 2 x good two, unicode
    errors = sorted(r["error"] for r in by_status["error"])
    assert len(errors) == 4
    assert any("null" in e for e in errors) and any("multiple of 8" in e for e in errors)
    assert any("num_steps" in e for e in errors) and any("num_images" in e for e in errors)
    assert len(objects(s3_env, bucket, "bad/images/")) == 4


def test_max_error_fraction_fails_the_run(
    tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    prompts = write_prompts(tmp_path / "p.parquet", {"prompt": [None, None, "ok"]})
    raw = tiny_job(prompts, tiny_model, f"s3://{bucket}/frac", limits={"max_error_fraction": 0.5})
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 1
    assert "failed (limit 50.0%)" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_dry_runs(
    path: Path, tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dry-run")  # hosted configs need a key to pass the dry run
    monkeypatch.setenv("GEMINI_API_KEY", "g-dry-run")
    # label and brief: templates; packshot and background_mask: product_shots.yaml's input images; facts:
    # world_cascade.yaml's facts scorer
    source = write_prompts(tmp_path / "p.parquet", {"prompt": ["a", "b"], "label": ["a", "b"], "brief": ["a", "b"],
                                                    "packshot": ["a.png", "b.png"], "background_mask": ["m", "m"],
                                                    "facts": [["there is a circle"], ["there is a square"]]})
    # local_tiny.yaml's model folder is made by `make demo`; the dry run checks that it exists
    model = [f"--set=generators.tiny.model={tiny_model}"] if path.name == "local_tiny.yaml" else []
    code = generate.main([str(path), "--dry-run", f"--set=source.uri={source}",
                          f"--set=output.uri=s3://{bucket}/dry", "--set=output.s3.endpoint_url=", *model])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "dry run" in out.out and "2 rows" in out.out
    assert not objects(s3_env, bucket, "dry/")


def test_synthetic_classes_example_runs_end_to_end(tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str,
                                                   ray_cluster: None) -> None:
    """configs/synthetic_classes.yaml as shipped (template, product expansion), on the tiny model:
    every class gets every scene × style once and each image records its values (shards and resume are tested
    elsewhere; the same table always makes the same image keys: tests/unit/test_prompt_template.py)."""
    from collections import Counter

    source = write_prompts(tmp_path / "classes.parquet", {"label": ["mug", "teapot"]})
    args = [str(REPO / "configs" / "synthetic_classes.yaml"), f"--set=source.uri={source}",
            f"--set=output.uri=s3://{bucket}/synth", f"--set=generators.turbo.model={tiny_model}",
            "--set=generators.turbo.dtype=float32", "--set=generators.turbo.defaults.width=64",
            "--set=generators.turbo.defaults.height=64", "--set=generators.turbo.pool.num_cpus=0.5",
            "--set=generators.turbo.pool.batch_size=8", "--set=generators.turbo.pool.max_size=2",
            "--set=output.pool.max_size=1", "--set=output.webdataset.enabled=false", "--set=cluster.address=local"]
    assert generate.main(args) == 0
    rows = manifest(s3_env, bucket, "synth")
    assert len(rows) == 24 and {r["status"] for r in rows} == {"ok"}
    values = [{kv["key"]: kv["value"] for kv in r["template_vars"]} for r in rows]  # typed: key/value pairs
    assert Counter(v["label"] for v in values) == {"mug": 12, "teapot": 12}
    assert len({(v["label"], v["scene"], v["style"]) for v in values}) == 24
    assert all(r["prompt"] == f"a {v['style']} of a {v['label']} {v['scene']}" for r, v in zip(rows, values,
                                                                                             strict=True))
