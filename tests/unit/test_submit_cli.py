"""`imagefleet submit|status|logs|stop|list` without a cluster: one-line answers, never a traceback; the Jobs API
calls checked against a small fake client (`submit._client` swapped for one)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from imagefleet.jobs import submit
from tests.helpers import REPO, sleep_job, tiny_job, write_config, write_prompts

NOWHERE = "http://127.0.0.1:1"


class FakeClient:
    """The part of Ray's JobSubmissionClient imagefleet uses. A job given `chunks` streams them and then ends as
    `final`; a submitted job is RUNNING until its stream ends."""

    def __init__(self, jobs: dict[str, str] | None = None, chunks: tuple[str, ...] = (), final: str = "SUCCEEDED",
                 broken: bool = False) -> None:
        self.jobs = {job: SimpleNamespace(submission_id=job, job_id=None, status=state, message="", start_time=None,
                                          entrypoint="") for job, state in (jobs or {}).items()}
        self.chunks, self.final, self.broken = chunks, final, broken
        self.submitted: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def submit_job(self, *, entrypoint: str, runtime_env: dict[str, Any] | None = None,
                   submission_id: str | None = None) -> str:
        job = submission_id or "raysubmit_fake"
        self.submitted.append({"entrypoint": entrypoint, "runtime_env": runtime_env, "submission_id": submission_id})
        self.jobs[job] = SimpleNamespace(submission_id=job, job_id=None, status="RUNNING", message="",
                                         start_time=None, entrypoint=entrypoint)
        return job

    def get_job_info(self, job_id: str) -> Any:
        self.calls.append("info")
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return self.jobs[job_id]

    def get_job_logs(self, job_id: str) -> str:
        self.calls.append("logs")
        return "".join(self.chunks)

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        for chunk in self.chunks:
            self.calls.append("chunk")
            yield chunk
            if self.broken:
                self.jobs[job_id].status = self.final
                raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")
        self.jobs[job_id].status = self.final

    def stop_job(self, job_id: str) -> bool:
        job = self.get_job_info(job_id)
        if job.status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return False
        job.status = "STOPPED"
        return True

    def list_jobs(self) -> list[Any]:
        return list(self.jobs.values())


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(submit, "_client", lambda address: client)
    return client


@pytest.fixture
def job_yaml(tmp_path: Path) -> Path:
    return write_config(tmp_path / "job.yaml", sleep_job("s3://b/prompts/", "s3://b/o"))  # no note on a local source


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("verb", [submit.status, submit.logs, submit.stop, submit.list_jobs])
def test_unreachable_dashboard_is_one_line(verb: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = [] if verb is submit.list_jobs else ["raysubmit_nope"]
    assert verb([*args, "--address", NOWHERE]) == 2
    err = _one_line(capsys)
    assert "can't reach the Ray dashboard" in err and "--address" in err and "RAY_ADDRESS" in err


def test_the_address_comes_from_ray_address(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            job_yaml: Path) -> None:
    """As for `ray job`: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS; neither is one line, exit 2,
    before any other work (the config isn't even read)."""
    seen: list[str] = []
    client = FakeClient({"j": "RUNNING"})
    monkeypatch.setattr(submit, "_client", lambda address: seen.append(address) or client)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    assert submit.status(["j"]) == 0 and seen[-1] == "http://from-env:8265"
    assert submit.submit([str(job_yaml), "--no-wait"]) == 0 and seen[-1] == "http://from-env:8265"
    assert submit.status(["j", "--address", "http://given:8265"]) == 0 and seen[-1] == "http://given:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api-server:8265")
    assert submit.status(["j"]) == 0 and seen[-1] == "http://api-server:8265"
    capsys.readouterr()
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    monkeypatch.delenv("RAY_ADDRESS")
    for verb, args in ((submit.submit, ["no-such-config.yaml"]), (submit.status, ["j"]), (submit.list_jobs, [])):
        assert verb(args) == 2
        err = _one_line(capsys)
        assert "--address" in err and "RAY_ADDRESS" in err, err


def test_an_explicit_address_beats_ray_address_in_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's client lets RAY_ADDRESS override the address it is given; ours hides it while connecting."""
    import os

    import ray.job_submission

    made: list[tuple[str, str | None]] = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient",
                        lambda address: made.append((address, os.environ.get("RAY_ADDRESS"))))
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    submit._client("http://given:8265")
    assert made == [("http://given:8265", None)] and os.environ["RAY_ADDRESS"] == "http://from-env:8265"


