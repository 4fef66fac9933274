"""Live counts of a running job: each batch the image writer finishes adds its tally to a small actor the driver
polls (`post_written`, handed to the writer's actors by the graph); a run without Ray (pipelines/in_process.py)
keeps the same board as a plain object in the driver.

The counts are for display only (a retried writer call may count its rows twice until the commit); the run's
summary is always computed from the committed manifest. How the counts are shown is the jobs layer's business
(jobs/progress.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from imagefleet.actors.gain_model import PREDICTED

logger = logging.getLogger(__name__)

# per-generator counters a manifest batch adds (cost is this run's spend: images an earlier run made cost nothing)
COUNTERS = ("done", "new", "present", "error", "refused", "skipped", "escalated", "predicted", "cost_usd")


TALLIED = ("status", "already_present", "route", "cost_usd", "generator")
"""The columns `tally` reads (as the manifest types them)."""


def tally(table: Any) -> dict[str, dict[str, float]]:
    """Counters of one batch of manifest rows (a pyarrow Table with at least the TALLIED columns), by generator."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return {}
    present = pc.fill_null(table.column("already_present"), False)
    status = table.column("status")
    ok = pc.fill_null(pc.equal(status, "ok"), False)
    flags = {
        "done": pc.is_valid(status),
        "new": pc.and_(ok, pc.invert(present)),
        "present": pc.and_(ok, present),
        "error": pc.fill_null(pc.equal(status, "error"), False),
        "refused": pc.fill_null(pc.equal(status, "refused"), False),
        "skipped": pc.fill_null(pc.equal(status, "skipped"), False),
        # escalated, whether the row ended as its heavy image or kept its better draft (`escalated_kept_draft`)
        "escalated": pc.fill_null(pc.starts_with(table.column("route"), "escalated"), False),
        # sent straight to the heavy generator by predictive routing (`routing.cascade.predict`)
        "predicted": pc.fill_null(pc.equal(table.column("route"), PREDICTED), False),
    }
    spent = pc.if_else(present, 0.0, pc.fill_null(table.column("cost_usd"), 0.0))
    out: dict[str, dict[str, float]] = {}
    generators = pc.fill_null(table.column("generator"), "")
    for name in pc.unique(generators).to_pylist():
        mine = pc.equal(generators, name)
        counts = {key: float(pc.sum(pc.and_(mine, flag)).as_py() or 0) for key, flag in flags.items()}
        counts["cost_usd"] = float(pc.sum(pc.filter(spent, mine)).as_py() or 0.0)
        out[str(name) or "-"] = counts
    return out


class ProgressBoard:
    """The run's counters: a Ray actor owned by the driver (it ends with the run), or a plain object in the driver
    when the run has no Ray (the display reads it from another thread, hence the lock)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, float]] = {}
        self.stages: dict[str, float] = {}
        self.actors: dict[str, list[int]] = {}  # pool → [loading, ready]
        self.first_at = 0.0
        self.lock = threading.Lock()

    def add_stage(self, stage: str, rows: int) -> None:
        """Rows a stage's actor finished (every stage but the writer, whose rows `add` counts by generator)."""
        with self.lock:
            self.stages[stage] = self.stages.get(stage, 0.0) + rows

    def actor_state(self, stage: str, loading: int, ready: int) -> None:
        """A stage's actor began loading (+1, 0), finished loading (-1, +1) or failed to load (-1, 0)."""
        with self.lock:
            mine = self.actors.setdefault(stage, [0, 0])
            mine[0], mine[1] = max(mine[0] + loading, 0), mine[1] + ready

    def add(self, counts: dict[str, dict[str, float]]) -> None:
        with self.lock:
            if counts and not self.first_at:
                self.first_at = time.time()
            for generator, values in counts.items():
                mine = self.counts.setdefault(generator, dict.fromkeys(COUNTERS, 0.0))
                for key, value in values.items():
                    mine[key] = mine.get(key, 0.0) + value

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"counts": {g: dict(c) for g, c in self.counts.items()}, "first_at": self.first_at,
                    "stages": dict(self.stages), "actors": {k: tuple(v) for k, v in self.actors.items()}}


