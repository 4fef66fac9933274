"""Before any work: the run's store connections, secrets and adapters resolved from the environment, the
output checked writable, the cluster checked for the resources the plan's pools need."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from imagefleet.actors.model_digest import folder_digest, store_folder_digest
from imagefleet.actors.storage import StorageError, resolve_store_spec
from imagefleet.actors.store_errors import explain_s3_error
from imagefleet.actors.stores import open_store
from imagefleet.configs.job import JobConfig
from imagefleet.configs.storage import StoreSpec
from imagefleet.jobs.model_check import check_hub_models
from imagefleet.jobs.runtime import check_temp_dir, join_cluster, quiet_stderr
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
    models = {name: resolve_store_spec(n.model_uri or "s3://adapters", n.model_s3) for name, n in needs.items()
              if n.model_uri or n.s3_adapters}
    digests = {name: folder_digest(n.model_path) for name, n in needs.items() if n.model_path}
    digests |= {name: s3_model_digest(name, n.model_uri, models[name]) for name, n in needs.items() if n.model_uri}
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
        scorer_id=scorer_digest(cfg),
    )


def scorer_digest(cfg: JobConfig) -> str:
    """The scorer's model folder as its content digest, when it is a local folder ('' else): the same scorer at
    another path (another checkout, an absolute path) keeps the keys of the images it chose."""
    model = getattr(cfg.scorer, "model", "") if cfg.scorer is not None else ""
    return folder_digest(model) if model and Path(model).expanduser().is_dir() else ""


def s3_model_digest(name: str, uri: str, spec: StoreSpec) -> str:
    """An `s3://` model folder's content digest (its files read once, then cached by ETag); one line when the
    folder is empty or can't be read."""
    from imagefleet.actors.s3_store import S3Store

    try:
        return store_folder_digest(S3Store(uri, spec))
    except FileNotFoundError:
        raise StorageError(f"generators.{name}.model: no model files under {uri}; give the folder that holds "
                           f"model_index.json") from None
    except Exception as exc:  # botocore's errors: named in one line, kept as the cause
        raise StorageError(f"generators.{name}.model: {explain_s3_error(exc, uri)}") from exc


def hub_commits(cfg: JobConfig) -> dict[str, str]:
    """Every hub model the run loads, resolved before work (one line for one that won't load): generator name →
    the commit its revision is now."""
    try:
        return check_hub_models(cfg)
    except ValueError as exc:
        raise StorageError(str(exc)) from exc


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
                raise StorageError(f"generators.{name}.loras: {exc}") from exc
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
                raise StorageError(f"generators.{name}.api_key_file {n.api_key_file}: {exc.strerror}") from exc
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


LOCAL_FIXES = {"GPU": "set cluster.num_gpus (fake GPUs on a CPU box) or the pool's num_gpus: 0",
               "accelerator_type": "remove pool.accelerator_type for a local run, or run on a cluster that has it",
               "CPU": "raise cluster.num_cpus or lower the pools' num_cpus / max_size"}
CLUSTER_FIXES = {"GPU": "add GPU nodes to the cluster (or an autoscaler that can) or set the pool's num_gpus: 0",
                 "accelerator_type": "add nodes of that type to the cluster, or remove pool.accelerator_type",
                 "CPU": "add nodes to the cluster or lower the pools' num_cpus / max_size"}


def check_resources(cfg: JobConfig, pools: dict[str, Pool], spare_cpu: bool = True) -> None:
    """Fail fast where Ray would wait forever: a pool no node can host, or pools that leave no CPU for Ray
    Data's own read/repartition/write tasks (`spare_cpu`; serving runs none). A local cluster, and a joined one
    known to have no autoscaler, is checked at once against its nodes; elsewhere (an autoscaler may add nodes)
    each pool must be placeable within `cluster.startup_timeout_s`."""
    import ray

    if cfg.cluster.address not in ("local", ""):
        problem = cluster_resource_problem(pools, cluster_name(cfg.cluster.address), spare_cpu)
        if problem and cluster_is_fixed():
            raise StorageError(problem)
        problem = unplaceable(pools, cfg.cluster.startup_timeout_s)
        if problem:
            raise StorageError(problem)
        return
    problem = local_resource_problem(pools, ray.cluster_resources(), spare_cpu)
    if problem:
        raise StorageError(problem)


def refuse_ray_client(address: str) -> None:
    """A run's Ray Data pipeline can't run over Ray Client (`ray://`): Ray Data's streaming executor needs the
    driver's core worker, which a client driver lacks (Ray 2.60: AttributeError 'Worker' object has no attribute
    'core_worker', seen on a real `ray start --head`). StorageError in one line with the ways that work."""
    if address.startswith("ray://"):
        raise StorageError(f"cluster.address {address}: Ray Client can't run Ray Data pipelines (the driver must run "
                           f"on the cluster); submit the run as a Ray job instead (imagefleet submit CONFIG "
                           f"--address http://HEAD:8265), or give the cluster's GCS as host:port from a machine "
                           f"that reaches its nodes")


