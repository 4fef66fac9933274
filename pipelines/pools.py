"""Pool configs → `map_batches` keyword arguments (the one place that spells Ray resources)."""

from __future__ import annotations

from typing import Any

from configs.generator import PoolConfig
from configs.scorer import ScorerPoolConfig
from configs.serve import ServeConfig
from configs.writer import WriterPoolConfig

PREPROCESS_CPUS = 0.25
ESCALATOR_CPUS = 0.1


def generator_pool_kwargs(pool: PoolConfig) -> dict[str, Any]:
    """Autoscaled GPU (or CPU) actor pool for one generator."""
    from ray.data import ActorPoolStrategy

    kwargs: dict[str, Any] = {
        "compute": ActorPoolStrategy(
            min_size=pool.min_size, max_size=pool.max_size, initial_size=pool.initial_size
        ),
        "batch_size": pool.batch_size,
        # Ray Data's defaults are kept on purpose: a dead actor is recreated and its task retried
        # (preemption, OOM kill), while an actor whose __init__ keeps failing (broken model) fails the run
        # after DataContext.max_consecutive_actor_init_deaths.
        "num_cpus": pool.num_cpus,
    }
    if pool.num_gpus > 0:
        kwargs["num_gpus"] = pool.num_gpus
    if pool.accelerator_type:
        kwargs["accelerator_type"] = pool.accelerator_type
    return kwargs


def writer_pool_kwargs(pool: WriterPoolConfig) -> dict[str, Any]:
    """CPU actor pool for encode + upload."""
    from ray.data import ActorPoolStrategy

    return {
        "compute": ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        "batch_size": pool.batch_size,
        "num_cpus": pool.num_cpus,
    }


def preprocess_pool_kwargs() -> dict[str, Any]:
    """One light CPU actor: preprocessing is cheap string work (~1e5 rows/s), and a single actor makes the
    run budget an exact global count."""
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=1), "num_cpus": PREPROCESS_CPUS, "batch_size": 4096}


def scorer_pool_kwargs(pool: ScorerPoolConfig) -> dict[str, Any]:
    """Scorer pool (CLIP is small: a GPU fraction or CPUs)."""
    from ray.data import ActorPoolStrategy

    kwargs: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        "batch_size": pool.batch_size,
        "num_cpus": pool.num_cpus,
    }
    if pool.num_gpus > 0:
        kwargs["num_gpus"] = pool.num_gpus
    return kwargs


def escalator_pool_kwargs() -> dict[str, Any]:
    """Exactly one actor: the escalation cap is a global count."""
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=1), "num_cpus": ESCALATOR_CPUS, "batch_size": 256}


GATEWAY_CPUS = 0.1


def shard_writer_kwargs(num_cpus: float) -> dict[str, Any]:
    """WebDataset shards: plain tasks, one per shard (nothing to load, so no actors to keep warm)."""
    return {"num_cpus": num_cpus}


def serve_generator_options(pool: PoolConfig, serve: ServeConfig) -> dict[str, Any]:
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
