"""Pools: where and how many copies of a stage's actor run — the one place that spells Ray resources."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from imagefleet.configs.generator_base import PoolConfig
from imagefleet.configs.scorer import ScorerPoolConfig
from imagefleet.configs.serve import ServeConfig
from imagefleet.configs.writer import WriterPoolConfig

logger = logging.getLogger(__name__)

GATEWAY_CPUS = 0.1


@dataclass(frozen=True)
class Pool:
    """An autoscaled actor pool: sizes, per-actor resources and rows per call."""

    min_size: int
    max_size: int
    initial_size: int
    num_cpus: float
    batch_size: int
    num_gpus: float = 0.0
    accelerator_type: str = ""
    concurrency: int = 1
    """Calls one actor runs at once (threads): hosted batch mode waits on many provider batches per actor."""

    def resources(self) -> dict[str, float]:
        """What one actor asks Ray for (accelerator types are custom resources `accelerator_type:<T>`)."""
        out = {"CPU": self.num_cpus, "GPU": self.num_gpus}
        if self.accelerator_type:
            out[f"accelerator_type:{self.accelerator_type}"] = 0.001
        return {k: v for k, v in out.items() if v > 0}


def reserved_cpus(pools: dict[str, Pool]) -> float:
    """CPUs the pools hold at their maximum size."""
    return sum(p.max_size * p.num_cpus for p in pools.values())


def generator_pool(pool: PoolConfig, concurrency: int = 1) -> Pool:
    """Autoscaled GPU (or CPU) pool for one generator, as its config says."""
    return Pool(min_size=pool.min_size, max_size=pool.max_size, initial_size=pool.initial_size,
                num_cpus=pool.num_cpus, batch_size=pool.batch_size, num_gpus=pool.num_gpus,
                accelerator_type=pool.accelerator_type, concurrency=concurrency)


def writer_pool(pool: WriterPoolConfig) -> Pool:
    """CPU pool for encode + upload (kept out of the GPU actors)."""
    return Pool(min_size=pool.min_size, max_size=pool.max_size, initial_size=pool.min_size,
                num_cpus=pool.num_cpus, batch_size=pool.batch_size)


def scorer_pool(pool: ScorerPoolConfig) -> Pool:
    """Scorer pool (CLIP is small: a GPU fraction or CPUs)."""
    return Pool(min_size=pool.min_size, max_size=pool.max_size, initial_size=pool.min_size,
                num_cpus=pool.num_cpus, batch_size=pool.batch_size, num_gpus=pool.num_gpus)


# Preprocessing is string work (~40k rows/s an actor on a first run, ~20k on a rerun where every row is found):
# a light pool that grows under load. What is counted over the whole run (the budget, the resume index) is kept
# by one ledger actor the pool shares (actors/run_ledger.py, `start_shared`), so any number of them stays exact.
PREPROCESS_POOL = Pool(min_size=1, max_size=4, initial_size=1, num_cpus=0.25, batch_size=4096)
CPUS_PER_GROWING_ACTOR = 8
"""On a local Ray: at most one actor of a pool that grows (the preprocessors, the cascade's decisions) per this many
of its CPUs (at least one), so a machine of a few cores keeps the CPU Ray Data's own tasks need (`jobs.preflight`:
pools at their largest leave one)."""
# Input images are read, decoded once and hashed: I/O and some CPU per row, so a small pool that grows.
INPUT_READER_POOL = Pool(min_size=1, max_size=2, initial_size=1, num_cpus=0.5, batch_size=64)
# The cascade's per-row decisions (redraw or keep the best draft, keep the better of draft and heavy, escalate by an
# uncapped threshold or by a cutoff decided over the whole run): no count across rows, so a pool that grows.
DECISION_POOL = Pool(min_size=1, max_size=4, initial_size=1, num_cpus=0.1, batch_size=256)


def start_shared(shared: dict[str, tuple[type, dict[str, Any]]]) -> dict[str, Any]:
    """One actor of each class a stage's pool shares (`Stage.shared`: argument name → (class, its constructor
    arguments)), started now; their handles by argument name. 0 CPU, like the run's progress board: Ray Data
    sizes its pools from the cluster's CPUs and doesn't see this actor. Never restarted: a restarted ledger would
    have lost its count, so the run fails instead."""
    if not shared:
        return {}
    import ray

    handles: dict[str, Any] = {name: ray.remote(num_cpus=0, max_restarts=0)(actor).remote(**kwargs)
                                for name, (actor, kwargs) in shared.items()}
    _SHARED.extend(handles.values())
    return handles


_SHARED: list[Any] = []
"""The shared actors started in this process and not yet stopped (`stop_shared`)."""


def stop_shared() -> int:
    """End every shared actor this process started (a run's ledger holds its whole resume index: in a notebook
    or a pipeline step that outlives the run it would stay until Ray's references to the Dataset are collected).
    Call once the run's Dataset is consumed. Returns how many were stopped."""
    import ray

    stopped = 0
    while _SHARED:
        handle = _SHARED.pop()
        try:
            ray.kill(handle)
            stopped += 1
        except Exception as exc:  # noqa: BLE001 - already gone with its Ray
            logger.debug("shared actor not stopped: %s", exc)
    return stopped


def map_batches_kwargs(pool: Pool) -> dict[str, Any]:
    """`Dataset.map_batches` arguments for an actor pool.

    Ray Data's defaults are kept on purpose: a dead actor is recreated and its task retried (preemption, OOM
    kill), while an actor whose __init__ keeps failing (broken model) fails the run after
    DataContext.max_consecutive_actor_init_deaths.
    """
    from ray.data import ActorPoolStrategy

    concurrent: dict[str, Any] = {}
    if pool.concurrency > 1:  # threaded actor: that many calls at once. Ray Data queues twice that per actor; the
        # queue is what grows the pool (it scales up at 1.75 tasks per call slot), so it is left at its default
        concurrent = {"max_concurrent_calls_per_actor": pool.concurrency, "enable_true_multi_threading": True}
    kwargs: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size, initial_size=pool.initial_size,
                                     **concurrent),
        "batch_size": pool.batch_size,
        "num_cpus": pool.num_cpus,
    }
    if pool.num_gpus > 0:
        kwargs["num_gpus"] = pool.num_gpus
    if pool.accelerator_type:
        kwargs["accelerator_type"] = pool.accelerator_type
    return kwargs