def check_joined_cluster(cfg: JobConfig, pools: dict[str, Pool], spare_cpu: bool = True) -> str:
    """--dry-run for a run that joins a cluster: connect briefly and check the pools against its nodes as the run
    does once started (`check_resources`, without waiting for an autoscaler). A note for the plan ('' = none; a
    warning where an autoscaler may add the nodes); StorageError in one line when nothing answers at the address
    or the pools can't run there — `auto` with no cluster on this node included, as the run would refuse it (a
    submitted job finds its cluster through RAY_ADDRESS; `imagefleet submit --dry-run` checks a submission)."""
    import logging

    import ray

    address = cfg.cluster.address
    with quiet_stderr():
        join_cluster(address, logging_level=logging.ERROR, log_to_driver=False)
        try:
            problem = cluster_resource_problem(pools, cluster_name(address), spare_cpu)
            fixed = cluster_is_fixed()
        finally:
            ray.shutdown()
    if problem and fixed:
        raise StorageError(problem)
    if problem:  # an autoscaler may add such nodes while the run waits for them
        return (f"warning (the cluster may autoscale: the run waits cluster.startup_timeout_s="
                f"{cfg.cluster.startup_timeout_s:g}s for such a node): {problem}")
    return ""


def cluster_name(address: str) -> str:
    """How messages name the joined cluster (`auto`: the address Ray found)."""
    import ray

    if address == "auto" and ray.is_initialized():
        return f"the Ray cluster at {ray.get_runtime_context().gcs_address} (cluster.address: auto)"
    return f"the Ray cluster at {address}"


def cluster_resource_problem(pools: dict[str, Pool], where: str, spare_cpu: bool = True) -> str:
    """Why the connected Ray cluster's live nodes, as they are now, can't run these pools ('' = they can)."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return resource_problem(pools, nodes, where, CLUSTER_FIXES, spare_cpu)


def cluster_is_fixed() -> bool:
    """Whether the connected cluster is known to have no autoscaler that could add nodes. Ray's autoscaler v2
    publishes its node groups (fixed when none may grow, as Ray Data reads them); v1 publishes a status
    (`ray status`) in which a cluster started without an autoscaling config shows each node as its own read-only
    type. Nothing published yet (a monitor that has not reported) is not known to be fixed."""
    import json

    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_get

    # ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY in GCS_AUTOSCALER_STATE_NAMESPACE
    raw = _internal_kv_get("__autoscaler_cluster_config", namespace="__autoscaler")
    if raw:
        groups = autoscaler_pb2.ClusterConfig.FromString(raw).node_group_configs  # type: ignore[attr-defined]
        return not any(g.max_count == -1 or g.max_count > g.min_count for g in groups
                       if g.resources and g.max_count != 0)
    status = _internal_kv_get("__autoscaling_status")  # ray_constants.DEBUG_AUTOSCALING_STATUS
    report = (json.loads(status).get("autoscaler_report") or {}) if status else {}
    mapping: dict[str, str] = report.get("node_type_mapping") or {}
    return bool(mapping) and all(kind == format_readonly_node_type(node) for node, kind in mapping.items())


def local_resource_problem(pools: dict[str, Pool], have: dict[str, float], spare_cpu: bool = True) -> str:
    """Why a local Ray with `have` resources can't run these pools ('' = it can)."""
    return resource_problem(pools, [have], "this local Ray", LOCAL_FIXES, spare_cpu)


def resource_problem(pools: dict[str, Pool], nodes: list[dict[str, float]], where: str, fixes: dict[str, str],
                     spare_cpu: bool = True) -> str:
    """Why a fixed set of `nodes` (each one's resources) can't run these pools ('' = it can): a pool whose actor
    no node can host, or pools that at their largest leave under 1 CPU for Ray Data's tasks; `fixes` by what is
    short (GPU, accelerator_type, CPU) end the message."""
    total: dict[str, float] = {}
    for node in nodes:
        for resource, amount in node.items():
            total[resource] = total.get(resource, 0.0) + amount
    problem = missing_on_local(pools, total, where)
    for name, pool in pools.items():  # enough in all, but one actor's resources must be on one node
        if not problem and pool.resources() and all(missing_on_local({name: pool}, node, where) for node in nodes):
            wanted = ", ".join(f"{k}={v:g}" for k, v in pool.resources().items())
            problem = f"pool {name!r} asks for {wanted} per actor but no single node of {where} has that much"
    if problem:
        short = next((k for k in ("accelerator_type", "GPU") if k in problem), "CPU")
        return f"{problem}; {fixes[short]}"
    cpus, reserved = total.get("CPU", 0.0), reserved_cpus(pools)
    if spare_cpu and cpus - reserved < 1:
        return (f"the actor pools can reserve {reserved:g} of the {cpus:g} CPUs of {where}, leaving less than the 1 "
                f"CPU that read/repartition/write tasks need (the run would stall); {fixes['CPU']}")
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
