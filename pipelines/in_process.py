"""The run without Ray: every stage of the plan in this process, one instance each, rows streamed through in order.

A job that fits in one batch of each generator gains nothing from actor pools, and starting them is most of its
time: a local Ray, a worker process per actor, and each importing torch and diffusers again (on a 2-core machine
a one-prompt job's first image came ~13 s after the bare model's; BENCHMARKS.md, time to first image). Here the
same stages run in the driver:

    read pieces (pipelines.prompt_table) → stage 1 → … → writer → manifest parts (pipelines.manifest)

with the same actor classes, constructor arguments, rows per call and batch formats as the Ray graph
(`text_to_image.build`), so a run makes the same manifest row for row either way (tests/integration/
test_in_process.py runs one job both ways). Batches pass between stages as they are (a table after an Arrow
stage, numpy columns after a numpy one) and are converted only where the next stage takes the other format, the
way Ray Data converts them.

`cluster.executor: auto` picks this for a job of at most one generator batch on a private local cluster, unless it
exports WebDataset shards (a Ray Data job). Stages' run services (`start_run`) are not started: each stage has
one actor here, which keeps its rate limits and spend itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from imagefleet.actors.manifest_schema import PRIOR
from imagefleet.actors.pass_through import PASS_THROUGH
from imagefleet.pipelines.plan import Plan, PlanError, Stage, decide_over_run

if TYPE_CHECKING:
    import pyarrow as pa

    from imagefleet.configs.job import JobConfig
    from imagefleet.pipelines.plan import Stores
    from imagefleet.pipelines.text_to_image import SourceInfo

IN_PROCESS = "in_process"
RAY = "ray"


class StageFailed(RuntimeError):
    """A stage's actor raised (a broken actor ends the run, as on Ray, where Ray wraps it the same way): the
    message names the stage and the actor's error, the cause is chained."""

    @classmethod
    def of(cls, stage: Stage, doing: str, exc: Exception) -> StageFailed:
        return cls(f"stage {stage.name} ({stage.actor.__name__}) failed {doing}: {type(exc).__name__}: {exc}")


def needs_ray(cfg: JobConfig) -> str:
    """Why this job can only run on Ray ('' when it can run in process).

    Run services (`start_run`: hosted rate limiters and the spend ledger) are not: they are shared by a pool's
    actors through Ray, and in process the stage's one actor keeps them itself (actors.hosted: a local limiter
    and ledger when the process has no Ray)."""
    if cfg.output.webdataset.enabled:
        return "output.webdataset is exported by a Ray Data job"
    return ""


def choose_executor(cfg: JobConfig, plan: Plan, expected_rows: int, ray_running: bool) -> tuple[str, str]:
    """(`ray` or `in_process`, why) for this run; PlanError when `in_process` was asked for and can't be.

    Args:
        cfg: the job config (`cluster.executor`, `cluster.address`).
        plan: the run's plan.
        expected_rows: manifest rows the run makes.
        ray_running: Ray is already initialised in this process (a Ray job, a notebook): its cluster is used.
    """
    wanted = cfg.cluster.executor
    blocker = needs_ray(cfg)
    if wanted == RAY:
        return RAY, "cluster.executor: ray"
    if wanted == IN_PROCESS:
        if blocker:
            raise PlanError(f"cluster.executor: in_process can't run this job: {blocker}; use ray or auto")
        return IN_PROCESS, "cluster.executor: in_process"
    if cfg.cluster.address != "local":
        return RAY, f"cluster.address: {cfg.cluster.address}"
    if ray_running:
        return RAY, "Ray is already running in this process"
    if blocker:
        return RAY, blocker
    batch = min((s.pool.batch_size for s in plan.generator_stages()), default=0)
    if expected_rows > batch:
        return RAY, f"{expected_rows} images are more than one generator batch ({batch}): actor pools"
    return IN_PROCESS, f"{expected_rows} image(s) fit one generator batch ({batch}): no pools to start"


def stream(cfg: JobConfig, stores: Stores, source: SourceInfo, plan: Plan, board: Any = None) -> Iterator[pa.Table]:
    """Run every stage of `plan` here over the prompt table; yields what the last stage (the writer) returns, as
    Arrow tables with the columns the manifest step reads.

    Args:
        cfg: the job config.
        stores: resolved store connections.
        source: the inspected source (files, row groups).
        plan: the run's plan (`text_to_image.plan_run`).
        board: the run's progress board (a plain `ProgressBoard` here), told about every batch the writer
            finishes, as `build` does; None: none.
    """
    from imagefleet.pipelines.prompt_table import read_piece
    from imagefleet.pipelines.text_to_image import source_pieces

    fs, parts = source_pieces(cfg, stores, source)
    yield from execute(plan, (read_piece(p, plan.source_columns, fs, source.types) for p in parts), board)


