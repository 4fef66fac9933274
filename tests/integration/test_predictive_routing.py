"""Predictive routing end to end (issue #32): a cascade run's manifest trains a gain model (`imagefleet
train-router`), and a cascade with `predict` sends the rows it predicts to gain straight to the heavy generator —
on Ray and in process alike, keyed as their escalation, priced as heavy images, every other row as before, a rerun
making nothing. Then the error paths: one line, exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from imagefleet.jobs import cli, generate
from tests.helpers import sleep_job, write_config, write_prompts
from tests.integration.test_fleet import two_sleepers
from tests.integration.test_pipeline import manifest, objects

SAME = ("image_key", "sha256", "route", "generator", "seed", "width", "clip_score", "draft_image_key", "draft_score",
        "heavy_image_key", "cost_usd")


def animals(first: int, n: int) -> tuple[list[str], list[int]]:
    """n cats and n dogs with seeds that make their gain: a sleep image is its seed's colour (red = seed % 251) and
    the heavy generator's adapter adds 128 to red modulo 256, so a brightness score rises for a cat (red < 100) and
    falls for a dog (red >= 150)."""
    prompts, seeds = [], []
    for i in range(first, first + n):
        prompts += [f"a cat called c{i}", f"a dog called d{i}"]
        seeds += [251 * (i + 1) + i % 90, 251 * (i + 1) + 150 + i % 90]
    return prompts, seeds


def animal_cascade(tmp_path: Path, bucket: str, name: str, first: int, n: int, **cascade: Any) -> str:
    """A cascade over `animals(first, n)` escalating every draft (threshold above any brightness), scored by
    brightness; the config file's path."""
    (tmp_path / "tint.safetensors").write_bytes(b"stand-in adapter")
    prompts, seeds = animals(first, n)
    src = write_prompts(tmp_path / f"{name}.parquet", {"prompt": prompts, "seed": seeds})
    raw = two_sleepers(src, f"s3://{bucket}/unused", mode="cascade",
                       cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 2.0, **cascade})
    raw["generators"]["heavy"]["defaults"] = {"width": 24, "height": 24, "num_steps": 4}
    raw["generators"]["heavy"]["loras"] = [{"name": "tint", "path": str(tmp_path / "tint.safetensors"),
                                            "weight": 3.2}]
    raw["scorer"] = {"backend": "rule", "by": "brightness", "pool": {"num_cpus": 0.1}}
    return str(write_config(tmp_path / f"{name}.yaml", raw))


def same(r: dict[str, Any]) -> dict[str, Any]:
    """The SAME columns of a row (a missing score as None, so rows compare equal)."""
    return {c: None if isinstance(r[c], float) and r[c] != r[c] else r[c] for c in SAME}


def run(config: str, out: str, *more: str) -> int:
    return generate.main([config, f"--set=output.uri={out}", "--progress=off", *more])


