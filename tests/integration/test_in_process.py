"""A run without Ray (pipelines/in_process.py): the same job makes the same manifest in process as on Ray's actor
pools, a one-prompt job starts no Ray at all, and it fails, resumes and refuses the way a Ray run does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs import generate
from tests.helpers import CLI, REPO, sleep_job, tiny_job, write_config, write_prompts
from tests.integration.test_fleet import two_sleepers
from tests.integration.test_pipeline import manifest

pytestmark = pytest.mark.slow

# what a run decides about a row; times, ids of the run and timings differ between any two runs
SAME = ("id", "image_index", "prompt", "generator", "model", "seed", "status", "error", "image_key", "sha256",
        "bytes", "mime", "route", "clip_score", "draft_generator", "draft_score", "draft_image_uri", "cost_usd",
        "width", "height", "num_steps", "guidance_scale", "negative_prompt", "already_present")


def test_a_cascade_with_bad_rows_makes_the_same_manifest_in_process_as_on_ray(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None
) -> None:
    """Draft → score → escalate with a cap, a row asking for two images, an empty prompt and an out-of-range
    num_images: every decision (route, seed, key, stored bytes, error text, cost) is the same either way."""
    prompts = [f"good {i}" if i % 3 == 0 else f"meh {i}" for i in range(10)] + ["", "meh twice", "meh none"]
    src = write_prompts(tmp_path / "p.parquet", {"prompt": prompts, "num_images": [1] * 10 + [1, 2, 0]})
    results = {}
    for executor in ("ray", "in_process"):
        raw = two_sleepers(src, f"s3://{bucket}/{executor}", mode="cascade",
                           cascade={"draft": "sleepy", "escalate": "heavy", "threshold": 0.5, "max_escalations": 4})
        raw["scorer"] = {"backend": "rule", "marker": "good"}
        raw["generators"]["heavy"]["defaults"] = {"width": 32, "height": 24, "num_steps": 4}
        raw["cluster"]["executor"] = executor
        cfg = write_config(tmp_path / f"{executor}.yaml", raw)
        assert generate.main([str(cfg), "--run-id", f"run-{executor}", "--progress", "off"]) == 0
        rows = manifest(s3_env, bucket, executor)
        results[executor] = sorted(({c: r[c] for c in SAME} for r in rows), key=lambda r: (r["id"], r["image_index"]))
        record = s3_env.client().get_object(Bucket=bucket, Key=f"{executor}/run.json")["Body"].read()
        assert json.loads(record)["executor"] == executor
    on_ray, here = results["ray"], results["in_process"]
    assert len(here) == 14 and [r["route"] for r in here].count("escalated") == 4
    assert [r["status"] for r in here].count("error") == 2
    for a, b in zip(on_ray, here, strict=True):
        differ = {c: (a[c], b[c]) for c in SAME if a[c] != b[c] and not (a[c] != a[c] and b[c] != b[c])}
        # stored objects are named by key, so the same image is in each output under its own prefix
        assert set(differ) <= {"draft_image_uri"}, differ
        if a["draft_image_uri"]:
            assert a["draft_image_uri"].replace("/ray/", "/in_process/") == b["draft_image_uri"]


def test_a_one_prompt_job_runs_in_process_without_starting_ray(tmp_path: Path, tiny_model: Path,
                                                               capsys: Any) -> None:
    """`imagefleet run` on one prompt (cluster.executor: auto) starts no Ray, says where it ran, commits and
    resumes like any run; the same job on more rows than one generator batch goes to Ray's pools."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a red circle"]})
    raw = tiny_job(src, tiny_model, str(tmp_path / "out"))
    raw["cluster"] = {"address": "local", "temp_dir": "/tmp/ifray"}  # executor: auto (the default)
    cfg = write_config(tmp_path / "job.yaml", raw)

    first = subprocess.run([*CLI, "run", str(cfg), "--progress", "off", "--run-id",
                            "one"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "runs   : in this process" in first.stdout and "1 image(s) fit one generator batch (4)" in first.stdout
    log = Path(first.stdout.split("log              : ")[1].split()[0]).read_text()
    assert "Started a local Ray instance" not in log
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["executor"] == "in_process" and record["summary"]["num_written"] == 1
    # the commit's own seconds, to the ms: a one-row commit to a local folder can take under half a ms (0.0)
    assert 0 <= record["summary"]["commit_s"] < record["summary"]["wall_s"] + 60
    # a rerun resumes (here, in the test's process: the session's Ray would make `auto` choose it)
    capsys.readouterr()
    assert generate.main([str(cfg), "--progress", "off", "--set", "cluster.executor=in_process"]) == 0
    assert "0 written, 1 already present" in capsys.readouterr().out
    # the plan for more rows than one batch says Ray (nothing is run: --dry-run; the reason may also be the test
    # session's Ray, which `auto` would use: tests/unit/test_in_process.py checks each reason)
    write_prompts(src, {"prompt": [f"p{i}" for i in range(5)]})
    assert generate.main([str(cfg), "--dry-run"]) == 0
    assert "runs   : on Ray" in capsys.readouterr().out


def test_in_process_failures_are_one_line_and_commit_nothing(tmp_path: Path, s3_env: Any, bucket: str,
                                                             capsys: Any) -> None:
    """A model that can't load fails the run before any row (exit 1, one line naming the log, no manifest); a
    job that needs Ray (WebDataset export) can't be forced in process (exit 2 before any work, saying what to
    change)."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a", "b"]})
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    raw = tiny_job(src, broken, f"s3://{bucket}/broken")
    raw["cluster"]["executor"] = "in_process"
    assert generate.main([str(write_config(tmp_path / "broken.yaml", raw)), "--progress", "off"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing committed" in err[0] and "Traceback" not in err[0]
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=bucket, Prefix="broken/manifest/")
    shards = sleep_job(src, f"s3://{bucket}/shards")
    shards["output"]["webdataset"] = {"enabled": True}
    shards["cluster"]["executor"] = "in_process"
    assert generate.main([str(write_config(tmp_path / "shards.yaml", shards)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cluster.executor: in_process can't run this job" in err[0] and "use ray or auto" in err[0]


def test_stages_on_ray_read_and_write_what_they_declare(tmp_path: Path, ray_cluster: None) -> None:
    """The Ray half of tests/unit/test_stage_columns.py: the same recorded stages, in Ray's actor pools, read and
    write only the columns `Plan.check` follows (the batches Ray Data hands an actor are what it checks). The
    cascade has every kind of stage (draft, scorer, escalator, heavy generator, writer); the unit test runs all
    three routing modes in process."""
    mode = "cascade"
    from imagefleet.pipelines.plan import make_plan
    from imagefleet.pipelines.text_to_image import build, inspect_source
    from tests.unit.test_stage_columns import (
        ROUTINGS,
        STORES,
        _recorded,
        assert_as_declared,
        recorded_columns,
        routed_job,
    )

    write_prompts(tmp_path / "in.parquet", {"prompt": ["a fox", "a crow", "an owl"], "num_images": [1, 2, 1]})
    cfg = routed_job(tmp_path, ROUTINGS[mode])
    source = inspect_source(cfg, STORES)
    plan = make_plan(cfg, STORES, ["prompt", "num_images"], 4)
    rows = sum(b.num_rows for b in build(cfg, STORES, source, _recorded(plan, tmp_path / "seen")).iter_batches(
        batch_format="pyarrow"))
    assert rows == (2 if mode == "fanout" else 1) * 4
    assert_as_declared(plan, *recorded_columns(tmp_path / "seen"))
