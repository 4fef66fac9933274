"""The batch text-to-image graph: Parquet prompts → preprocess → generator pools → writer (lazy)."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import SecretStr

from actors.image_writer import ABORT_MARKER
from actors.storage import arrow_filesystem, parse_location
from configs.job import JobConfig
from configs.storage import StoreSpec
from pipelines.plan import Plan, make_plan
from pipelines.pools import map_batches_kwargs
from pipelines.schema import input_problems

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """The prompt table can't be used as configured; the message says what to change."""


@dataclass(frozen=True)
class Stores:
    """Resolved connections (with secrets) for the run's locations; built by jobs from the environment."""

    source: StoreSpec
    output: StoreSpec
    models: dict[str, StoreSpec] = field(default_factory=dict)
    api_keys: dict[str, SecretStr] = field(default_factory=dict)  # hosted generators, by generator name


@dataclass(frozen=True)
class SourceInfo:
    """What the driver learned from Parquet footers alone."""

    files: list[str]
    num_rows: int
    schema: pa.Schema


def inspect_source(cfg: JobConfig, stores: Stores) -> SourceInfo:
    """Resolve files, read footers (no data), and check the schema. Raises InputError."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, path = arrow_filesystem(cfg.source.uri, stores.source)
    loc = parse_location(cfg.source.uri)
    # 1 resolve: file, folder, or glob
    try:
        if any(ch in path for ch in "*?["):
            base = path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"source.uri {cfg.source.uri} does not exist")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                files = sorted(
                    i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))
                )
            else:
                files = [path]
    except OSError as exc:
        raise InputError(f"cannot list source {cfg.source.uri}: {exc}") from None
    if not files:
        raise InputError(f"source.uri {cfg.source.uri} matched no files")
    # 2 footers only: schema and row count
    try:
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
        schema, num_rows = dataset.schema, dataset.count_rows()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"source {cfg.source.uri} is not a readable Parquet dataset ({_first_line(exc)}); "
            f"convert it to Parquet, e.g. pandas.read_csv(...).to_parquet(...)"
        ) from None
    if num_rows == 0:
        raise InputError(f"source {cfg.source.uri} has no rows")
    problems = input_problems(schema, cfg.source)
    if problems:
        raise InputError(f"source {cfg.source.uri}: " + "; ".join(problems))
    uri_files = [f"s3://{f}" if loc.kind == "s3" else f for f in files]
    return SourceInfo(files=uri_files, num_rows=num_rows, schema=schema)


def plan_run(cfg: JobConfig, stores: Stores, source: SourceInfo) -> Plan:
    """The checked plan of one run (raises PlanError with one line when its stages don't fit together)."""
    plan = make_plan(cfg, stores, _input_columns(cfg, source.schema), source.num_rows)
    plan.check()
    return plan


def build(cfg: JobConfig, stores: Stores, source: SourceInfo, plan: Plan | None = None) -> ray.data.Dataset:
    """The lazy graph of one run; nothing executes until the manifest is written.

    Rows are read and preprocessed once, then flow through every stage of the plan in order: each generator's
    pool generates the rows routed to it and passes the others through, so however many generators a run has,
    the graph is one straight line (Ray Data re-runs everything upstream of a branch once per branch).

    Args:
        cfg: the job config.
        stores: resolved store connections.
        source: the inspected source (files and schema).
        plan: the run's plan (`plan_run`); made here when not given.
    """
    import ray.data

    # 1 the plan, checked column by column before anything starts
    plan = plan or plan_run(cfg, stores, source)
    # 2 read prompts (only the columns we use: wide tables stay cheap)
    fs, _ = arrow_filesystem(cfg.source.uri, stores.source)
    ds = ray.data.read_parquet([f[5:] if f.startswith("s3://") else f for f in source.files], filesystem=fs,
                               columns=list(plan.source_columns))
    # 3 every stage in order, each in its own pool
    for stage in plan.stages:
        if stage.rows_per_block:  # small Parquet files are one block: split so every actor gets work
            ds = ds.repartition(target_num_rows_per_block=stage.rows_per_block)
        ds = ds.map_batches(stage.actor, fn_constructor_kwargs=stage.kwargs, batch_format=stage.batch_format,
                            **map_batches_kwargs(stage.pool))
    return ds


def _input_columns(cfg: JobConfig, schema: pa.Schema) -> list[str]:
    candidates = [
        cfg.source.prompt_column,
        cfg.source.id_column,
        cfg.source.negative_prompt_column,
        cfg.routing.column_read,
        "seed",
        "width",
        "height",
        "num_steps",
        "guidance_scale",
        "num_images",
    ]
    return [c for c in dict.fromkeys(candidates) if c in schema.names]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def failure_line(exc: BaseException) -> str:
    """The one line that explains a failed run or replica (Ray wraps actor errors in long tracebacks and hints)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for marker in (ABORT_MARKER, "QuotaExhausted:", "HostedFatal:"):
        for line in lines:
            if marker in line:
                return line[line.index(marker):][:400]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exhausted|Fatal)\b.*:", ln)]
    last = errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)
    return f"{type(exc).__name__}: {last[:300]}"
