"""`imagefleet submit|status|logs|stop|list`: run a config on a Ray cluster through the Ray Jobs API, the way
`ray job` does: the dashboard from `--address` or `RAY_ADDRESS`, waiting for the job by default (`--no-wait`),
a `--submission-id` that makes a retry a no-op while the job runs, a `--runtime-env` file, and logs streamed
as they grow.

The user's working folder (`--working-dir`, default: the current folder) travels as the job's `working_dir` and
the config inside its runtime env; the entrypoint is `python -m imagefleet.jobs.cli run CONFIG`, run with the
imagefleet the cluster's image has installed — or, submitted from a checkout of this repository, with the
checkout's code, which travels in the folder. Never site-packages. Secrets are not shipped: the cluster's nodes get
them from their own environment (e.g. a Kubernetes secret, see infra/).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from imagefleet.jobs.submit_env import (
    EXCLUDES,
    cluster_path_problem,
    describe,
    job_spec,
    merge_runtime_env,
    read_runtime_env,
    working_dir_problem,
)

__all__ = ["EXCLUDES", "follow", "list_jobs", "logs", "status", "stop", "submit", "working_dir_problem"]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
"""Where `ray job` reads the dashboard's address when --address is not given, in this order."""
NO_ADDRESS = "no Ray dashboard address: pass --address http://HEAD:8265 or set RAY_ADDRESS"


class JobsClient(Protocol):
    """What imagefleet uses of `ray.job_submission.JobSubmissionClient` (tests hand in a small fake)."""

    def submit_job(self, *, entrypoint: str, runtime_env: dict[str, Any] | None = None,
                   submission_id: str | None = None) -> str: ...

    def get_job_info(self, job_id: str) -> Any: ...

    def get_job_logs(self, job_id: str) -> str: ...

    def tail_job_logs(self, job_id: str) -> AsyncIterator[str]: ...

    def stop_job(self, job_id: str) -> bool: ...

    def list_jobs(self) -> list[Any]: ...


def cluster_address(given: str) -> str:
    """The dashboard to talk to: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS; '' when none is set."""
    return given or next((os.environ[v] for v in ADDRESS_VARS if os.environ.get(v)), "")


def _client(address: str) -> JobsClient:
    """Jobs API client. Ray 2.60 clusters use token auth by default; when a token is available (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset, the client is switched to token mode.
    RAY_API_SERVER_ADDRESS and RAY_ADDRESS are hidden while it connects: Ray lets them override the address it is
    given, and here an explicit --address wins."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    hidden = {v: os.environ.pop(v) for v in ADDRESS_VARS if v in os.environ}
    try:
        client: JobsClient = JobSubmissionClient(address)
        return client
    finally:
        os.environ.update(hidden)


def _fail(message: str) -> int:
    print(f"imagefleet: {message}", file=sys.stderr)
    return 2


def _cluster_error(address: str, exc: BaseException) -> int:
    """One line for a cluster that can't be reached or a job it doesn't know (exit 2)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, ConnectionError) or "connect" in first.lower():
        return _fail(f"can't reach the Ray dashboard at {address}: {first}; check --address or RAY_ADDRESS "
                     f"(http://HEAD:8265)")
    return _fail(first)


def _with_client(given: str, action: Callable[[JobsClient, str], int]) -> int:
    """Run `action(client, address)` against the dashboard; a missing address, an unreachable dashboard or an
    unknown job is one line, exit 2."""
    address = cluster_address(given)
    if not address:
        return _fail(NO_ADDRESS)
    try:
        return action(_client(address), address)
    except Exception as exc:  # noqa: BLE001 - unreachable address, auth, unknown job: one line, not a traceback
        return _cluster_error(address, exc)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--address", default="", help="Ray dashboard, e.g. http://HEAD:8265 (default: "
                   "$RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)")
    return p