def test_relative_paths_that_would_resolve_on_the_cluster_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    (tmp_path / "models" / "tiny-sd").mkdir(parents=True)
    cases = {
        "output.uri out/run1": sleep_job(src, "out/run1"),
        "source.uri p.parquet": sleep_job("p.parquet", "s3://b/o"),
        "generators.tiny.model models/tiny-sd": tiny_job(src, "models/tiny-sd", "s3://b/o"),  # a folder here
        "generators.tiny.model ./elsewhere": tiny_job(src, "./elsewhere", "s3://b/o"),
    }
    lora = tiny_job(src, "stabilityai/sd-turbo", "s3://b/o")
    lora["generators"]["tiny"]["loras"] = [{"name": "style", "path": "loras/style.safetensors"}]
    cases["generators.tiny.loras[0].path loras/style.safetensors"] = lora
    for named, raw in cases.items():
        cfg = write_config(tmp_path / "job.yaml", raw)
        assert submit.submit([str(cfg), "--address", NOWHERE, "--dry-run"]) == 2, named
        err = _one_line(capsys)
        assert err.startswith(f"imagefleet: {named} is a relative path") and "s3://" in err, err
        assert str(tmp_path) in err  # the absolute path it names here
    ok = {"hub id": tiny_job(src, "stabilityai/sd-turbo", "s3://b/o"),
          "absolute": tiny_job(src, str(tmp_path / "models" / "tiny-sd"), str(tmp_path / "out"))}
    for named, raw in ok.items():
        cfg = write_config(tmp_path / "job.yaml", raw)
        assert submit.submit([str(cfg), "--address", NOWHERE, "--dry-run"]) == 0, named
    cfg = write_config(tmp_path / "job.yaml", sleep_job("p.parquet", "s3://b/o"))  # shipped: relative on purpose
    assert submit.submit([str(cfg), "--address", NOWHERE, "--dry-run", "--ship-source"]) == 0
    assert "--set source.uri=p.parquet" in capsys.readouterr().out


