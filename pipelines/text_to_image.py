"""The batch text-to-image graph: Parquet prompts → preprocess → generator pools → writer (lazy)."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from actors import GENERATORS, HOSTED_BACKENDS, ImageWriter, PromptPreprocessor
from actors.clip_scorer import SCORERS
from actors.escalator import Escalator
from actors.image_writer import ABORT_MARKER
from actors.storage import arrow_filesystem, parse_location
from configs.generator import DiffusersConfig
from configs.job import JobConfig
from configs.prep import GeneratorIdentity, PrepConfig, ResumeConfig
from configs.storage import StoreSpec
from configs.writer import ImageWriterConfig
from pipelines.pools import (
    escalator_pool_kwargs,
    generator_pool_kwargs,
    preprocess_pool_kwargs,
    scorer_pool_kwargs,
    writer_pool_kwargs,
)
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


def prep_config(cfg: JobConfig, stores: Stores | None = None) -> PrepConfig:
    """The preprocessor's slice of the job config (with resume state when the output store is known)."""
    resume = None
    if stores is not None:
        resume = ResumeConfig(output_uri=cfg.output.uri, store=stores.output,
                              skip_existing=cfg.output.skip_existing, retry_failed=cfg.output.retry_failed)
    return PrepConfig(
        resume=resume,
        job_seed=cfg.seed,
        prompt_column=cfg.source.prompt_column,
        id_column=cfg.source.id_column,
        negative_prompt_column=cfg.source.negative_prompt_column,
        max_prompt_chars=cfg.source.max_prompt_chars,
        max_images_per_row=cfg.routing.max_images_per_row,
        routing_mode=cfg.routing.mode,
        routing_column=cfg.routing.column,
        rules=list(cfg.routing.rules),
        fanout=list(cfg.routing.fanout),
        budget_usd=cfg.limits.budget_usd,
        default_generator=cfg.default_generator,
        generators={
            name: GeneratorIdentity(model=g.model, revision=g.revision, scheduler=g.scheduler, defaults=g.defaults,
                                    est_usd_per_image=g.cost.estimate_usd(g.pool.num_gpus))
            for name, g in cfg.generators.items()
        },
    )


def writer_config(cfg: JobConfig, stores: Stores) -> ImageWriterConfig:
    """The writer's slice of the job config."""
    out = cfg.output
    return ImageWriterConfig(
        uri=out.uri,
        format=out.format,
        quality=out.quality,
        png_compress_level=out.png_compress_level,
        num_upload_threads=out.pool.num_upload_threads,
        store=stores.output,
        abort_error_fraction=cfg.limits.max_error_fraction,
        abort_min_rows=cfg.limits.abort_min_rows,
    )