def _submit_parser() -> argparse.ArgumentParser:
    p = _parser("imagefleet submit", "Run CONFIG on a Ray cluster as a Ray job; by default stream its log and exit "
                "with its status (0 succeeded, 1 failed or stopped).")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as for `imagefleet run` (repeatable)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once the job is submitted")
    p.add_argument("--wait", dest="wait", action="store_true", help=argparse.SUPPRESS)  # the default; kept for DAGs
    p.add_argument("--submission-id", default="", metavar="ID",
                   help="the job's id: submitting again while it is pending or running follows it instead, and "
                        "after it succeeded does nothing (one id, one run: after a failure pick a new one)")
    p.add_argument("--runtime-env", default="", metavar="FILE",
                   help="a YAML runtime env merged into imagefleet's (pip, env_vars, excludes add to it)")
    p.add_argument("--pip", action="append", default=[], help="extra pip packages for the job's runtime env")
    p.add_argument("--ship-source", action="store_true",
                   help="upload a local prompt table inside the working folder with the job (else use s3://)")
    p.add_argument("--working-dir", default=".", help="the folder that travels with the job (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; contact no cluster")
    return p


def submit(argv: list[str]) -> int:
    args = _submit_parser().parse_args(argv)
    # 1 where: the dashboard and the working folder
    if not args.dry_run and not cluster_address(args.address):
        return _fail(NO_ADDRESS)
    folder = Path(args.working_dir).resolve()
    problem = working_dir_problem(folder)
    if problem:
        return _fail(problem)
    # 2 what: the config, checked here (a bad config should fail on the laptop, not after the upload)
    from imagefleet.configs import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return _fail(str(exc))
    problem = cluster_path_problem(cfg, args.ship_source)
    if problem:
        return _fail(problem)
    # 3 how: the entrypoint and the runtime env, with the user's file merged in
    try:
        entrypoint, runtime_env, note = job_spec(cfg, args.config, args.overrides, folder, args.ship_source,
                                                 args.pip)
        if args.runtime_env:
            runtime_env = merge_runtime_env(runtime_env, read_runtime_env(args.runtime_env),
                                            f"--runtime-env {args.runtime_env}")
    except ValueError as exc:
        return _fail(str(exc))
    if note:
        print(f"imagefleet: {note}", file=sys.stderr)
    if args.dry_run:
        print(describe(cluster_address(args.address), entrypoint, runtime_env, args.config, args.submission_id,
                       args.wait))
        return 0

    # 4 submit — unless this submission id already names a run — then follow the job
    def send(client: JobsClient, address: str) -> int:
        if args.submission_id:
            done = _already_submitted(client, address, args.submission_id, args.wait)
            if done is not None:
                return done
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=args.submission_id or None)
        except RuntimeError as exc:  # a twin submit with this id got in between the check and ours: it's the run
            done = (_already_submitted(client, address, args.submission_id, args.wait)
                    if args.submission_id and "already exists" in str(exc) else None)
            if done is None:
                raise
            return done
        print(f"submitted {job_id} to {address}", flush=True)
        return follow(client, job_id) if args.wait else 0

    return _with_client(args.address, send)


def _already_submitted(client: JobsClient, address: str, job_id: str, wait: bool) -> int | None:
    """The exit code when a job `job_id` exists (None when it doesn't, and it should be submitted). Pending or
    running: a retry of the same submission, so follow it (or, with --no-wait, leave it be). Succeeded: nothing to
    do. Failed or stopped: Ray keeps one job per submission id and refuses to reuse it, so one line (exit 2) asking
    for a new id — a retry that should run again names a new one."""
    try:
        info = client.get_job_info(job_id)
    except RuntimeError as exc:
        if "status code 404" in str(exc):  # Ray's answer for an id it doesn't know
            return None
        raise
    state = _state(info.status)
    if state not in TERMINAL:
        print(f"job {job_id} is already {state} on {address}: not submitting it again"
              + ("; following it" if wait else ""), flush=True)
        return follow(client, job_id) if wait else 0
    if state == "SUCCEEDED":
        print(f"job {job_id} already SUCCEEDED on {address}: not submitting it again")
        return 0
    return _fail(f"job {job_id} already ended {state} on {address}; a submission id names one run: pass a new "
                 f"--submission-id to run it again (imagefleet logs {job_id} shows how it ended)")


def _state(status: Any) -> str:
    """A job status as its name (Ray's `JobStatus` is a str enum; fakes give plain strings)."""
    return str(getattr(status, "value", status))