def test_runtime_env_file_is_merged(tmp_path: Path, job_yaml: Path, fake: FakeClient,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text(yaml.safe_dump({"pip": ["rich"], "env_vars": {"FOO": "bar", "RAY_USAGE_STATS_ENABLED": "1"},
                                        "excludes": ["data/"], "config": {"setup_timeout_seconds": 900}}))
    args = [str(job_yaml), "--address", NOWHERE, "--runtime-env", str(env_file), "--pip", "numpy",
            "--submission-id", "nightly-1"]
    assert submit.submit([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "runtime_env: config, env_vars (FOO, IMAGEFLEET_CONFIG_YAML, RAY_USAGE_STATS_ENABLED), excludes, " \
           "pip (rich, numpy), working_dir" in out
    assert "submission : nightly-1" in out and "then       : stream the job's log" in out
    assert f"working_dir: {Path.cwd()}" in out and "bar" not in out  # names only: values may be secrets
    assert submit.submit([*args, "--no-wait"]) == 0 and fake.calls.count("chunk") == 0
    sent = fake.submitted[0]
    env = sent["runtime_env"]
    assert sent["submission_id"] == "nightly-1" and env["pip"] == ["rich", "numpy"]
    assert env["env_vars"]["FOO"] == "bar" and env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "1"  # theirs win
    assert env["env_vars"]["IMAGEFLEET_CONFIG_YAML"] == job_yaml.read_text()
    assert ".venv" in env["excludes"] and "data/" in env["excludes"] and env["config"] == {"setup_timeout_seconds": 900}
    assert env["working_dir"] == str(Path.cwd())


@pytest.mark.parametrize("text, says", [
    (None, "No such file"),
    ("pip: [rich\n", "not valid YAML"),
    ("- rich\n", "must be a YAML mapping"),
    ("env_vars: {FOO: 1}\n", "quote numbers"),
    ("env_vars: {IMAGEFLEET_CONFIG_YAML: x}\n", "carries the config"),
    ("working_dir: /elsewhere\n", "pass that instead"),
    ("pip: 3\n", "pip must be"),
    ("pip: [a]\nconda: {dependencies: [b]}\n", "cannot be specified at the same time"),
])
def test_a_bad_runtime_env_file_is_one_line(text: str | None, says: str, tmp_path: Path, job_yaml: Path,
                                            fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "env.yaml"
    if text is not None:
        env_file.write_text(text)
    assert submit.submit([str(job_yaml), "--address", NOWHERE, "--runtime-env", str(env_file)]) == 2
    err = _one_line(capsys)
    assert f"--runtime-env {env_file}" in err and says in err, err
    assert not fake.submitted


def test_waiting_is_the_default(job_yaml: Path, fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.chunks, fake.final = ("running\n",), "FAILED"
    assert submit.submit([str(job_yaml), "--address", NOWHERE]) == 1  # followed: the job's status decides
    out = capsys.readouterr().out
    assert out.startswith(f"submitted raysubmit_fake to {NOWHERE}\nrunning\n") and "job raysubmit_fake: FAILED" in out
    fake.final = "SUCCEEDED"
    assert submit.submit([str(job_yaml), "--address", NOWHERE, "--wait"]) == 0  # the old flag: the default
    calls = len(fake.calls)
    assert submit.submit([str(job_yaml), "--address", NOWHERE, "--no-wait"]) == 0 and len(fake.calls) == calls
    assert len(fake.submitted) == 3 and fake.submitted[0]["submission_id"] is None


def test_a_submission_id_makes_a_retry_a_no_op(job_yaml: Path, fake: FakeClient,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Running or pending: followed, not submitted again. Succeeded: nothing to do. Failed or stopped: Ray won't take
    the id again, so one line asking for a new one."""
    fake.jobs = FakeClient({"run-1": "RUNNING", "run-2": "SUCCEEDED", "run-3": "FAILED", "run-4": "PENDING"}).jobs
    fake.chunks = ("half\n", "done\n")
    base = [str(job_yaml), "--address", NOWHERE, "--submission-id"]
    assert submit.submit([*base, "run-1"]) == 0
    out = capsys.readouterr().out
    assert "job run-1 is already RUNNING" in out and "half\ndone\n" in out and "job run-1: SUCCEEDED" in out
    assert submit.submit([*base, "run-4", "--no-wait"]) == 0
    assert "job run-4 is already PENDING" in capsys.readouterr().out and fake.jobs["run-4"].status == "PENDING"
    assert submit.submit([*base, "run-2"]) == 0 and "already SUCCEEDED" in capsys.readouterr().out
    assert submit.submit([*base, "run-3"]) == 2
    assert "already ended FAILED" in _one_line(capsys)
    assert not fake.submitted
    assert submit.submit([*base, "run-5"]) == 0 and fake.submitted[0]["submission_id"] == "run-5"


def test_a_twin_submit_with_the_same_id_follows_the_run_it_lost_to(job_yaml: Path, fake: FakeClient,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Two submits of one id at the same instant: both find no job, one submits, and Ray refuses the other's id
    ('already exists', a 400 from the job head). That one follows the winner's run (before: Ray's error, exit 2)."""
    fake.chunks = ("made 4 images\n",)
    taken = fake.submit_job

    def lose_the_race(*, entrypoint: str, runtime_env: dict[str, Any] | None = None,
                      submission_id: str | None = None) -> str:
        taken(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id)  # the twin's
        raise RuntimeError(f"Request failed with status code 400: Traceback (most recent call last): ... "
                           f"ValueError: Job with submission_id {submission_id} already exists. Please use a "
                           f"different submission_id.")

    fake.submit_job = lose_the_race  # type: ignore[method-assign]
    assert submit.submit([str(job_yaml), "--address", NOWHERE, "--submission-id", "nightly-7"]) == 0
    out = capsys.readouterr().out
    assert "job nightly-7 is already RUNNING" in out and "made 4 images" in out and "job nightly-7: SUCCEEDED" in out


def test_logs_are_tailed_not_downloaded_again(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake.jobs = FakeClient({"j": "RUNNING", "k": "RUNNING"}).jobs
    fake.chunks = ("one\n", "two\n", "three\n")
    assert submit.logs(["j", "--follow", "--address", NOWHERE]) == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\njob j: SUCCEEDED\n"
    assert fake.calls.count("chunk") == 3 and "logs" not in fake.calls  # each part once, no full download
    assert submit.logs(["j", "--address", NOWHERE]) == 0 and capsys.readouterr().out == "one\ntwo\nthree\n"
    fake.broken, fake.final = True, "FAILED"  # the stream breaks: the wait goes on, without the log
    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    assert submit.logs(["k", "--follow", "--address", NOWHERE]) == 1
    captured = capsys.readouterr()
    assert captured.out == "one\njob k: FAILED\n" and "log stream of k broke" in captured.err
    assert submit.logs(["nope", "-f", "--address", NOWHERE]) == 2 and "nope does not exist" in _one_line(capsys)


def test_stop_and_list(fake: FakeClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake.jobs = FakeClient({"a": "RUNNING", "b": "SUCCEEDED"}).jobs
    assert submit.stop(["a", "--address", NOWHERE]) == 0
    assert capsys.readouterr().out == f"stopping a on {NOWHERE}\njob a: STOPPED\n"
    assert submit.stop(["b", "--address", NOWHERE]) == 0 and "already ended: SUCCEEDED" in capsys.readouterr().out
    assert submit.stop(["c", "--address", NOWHERE]) == 2 and "c does not exist" in _one_line(capsys)
    long = "python -m imagefleet.jobs.cli run env:IMAGEFLEET_CONFIG_YAML --set cluster.address=auto --set " \
           "output.uri=s3://bucket/" + "x" * 100
    fake.jobs["a"].start_time, fake.jobs["a"].entrypoint = 1_700_000_100_000, long
    fake.jobs["b"].start_time, fake.jobs["b"].entrypoint = 1_700_000_000_000, "echo hi"
    assert submit.list_jobs(["--address", NOWHERE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["b", "SUCCEEDED"], ["a", "STOPPED"]]  # oldest first
    assert lines[0].endswith("  echo hi") and "imagefleet run --set output.uri=s3://bucket/xx" in lines[1]
    assert lines[1].endswith("…") and "cluster.address" not in lines[1] and len(lines[1]) < 160
    fake.jobs = {}
    assert submit.list_jobs(["--address", NOWHERE]) == 0 and "no jobs" in capsys.readouterr().out


def test_local_source_is_explained_or_shipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, "s3://b/o"))
    assert submit.submit([str(cfg), "--address", NOWHERE, "--ship-source"]) == 2
    assert "uploads the working folder only" in capsys.readouterr().err
    assert submit.submit([str(cfg), "--address", NOWHERE]) == 2  # a note, then the unreachable cluster
    err = capsys.readouterr().err.strip().splitlines()
    assert "local path" in err[0] and "--ship-source" in err[0] and "can't reach" in err[1]


def test_the_working_folder_never_holds_an_installed_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed imagefleet used to ship the folder above its code — site-packages — as the job's working_dir.
    The working folder is the user's (`--working-dir`, default the current one), and an installed environment in
    it or around it is refused in one line."""
    import sysconfig

    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a"]})
    cfg = write_config(tmp_path / "job.yaml", sleep_job(src, "s3://b/o"))
    site_packages = sysconfig.get_paths()["purelib"]
    assert submit.submit([str(cfg), "--address", NOWHERE, "--working-dir", site_packages]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is inside an installed environment" in err[0]
    assert submit.working_dir_problem(REPO) == ""  # a checkout: its .venv is excluded
    (tmp_path / "venv").mkdir()  # a folder holding a virtualenv EXCLUDES doesn't leave out
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert submit.working_dir_problem(tmp_path).startswith(f"the working folder {tmp_path} holds")


def test_secret_files_in_the_working_folder_never_travel(tmp_path: Path) -> None:
    """A relative `api_key_file` or `s3.secret_file` inside the working folder would have been uploaded with it."""
    from imagefleet.configs.loader import parse_config
    from imagefleet.jobs.submit_env import job_spec

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "openai.txt").write_text("sk-secret")
    raw = sleep_job("s3://b/p.parquet", "s3://b/o")
    raw["generators"]["gpt"] = {"backend": "openai", "model": "gpt-image-2",
                                "api_key_file": str(tmp_path / "keys" / "openai.txt")}
    raw["routing"] = {"mode": "single", "default": "gpt"}
    raw["output"]["s3"] = {"secret_file": str(tmp_path / "s3-secret")}
    cfg = parse_config(raw)
    (tmp_path / "job.yaml").write_text("name: x\n")
    _, env, _ = job_spec(cfg, str(tmp_path / "job.yaml"), [], tmp_path, False, [])
    assert {"/keys/openai.txt", "/s3-secret"} <= set(env["excludes"])
