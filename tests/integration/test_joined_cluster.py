"""Runs that join a running Ray cluster (`cluster.address`), against a real `ray start --head` on loopback that the
test starts and stops by PID: the dry run checks the pools against the cluster's nodes (issue #31), an address
where nothing answers is one line within seconds, and a head that dies mid-run ends the run with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs.preflight import CLUSTER_FIXES, resource_problem
from imagefleet.jobs.seaweed import pick_ports
from imagefleet.pipelines.pools import Pool
from tests.helpers import CLI, REPO, sleep_job, stop_ray_head, write_config, write_prompts

RECONNECT_S = 36  # Ray's gcs_rpc_server_reconnect_timeout_s for the drivers here (60 by default)
# `ray start` heads use token auth (Ray 2.60); the drivers join with the token in ~/.ray
DRIVER_ENV = {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token",
              "RAY_gcs_rpc_server_reconnect_timeout_s": str(RECONNECT_S)}


def start_head(temp: str) -> tuple[subprocess.Popen[bytes], str]:
    """`ray start --head --block` with 4 CPUs and no GPU, no autoscaler; returned once its monitor has published
    its first status (an event in its log, not a delay): from then on the cluster reports that it is fixed."""
    ports = pick_ports()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={ports['master']}",
           "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=0", f"--temp-dir={temp}",
           "--include-dashboard=false", f"--ray-client-server-port={ports['volume'] + 10000}",
           f"--min-worker-port={ports['filer'] + 20}", f"--max-worker-port={ports['filer'] + 400}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    monitor = Path(temp) / "session_latest" / "logs" / "monitor.log"
    deadline = time.time() + 60  # a bound on a broken start, not the trigger
    while not (monitor.exists() and "Autoscaler status" in monitor.read_text(errors="replace")):
        if head.poll() is not None or time.time() > deadline:
            stop_ray_head(head, temp)
            raise RuntimeError(f"ray start --head did not come up (exit {head.poll()})")
        time.sleep(0.2)
    return head, f"127.0.0.1:{ports['master']}"


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """One running head (4 CPUs, no GPU) for the dry runs."""
    temp = f"/tmp/ifray/j{uuid.uuid4().hex[:6]}"
    proc, address = start_head(temp)
    try:
        yield address
    finally:
        stop_ray_head(proc, temp)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=REPO, env={**os.environ, **DRIVER_ENV}, capture_output=True,
                          text=True, timeout=timeout)


def job(tmp_path: Path, address: str, num_gpus: int = 0, num_cpus: float = 0, rows: int = 8,
        faults: dict[str, Any] | None = None, latency_s: float = 0.0) -> Path:
    """A sleep-backend job (2 generator actors) joining `address`."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(rows)]})
    raw = sleep_job(src, str(tmp_path / "out"), latency_s=latency_s)
    raw["generators"]["sleepy"]["pool"].update(num_gpus=num_gpus, num_cpus=num_cpus)
    if faults:
        raw["generators"]["sleepy"]["faults"] = faults
    raw["cluster"] = {"address": address}
    return write_config(tmp_path / "job.yaml", raw)


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("pool", "code", "said"), [
    ({"num_gpus": 1}, 2, "asks for 1 GPU per actor but the Ray cluster at 127.0.0.1:"),
    ({"num_cpus": 2}, 2, "leaving less than the 1 CPU that read/repartition/write tasks need"),  # 2 actors x 2
    ({}, 0, ""),
], ids=["gpu-pool-no-gpus", "pools-take-every-cpu", "fits"])
def test_dry_run_checks_the_pools_against_the_running_cluster(
        tmp_path: Path, head: str, pool: dict[str, float], code: int, said: str) -> None:
    """What the run would find 40 s - 2 min after starting, the dry run says now: this head has no autoscaler,
    so a pool it can't host is refused (exit 2, one line); pools that fit pass, and nothing is left running."""
    done = cli("run", str(job(tmp_path, head, **pool)), "--dry-run")
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-3000:]
    if code:
        line = one_line(done.stderr)
        assert said in line and head.split(":")[1] in line, line
        assert "dry run" not in done.stdout
    else:
        assert "dry run: config, input schema and output access are fine" in done.stdout, done.stderr[-3000:]
        assert "note   : warning" not in done.stdout
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


@pytest.mark.slow
def test_dry_run_where_nothing_answers_is_one_line_within_seconds(tmp_path: Path) -> None:
    """(before: ray.init retried for minutes)"""
    free = pick_ports()["master"]
    started = time.time()
    done = cli("run", str(job(tmp_path, f"127.0.0.1:{free}")), "--dry-run", timeout=60)
    took = time.time() - started
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    line = one_line(done.stderr)
    assert f"no Ray cluster answers at 127.0.0.1:{free}" in line, line
    assert took < 30, f"{took:.0f} s"  # a Python start and one refused connection, on a loaded 2-core box