def autoscaling(current: Any, shrink: str) -> Any:
    """Ray Data's `AutoscalingConfig` for one run, from `cluster.pools_shrink`: `at_stage_end` never shrinks a pool
    for low utilization (Ray Data still releases a pool's actors once its stage has consumed all its input, and
    still shrinks one over its resource budget); `when_idle` keeps Ray Data's rule (shrink under half busy)."""
    if shrink == "when_idle":
        return current
    return replace(current, actor_pool_util_downscaling_threshold=-1.0)


def shard_writer_kwargs(num_cpus: float) -> dict[str, Any]:
    """WebDataset shards: plain tasks, one per shard (nothing to load, so no actors to keep warm)."""
    return {"num_cpus": num_cpus}


def serve_generator_options(pool: Pool, serve: ServeConfig) -> dict[str, Any]:
    """Serve deployment options for one generator: replicas autoscale within the pool's min..max size."""
    actor_options: dict[str, Any] = {"num_cpus": pool.num_cpus}
    if pool.num_gpus > 0:
        actor_options["num_gpus"] = pool.num_gpus
    if pool.accelerator_type:
        actor_options["accelerator_type"] = pool.accelerator_type
    return {
        "ray_actor_options": actor_options,
        "autoscaling_config": {
            "min_replicas": pool.min_size,
            "max_replicas": pool.max_size,
            "initial_replicas": pool.initial_size,
            "target_ongoing_requests": serve.target_ongoing_requests,
        },
        # a replica must accept a full batch (plus the next one filling up) or @serve.batch never fills
        "max_ongoing_requests": max(2 * pool.batch_size, int(2 * serve.target_ongoing_requests)),
        "max_queued_requests": serve.max_queued_requests,
    }


def serve_gateway_options() -> dict[str, Any]:
    """One light async gateway replica: it only parses requests and awaits the generators."""
    return {"num_replicas": 1, "ray_actor_options": {"num_cpus": GATEWAY_CPUS}, "max_ongoing_requests": 1000}


def missing_on_local(pools: dict[str, Pool], have: dict[str, float], where: str = "this local Ray") -> str:
    """Why one actor of some pool can never be placed on a fixed cluster (`where`: a local one, or a joined one
    without an autoscaler) with `have` resources ('' = fine).

    Ray waits forever for resources no node has (an `accelerator_type` nobody provides, more GPUs than exist),
    so a run checks before starting any pool.
    """
    for name, pool in pools.items():
        for resource, amount in pool.resources().items():
            if have.get(resource, 0.0) < amount:
                if ":" in resource:
                    return (f"pool {name!r} asks for accelerator_type {resource.split(':', 1)[1]} but no node of "
                            f"{where} has one")
                return (f"pool {name!r} asks for {amount:g} {resource} per actor but {where} has "
                        f"{have.get(resource, 0.0):g}")
    return ""


def unplaceable(pools: dict[str, Pool], timeout_s: float) -> str:
    """Ask Ray to reserve one actor's resources for each pool; the first pool not placed within `timeout_s`
    ('' = all placed). On an autoscaling cluster the reservation itself is the demand that adds nodes."""
    import time

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    deadline = time.monotonic() + timeout_s  # one wait for all pools: they are placed concurrently
    groups = {name: placement_group([pool.resources()]) for name, pool in pools.items() if pool.resources()}
    try:
        for name, group in groups.items():
            try:
                ray.get(group.ready(), timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                wanted = ", ".join(f"{k}={v:g}" for k, v in pools[name].resources().items())
                return (f"pool {name!r} could not get {wanted} for one actor within cluster.startup_timeout_s="
                        f"{timeout_s:g}s; check the cluster has (or can autoscale to) such a node")
        return ""
    finally:
        for group in groups.values():
            remove_placement_group(group)
