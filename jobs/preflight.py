"""Before any work: the run's store connections, secrets and adapters resolved from the environment, the
output checked writable, the cluster checked for the resources the plan's pools need."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from imagefleet.actors.model_digest import folder_digest
from imagefleet.actors.storage import StorageError, resolve_store_spec
from imagefleet.actors.stores import open_store
from imagefleet.configs.job import JobConfig
from imagefleet.configs.storage import StoreSpec
from imagefleet.jobs.model_check import check_hub_models
from imagefleet.jobs.runtime import check_temp_dir
from imagefleet.pipelines.plan import Stores
from imagefleet.pipelines.pools import Pool, missing_on_local, reserved_cpus, unplaceable


def resolve_stores(cfg: JobConfig, online: bool = False) -> Stores:
    """Read secrets from the environment / secret files (the only place that does).

    `online` (serving) reads no prompt table and writes no outputs, so their credentials aren't asked for.
    """
    if cfg.scorer is not None and not online:  # a scorer that can't load would fail the run after drafts were paid
        from imagefleet.actors import SCORERS

        problem = SCORERS[cfg.scorer.backend].check_model(cfg.scorer)
        if problem:
            raise StorageError(problem)
    needs = {name: g.needs() for name, g in cfg.generators.items()}
    for name, n in needs.items():
        if n.model_path and not Path(n.model_path).expanduser().is_dir():
            raise StorageError(f"generators.{name}.model: local model folder {n.model_path} does not exist; give a "
                               f"folder with model_index.json, a hub id (org/name) or an s3:// folder")
    digests = {name: folder_digest(n.model_path) for name, n in needs.items() if n.model_path}
    models = {name: resolve_store_spec(n.model_uri or "s3://adapters", n.model_s3) for name, n in needs.items()
              if n.model_uri or n.s3_adapters}
    unused = StoreSpec(kind="local")
    source = unused if online else resolve_store_spec(cfg.source.uri, cfg.source.s3)
    return Stores(
        source=source,
        inputs=input_store(cfg, source) if cfg.source.reads_inputs() and not online else source,
        output=unused if online else resolve_store_spec(cfg.output.uri, cfg.output.s3),
        models=models,
        api_keys=resolve_api_keys(cfg),
        adapters=resolve_adapters(cfg, models),
        model_ids=digests,
        model_versions={**hub_commits(cfg), **digests},
    )


def hub_commits(cfg: JobConfig) -> dict[str, str]:
    """Every hub model the run loads, resolved before work (one line for one that won't load): generator name →
    the commit its revision is now."""
    try:
        return check_hub_models(cfg)
    except ValueError as exc:
        raise StorageError(str(exc)) from None


def input_store(cfg: JobConfig, source: StoreSpec) -> StoreSpec:
    """The connection for rows' s3:// input images: the prompt table's when it is on S3, else one from
    `source.s3` and the environment if credentials are there (without them, an s3:// input is that row's error)."""
    if source.kind == "s3":
        return source
    try:
        return resolve_store_spec("s3://inputs", cfg.source.s3)
    except StorageError:
        return source


def resolve_adapters(cfg: JobConfig, models: dict[str, StoreSpec]) -> dict[str, dict[str, str]]:
    """Every generator's LoRA adapters by name → the hash of its weights (read once here: it is part of image
    keys); StorageError naming an adapter that can't be found."""
    from imagefleet.actors.adapters import AdapterError, adapter_sha256

    out: dict[str, dict[str, str]] = {}
    for name, g in cfg.generators.items():
        for a in g.adapters():
            try:
                digest = adapter_sha256(a, models.get(name, StoreSpec(kind="local")), "/tmp/imagefleet-models")
            except AdapterError as exc:
                raise StorageError(f"generators.{name}.loras: {exc}") from None
            out.setdefault(name, {})[a.name] = digest
    return out


def resolve_api_keys(cfg: JobConfig) -> dict[str, SecretStr]:
    """Hosted generators' keys from their secret file or environment variable (never from the YAML)."""
    keys: dict[str, SecretStr] = {}
    for name, g in cfg.generators.items():
        n = g.needs()
        if not n.api_key:
            continue
        if n.api_key_file:
            try:
                value = Path(n.api_key_file).read_text().strip()
            except OSError as exc:
                raise StorageError(f"generators.{name}.api_key_file {n.api_key_file}: {exc.strerror}") from None
        else:
            value = os.environ.get(n.api_key_env, "").strip()
        if not value:
            raise StorageError(f"generator {name!r} ({g.backend}) needs an API key: set {n.api_key_env} "
                               f"or generators.{name}.api_key_file")
        keys[name] = SecretStr(value)
    return keys


def preflight_output(cfg: JobConfig, stores: Stores) -> None:
    """Fail before any GPU work if the output can't be written (or a private Ray could not start)."""
    if cfg.cluster.address == "local":
        check_temp_dir(cfg.cluster.temp_dir)
    open_store(cfg.output.uri, stores.output).check_writable()


def check_resources(cfg: JobConfig, pools: dict[str, Pool], spare_cpu: bool = True) -> None:
    """Fail fast where Ray would wait forever: a pool no node can host, or pools that leave no CPU for Ray
    Data's own read/repartition/write tasks (`spare_cpu`; serving runs none). A local cluster is checked at
    once; on a real cluster each pool must be placeable within `cluster.startup_timeout_s` (an autoscaler may
    add nodes meanwhile)."""
    import ray

    if cfg.cluster.address not in ("local", ""):
        problem = unplaceable(pools, cfg.cluster.startup_timeout_s)
        if problem:
            raise StorageError(problem)
        return
    problem = local_resource_problem(pools, ray.cluster_resources(), spare_cpu)
    if problem:
        raise StorageError(problem)


def local_resource_problem(pools: dict[str, Pool], have: dict[str, float], spare_cpu: bool = True) -> str:
    """Why a local Ray with `have` resources can't run these pools ('' = it can)."""
    problem = missing_on_local(pools, have)
    if problem:
        hint = "set cluster.num_gpus (fake GPUs on a CPU box) or the pool's num_gpus: 0" if "GPU" in problem else (
            "remove pool.accelerator_type for a local run, or run on a cluster that has it")
        return f"{problem}; {hint}"
    cpus, reserved = have.get("CPU", 0.0), reserved_cpus(pools)
    if spare_cpu and cpus - reserved < 1:
        return (f"the actor pools can reserve {reserved:g} of this local Ray's {cpus:g} CPUs, leaving less than the 1 "
                f"CPU that read/repartition/write tasks need (the run would stall); raise cluster.num_cpus or lower "
                f"the pools' num_cpus / max_size")
    return ""


def planned_local_resources(cfg: JobConfig) -> dict[str, float]:
    """What the private local Ray this run would start will have, known before starting it: `cluster.num_cpus` /
    `num_gpus`, else this machine's CPUs and the NVIDIA GPUs it shows (device files, within CUDA_VISIBLE_DEVICES)."""
    import glob

    gpus = cfg.cluster.num_gpus
    if not gpus:
        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = min(gpus, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return {"CPU": float(cfg.cluster.num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}