@pytest.mark.slow
def test_dry_run_of_auto_with_no_cluster_refuses_as_the_run_would(tmp_path: Path) -> None:
    """`cluster.address: auto` where no cluster runs: the run refuses in one line once it tries to join, so the dry
    run refuses too (before: it passed with a note). RAY_ADDRESS is what `auto` reads first; it names a port where
    nothing answers, so other Ray instances on this machine can't change the outcome."""
    free = pick_ports()["master"]
    env = {**os.environ, **DRIVER_ENV, "RAY_ADDRESS": f"127.0.0.1:{free}"}
    for extra in (["--dry-run"], []):
        done = subprocess.run([*CLI, "run", str(job(tmp_path, "auto")), *extra], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
        assert f"no Ray cluster answers at auto (127.0.0.1:{free}" in one_line(done.stderr), extra
    assert not any((tmp_path / "out").rglob("*.png"))


@pytest.mark.slow
def test_a_head_killed_mid_run_ends_the_run_with_one_line(tmp_path: Path) -> None:
    """The head (GCS, raylet, actors) is killed while the generators wait at their 4th image (an event): the run
    exits 1 with one line naming the lost cluster — before Ray's own exit after RECONNECT_S with nothing on
    stderr — and commits nothing. (Before: exit 1, nothing on stderr.)"""
    temp = f"/tmp/ifray/k{uuid.uuid4().hex[:6]}"
    proc, address = start_head(temp)
    faults = tmp_path / "faults"
    faults.mkdir()
    cfg = job(tmp_path, address, rows=64, latency_s=0.02,
              faults={"dir": str(faults), "after_images": 4, "action": "pause"})
    driver = subprocess.Popen([*CLI, "run", str(cfg), "--progress", "off"], cwd=REPO,
                              env={**os.environ, **DRIVER_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.time() + 120  # a bound on a broken run, not the trigger
        while not any(p.name.startswith("paused-") for p in faults.iterdir()):
            assert driver.poll() is None and time.time() < deadline, driver.communicate()[1][-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the head we started, by its PID: the whole cluster goes
        killed_at = time.time()
        out, err = driver.communicate(timeout=RECONNECT_S + 60)
        took = time.time() - killed_at
    finally:
        (faults / "go").touch()
        if driver.poll() is None:
            driver.kill()
        stop_ray_head(proc, temp)
    assert driver.returncode == 1, out[-2000:] + err[-3000:]
    line = one_line(err)
    assert line.startswith("imagefleet: run ") and "failed, nothing committed" in line, line
    assert f"the Ray cluster at {address} went away" in line and "rerun when it is back" in line, line
    assert took < RECONNECT_S, f"{took:.0f} s: Ray's own exit came first"
    assert not (tmp_path / "out" / "manifest" / "_manifest.json").exists()


def test_a_pool_must_fit_on_one_node_not_just_in_the_cluster_total() -> None:
    """Two 1-GPU nodes hold 2 GPUs, but no actor asking for 2 can be placed on either."""
    pools = {"gen": Pool(min_size=1, max_size=1, initial_size=1, num_cpus=1, batch_size=4, num_gpus=2)}
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    problem = resource_problem(pools, nodes, "the Ray cluster at h:1", CLUSTER_FIXES)
    assert "asks for CPU=1, GPU=2 per actor but no single node of the Ray cluster at h:1" in problem
    assert CLUSTER_FIXES["GPU"] in problem
    assert resource_problem(pools, [*nodes, {"CPU": 2.0, "GPU": 2.0}], "x", CLUSTER_FIXES) == ""


def test_the_watch_interrupts_the_run_once_its_cluster_stops_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism without Ray: a port that answers, then doesn't (closed: the event); the watching thread gets
    ClusterLost after half of Ray's reconnect timeout (here 2 s), and `lost` says what went where."""
    import socket

    from imagefleet.jobs.runtime import ClusterLost, ClusterWatch

    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "2")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    watch = ClusterWatch("auto", ("127.0.0.1", port))
    server.close()
    deadline = time.time() + 30  # a bound on a broken watch, not the trigger
    with pytest.raises(ClusterLost):
        while time.time() < deadline:
            time.sleep(0.05)
    assert watch.stop().startswith(f"the Ray cluster at auto (127.0.0.1:{port}) went away (Connection refused for ")
    quiet = ClusterWatch("auto", ("127.0.0.1", port))
    assert quiet.stop() == ""  # stopped first: nothing is ever raised
    time.sleep(2.5)


def test_a_cluster_lost_while_the_pools_wait_for_nodes_is_one_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch covers the wait for the pools' nodes (`check`, up to cluster.startup_timeout_s on an autoscaling
    cluster), not only the stages: it starts as soon as the cluster is joined. (Before: it started after the wait,
    so a head lost during it ended the run after Ray's reconnect timeout with nothing said.)"""
    import imagefleet
    from imagefleet.jobs import executors, runtime

    order: list[str] = []

    class LostWatch:
        def stop(self) -> str:
            return "the Ray cluster at 127.0.0.1:1 went away (Connection refused for 30 s); rerun when it is back"

    def check(self: object) -> None:
        order.append("check")
        raise RuntimeError("GCS unreachable")  # what Ray raised meanwhile

    monkeypatch.setattr(executors.OnRay, "start", lambda self: order.append("start"))
    monkeypatch.setattr(executors.OnRay, "check", check)
    monkeypatch.setattr(runtime, "watch_cluster", lambda cfg: order.append("watch") or LostWatch())
    raw = sleep_job(write_prompts(tmp_path / "p.parquet", {"prompt": ["a", "b"]}), str(tmp_path / "out"))
    with pytest.raises(imagefleet.RunFailed, match="went away") as failed:
        imagefleet.run(raw, echo=None)
    assert order == ["start", "watch", "check"] and "GCS unreachable" not in str(failed.value)