@pytest.mark.slow
def test_train_from_a_cascade_run_then_route_cats_straight_to_heavy_on_ray_and_in_process(
        tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any) -> None:
    # 1 a cascade escalating every draft: its manifest has both scores of every row (dogs keep their drafts)
    train_config = animal_cascade(tmp_path, bucket, "train", 0, 16)
    assert run(train_config, f"s3://{bucket}/train", "--set=cluster.executor=in_process") == 0
    trained = {r["route"] for r in manifest(s3_env, bucket, "train")}
    assert trained == {"escalated", "escalated_kept_draft"}
    folder = tmp_path / "router"
    capsys.readouterr()
    assert cli.main(["train-router", f"s3://{bucket}/train", "--out", str(folder)]) == 0
    said = capsys.readouterr().out
    assert f"gain model written to {folder}: 32 rows (32 prompts)" in said and "heavy_above" in said
    doc = json.loads((folder / "router.json").read_text())
    assert doc["manifests"] == [{"output": f"s3://{bucket}/train", "rows": 32}] and doc["fit"]["rows"] == 32
    rows = pq.read_table(folder / "rows.parquet").to_pylist()
    assert all((r["gain"] > 0.1) == ("cat" in r["prompt"]) for r in rows)  # +-128/765 in brightness
    assert all(r["gain"] == pytest.approx(r["heavy_score"] - r["draft_score"]) for r in rows)
    # 2 new animals, predicted: cats go straight to heavy, dogs are drafted (and all escalated) as without predict
    predict = {"predict": {"model": str(folder), "heavy_above": 0.0}}
    config = animal_cascade(tmp_path, bucket, "route", 100, 6, **predict)
    plain_config = animal_cascade(tmp_path, bucket, "plain", 100, 6)
    assert run(plain_config, f"s3://{bucket}/plain", "--set=cluster.executor=in_process") == 0
    plain = {r["id"]: r for r in manifest(s3_env, bucket, "plain")}
    made = {}
    for executor, out in (("ray", "pr"), ("in_process", "pr-here")):
        assert run(config, f"s3://{bucket}/{out}", f"--set=cluster.executor={executor}") == 0
        got = sorted(manifest(s3_env, bucket, out), key=lambda r: r["id"])
        assert len(got) == 12 and {r["status"] for r in got} == {"ok"}
        for r in got:
            was = plain[r["id"]]
            if "cat" in r["prompt"]:  # the heavy image its escalation made, and nothing else
                assert r["route"] == "predicted_heavy" and r["generator"] == "heavy" and r["width"] == 24
                assert r["image_key"] == (was["image_key"] if was["route"] == "escalated" else was["heavy_image_key"])
                assert not r["draft_image_key"] and math.isnan(r["draft_score"])  # no draft
                assert r["cost_usd"] == pytest.approx(0.10) and r["clip_score"] is not None
            else:  # drafted and escalated exactly as without predict
                assert r["route"] == was["route"] and r["image_key"] == was["image_key"]
                assert r["draft_image_key"] == was["draft_image_key"] and r["cost_usd"] == pytest.approx(0.11)
        made[executor] = [same(r) for r in got]
    assert made["ray"] == made["in_process"]
    stored = set(objects(s3_env, bucket, "pr/images/"))
    page = s3_env.client().get_object(Bucket=bucket, Key="pr/report.html")["Body"].read().decode()
    assert "6 more sent straight to heavy by prediction" in page and "<td>predicted_heavy</td>" in page
    assert len(stored) == 6 + 6 * 2  # a heavy image per cat; a draft and a heavy image per dog
    # 3 a rerun decides the same and finds every image: nothing made, stored or paid
    capsys.readouterr()
    assert run(config, f"s3://{bucket}/pr", "--run-id=again", "--set=cluster.executor=ray") == 0
    out = capsys.readouterr().out
    assert "0 written, 12 already present" in out and "cost: $0.0000" in out
    again = sorted(manifest(s3_env, bucket, "pr"), key=lambda r: r["id"])
    assert [same(r) for r in again] == made["ray"]
    assert set(objects(s3_env, bucket, "pr/images/")) == stored


def test_train_router_and_predict_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    def fails(argv: list[str], *words: str) -> None:
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for word in words:
            assert word in err, err

    out = tmp_path / "out"
    fails(["train-router", str(tmp_path / "nothing"), "--out", str(out)], "no committed manifest at")
    # a run without a cascade: a manifest with no row that has both scores
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(4)]})
    raw = sleep_job(src, str(tmp_path / "single"))
    raw["cluster"]["executor"] = "in_process"
    assert generate.main([str(write_config(tmp_path / "single.yaml", raw)), "--progress=off"]) == 0
    fails(["train-router", str(tmp_path / "single"), "--out", str(out)], "0 row(s) with both a draft and a heavy "
          "score", "need at least 20", "escalate_fraction: 1")
    fails(["train-router", str(tmp_path / "single"), "--out", str(out), "--buckets", "4"], "--buckets")
    # a manifest without the cascade's columns
    part = next((tmp_path / "single" / "manifest").glob("part-*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.drop_columns(["route", "draft_score"]), part)
    fails(["train-router", str(tmp_path / "single"), "--out", str(out)], "has no column(s) route, draft_score")
    assert not out.exists()
    # a cascade whose model folder can't be used stops before any work
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model"}
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5,
                                                     "predict": {"model": str(out), "heavy_above": 0.1}}}
    raw["scorer"] = {"backend": "rule"}
    raw["output"]["uri"] = str(tmp_path / "never")
    fails(["run", str(write_config(tmp_path / "bad.yaml", raw)), "--progress=off"],
          "routing.cascade.predict.model:", "has no router.json")
    assert not (tmp_path / "never" / "images").exists()
