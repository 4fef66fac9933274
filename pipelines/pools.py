"""Pool configs → `map_batches` keyword arguments (the one place that spells Ray resources)."""

from __future__ import annotations

from typing import Any

from configs.generator import PoolConfig
from configs.scorer import ScorerPoolConfig
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
