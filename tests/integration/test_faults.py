"""Exactly-once outputs under faults: resume, carried/retried failures, abort, and chaos (issue 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from imagefleet.jobs import generate
from tests.helpers import CLI, REPO, sleep_job, write_config, write_prompts
from tests.integration.test_pipeline import manifest, objects

pytestmark = pytest.mark.slow


def prompts(path: Path, n: int, prefix: str = "prompt") -> Path:
    return write_prompts(path, {"id": [f"r{i}" for i in range(n)], "prompt": [f"{prefix} {i}" for i in range(n)]})


def assert_exactly_once(server: Any, bucket: str, prefix: str, n: int) -> list[dict[str, Any]]:
    rows = manifest(server, bucket, prefix)
    assert len(rows) == n
    assert {r["status"] for r in rows} == {"ok"}
    images = objects(server, bucket, f"{prefix}/images/")
    assert len(images) == n  # each image once ...
    assert {r["image_uri"].split(f"s3://{bucket}/", 1)[1] for r in rows} == set(images)  # ... and no orphans
    return rows


def test_resume_skips_finished_images_and_merges(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    out = f"s3://{bucket}/resume"
    job = write_config(tmp_path / "a.yaml", sleep_job(prompts(tmp_path / "a.parquet", 10), out))
    assert generate.main([str(job)]) == 0
    capsys.readouterr()
    bigger = write_config(tmp_path / "b.yaml", sleep_job(prompts(tmp_path / "b.parquet", 25), out))
    assert generate.main([str(bigger), "--set", "cluster.executor=in_process"]) == 0  # the merge is the plan's
    assert "15 written, 10 already present" in capsys.readouterr().out
    rows = assert_exactly_once(s3_env, bucket, "resume", 25)
    assert sum(r["already_present"] for r in rows) == 10


def test_failed_rows_are_carried_then_retried(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    out = f"s3://{bucket}/retry"
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["fine a", "poison b", "fine c"]})
    raw = sleep_job(src, out)
    raw["generators"]["sleepy"]["fail_prompt_substring"] = "poison"
    cfg = write_config(tmp_path / "job.yaml", raw)
    assert generate.main([str(cfg)]) == 0
    first = {r["prompt"]: r for r in manifest(s3_env, bucket, "retry")}
    assert first["poison b"]["status"] == "error" and "injected failure" in first["poison b"]["error"]
    # plain rerun: the failure is carried over, nothing is regenerated
    assert generate.main([str(cfg), "--set", "generators.sleepy.fail_prompt_substring="]) == 0
    second = {r["prompt"]: r for r in manifest(s3_env, bucket, "retry")}
    assert second["poison b"]["status"] == "error" and "--retry-failed" in second["poison b"]["error"]
    # --retry-failed redoes it (in process: which rows a rerun redoes is the plan's business, not the executor's)
    assert generate.main([str(cfg), "--retry-failed", "--set", "generators.sleepy.fail_prompt_substring=",
                          "--set", "cluster.executor=in_process"]) == 0
    assert_exactly_once(s3_env, bucket, "retry", 3)


def test_run_failing_wholesale_aborts_without_manifest(tmp_path: Path, s3_env: Any, bucket: str) -> None:
    """Through the real CLI with its own private Ray (Ray Data 2.60 keeps a failed run's actor pools alive
    in a shared Ray session, which would starve the tests after this one of fake GPUs)."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"poison {i}" for i in range(80)]})
    raw = sleep_job(src, f"s3://{bucket}/abort", limits={"max_error_fraction": 0.5, "abort_min_rows": 20})
    raw["generators"]["sleepy"]["fail_prompt_substring"] = "poison"
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/a{os.getpid()}"
    cfg = write_config(tmp_path / "job.yaml", raw)
    done = subprocess.run([*CLI, "run", str(cfg)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-2000:]
    last = [ln for ln in done.stderr.splitlines() if ln.startswith("imagefleet: run ")]
    assert last and "imagefleet abort:" in last[0] and "failed (limit 50%)" in last[0]
    assert "Traceback" not in done.stderr  # one line; the traceback is in the log file it names
    log, copy = last[0].rsplit("(details: ", 1)[1].rstrip(")").split("; copy: ")
    assert copy == f"s3://{bucket}/abort/logs/{Path(log).stem}.log"
    kept = s3_env.client().get_object(Bucket=bucket, Key=f"abort/logs/{Path(log).stem}.log")["Body"].read()
    assert b"Traceback" in kept  # the copy next to the outputs outlives a cluster driver's pod
    assert "Traceback" in Path(log).read_text()
    assert not [k for k in objects(s3_env, bucket, "abort/manifest/") if "/part-" in k]


def _our_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_chaos_killed_generator_actors(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None) -> None:
    """(a) generator actor processes die (SIGKILL) 3 times during a 500-row run, each after its 40th image →
    exactly 500 ok rows, no orphans."""
    raw = sleep_job(prompts(tmp_path / "p.parquet", 500), f"s3://{bucket}/kill", latency_s=0.02)
    faults = tmp_path / "faults"
    faults.mkdir()
    raw["generators"]["sleepy"]["faults"] = {"dir": str(faults), "after_images": 40, "action": "die", "times": 3}
    assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
    assert sorted(p.name for p in faults.iterdir()) == ["died-1", "died-2", "died-3"]
    assert_exactly_once(s3_env, bucket, "kill", 500)


def _released_when_paused(faults: Path, then: Callable[[], None]) -> threading.Thread:
    """A thread that waits for a generator actor to pause at its k-th image (an event, not a delay), runs `then`,
    and releases the actors."""

    def watch() -> None:
        while not any(p.name.startswith("paused-") for p in faults.iterdir()):
            time.sleep(0.05)
        try:
            then()
        finally:
            (faults / "go").touch()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_chaos_object_store_restart(tmp_path: Path, ray_cluster: None, monkeypatch: Any) -> None:
    """(b) stop and restart the SeaweedFS process mid-run (while the generators wait at their 20th image) → the
    run completes, exactly once."""
    from imagefleet.jobs.seaweed import S3Server

    server = S3Server.prepare(tmp_path / "sw").start()
    try:
        server.ensure_bucket("flaky")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        raw = sleep_job(prompts(tmp_path / "p.parquet", 200), "s3://flaky/run", latency_s=0.02)
        faults = tmp_path / "faults"
        faults.mkdir()
        raw["generators"]["sleepy"]["faults"] = {"dir": str(faults), "after_images": 20, "action": "pause"}
        bounced: list[int] = []

        def bounce() -> None:
            bounced.append(len(objects(server, "flaky", "run/images/")))
            server.stop()
            server.start()

        watcher = _released_when_paused(faults, bounce)
        assert generate.main([str(write_config(tmp_path / "job.yaml", raw))]) == 0
        watcher.join(timeout=60)
        assert bounced and bounced[0] < 200, "the store was never restarted during the run"
        assert_exactly_once(server, "flaky", "run", 200)
    finally:
        server.stop()


def test_an_outage_past_the_retry_budget_fails_the_run_and_the_rerun_ends_exact(
        tmp_path: Path, ray_cluster: None, monkeypatch: Any, capsys: Any) -> None:
    """(issue #30) the store goes away at the generators' 12th image and stays away past `s3.retry_budget_s`: the
    run exits 1 with one line and commits nothing — paid images are not written off as error rows that a plain
    rerun would carry over; once the store is back, a plain rerun ends exact."""
    from imagefleet.jobs.seaweed import S3Server

    server = S3Server.prepare(tmp_path / "sw").start()
    try:
        server.ensure_bucket("gone")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        raw = sleep_job(prompts(tmp_path / "p.parquet", 48), "s3://gone/run", latency_s=0.02)
        raw["output"]["s3"] = {"retry_budget_s": 1}
        faults = tmp_path / "faults"
        faults.mkdir()
        raw["generators"]["sleepy"]["faults"] = {"dir": str(faults), "after_images": 12, "action": "pause"}
        stored: list[int] = []

        def go_away() -> None:
            stored.append(len(objects(server, "gone", "run/images/")))
            server.stop()

        watcher = _released_when_paused(faults, go_away)
        cfg = write_config(tmp_path / "job.yaml", raw)
        assert generate.main([str(cfg)]) == 1
        watcher.join(timeout=60)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert any("failed past its retry budget" in ln and "nothing was committed" in ln for ln in err), err
        assert not any("Traceback" in ln for ln in err)
        server.start()
        assert not objects(server, "gone", "run/manifest/_manifest.json")
        assert generate.main([str(cfg)]) == 0
        rows = assert_exactly_once(server, "gone", "run", 48)
        assert sum(r["already_present"] for r in rows) == stored[0]  # stored before the outage: not made again
    finally:
        server.stop()


def test_chaos_killed_driver_then_rerun(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    """(c) kill the driver (and its private Ray) mid-run, before any manifest part (its generators wait at their
    40th image): the rerun completes, adopts the images the killed run stored (from the record each carries) and
    generates only the missing ones."""
    n = 240
    raw = sleep_job(prompts(tmp_path / "p.parquet", n), f"s3://{bucket}/driver", latency_s=0.02)
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/k{os.getpid()}"
    faults = tmp_path / "faults"
    faults.mkdir()
    raw["generators"]["sleepy"]["faults"] = {"dir": str(faults), "after_images": 40, "action": "pause"}
    cfg = write_config(tmp_path / "job.yaml", raw)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*CLI, "run", str(cfg)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # the events: a generator paused at its 40th image, and the writer has stored what came before it
        deadline = time.time() + 180  # a bound on a broken run, not the trigger
        while time.time() < deadline and not (any(p.name.startswith("paused-") for p in faults.iterdir())
                                              and objects(s3_env, bucket, "driver/images/")):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (faults / "go").touch()  # the rerun's generators don't wait
    # the killed run's own Ray processes (identified by its temp dir) must not linger
    for p in psutil.process_iter(["cmdline"]):
        if raw["cluster"]["temp_dir"] in " ".join(p.info["cmdline"] or []):
            p.kill()
    before, deadline = len(objects(s3_env, bucket, "driver/images/")), time.time() + 20
    while time.time() < deadline:  # an upload the store accepted as the run died may land a moment later
        time.sleep(1)
        now = len(objects(s3_env, bucket, "driver/images/"))
        if now == before:
            break
        before = now
    assert 0 < before < n, (tmp_path / "driver.log").read_text()[-3000:]
    assert not [k for k in objects(s3_env, bucket, "driver/manifest/") if "/part-" in k]
    rerun_at = time.time()
    assert generate.main([str(cfg), "--set", "cluster.executor=in_process"]) == 0  # the index: same either way
    assert f"{n - before} written, {before} already present" in capsys.readouterr().out
    rows = assert_exactly_once(s3_env, bucket, "driver", n)
    # the images the killed run stored were adopted from their records, not generated again
    adopted = [r for r in rows if r["already_present"]]
    assert len(adopted) == before and all(r["generated_at"].timestamp() < rerun_at for r in adopted)
    assert all(r["generated_at"].timestamp() > rerun_at for r in rows if not r["already_present"])


def _session_address() -> str:
    """The test session's Ray, for CLI subprocesses to join as drivers (a private Ray each would cost ~15 s)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _index(server: Any, bucket: str, prefix: str) -> dict[str, Any]:
    import json

    return json.loads(server.client().get_object(Bucket=bucket, Key=f"{prefix}/manifest/_manifest.json")["Body"]
                      .read())


class Killed(BaseException):
    """A driver killed at this exact point: nothing catches it and nothing cleans up after it."""


def _kill_at(step: str, monkeypatch: Any) -> None:
    """Make the driver die right before the index write (`index`: every part is written, none listed) or right
    after it (`gc`), leaving the store as a kill -9 there would; its lease is left behind too."""
    from imagefleet.actors.layout import MANIFEST_INDEX
    from imagefleet.actors.s3_store import S3Store
    from imagefleet.pipelines.commit import Lease

    real_put = S3Store.put

    def put(self: Any, rel: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if rel == MANIFEST_INDEX and step == "index":
            raise Killed(step)
        real_put(self, rel, data, content_type)
        if rel == MANIFEST_INDEX and step == "gc":
            raise Killed(step)

    monkeypatch.setattr(S3Store, "put", put)
    monkeypatch.setattr(Lease, "release", lambda self: self._stop.set())  # a dead driver releases nothing


def test_chaos_driver_killed_at_each_step_of_the_commit(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None
) -> None:
    """Die right before the index write (every part written, none listed) and right after it: readers that follow
    the index always see one complete manifest, and the next run leaves exactly one of everything."""
    import json

    n = 48
    raw = sleep_job(prompts(tmp_path / "p.parquet", n), f"s3://{bucket}/commit")
    raw["source"]["num_rows_per_block"] = 8  # several parts
    # the commit is the same whoever staged the parts: in process, each of these five runs takes a second
    raw["cluster"]["executor"] = "in_process"
    cfg = write_config(tmp_path / "job.yaml", raw)
    assert generate.main([str(cfg), "--run-id", "first"]) == 0
    assert_exactly_once(s3_env, bucket, "commit", n)
    client = s3_env.client()
    for step, current in (("index", "first"), ("gc", "killed-gc")):
        with pytest.MonkeyPatch.context() as mp:
            _kill_at(step, mp)
            with pytest.raises(Killed):
                generate.main([str(cfg), "--run-id", f"killed-{step}"])
        assert _index(s3_env, bucket, "commit")["run_id"] == current
        rows = manifest(s3_env, bucket, "commit")  # follows the index
        assert len(rows) == n and {r["run_id"] for r in rows} == {current}
        assert len({r["image_key"] for r in rows}) == n
        # the dead driver's lease blocks the output until it expires (same host: at once once its pid is gone)
        other = sleep_job(prompts(tmp_path / "q.parquet", 3), f"s3://{bucket}/commit")
        other["cluster"]["executor"] = "in_process"
        assert generate.main([str(write_config(tmp_path / "q.yaml", other))]) == 2
        lease = json.loads(client.get_object(Bucket=bucket, Key="commit/manifest/_lease.json")["Body"].read())
        client.put_object(Bucket=bucket, Key="commit/manifest/_lease.json",
                          Body=json.dumps({**lease, "expires_at": time.time() - 1}).encode())
    assert generate.main([str(cfg), "--run-id", "after"]) == 0
    rows = assert_exactly_once(s3_env, bucket, "commit", n)
    assert {r["run_id"] for r in rows} == {"after"}
    parts = [k for k in objects(s3_env, bucket, "commit/manifest/") if k.rsplit("/", 1)[-1].startswith("part-")]
    assert sorted(parts) == sorted(f"commit/{p}" for p in _index(s3_env, bucket, "commit")["parts"])
    assert not objects(s3_env, bucket, "commit/manifest/_staging/")


def test_a_second_concurrent_run_on_one_output_is_refused(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, capsys: Any
) -> None:
    """Two runs on one output: the second is refused up front (exit 2, names the first); the first commits a
    complete manifest. (Before: the first commit deleted the second's staging; the second committed 1,984 rows
    short and exited 0.)"""
    n = 96
    raw = sleep_job(prompts(tmp_path / "p.parquet", n), f"s3://{bucket}/two", latency_s=0.2)
    raw["cluster"]["address"] = _session_address()
    cfg = write_config(tmp_path / "job.yaml", raw)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([*CLI, "run", str(cfg), "--run-id", "first"], cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "two/manifest/_lease.json" not in objects(s3_env, bucket, "two/"):
            time.sleep(0.2)
        other = sleep_job(prompts(tmp_path / "q.parquet", 10), f"s3://{bucket}/two")
        assert generate.main([str(write_config(tmp_path / "other.yaml", other)), "--run-id", "second"]) == 2
        assert "is being written by run 'first'" in capsys.readouterr().err
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:]
    rows = assert_exactly_once(s3_env, bucket, "two", n)
    assert {r["run_id"] for r in rows} == {"first"}
    assert "two/manifest/_lease.json" not in objects(s3_env, bucket, "two/")  # released
