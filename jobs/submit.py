"""`imagefleet submit|status|logs`: run a config on a Ray cluster through the Ray Jobs API.

The user's working folder (`--working-dir`, default: the current folder) travels as the job's `working_dir` and
the config inside its runtime env; the entrypoint is `python -m imagefleet.jobs.cli run CONFIG`, run with the
imagefleet the cluster's image has installed — or, submitted from a checkout of this repository, with the
checkout's code, which travels in the folder. Never site-packages. Secrets are not shipped: the cluster's nodes get
them from their own environment (e.g. a Kubernetes secret, see infra/).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

EXCLUDES = [".venv", ".git", ".imagefleet", "**/__pycache__", "bench/results", "*.parquet"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str) -> object:
    """Jobs API client. Ray 2.60 clusters use token auth by default; when a token is available (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset, the client is switched to token mode."""
    import os

    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="imagefleet submit")
    p.add_argument("config")
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as for `imagefleet run` (repeatable)")
    p.add_argument("--wait", action="store_true", help="stream logs and exit with the job's status")
    p.add_argument("--pip", action="append", default=[], help="extra pip packages for the job's runtime env")
    p.add_argument("--ship-source", action="store_true",
                   help="upload a local prompt table inside the working folder with the job (else use s3://)")
    p.add_argument("--working-dir", default=".", help="the folder that travels with the job (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; contact no cluster")
    args = p.parse_args(argv)
    folder = Path(args.working_dir).resolve()
    problem = working_dir_problem(folder)
    if problem:
        print(f"imagefleet: {problem}", file=sys.stderr)
        return 2
    from imagefleet.configs import ConfigError, load_config

    try:  # validate here: a bad config should fail on the laptop, not after the upload
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    excludes, overrides = list(EXCLUDES), list(args.overrides)
    if not cfg.source.uri.startswith("s3://"):  # the cluster can't read the laptop's disk
        source = Path(cfg.source.uri).resolve()
        if not args.ship_source:  # fine on one machine or a shared filesystem; say so otherwise
            print(f"imagefleet: note: source.uri {cfg.source.uri} is a local path: the cluster's nodes must be able "
                  f"to read it (a shared filesystem); otherwise copy it to s3:// and --set source.uri=s3://..., "
                  f"or pass --ship-source to upload it with the job", file=sys.stderr)
        elif not source.is_relative_to(folder):
            print(f"imagefleet: --ship-source uploads the working folder only; move {cfg.source.uri} under {folder} "
                  f"or pass --working-dir", file=sys.stderr)
            return 2
        else:
            excludes.remove("*.parquet")  # ship the table (the job runs in the uploaded folder)
            overrides.append(f"source.uri={source.relative_to(folder)}")
    # the config travels inside the runtime env (it may live anywhere, even in a git-ignored folder)
    entrypoint = " ".join(["python -m imagefleet.jobs.cli run env:IMAGEFLEET_CONFIG_YAML",
                           *(f"--set {shlex.quote(o)}" for o in ["cluster.address=auto", *overrides])])
    runtime_env: dict[str, object] = {
        "working_dir": str(folder), "excludes": excludes,
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "IMAGEFLEET_CONFIG_YAML": Path(args.config).read_text()},
    }
    if args.pip:
        runtime_env["pip"] = args.pip
    if args.dry_run:
        print(f"would submit to {args.address}:\n  entrypoint : {entrypoint}\n  working_dir: {folder} (without "
              f"{', '.join(excludes)})\n  config     : {args.config} (in the runtime env)")
        return 0
    try:
        client = _client(args.address)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - unreachable address, auth: one line, not a traceback
        return _cluster_error(args.address, exc)
    print(f"submitted {job_id} to {args.address}")
    return follow(client, job_id) if args.wait else 0


def working_dir_problem(folder: Path) -> str:
    """Why `folder` must not travel as a job's working_dir ('' when it may): it is inside an installed environment
    (site-packages, a virtualenv), or holds one that EXCLUDES doesn't leave out — every package in it would be
    uploaded."""
    import site
    import sysconfig

    if not folder.is_dir():
        return f"--working-dir {folder} is not a folder"
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages(),
                                              sysconfig.get_paths()["purelib"], sys.prefix] if p}
    for env in sorted(installed):
        inside = folder == env or folder.is_relative_to(env)
        holds = env.is_relative_to(folder) and env.relative_to(folder).parts[0] not in EXCLUDES
        if inside or holds:
            return (f"the working folder {folder} {'is inside' if inside else 'holds'} an installed environment "
                    f"({env}); submit from your project's folder, or pass --working-dir")
    return ""


def _cluster_error(address: str, exc: BaseException) -> int:
    """One line for a cluster that can't be reached or a job it doesn't know (exit 2)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, ConnectionError) or "connect" in first.lower():
        print(f"imagefleet: can't reach the Ray dashboard at {address}: {first}; check --address "
              f"(http://HEAD:8265)", file=sys.stderr)
    else:
        print(f"imagefleet: {first}", file=sys.stderr)
    return 2


def follow(client: object, job_id: str, poll_s: float = 1.0) -> int:
    """Print new log output until the job ends; exit code 0 only if it succeeded."""
    shown = 0
    while True:
        status = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]  # type: ignore[attr-defined]
        logs = client.get_job_logs(job_id)  # type: ignore[attr-defined]
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            print(f"job {job_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(poll_s)


def status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="imagefleet status")
    p.add_argument("job_id")
    p.add_argument("--address", required=True)
    args = p.parse_args(argv)
    try:
        state = _client(args.address).get_job_status(args.job_id)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - unknown job, unreachable address
        return _cluster_error(args.address, exc)
    print(str(state).rsplit(".", 1)[-1])
    return 0


def logs(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="imagefleet logs")
    p.add_argument("job_id")
    p.add_argument("--address", required=True)
    args = p.parse_args(argv)
    try:
        text = _client(args.address).get_job_logs(args.job_id)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - unknown job, unreachable address
        return _cluster_error(args.address, exc)
    print(text, end="")
    return 0