def execute(plan: Plan, blocks: Iterable[Any], board: Any = None) -> Iterator[pa.Table]:
    """The stages of `plan` over `blocks` (Arrow tables), in this process: each stage's actor is made once, in
    order, before the first row is read (a broken model fails the run before any work, as a pool's first actor
    would); what the last stage returns comes out as Arrow tables of the manifest step's columns."""
    from imagefleet.pipelines.text_to_image import constructor_kwargs, stage_actor

    actors: list[Any] = []
    try:
        batches: Iterable[Any] = blocks
        for stage in plan.stages:
            if stage.run_columns:  # decided over the whole run: its actor is made once every row got here
                batches = _decided(plan, stage, board, batches, actors)
                continue
            try:
                actors.append(stage_actor(plan, stage, board)(**constructor_kwargs(plan, stage, board)))
            except Exception as exc:
                raise StageFailed.of(stage, "to start", exc) from exc
            batches = _calls(stage, actors[-1], batches)
        for batch in batches:
            yield manifest_table(batch)
    finally:
        for actor in actors:
            close = getattr(actor, "close", None)
            if close is not None:
                close()


def _decided(plan: Plan, stage: Stage, board: Any, batches: Iterable[Any], actors: list[Any]) -> Iterator[Any]:
    """A stage decided over the whole run: every batch of the earlier stages first (held here), then its actor,
    built with what `over_run` made of `run_columns` of every row, over them."""
    from imagefleet.pipelines.text_to_image import constructor_kwargs, stage_actor

    held = [_as_format(b, "numpy", stage.name) for b in batches]
    view = {c: [v for b in held for v in b[c]] for c in stage.run_columns}
    try:
        decided = decide_over_run(stage, view)
        actors.append(stage_actor(plan, stage, board)(**constructor_kwargs(plan, stage, board), **decided))
    except Exception as exc:
        raise StageFailed.of(stage, "to start", exc) from exc
    yield from _calls(stage, actors[-1], held)


def _calls(stage: Stage, actor: Any, batches: Iterable[Any]) -> Iterator[Any]:
    """`actor` over `batches`, in calls of the stage's rows per call, each in the stage's batch format."""
    size = stage.call_rows or stage.pool.batch_size
    for batch in batches:
        n = _num_rows(batch)
        for start in range(0, n, size):
            part = _slice(batch, start, size) if n > size else batch
            try:
                out = actor(_as_format(part, stage.batch_format, stage.name))
            except Exception as exc:
                raise StageFailed.of(stage, "on a batch", exc) from exc
            yield out


def _num_rows(batch: Any) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values()))) if batch else 0
    return int(batch.num_rows)


def _slice(batch: Any, start: int, size: int) -> Any:
    if isinstance(batch, dict):
        return {k: v[start:start + size] for k, v in batch.items()}
    return batch.slice(start, size)


def _as_format(batch: Any, fmt: str, stage: str) -> Any:
    """`batch` as a stage taking `fmt` gets it from Ray Data: Arrow tables as they are, numpy columns from Arrow as
    Ray converts them (strings and lists as object arrays, an all-null column as float32 NaN)."""
    import numpy as np
    import pyarrow as pa

    if fmt == "pyarrow":
        return batch if isinstance(batch, pa.Table) else pa.table({k: _arrow(v, k) for k, v in batch.items()})
    if fmt != "numpy":
        raise PlanError(f"stage {stage!r}: batch format {fmt!r} can't run in process (numpy or pyarrow)")
    if isinstance(batch, dict):
        return batch
    out = {}
    for name in batch.column_names:
        column = batch.column(name).combine_chunks()
        out[name] = (np.full(len(column), np.nan, dtype=np.float32) if pa.types.is_null(column.type)
                     else column.to_numpy(zero_copy_only=False))
    return out


def manifest_table(batch: Any) -> pa.Table:
    """The last stage's output as an Arrow table of the columns the manifest step reads (its MANIFEST columns, an
    earlier run's PRIOR and the row's PASS_THROUGH values): pixels and other pipeline-internal columns never leave
    the writer."""
    import pyarrow as pa

    from imagefleet.pipelines.schema import MANIFEST

    if isinstance(batch, pa.Table):
        return batch
    wanted = set(MANIFEST.names)
    return pa.table({k: _arrow(v, k) for k, v in batch.items() if k in wanted or k in (PRIOR, PASS_THROUGH)})


def _arrow(values: Any, name: str) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    if isinstance(values, np.ndarray) and values.ndim > 1:
        raise PlanError(f"column {name!r} holds {values.ndim}-d arrays; an Arrow stage can't take it in process")
    if isinstance(values, np.ndarray) and values.dtype != object:
        return pa.array(values)
    return pa.array(list(values))
