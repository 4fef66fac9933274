"""What `imagefleet submit` sends, decided without a cluster: the working folder, the config paths that would resolve
on the cluster instead of here, the entrypoint, and the runtime env (a user's `--runtime-env` file merged in)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagefleet.configs import JobConfig

EXCLUDES = [".venv", ".git", ".imagefleet", "**/__pycache__", "bench/results", "*.parquet", "*.csv", "*.csv.gz",
            "*.jsonl", "*.jsonl.gz", "*.ndjson", "*.ndjson.gz"]  # prompt tables: a run reads them by URI
CONFIG_VAR = "IMAGEFLEET_CONFIG_YAML"
"""The runtime env variable that carries the config (the entrypoint runs `env:IMAGEFLEET_CONFIG_YAML`)."""


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


def _relative(path: str) -> bool:
    """A local path that a job resolves against its own working folder on the cluster: no scheme (`s3://`), not
    from the root, not from a home folder (`~` is the node's home: a place of its own, not the job's folder)."""
    path = path.removeprefix("file://")
    return "://" not in path and not path.startswith(("/", "~"))


def _local_model(model: str) -> bool:
    """A model setting that names a local folder rather than a hub id (`org/name`) or a hosted model: it starts with
    `.` or `/` (or `~`, `file://`), or it is a folder here — which is how diffusers and transformers decide."""
    return model.startswith((".", "/", "~", "file://")) or Path(model).is_dir()


def cluster_path_problem(cfg: JobConfig, ship_source: bool) -> str:
    """One line naming the first config path that is local and relative ('' when there is none): on the cluster
    the job runs in its own copy of the working folder, so such a path would read from or write into that copy
    (an output there is discarded with it) instead of the place it names here. `source.uri` is exempt with
    `--ship-source`, which uploads the table and points the job at its copy."""
    from imagefleet.actors.adapters import is_hub_id
    from imagefleet.configs.scorer import ClipScorerConfig, FactsScorerConfig, VqaScorerConfig

    paths = {"output.uri": cfg.output.uri}
    if not ship_source:
        paths["source.uri"] = cfg.source.uri
    for name, gen in sorted(cfg.generators.items()):
        if _local_model(gen.model):
            paths[f"generators.{name}.model"] = gen.model
        for i, adapter in enumerate(gen.adapters()):
            if not adapter.path.startswith("s3://") and not is_hub_id(adapter.path):
                paths[f"generators.{name}.loras[{i}].path"] = adapter.path
    scorers_with_models = ClipScorerConfig | VqaScorerConfig | FactsScorerConfig
    if isinstance(cfg.scorer, scorers_with_models) and _local_model(cfg.scorer.model):
        paths["scorer.model"] = cfg.scorer.model
    for key, value in paths.items():
        if _relative(value):
            hint = " or pass --ship-source to upload it with the job" if key == "source.uri" else ""
            return (f"{key} {value} is a relative path: on the cluster it would resolve inside the job's own working "
                    f"folder, not here; use an absolute path the cluster's nodes share (e.g. "
                    f"{Path(value.removeprefix('file://')).resolve()}) or s3://bucket/...{hint}")
    return ""


def job_spec(cfg: JobConfig, config: str, overrides: list[str], folder: Path, ship_source: bool,
             pip: list[str]) -> tuple[str, dict[str, Any], str]:
    """(entrypoint, runtime env, note) that run `config` on a cluster from the working folder `folder`; the note
    ('' or one line) says that a local source without --ship-source must be readable by the nodes. ValueError (one
    line) when --ship-source can't ship the table."""
    excludes, overrides, note = list(EXCLUDES), list(overrides), ""
    if not cfg.source.uri.startswith("s3://"):  # the cluster can't read the laptop's disk
        source = Path(cfg.source.uri.removeprefix("file://")).resolve()
        if not ship_source:  # fine on one machine or a shared filesystem; say so otherwise
            note = (f"note: source.uri {cfg.source.uri} is a local path: the cluster's nodes must be able to read "
                    f"it (a shared filesystem); otherwise copy it to s3:// and --set source.uri=s3://..., or pass "
                    f"--ship-source to upload it with the job")
        elif not source.is_relative_to(folder):
            raise ValueError(f"--ship-source uploads the working folder only; move {cfg.source.uri} under {folder} "
                             f"or pass --working-dir")
        else:
            excludes.remove("*.parquet")  # ship the table (the job runs in the uploaded folder)
            overrides.append(f"source.uri={source.relative_to(folder)}")
    excludes += secret_files_inside(cfg, folder)  # secrets never travel: the nodes read their own
    # the config travels inside the runtime env (it may live anywhere, even in a git-ignored folder)
    entrypoint = " ".join([f"python -m imagefleet.jobs.cli run env:{CONFIG_VAR}",
                           *(f"--set {shlex.quote(o)}" for o in ["cluster.address=auto", *overrides])])
    runtime_env: dict[str, Any] = {
        "working_dir": str(folder), "excludes": excludes,
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", CONFIG_VAR: Path(config).read_text()},
    }
    if pip:
        runtime_env["pip"] = list(pip)
    return entrypoint, runtime_env, note