def follow(client: JobsClient, job_id: str, poll_s: float = 1.0) -> int:
    """Print the job's log as it grows, each part once (Ray's `tail_job_logs` stream, never the whole log again),
    then its final status; 0 only if it succeeded, 1 if it failed or was stopped. A stream that breaks before the
    job ends stops the log, not the wait: the status is polled until the job ends. Ctrl-C stops following, not the
    job (exit 130)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        try:
            asyncio.run(tail())
        except RuntimeError as exc:  # the stream closed early: a dashboard restart, a proxy's idle timeout
            print(f"imagefleet: the log stream of {job_id} broke ({str(exc).strip()[:200]}); waiting for the job "
                  f"to end without its log", file=sys.stderr)
        info = client.get_job_info(job_id)
        while _state(info.status) not in TERMINAL:
            time.sleep(poll_s)
            info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        print(f"imagefleet: stopped following {job_id}; the job goes on (imagefleet stop {job_id} ends it)",
              file=sys.stderr)
        return 130
    state = _state(info.status)
    message = (info.message or "").strip().splitlines()[:1] if state != "SUCCEEDED" else []
    print(f"job {job_id}: {state}" + "".join(f" ({m[:300]})" for m in message))
    return 0 if state == "SUCCEEDED" else 1


def status(argv: list[str]) -> int:
    p = _parser("imagefleet status", "Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED).")
    p.add_argument("job_id")
    args = p.parse_args(argv)

    def show(client: JobsClient, address: str) -> int:
        print(_state(client.get_job_info(args.job_id).status))
        return 0

    return _with_client(args.address, show)


def logs(argv: list[str]) -> int:
    p = _parser("imagefleet logs", "Print a job's log; with --follow, stream it as it grows until the job ends.")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream new output until the job ends, then exit with its status (like `tail -f`)")
    args = p.parse_args(argv)

    def show(client: JobsClient, address: str) -> int:
        if args.follow:
            client.get_job_info(args.job_id)  # an unknown job: Ray's one-line 404, before the stream opens
            return follow(client, args.job_id)
        print(client.get_job_logs(args.job_id), end="")
        return 0

    return _with_client(args.address, show)


def stop(argv: list[str]) -> int:
    p = _parser("imagefleet stop", "Stop a job and wait until it has ended (as `ray job stop`).")
    p.add_argument("job_id")
    p.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    args = p.parse_args(argv)

    def halt(client: JobsClient, address: str) -> int:
        if not client.stop_job(args.job_id):  # False: it had already ended
            print(f"job {args.job_id} had already ended: {_state(client.get_job_info(args.job_id).status)}")
            return 0
        print(f"stopping {args.job_id} on {address}", flush=True)
        if args.no_wait:
            return 0
        state = _state(client.get_job_info(args.job_id).status)
        while state not in TERMINAL:
            time.sleep(1.0)
            state = _state(client.get_job_info(args.job_id).status)
        print(f"job {args.job_id}: {state}")
        return 0

    return _with_client(args.address, halt)


def list_jobs(argv: list[str]) -> int:
    p = _parser("imagefleet list", "The cluster's jobs, oldest first: id, status, start time and entrypoint.")
    args = p.parse_args(argv)

    def show(client: JobsClient, address: str) -> int:
        rows = [(j.submission_id or j.job_id or "-", _state(j.status), _started(j.start_time), _short(j.entrypoint))
                for j in sorted(client.list_jobs(), key=lambda j: j.start_time or 0)]
        if not rows:
            print(f"no jobs on {address}")
            return 0
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
        return 0

    return _with_client(args.address, show)


def _started(start_ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start_ms / 1000)) if start_ms else "-"


def _short(entrypoint: str, width: int = 80) -> str:
    """An entrypoint on one line, imagefleet's own as `imagefleet run …` with its overrides, cut to `width`."""
    text = " ".join((entrypoint or "").split())
    text = text.replace("python -m imagefleet.jobs.cli run env:IMAGEFLEET_CONFIG_YAML", "imagefleet run")
    text = text.replace(" --set cluster.address=auto", "")
    return text if len(text) <= width else text[:width - 1] + "…"
