"""Generator fleet on local Ray with fake GPUs: column routing with two tiny diffusers pools scored by a
tiny real CLIP, rules, fan-out, the cascade (deterministic stub scorer) and the budget cap."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefleet.jobs import generate
from tests.helpers import sleep_job, tiny_job, write_config, write_prompts
from tests.integration.test_pipeline import manifest, objects

pytestmark = pytest.mark.slow


def two_sleepers(src: Path, out: str, **routing: Any) -> dict[str, Any]:
    raw = sleep_job(src, out, latency_s=0.05)
    raw["generators"]["sleepy"]["pool"].update(min_size=1, max_size=1, initial_size=1)
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model", "base_latency_s": 0.1}
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    raw["generators"]["heavy"]["cost"] = {"usd_per_image": 0.10}
    raw["routing"] = routing
    return raw


def test_column_routing_two_diffusers_pools_with_clip(
    tmp_path: Path, tiny_model: Path, tiny_model_xl: Path, s3_env: Any, bucket: str, ray_cluster: None
) -> None:
    from imagefleet.jobs.tiny_models import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    n = 24
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(n)],
                                                "generator": ["small" if i % 2 else "large" for i in range(n)]})
    raw = tiny_job(src, tiny_model, f"s3://{bucket}/col")
    small = raw["generators"].pop("tiny")
    small["pool"].update(min_size=1, max_size=1, initial_size=1)
    raw["generators"] = {"small": small, "large": {**small, "model": str(tiny_model_xl)}}
    raw["routing"] = {"mode": "column", "default": "small"}
    raw["scorer"] = {"backend": "clip", "model": str(clip), "pool": {"num_cpus": 0.25}}
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
    rows = manifest(s3_env, bucket, "col")
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        want = "small" if int(r["prompt"].split()[1]) % 2 else "large"
        assert r["generator"] == want and r["model"].startswith(str(tiny_model if want == "small" else tiny_model_xl))
        assert r["clip_score"] is not None and r["clip_score"] >= 0


def test_two_gpu_pools_make_progress_at_the_same_time(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None
) -> None:
    """Each pool holds one fake GPU and needs ~4 s of "GPU" time: their generation windows must overlap."""
    n = 80
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(n)],
                                                "generator": ["sleepy" if i % 2 else "heavy" for i in range(n)]})
    raw = two_sleepers(src, f"s3://{bucket}/both", mode="column", default="sleepy")
    raw["generators"]["sleepy"]["base_latency_s"] = raw["generators"]["heavy"]["base_latency_s"] = 0.4
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
    rows = manifest(s3_env, bucket, "both")
    spans = {g: sorted(r["generated_at"].timestamp() for r in rows if r["generator"] == g) for g in ("sleepy", "heavy")}
    overlap = min(spans["sleepy"][-1], spans["heavy"][-1]) - max(spans["sleepy"][0], spans["heavy"][0])
    assert overlap > 0.5, spans  # each pool needs >= 4 s; a pool that waited for the other would not overlap


def test_rules_and_fanout(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"],
                                                "width": [16, 64, 16], "height": [16, 64, 16]})
    rules = two_sleepers(src, f"s3://{bucket}/rules", mode="rules", default="sleepy",
                         rules=[{"field": "width", "op": ">=", "value": 64, "generator": "heavy"}])
    assert generate.main([str(write_config(tmp_path / "rules.yaml", rules))]) == 0
    assert {r["id"]: r["generator"] for r in manifest(s3_env, bucket, "rules")} == {
        "a": "sleepy", "b": "heavy", "c": "sleepy"}
    fan = two_sleepers(src, f"s3://{bucket}/fan", mode="fanout", fanout=["sleepy", "heavy"])
    assert generate.main([str(write_config(tmp_path / "fan.yaml", fan))]) == 0
    rows = manifest(s3_env, bucket, "fan")
    assert sorted((r["id"], r["generator"]) for r in rows) == sorted(
        (i, g) for i in "abc" for g in ("sleepy", "heavy"))
    assert len(objects(s3_env, bucket, "fan/images/")) == 6


def test_cascade_escalates_known_fraction_within_cap(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    # 12 prompts: 4 "good" (stub score 1.0) and 8 not (0.0); threshold 0.5 → 8 candidates, cap 6
    prompts = [f"good {i}" if i % 3 == 0 else f"meh {i}" for i in range(12)]
    src = write_prompts(tmp_path / "p.parquet", {"prompt": prompts})
    raw = two_sleepers(src, f"s3://{bucket}/cas", mode="cascade",
                       cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5, "max_escalations": 6})
    raw["scorer"] = {"backend": "rule", "marker": "good"}
    # the heavy generator renders differently: escalations must use its settings, not the draft's
    raw["generators"]["heavy"]["defaults"] = {"width": 32, "height": 24, "num_steps": 4, "guidance_scale": 6.0,
                                              "negative_prompt": "blurry"}
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
    rows = manifest(s3_env, bucket, "cas")
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    escalated = [r for r in rows if r["route"] == "escalated"]
    drafts = [r for r in rows if r["route"] == "draft"]
    assert len(escalated) == 6 and len(drafts) == 6
    assert all(r["prompt"].startswith("meh") for r in escalated)
    for r in escalated:
        assert r["generator"] == "heavy" and r["draft_generator"] == "sleepy" and r["draft_score"] == 0.0
        assert r["draft_image_uri"].startswith(f"s3://{bucket}/cas/images/") and r["image_uri"] != r["draft_image_uri"]
        assert r["cost_usd"] == pytest.approx(0.11)  # draft + heavy
        assert (r["width"], r["height"], r["num_steps"], r["guidance_scale"]) == (32, 24, 4, 6.0)
        assert r["negative_prompt"] == "blurry"
        draft = (r["draft_width"], r["draft_height"], r["draft_num_steps"], r["draft_guidance_scale"])
        assert draft == (16, 16, 30, 5.0)  # sleep_job sets only the size: 30 steps, guidance 5
    # the stored images have the sizes the manifest says: heavy finals 32x24, kept drafts 16x16
    from PIL import Image

    client = s3_env.client()
    for r in escalated[:2]:
        for uri, size in ((r["image_uri"], (32, 24)), (r["draft_image_uri"], (16, 16))):
            body = client.get_object(Bucket=bucket, Key=uri.split("/", 3)[3])["Body"].read()
            assert Image.open(io.BytesIO(body)).size == size
    for r in drafts:
        assert r["generator"] == "sleepy" and r["draft_image_uri"] in ("", None)
        assert r["cost_usd"] == pytest.approx(0.01)
    assert len(objects(s3_env, bucket, "cas/images/")) == 12 + 6  # finals + kept drafts
    # rerun: nothing is drafted, scored or escalated again, and the manifest still tells the whole story
    capsys.readouterr()
    rerun_started = time.time()
    assert generate.main([str(tmp_path / "job.yaml"), "--run-id", "rerun", "--set", "cluster.executor=in_process"]) == 0
    out = capsys.readouterr().out
    assert "0 written, 12 already present" in out and "cost: $0.0000" in out
    again = {r["id"]: r for r in manifest(s3_env, bucket, "cas")}
    for r in rows:
        r2 = again[r["id"]]
        assert r2["run_id"] == "rerun" and r2["already_present"] and r2["status"] == "ok"
        for col in ("image_key", "image_uri", "generator", "model", "route", "clip_score", "draft_image_uri",
                    "draft_score", "draft_generator", "cost_usd", "generated_at", "width", "height", "num_steps",
                    "guidance_scale", "negative_prompt", "draft_width", "draft_num_steps", "draft_guidance_scale"):
            assert r2[col] == r[col] or (r2[col] != r2[col] and r[col] != r[col]), (col, r[col], r2[col])
        assert r2["generated_at"].timestamp() < rerun_started  # made by the first run, not again
    assert len(objects(s3_env, bucket, "cas/images/")) == 12 + 6


def test_budget_cap_stops_scheduling_cleanly(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(10)]})
    raw = two_sleepers(src, f"s3://{bucket}/budget", mode="single", default="heavy")
    raw["limits"] = {"budget_usd": 0.45}
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
    rows = manifest(s3_env, bucket, "budget")
    assert len(rows) == 10
    assert sum(r["status"] == "ok" for r in rows) == 4 and sum(r["status"] == "skipped" for r in rows) == 6
    assert sum(r["cost_usd"] for r in rows) <= 0.45 + 1e-9
    assert len(objects(s3_env, bucket, "budget/images/")) == 4


def test_three_generators_read_and_preprocess_each_row_once(tmp_path: Path, ray_cluster: None) -> None:
    """Rules routing over 3 pools: Ray Data's own execution stats show one read of the prompt table and one
    preprocessing pass over the input (a filter-per-branch + union graph ran both once per generator)."""
    import re

    import ray.data

    from imagefleet.configs.loader import parse_config
    from imagefleet.jobs.preflight import resolve_stores
    from imagefleet.pipelines.text_to_image import build, inspect_source

    n = 60
    sizes = [16 if i % 3 == 0 else 32 if i % 3 == 1 else 48 for i in range(n)]
    owner = {16: "small", 32: "mid", 48: "large"}
    # each generator fails prompts carrying its own marker: even rows carry their own generator's marker (must
    # fail), odd rows another generator's (must pass): only the pool a row is routed to may generate it
    other = {"small": "mid", "mid": "large", "large": "small"}
    prompts = [f"p {i} !{owner[w] if i % 2 == 0 else other[owner[w]]}" for i, w in enumerate(sizes)]
    src = write_prompts(tmp_path / "p.parquet", {"prompt": prompts, "width": sizes})
    raw = sleep_job(src, str(tmp_path / "out"))
    base = raw["generators"].pop("sleepy")
    base["pool"].update(min_size=1, max_size=1, initial_size=1, num_gpus=0.5)
    raw["generators"] = {g: {**base, "model": g, "fail_prompt_substring": f"!{g}"} for g in ("small", "mid", "large")}
    raw["routing"] = {"mode": "rules", "default": "small",
                      "rules": [{"field": "width", "op": "==", "value": 32, "generator": "mid"},
                                {"field": "width", "op": "==", "value": 48, "generator": "large"}]}
    cfg = parse_config(raw)
    stores = resolve_stores(cfg)
    graph = build(cfg, stores, inspect_source(cfg, stores))
    # the run's autoscaling rule (cluster.pools_shrink: at_stage_end) is on the run's own dataset context
    assert graph.context.autoscaling_config.actor_pool_util_downscaling_threshold < 0
    assert ray.data.DataContext.get_current().autoscaling_config.actor_pool_util_downscaling_threshold == 0.5
    ds = graph.materialize()  # the test runs the graph itself
    rows = ds.take_all()
    assert len(rows) == n
    assert {(r["width"], r["generator"]) for r in rows} == {(16, "small"), (32, "mid"), (48, "large")}
    for r in rows:
        mine = int(r["prompt"].split()[1]) % 2 == 0
        assert r["status"] == ("error" if mine else "ok"), r
        assert ("injected failure" in r["error"]) is mine
    stats = ds.stats()
    ops = re.findall(r"Operator \d+ (\S+):.*?Total output num rows: (\d+) rows", stats, re.S)
    assert [int(k) for op, k in ops if "ReadPromptTable" in op] == [n], stats
    assert [int(k) for op, k in ops if "PromptPreprocessor" in op] == [n], stats
    assert stats.count("SleepGenerator") >= 3  # three pools, one after another


def test_best_of_n_through_a_run_and_resume(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None) -> None:
    """routing.mode=best_of on the stand-in generator with a brightness scorer: each image is the brightest of its
    3 candidates (their seeds and scores in `candidates`, `seed` the winner's), paid 3 times; a rerun makes
    nothing and keeps what was recorded."""

    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(8)]})
    raw = sleep_job(src, f"s3://{bucket}/best")
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    raw["routing"] = {"mode": "best_of", "candidates": 3}
    raw["scorer"] = {"backend": "rule", "by": "brightness"}
    job = write_config(tmp_path / "job.yaml", raw)
    assert generate.main([str(job), "--progress=off"]) == 0
    rows = manifest(s3_env, bucket, "best")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        cands = r["candidates"]  # typed: a list of {seed, score}
        assert len(cands) == 3 and r["seed"] == max(cands, key=lambda c: c["score"])["seed"]
        assert r["clip_score"] == pytest.approx(max(c["score"] for c in cands), abs=1e-6)
        assert r["cost_usd"] == pytest.approx(0.03)
    assert generate.main([str(job), "--progress=off", "--set", "cluster.executor=in_process"]) == 0  # same either way
    again = {r["id"]: r for r in manifest(s3_env, bucket, "best")}
    assert all(again[r["id"]]["already_present"] and again[r["id"]]["candidates"] == r["candidates"]
               and again[r["id"]]["seed"] == r["seed"] for r in rows)


def brightness_cascade(tmp_path: Path, bucket: str, **cascade: Any) -> str:
    """16 prompts drafted by `sleepy` (each seed its own colour), scored by brightness, the worst quarter of the
    drafts escalated to `heavy`; the config file's path."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(16)]})
    raw = two_sleepers(src, f"s3://{bucket}/unused", mode="cascade",
                       cascade={"draft": "sleepy", "escalate": "heavy", "escalate_fraction": 0.25, **cascade})
    raw["scorer"] = {"backend": "rule", "by": "brightness", "pool": {"num_cpus": 0.1}}
    raw["generators"]["sleepy"]["pool"]["num_gpus"] = 0  # adaptive drafts: each round is a pool of the draft model
    return str(write_config(tmp_path / "job.yaml", raw))


def run_on(config: str, executor: str, s3_env: Any, bucket: str, out: str) -> list[dict[str, Any]]:
    """The job run by `executor` into s3://bucket/out; its manifest rows."""
    assert generate.main([config, f"--set=output.uri=s3://{bucket}/{out}", f"--set=cluster.executor={executor}"]) == 0
    return manifest(s3_env, bucket, out)


def test_a_relative_policy_escalates_the_worst_of_the_whole_run_on_ray_and_in_process(
        tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None) -> None:
    """escalate_fraction 0.25 of 16 drafts (scored by brightness: each seed its own colour) escalates exactly the
    4 lowest-scoring drafts of the run, on Ray (the stage waits for every draft's score) and in process alike
    (issue #32; before: a running quantile with a hard cap escalated early drafts whatever they scored)."""
    config = brightness_cascade(tmp_path, bucket)
    chosen = {}
    for executor, out in (("ray", "rel"), ("in_process", "rel-here")):
        rows = run_on(config, executor, s3_env, bucket, out)
        drafted = sorted((r["draft_score"] if r["route"] == "escalated" else r["clip_score"], r["id"]) for r in rows)
        escalated = {r["id"] for r in rows if r["route"] == "escalated"}
        assert len(rows) == 16 and escalated == {i for _, i in drafted[:4]}, (executor, drafted, escalated)
        chosen[executor] = escalated
    assert chosen["ray"] == chosen["in_process"]


def test_adaptive_drafts_keep_the_best_draft_then_escalate_and_resume(
        tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any) -> None:
    """cascade.max_drafts 3 with redraw_below: a row is drafted again (the next derived seed) only while its best
    draft scores below the stop score, keeps its best draft (the stored image is that draft), lists every draft
    in `candidates` and names the kept one in `draft_round`, pays for each draft; the worst quarter of the kept
    drafts is then escalated. Ray and in-process make the same rows; a rerun makes and pays nothing (issue #32)."""
    config = brightness_cascade(tmp_path, bucket, max_drafts=3, redraw_below=0.5)
    made = {}
    for executor, out in (("ray", "ad"), ("in_process", "ad-here")):
        rows = run_on(config, executor, s3_env, bucket, out)
        assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
        redrawn = 0
        for r in rows:
            drafts = r["candidates"]
            scores = [d["score"] for d in drafts]
            assert 1 <= len(drafts) <= 3 and all(s is not None for s in scores)
            assert all(s < 0.5 for s in scores[:-1]), drafts  # drawn again only while the best was below 0.5
            assert len(drafts) == 3 or max(scores) >= 0.5 or len(drafts) == 1 and scores[0] >= 0.5
            best = max(range(len(drafts)), key=lambda k: (scores[k], -k))
            assert r["draft_round"] == best + 1
            kept_score = r["draft_score"] if r["route"] == "escalated" else r["clip_score"]
            assert kept_score == pytest.approx(scores[best], abs=1e-6)  # candidates round to 6 places
            heavy = 0.10 if r["route"] == "escalated" else 0.0
            assert r["cost_usd"] == pytest.approx(0.01 * len(drafts) + heavy)  # every draft is paid for
            if r["route"] == "draft":  # the stored image is the kept draft: its colour is its seed's
                key = r["image_uri"].split("/", 3)[3]
                from PIL import Image

                body = s3_env.client().get_object(Bucket=bucket, Key=key)["Body"].read()
                pixel = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))[0, 0]
                seed = drafts[best]["seed"]
                assert r["seed"] == seed and list(pixel) == [seed % 251, (seed // 251) % 251, (seed // 63001) % 251]
            redrawn += len(drafts) > 1
        assert redrawn >= 4, "the stop score never sent a row back: the test shows nothing"
        kept = sorted((r["draft_score"] if r["route"] == "escalated" else r["clip_score"], r["id"]) for r in rows)
        assert {r["id"] for r in rows if r["route"] == "escalated"} == {i for _, i in kept[:4]}
        made[executor] = {r["id"]: (r["image_key"], r["seed"], r["candidates"], r["route"]) for r in rows}
    assert made["ray"] == made["in_process"]
    capsys.readouterr()
    assert generate.main([config, "--set=output.uri=s3://" + bucket + "/ad", "--run-id", "again",
                          "--set=cluster.executor=in_process"]) == 0
    assert "0 written, 16 already present" in capsys.readouterr().out
    again = {r["id"]: (r["image_key"], r["seed"], r["candidates"], r["route"]) for r in manifest(s3_env, bucket, "ad")}
    assert again == made["ray"]
