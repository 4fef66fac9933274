"""imagefleet as a Ray Data processor: a user's own `ray.data.Dataset` through the same stages a batch run uses.

    user's Dataset (any columns; prompt and per-row fields named as in `source`)
      └─► select the columns the run reads ─► preprocess ─► generator/scorer pools ─► image writer
            └─► manifest rows (typed as the committed manifest; the user's columns after them)

`process` is lazy, like `ray.data.llm`'s processors: nothing runs until the result is consumed, and what it returns
composes with the user's own steps. Images are stored exactly once whichever way it is used: keys are content
hashes, objects are written put-if-absent with a record beside them, and the preprocessor loads what the output
already holds (committed manifest and records), so consuming the result twice, or a second processor over the
same rows, makes nothing again. `commit` is the batch run's ending for a processor: it owns the output (lease),
stages the manifest parts and makes them current in one step, as `imagefleet run` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagefleet.configs.job import JobConfig
from imagefleet.pipelines.plan import Plan, Stores, consumed_again, make_plan
from imagefleet.pipelines.schema import input_problems, pass_through_columns, pass_through_schema
from imagefleet.pipelines.text_to_image import InputError, _input_columns, apply_stages, images_asked

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from imagefleet.actors.storage import ObjectStore
    from imagefleet.pipelines.manifest import RunSummary


@dataclass(frozen=True)
class Prepared:
    """What a user's Dataset holds for a run: the columns read, the plan over them, the pass-through columns."""

    columns: list[str]
    plan: Plan
    pass_through: pa.Schema


def dataset_schema(ds: ray.data.Dataset) -> pa.Schema:
    """The Arrow schema of a Dataset (Ray may run its first block to learn it). Raises InputError."""
    import pyarrow as pa

    found = ds.schema()
    if found is None:
        raise InputError("the dataset has no rows or no schema: give the processor a Dataset with a prompt column")
    base = getattr(found, "base_schema", found)
    if isinstance(base, pa.Schema):
        return base
    try:
        return pa.schema([(n, t if isinstance(t, pa.DataType) else pa.from_numpy_dtype(t))
                          for n, t in zip(found.names, found.types, strict=True)])
    except (TypeError, pa.ArrowException) as exc:
        raise InputError(f"the dataset's columns are not Arrow types ({exc}): map it to Arrow batches first, e.g. "
                         f"ds.map_batches(fn, batch_format='pyarrow')") from exc


def prepare(ds: ray.data.Dataset, cfg: JobConfig, stores: Stores, num_rows: int = 0) -> Prepared:
    """Check the Dataset's columns against `cfg.source` (as a prompt table's are checked) and plan the run.

    Args:
        num_rows: rows the Dataset holds, if known (sizes the blocks fed to the generator pools: 0 = one GPU batch
            per block, which keeps every actor busy on any size).
    """
    from imagefleet.pipelines.plan import PlanError

    schema = dataset_schema(ds)
    routing = cfg.routing.column_read
    problems = input_problems(schema, cfg.source, [routing], routing)
    if problems:
        raise InputError("dataset: " + "; ".join(problems))
    columns = _input_columns(cfg, schema)
    plan = make_plan(cfg, stores, columns, num_rows)
    try:
        plan.check()
    except PlanError as exc:
        raise InputError(str(exc)) from exc
    carried = pass_through_columns(cfg.source, routing, schema.names)
    return Prepared(columns, plan, pass_through_schema(carried, schema))


def process(ds: ray.data.Dataset, cfg: JobConfig, stores: Stores, run_id: str, num_rows: int = 0
            ) -> ray.data.Dataset:
    """`ds` through the run's stages, lazily: a Dataset of manifest rows (images already in the output store).

    Args:
        ds: the user's Dataset: a prompt column (`source.prompt_column`, or the template's columns), optional id
            and per-row settings columns named as in `source.columns`, any other columns (carried as
            `source.pass_through` says).
        cfg: the job config (`source` names the columns; its `uri` is not read).
        stores: resolved store connections.
        run_id: the `run_id` the rows carry.
        num_rows: see `prepare`.
    """
    from imagefleet.pipelines.manifest import manifest_rows

    prepared = prepare(ds, cfg, stores, num_rows)
    rows = apply_stages(ds.select_columns(prepared.columns), cfg, consumed_again(prepared.plan))
    return manifest_rows(rows, run_id, prepared.pass_through)


def commit_dataset(ds: ray.data.Dataset, cfg: JobConfig, stores: Stores, objects: ObjectStore, run_id: str
                   ) -> RunSummary:
    """Run `ds` through the stages and commit its manifest to the output, as a batch run does: the output's lease
    is held throughout, and the manifest becomes current only if it has exactly one row per requested image.

    The Dataset's selected columns are materialized first (prompts are small; Ray spills them when its object
    store fills): the commit must know how many images were asked for, and the user's upstream steps run once.
    """
    import ray

    from imagefleet.pipelines.commit import Lease
    from imagefleet.pipelines.manifest import write_manifest

    # 1 the rows, once, and what they ask for
    prepared = prepare(ds, cfg, stores)
    rows = ds.select_columns(prepared.columns).materialize()
    num_rows = asked = rows.count()
    column = cfg.source.columns.of("num_images")
    if column in prepared.columns and num_rows:
        asked = sum(images_asked(t.column(column), cfg.routing.max_images_per_row)
                    for t in ray.get(rows.select_columns([column]).to_arrow_refs()))
    expected = asked * cfg.source.expansion() * cfg.routing.requests_per_image()
    # 2 own the output, run the stages into staged parts, commit
    plan = make_plan(cfg, stores, prepared.columns, num_rows)  # blocks sized for the rows there are
    plan.check()
    with Lease(objects, run_id, cfg.output.lease_ttl_s) as lease:
        return write_manifest(apply_stages(rows, cfg, plan), objects, lease, expected, prepared.pass_through)

