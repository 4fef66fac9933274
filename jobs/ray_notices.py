"""Ray's warnings a user must see while a run works: picked out of what Ray logs (which goes to the run's log file,
jobs/progress.py `run_output`) and said once on the terminal, in one line that says what to change."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator

from imagefleet.pipelines.pools import Pool

STARVED = "Cluster resources are not enough to run any task"
"""Ray Data's warning (ray/data/_internal/execution/resource_manager.py) when a stage has had no resources for
RAY_DATA_STARVATION_WARNING_DELAY_S (60 s by default): "... The job may hang forever unless the cluster scales up"."""
STARVED_LOGGER = "ray.data._internal.execution.resource_manager"
"""Where Ray Data logs it. Its parent `ray.data` gets its handlers replaced whenever Ray Data configures logging,
this one never."""
FIX = ("lower the pools' max_size / num_cpus / num_gpus, or give the cluster more (cluster.num_cpus / num_gpus "
       "for a local Ray, nodes for a joined cluster)")


def starved_line(message: str, pools: dict[str, Pool], total: dict[str, float], free: dict[str, float]) -> str:
    """The terminal's line for Ray Data's STARVED `message`: which stage waits, what the pools ask for against what
    the cluster has (`total`, `free`: Ray's resources now) and what to change."""
    found = re.search(r"run any task from (.+?)\. ", message + " ")
    stage = found.group(1) if found else "a stage"
    short = []
    for resource in sorted({r for pool in pools.values() for r in pool.resources()}):
        asks = [(name, pool.max_size, pool.resources()[resource]) for name, pool in sorted(pools.items())
                if resource in pool.resources()]
        wanted = sum(n * each for _, n, each in asks) + (1.0 if resource == "CPU" else 0.0)
        if wanted > total.get(resource, 0.0) + 1e-9:
            who = ", ".join(f"{name} {n} x {each:g}" for name, n, each in asks)
            tasks = " + 1 for Ray Data's read/write tasks" if resource == "CPU" else ""
            short.append(f"the pools ask for {wanted:g} {resource} at their max_size ({who}{tasks}) but the "
                         f"cluster has {total.get(resource, 0.0):g}")
    busy = ", ".join(f"{total[r] - free.get(r, 0.0):g} of {total[r]:g} {r}" for r in ("CPU", "GPU") if total.get(r))
    why = "; ".join(short) or f"in use now: {busy or 'nothing'}"
    return (f"imagefleet: warning: Ray Data has no resources to run any task of {stage} (Ray: the run may hang "
            f"unless the cluster grows; it passes if actor pools are only slow to start): {why}; {FIX}")


def explain_starved(pools: dict[str, Pool]) -> Callable[[str], str]:
    """`starved_line` with the connected Ray cluster's resources at the moment Ray warns."""

    def explain(message: str) -> str:
        import ray

        total = {k: float(v) for k, v in ray.cluster_resources().items()}
        return starved_line(message, pools, total, {k: float(v) for k, v in ray.available_resources().items()})

    return explain


class StarvedNotice(logging.Handler):
    """Hands Ray Data's STARVED warning to `say` once, as the one line `explain` makes of it."""

    def __init__(self, say: Callable[[str], None], explain: Callable[[str], str]) -> None:
        super().__init__(logging.WARNING)
        self.say, self.explain, self.said = say, explain, False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if self.said or STARVED not in message:
                return
            self.said = True
            self.say(self.explain(message))
        except Exception:  # noqa: BLE001 - a notice never breaks Ray's scheduling thread, which logged it
            self.handleError(record)


@contextlib.contextmanager
def starved_notice(say: Callable[[str], None], explain: Callable[[str], str]) -> Iterator[StarvedNotice]:
    """While the block runs, Ray Data's STARVED warning also reaches `say` (once)."""
    logger = logging.getLogger(STARVED_LOGGER)
    handler = StarvedNotice(say, explain)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