def rows_per_block(cfg: JobConfig, num_rows: int) -> int:
    """Block size before the generator pools, a whole number of GPU batches.

    Small Parquet files are a single block, so without this one actor would do all the work. Blocks of
    several batches amortize Ray's per-task overhead (measured: 0.82 → 0.94 of ideal throughput going from
    1 to 4 batches per block, bench/); but there must still be a few blocks per actor so all of them work.
    """
    if cfg.source.num_rows_per_block:
        return cfg.source.num_rows_per_block
    batch = min(g.pool.batch_size for g in cfg.generators.values())
    actors = sum(g.pool.max_size for g in cfg.generators.values())
    fair_share = num_rows // max(1, actors * 4)
    return max(batch, min(4 * batch, fair_share // batch * batch))


def build(cfg: JobConfig, stores: Stores, source: SourceInfo) -> ray.data.Dataset:
    """The lazy graph of one run; nothing executes until the manifest is written.

    Args:
        cfg: the job config.
        stores: resolved store connections.
        source: the inspected source (files and schema).
    """
    import ray.data

    # 1 read prompts (only the columns we use: wide tables stay cheap)
    fs, _ = arrow_filesystem(cfg.source.uri, stores.source)
    wanted = _input_columns(cfg, source.schema)
    ds = ray.data.read_parquet(
        [f[5:] if f.startswith("s3://") else f for f in source.files], filesystem=fs, columns=wanted
    )
    # 2 validate, route, expand num_images, derive seeds and keys; a light CPU pool, one block per call
    ds = ds.map_batches(
        PromptPreprocessor,
        fn_constructor_kwargs={"cfg": prep_config(cfg, stores)},
        batch_format="pyarrow",
        **preprocess_pool_kwargs(),
    )
    # 3 fan out: blocks of about one GPU batch so every actor of every pool gets work
    ds = ds.repartition(target_num_rows_per_block=rows_per_block(cfg, source.num_rows))
    # 4 one autoscaled actor pool per generator; pools run concurrently, each sized by its own config
    if cfg.routing.mode == "cascade" and cfg.routing.cascade is not None:
        # draft everything → score → escalate low scorers (one actor: exact cap) → heavy → score again
        cascade = cfg.routing.cascade
        ds = _score(_generate(ds, cfg, stores, cascade.draft), cfg)
        ds = ds.map_batches(
            Escalator,
            fn_constructor_kwargs={"cfg": cascade, "heavy_name": cascade.escalate,
                                   "heavy": prep_config(cfg).generators[cascade.escalate]},
            batch_format="numpy",
            **escalator_pool_kwargs(),
        )
        ds = _score(_generate(ds, cfg, stores, cascade.escalate), cfg)
    else:
        # each pool only sees its own rows (filter per branch, then union)
        names = list(cfg.generators)
        branches = [
            _generate(ds if len(names) == 1 else ds.filter(_routed_to(name, names)), cfg, stores, name)
            for name in names
        ]
        ds = branches[0] if len(branches) == 1 else branches[0].union(*branches[1:])
        ds = _score(ds, cfg)
    # 5 encode + write in a separate CPU pool, overlapped with generation; pixels are dropped here
    ds = ds.map_batches(
        ImageWriter,
        fn_constructor_kwargs={"cfg": writer_config(cfg, stores)},
        batch_format="numpy",
        **writer_pool_kwargs(cfg.output.pool),
    )
    return ds


def _generate(ds: ray.data.Dataset, cfg: JobConfig, stores: Stores, name: str) -> ray.data.Dataset:
    """One generator's actor pool on `ds` (only `pending` rows routed to it are generated)."""
    gen = cfg.generators[name]
    return ds.map_batches(
        GENERATORS[gen.backend],
        fn_constructor_kwargs=generator_kwargs(cfg, stores, name),
        batch_format="numpy",
        **generator_pool_kwargs(gen.pool),
    )


def generator_kwargs(cfg: JobConfig, stores: Stores, name: str, online: bool = False) -> dict[str, Any]:
    """Constructor arguments of generator `name`'s actor class (its config slice plus resolved secrets).

    `online` (Ray Serve) answers each request directly, so hosted Batch API mode is switched off there.
    """
    gen = cfg.generators[name]
    kwargs: dict[str, Any] = {"cfg": gen}
    if isinstance(gen, DiffusersConfig) and gen.model.startswith("s3://"):
        kwargs["model_store"] = stores.models[name]
    if gen.backend in HOSTED_BACKENDS:
        kwargs["api_key"] = stores.api_keys[name]
        if getattr(gen, "batch_mode", False):
            if online:
                kwargs["cfg"] = gen.model_copy(update={"batch_mode": False})
            else:  # batch ids are persisted next to the outputs (resumable)
                kwargs.update(state_uri=cfg.output.uri, state_store=stores.output)
    return kwargs


def _score(ds: ray.data.Dataset, cfg: JobConfig) -> ray.data.Dataset:
    """The scorer pool, when configured (needs pixels, so it runs before the writer drops them)."""
    if cfg.scorer is None:
        return ds
    return ds.map_batches(
        SCORERS[cfg.scorer.backend],
        fn_constructor_kwargs={"cfg": cfg.scorer},
        batch_format="numpy",
        **scorer_pool_kwargs(cfg.scorer.pool),
    )


def _routed_to(name: str, names: list[str]) -> Any:
    """Row filter for one generator's branch; the first branch also carries rows naming no known generator
    (they are error rows already and must still reach the manifest)."""
    first = name == names[0]

    def keep(row: dict[str, Any]) -> bool:
        return bool(row["generator"] == name or (first and row["generator"] not in names))

    return keep


def _input_columns(cfg: JobConfig, schema: pa.Schema) -> list[str]:
    candidates = [
        cfg.source.prompt_column,
        cfg.source.id_column,
        cfg.source.negative_prompt_column,
        cfg.routing.column,
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
