"""What every stage actor declares: the columns it reads and writes (and, for backends, its config class)."""

from __future__ import annotations

import sys
from typing import Any, Protocol


def ray_running() -> bool:
    """This process is part of a Ray session (a Ray actor, or a driver that called ray.init): checked without
    importing Ray, which a run in process (pipelines/in_process.py) never needs. Actors know nothing of Ray
    otherwise; the hosted ones share their limiter and ledger through it only when it is there."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


class StageActor(Protocol):
    """An actor class usable as a plan stage; `Plan.check` follows these declarations before anything runs."""

    INPUT_COLUMNS: dict[str, str]
    """Columns it needs from earlier stages (name → what it uses them for)."""
    OUTPUT_COLUMNS: dict[str, str]
    """Columns it adds or rewrites."""


class BackendActor(StageActor, Protocol):
    """A generator or scorer backend: built from one config class, found through that config's tag."""

    CONFIG: Any
    """The pydantic config class it is built from (a member of the backend union)."""


class ScorerActor(BackendActor, Protocol):
    """A scorer backend: it can say on the driver, before any work, why its model won't load."""

    @staticmethod
    def check_model(cfg: Any) -> str:
        """'' when the configured model can be loaded (as far as can be told without loading it)."""