@dataclass(frozen=True)
class Snapshot:
    """What the display shows at one moment."""

    at: float
    total: int
    by_generator: dict[str, dict[str, float]] = field(default_factory=dict)
    first_at: float = 0.0
    """When the first manifest row arrived (0: none yet)."""
    stages: dict[str, float] = field(default_factory=dict)
    """Rows each stage before the writer has finished, by the plan's pool name (`preprocess`, `generate:draft`,
    `score`, `escalate`...): work under way before any image is written. A preprocessed row can become several
    images (num_images, templates, variants), so a later stage can count more rows than the table has."""
    actors: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Each pool's actors (loading, ready): loading = constructors running (a model loading), ready = constructors
    finished (an actor Ray Data later retires while scaling down still counts)."""

    def sum(self, key: str) -> float:
        return sum(c.get(key, 0.0) for c in self.by_generator.values())

    @property
    def done(self) -> int:
        return min(int(self.sum("done")), self.total) if self.total else int(self.sum("done"))


def start_board() -> Any:
    """The run's board actor (0 CPU); None when it can't start (the run goes on without live counts)."""
    import ray

    try:
        return ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard).remote()
    except Exception as exc:  # noqa: BLE001 - progress is a display; never a reason to fail a run
        logger.warning("live progress unavailable: %s", exc)
        return None


def stop_board(board: Any) -> None:
    """End the board with its run (a Ray session that outlives the run — a notebook, a test session, a pipeline
    step — would otherwise keep one idle worker process per run)."""
    if board is None or isinstance(board, ProgressBoard):
        return
    import ray

    try:
        ray.kill(board)
    except Exception as exc:  # noqa: BLE001 - already gone with its Ray
        logger.debug("progress board not stopped: %s", exc)


def post_written(board: Any, batch: dict[str, Any]) -> None:
    """Add the counts of a batch the image writer finished (its output, numpy columns) to the board: fire and
    forget, in the writer's process (a lost update only delays the display). A column the run has no stage for
    (`route` without a cascade) counts as null."""
    if board is None:
        return
    try:
        import pyarrow as pa

        from imagefleet.pipelines.schema import MANIFEST

        n = len(batch["status"])
        table = pa.table({c: pa.array(batch[c], MANIFEST.field(c).type) if c in batch
                          else pa.nulls(n, MANIFEST.field(c).type) for c in TALLIED})
        counts = tally(table)
        if counts:
            _post(board, "add", counts)
    except Exception as exc:  # noqa: BLE001 - never fail a write for a display
        logger.debug("progress update lost: %s", exc)


def read_board(board: Any, total: int, timeout_s: float = 5.0) -> Snapshot | None:
    """The board's counters now (None when it doesn't answer in time)."""
    if isinstance(board, ProgressBoard):
        raw = board.snapshot()
    else:
        import ray

        try:
            raw = ray.get(board.snapshot.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a slow or gone board: skip this refresh
            return None
    return Snapshot(at=time.time(), total=total, by_generator=raw["counts"], first_at=raw["first_at"],
                    stages=raw.get("stages", {}), actors={k: (int(v[0]), int(v[1]))
                                                          for k, v in raw.get("actors", {}).items()})


def counted(actor: type, board: Any, stage: str, rows: bool = True) -> type:
    """`actor` reporting to the board: its constructor's start and end (the pool's actors loading and ready) and,
    with `rows`, every finished call's rows as `stage`'s count (fire and forget). The class keeps its name: Ray
    Data names the stage's operator after it (logs, resource warnings)."""
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        _post_quietly(board, "actor_state", stage, 1, 0)
        try:
            actor.__init__(self, *args, **kwargs)  # type: ignore[misc]
        except BaseException:
            _post_quietly(board, "actor_state", stage, -1, 0)
            raise
        _post_quietly(board, "actor_state", stage, -1, 1)

    def call(self: Any, batch: Any) -> Any:
        out = actor.__call__(self, batch)
        if rows:
            post_stage(board, stage, out)
        return out

    # a qualname nothing can import: cloudpickle ships the class by value to the pool's workers
    return type(actor.__name__, (actor,), {"__init__": init, "__call__": call, "__doc__": actor.__doc__,
                                           "__qualname__": f"counted.<locals>.{actor.__name__}"})


def post_stage(board: Any, stage: str, out: Any) -> None:
    """Add the rows of a stage's output batch (numpy columns or an Arrow table) to the board; never raises."""
    if board is None:
        return
    try:
        rows = int(out.num_rows) if hasattr(out, "num_rows") else len(next(iter(out.values()))) if out else 0
        _post(board, "add_stage", stage, rows)
    except Exception as exc:  # noqa: BLE001 - never fail a stage for a display
        logger.debug("progress update lost: %s", exc)


def _post_quietly(board: Any, method: str, *args: Any) -> None:
    """`_post` for a display update: no board, or a board that fails, is nothing to fail an actor for."""
    if board is None:
        return
    try:
        _post(board, method, *args)
    except Exception as exc:  # noqa: BLE001 - a display
        logger.debug("progress update lost: %s", exc)


def _post(board: Any, method: str, *args: Any) -> None:
    """Call a board method: directly on the driver's plain board, fire and forget on the board actor."""
    if isinstance(board, ProgressBoard):
        getattr(board, method)(*args)
    else:
        getattr(board, method).remote(*args)