def secret_files_inside(cfg: JobConfig, folder: Path) -> list[str]:
    """The config's secret files (API keys, S3 secrets) that lie in the working folder, as exclude patterns
    relative to it: they are left out of the upload (cluster nodes get secrets from their own environment)."""
    named = [g.needs().api_key_file for g in cfg.generators.values()]
    named += [s.secret_file for s in (cfg.source.s3, cfg.output.s3)]
    named += [g.needs().model_s3.secret_file for g in cfg.generators.values()]
    out = []
    for name in filter(None, named):
        path = Path(name).expanduser().resolve()
        if path.is_relative_to(folder):
            out.append("/" + path.relative_to(folder).as_posix())  # anchored at the working folder (gitignore style)
    return sorted(set(out))


def read_runtime_env(path: str) -> dict[str, Any]:
    """The runtime env a YAML file describes (as for `ray job submit --runtime-env`). ValueError (one line) when it
    can't be read or isn't a mapping; an empty file is an empty runtime env."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"--runtime-env {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"--runtime-env {path} is not valid YAML: {' '.join(str(exc).split())[:200]}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"--runtime-env {path} must be a YAML mapping (pip:, env_vars:, ...), got "
                         f"{type(raw).__name__}")
    return raw


def merge_runtime_env(ours: dict[str, Any], theirs: dict[str, Any], source: str) -> dict[str, Any]:
    """imagefleet's runtime env with a user's merged in. Their keys win, except: `env_vars` and `excludes` add to
    imagefleet's (their values win, but `IMAGEFLEET_CONFIG_YAML` is the config being submitted and stays);
    `pip` adds --pip's packages to theirs; `working_dir` is --working-dir's. ValueError (one line, naming
    `source`) for what can't be merged, and for what Ray's own check of the result refuses."""
    if "working_dir" in theirs:
        raise ValueError(f"{source} sets working_dir: imagefleet ships --working-dir (default: this folder); pass "
                         f"that instead")
    env = theirs.get("env_vars") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError(f"{source}: env_vars must map names to strings (quote numbers: FOO: \"1\")")
    if CONFIG_VAR in env:
        raise ValueError(f"{source} sets env_vars.{CONFIG_VAR}, which carries the config being submitted; "
                         f"remove it")
    excludes = theirs.get("excludes") or []
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise ValueError(f"{source}: excludes must be a list of patterns")
    merged = {**ours, **{k: v for k, v in theirs.items() if k not in ("env_vars", "excludes", "pip")}}
    merged["env_vars"] = {**ours["env_vars"], **env}
    merged["excludes"] = [*ours["excludes"], *(e for e in excludes if e not in ours["excludes"])]
    if "pip" in theirs:
        merged["pip"] = _merge_pip(theirs["pip"], ours.get("pip", []), source)
    from ray.runtime_env import RuntimeEnv  # light: Ray's check of the fields, as submit_job will run it

    try:
        RuntimeEnv(**merged)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}") from exc
    return merged


def _merge_pip(theirs: Any, extra: list[str], source: str) -> Any:
    """Their pip setting with --pip's packages added: to a list, or to a `{packages: [...]}` mapping."""
    if isinstance(theirs, list):
        return [*theirs, *(p for p in extra if p not in theirs)]
    if isinstance(theirs, dict) and isinstance(theirs.get("packages"), list):
        return {**theirs, "packages": [*theirs["packages"], *(p for p in extra if p not in theirs["packages"])]}
    if isinstance(theirs, str) and not extra:
        return theirs  # a requirements file (Ray reads it when the job is submitted)
    if isinstance(theirs, str):
        raise ValueError(f"{source}: pip names a requirements file; list --pip's packages in it instead")
    raise ValueError(f"{source}: pip must be a list of packages, a requirements file or {{packages: [...]}}")


def describe(address: str, entrypoint: str, runtime_env: dict[str, Any], config: str, submission_id: str,
             wait: bool) -> str:
    """What --dry-run prints: where, what and how it would be submitted (env var names only: values may be
    secrets)."""
    keys = []
    for key, value in sorted(runtime_env.items()):
        if key == "env_vars":
            keys.append(f"env_vars ({', '.join(sorted(value))})")
        elif key == "pip":
            keys.append(f"pip ({', '.join(value) if isinstance(value, list) else value})")
        else:
            keys.append(key)
    folder, excludes = runtime_env["working_dir"], ", ".join(runtime_env["excludes"])
    return "\n".join([
        f"would submit to {address or '(no address yet: pass --address or set RAY_ADDRESS)'}:",
        f"  entrypoint : {entrypoint}",
        f"  working_dir: {folder} (without {excludes})",
        f"  config     : {config} (in the runtime env)",
        f"  runtime_env: {', '.join(keys)}",
        f"  submission : {submission_id} (submitting again with it starts no second job)" if submission_id
        else "  submission : (an id Ray picks)",
        "  then       : " + ("stream the job's log and exit with its status" if wait
                             else "return once submitted (--no-wait)")])
