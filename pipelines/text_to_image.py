"""The batch text-to-image graph: prompts (Parquet, CSV, JSON Lines) → preprocess → generator pools → writer
(lazy)."""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imagefleet.actors.image_writer import ABORT_MARKER
from imagefleet.actors.storage import arrow_filesystem, parse_location
from imagefleet.configs.job import JobConfig
from imagefleet.pipelines.plan import Plan, Stage, Stores, decide_over_run, make_plan
from imagefleet.pipelines.pools import autoscaling, map_batches_kwargs, start_shared
from imagefleet.pipelines.progress import counted, post_written
from imagefleet.pipelines.schema import INPUT_FIELDS, input_problems, pass_through_columns, pass_through_schema

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from imagefleet.pipelines.prompt_table import Piece

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """The prompt table can't be used as configured; the message says what to change."""


@dataclass(frozen=True)
class SourceInfo:
    """What the driver learned from Parquet footers or CSV/JSON Lines files (and the `num_images` column)."""

    files: list[str]
    num_rows: int
    schema: pa.Schema
    """The columns every file has (once), as the first file types them."""
    num_images: int = 0
    """Images the rows ask for (each row's num_images, default 1); 0 = not counted (same as num_rows)."""
    row_groups: tuple[tuple[int, ...], ...] = ()
    """Rows in each row group of each file (as `files`); empty = unknown (each file is then read whole)."""
    types: pa.Schema | None = None
    """The read columns' types merged across every file (`_merged_types`); each piece is read as these."""
    pass_through: dict[str, str] = field(default_factory=dict)
    """The columns carried to the manifest (`source.pass_through`): data column → manifest column."""

    def pass_through_schema(self) -> pa.Schema:
        """The manifest's pass-through columns, typed as the data's."""
        import pyarrow as pa

        if self.types is None or not self.pass_through:
            return pa.schema([])
        return pass_through_schema(self.pass_through, self.types)


def inspect_source(cfg: JobConfig, stores: Stores) -> SourceInfo:
    """Resolve files, read every file's footer (no data), and check each schema. Raises InputError."""
    fs, path = arrow_filesystem(cfg.source.uri, stores.source)
    loc = parse_location(cfg.source.uri)
    # 1 the run must not read what it writes
    _check_separate(cfg.source.uri, cfg.output.uri)
    # 2 resolve: file, folder, or glob (`*` stays within one folder, `**` spans folders)
    files = _resolve_files(cfg.source.uri, fs, path)
    # 3 every file's footer (CSV/JSON Lines: the file): schema and row count (a later file may differ)
    footers = _footers(cfg, fs, files)
    files = list(footers)
    num_rows = sum(sum(groups) for _, groups in footers.values())
    if num_rows == 0:
        raise InputError(f"source {cfg.source.uri} has no rows")
    for f, (schema, _) in footers.items():
        problems = input_problems(schema, cfg.source, [cfg.routing.column_read], cfg.routing.column_read)
        if problems:
            raise InputError(f"source file {_display(f, loc.kind)}: " + "; ".join(problems))
    _check_same_columns(cfg, footers, loc.kind)
    schema = _common_columns(cfg, footers)  # what `source.pass_through: all` can carry: columns in every file
    types = _merged_types(cfg, footers, loc.kind, _input_columns(cfg, schema))
    # 4 how many images the rows ask for (one small column), for the cost estimate and the budget
    most = cfg.routing.max_images_per_row
    count = cfg.source.columns.of("num_images")
    num_images = _count_images(fs, files, most, count) if count in schema.names else num_rows
    num_images *= cfg.source.expansion()  # a template's prompts per row × the output variants
    return SourceInfo(files=[_display(f, loc.kind) for f in files], num_rows=num_rows, schema=schema,
                      num_images=num_images, row_groups=tuple(groups for _, groups in footers.values()),
                      types=types, pass_through=pass_through_columns(cfg.source, cfg.routing.column_read,
                                                                     schema.names))


def _display(path: str, kind: str) -> str:
    return f"s3://{path}" if kind == "s3" else path


def _check_separate(source_uri: str, output_uri: str) -> None:
    """Refuse a source inside the output (or the reverse), as written or once symlinks are resolved (a link to
    the output folder is the output folder): the run would read its own manifest as prompts, and resume would see
    its own inputs."""
    def parts(uri: str, real: bool) -> list[str]:
        """Path segments up to the first glob segment (a glob's fixed folder is what it reads from)."""
        loc = parse_location(uri)
        if loc.kind == "s3":
            segments = ["s3:", loc.bucket, *loc.prefix.split("/")]
        else:
            path = uri.removeprefix("file://")
            segments = (os.path.realpath(path) if real else os.path.abspath(path)).split("/")
        fixed = []
        for p in segments:
            if any(ch in p for ch in "*?["):
                break
            if p:
                fixed.append(p)
        return fixed

    for real in (False, True):
        src, out = parts(source_uri, real), parts(output_uri, real)
        if src[: len(out)] == out or out[: len(src)] == src:
            via = " (once symlinks are resolved)" if real else ""
            raise InputError(f"source.uri {source_uri} and output.uri {output_uri} overlap{via}; keep prompts and "
                             f"outputs in separate folders (the run would read its own outputs as prompts)")


def _resolve_files(uri: str, fs: Any, path: str) -> list[str]:
    import pyarrow.fs as pafs

    try:
        if any(ch in path for ch in "*?["):
            base = path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and glob_match(i.path, path))
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"source.uri {uri} does not exist")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                files = sorted(
                    i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))
                )
            else:
                files = [path]
    except OSError as exc:
        raise InputError(f"cannot list source {uri}: {exc}") from exc
    if not files:
        raise InputError(f"source.uri {uri} matched no files")
    return files


def glob_match(path: str, pattern: str) -> bool:
    """Shell-style match by path segment: `*`, `?` and `[..]` stay within one folder, `**` spans folders."""
    def match(p: list[str], g: list[str]) -> bool:
        if not g:
            return not p
        if g[0] == "**":
            return any(match(p[i:], g[1:]) for i in range(len(p) + 1))
        return bool(p) and fnmatch.fnmatchcase(p[0], g[0]) and match(p[1:], g[1:])

    return match(path.split("/"), pattern.split("/"))


def _footers(cfg: JobConfig, fs: Any, files: list[str]) -> dict[str, tuple[pa.Schema, tuple[int, ...]]]:
    """Schema and rows per row group of every file, of one format (`pipelines.table_formats`: Parquet footers; a
    CSV/JSON Lines file read whole, its text columns as text; one without rows left out)."""
    from imagefleet.pipelines.table_formats import TableError, describe_files, text_columns

    try:
        return describe_files(fs, files, text_columns(cfg.source, cfg.routing.column_read),
                              functools.partial(_display, kind=parse_location(cfg.source.uri).kind))
    except TableError as exc:
        raise InputError(str(exc)) from exc


def _check_same_columns(cfg: JobConfig, footers: dict[str, tuple[pa.Schema, tuple[int, ...]]], kind: str) -> None:
    """Every column the run reads must be in every file or in none (a file without it would fail mid-run)."""
    first_file, (first, _) = next(iter(footers.items()))
    for f, (schema, _) in footers.items():
        for column in _input_columns(cfg, first, carry_all=False):
            if column not in schema.names:
                raise InputError(f"column {column!r} is in {_display(first_file, kind)} but not in "
                                 f"{_display(f, kind)}; add it to every file (nulls are fine) or to none")
        extra = [c for c in _input_columns(cfg, schema, carry_all=False) if c not in first.names]
        if extra:
            raise InputError(f"column {extra[0]!r} is in {_display(f, kind)} but not in "
                             f"{_display(first_file, kind)}; add it to every file (nulls are fine) or to none")


def _common_columns(cfg: JobConfig, footers: dict[str, tuple[pa.Schema, tuple[int, ...]]]) -> pa.Schema:
    """The first file's schema, less the columns some other file lacks or some file has twice (`source.
    pass_through: all` leaves those out, with a warning; the run's own columns are in every file, once)."""
    import pyarrow as pa

    schemas = [schema for schema, _ in footers.values()]
    twice = {n for s in schemas for n in s.names if s.get_all_field_indices(n)[1:]}
    common = [f for f in schemas[0] if all(f.name in s.names for s in schemas[1:]) and f.name not in twice]
    left = sorted({n for s in schemas for n in s.names} - {f.name for f in common})
    if left and cfg.source.pass_through == "all":
        logger.warning("source.pass_through: all leaves out column(s) %s: not in every file, or in one twice",
                       ", ".join(left))
    return pa.schema(common)


def _merged_types(cfg: JobConfig, footers: dict[str, tuple[pa.Schema, tuple[int, ...]]], kind: str,
                  columns: list[str]) -> pa.Schema:
    """The types of `columns` (those the run reads), merged across every file as Ray Data merges blocks (pyarrow's
    permissive promotion: int32 + int64 → int64, string + large_string → large_string, all-null + any → that
    type), a dictionary-encoded column read as its values. InputError naming both files when a column's types
    don't merge (int64 ids in one file, strings in another): found here, before Ray starts, not mid-run."""
    import pyarrow as pa

    first_file, (first, _) = next(iter(footers.items()))
    merged = {c: _decoded(first.field(c)) for c in columns}
    seen_in = dict.fromkeys(columns, first_file)
    for f, (schema, _) in footers.items():
        for c in columns:
            field = _decoded(schema.field(c))
            if field.type == merged[c].type:
                continue
            try:
                merged[c] = pa.unify_schemas([pa.schema([merged[c]]), pa.schema([field])],
                                             promote_options="permissive").field(c)
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                raise InputError(
                    f"column {c!r} is {merged[c].type} in {_display(seen_in[c], kind)} but {field.type} in "
                    f"{_display(f, kind)}; the files can't be read as one table: write the column with one type "
                    f"in every file") from None
            seen_in[c] = f
    return pa.schema(list(merged.values()))


def _decoded(field: pa.Field) -> pa.Field:
    """A dictionary-encoded column as the values it holds (the same column to a reader)."""
    import pyarrow as pa

    return field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field


def _count_images(fs: Any, files: list[str], most: int, name: str = "num_images") -> int:
    """Sum of the rows' num_images; null or out of 1..most counts as 1 (a null row makes one image; an out-of-range
    one becomes one error row), as the preprocessor makes them."""
    from imagefleet.pipelines.table_formats import read_file

    return sum(images_asked(read_file(fs, f, [name]).column(name), most) for f in files)


def images_asked(column: Any, most: int) -> int:
    """Images a `num_images` column asks for: null or out of 1..most counts as 1."""
    import pyarrow.compute as pc

    # null compares to null, and and_(False, null) is null: fill, or null rows would count 0 instead of 1
    valid = pc.fill_null(pc.and_(pc.greater(column, 0), pc.less_equal(column, most)), False)
    return int(pc.sum(pc.if_else(valid, column, 1)).as_py() or 0)


def expected_rows(cfg: JobConfig, source: SourceInfo) -> int:
    """Manifest rows a run must produce: one per requested image and generator it goes to."""
    return (source.num_images or source.num_rows) * cfg.routing.requests_per_image()


def plan_run(cfg: JobConfig, stores: Stores, source: SourceInfo) -> Plan:
    """The checked plan of one run (raises PlanError with one line when its stages don't fit together)."""
    plan = make_plan(cfg, stores, _input_columns(cfg, source.schema), source.num_rows)
    plan.check()
    return plan


def build(cfg: JobConfig, stores: Stores, source: SourceInfo, plan: Plan | None = None,
          board: Any = None) -> ray.data.Dataset:
    """The lazy graph of one run; nothing executes until the manifest is written (but the stages before a
    decision over the whole run, `Stage.run_columns`, which run here).

    Rows are read and preprocessed once, then flow through every stage of the plan in order: each generator's
    pool generates the rows routed to it and passes the others through, so however many generators a run has,
    the graph is one straight line (Ray Data re-runs everything upstream of a branch once per branch).

    Args:
        cfg: the job config.
        stores: resolved store connections.
        source: the inspected source (files and schema).
        plan: the run's plan (`plan_run`); made here when not given.
        board: the run's progress board (pipelines/progress.py), told about every batch the last stage (the image
            writer) finishes; None: none.
    """
    import ray.data

    # 1 the plan, checked column by column before anything starts
    plan = plan or plan_run(cfg, stores, source)
    # 2 read prompts (only the columns we use: wide tables stay cheap)
    from imagefleet.pipelines.prompt_source import PromptTable

    fs, parts = source_pieces(cfg, stores, source)
    ds: ray.data.Dataset = ray.data.read_datasource(PromptTable(parts, plan.source_columns, fs, source.types))
    # 3 the plan's stages in order (`imagefleet.processor` applies the same to a user's own Dataset)
    return apply_stages(ds, cfg, plan, board)


def apply_stages(ds: ray.data.Dataset, cfg: JobConfig, plan: Plan, board: Any = None) -> ray.data.Dataset:
    """`ds` (rows with the plan's source columns) through every stage of `plan`, lazily: preprocess, the
    routing's generators and scorers, the image writer (images stored; its rows are the manifest's, before
    `pipelines.manifest` types them)."""
    # 1 this run's autoscaling rule, on its own context (derived datasets inherit it; the process's stays as it is)
    ds.context.autoscaling_config = autoscaling(ds.context.autoscaling_config, cfg.cluster.pools_shrink)
    # 2 run-wide services a stage's actors share (hosted rate limiters, the spend ledger), owned by this driver
    services: list[Any] = []
    for stage in plan.stages:
        start = getattr(stage.actor, "start_run", None)
        if start is not None:
            services.extend(start(**stage.kwargs))
    _RUN_SERVICES[:] = services  # an earlier run's services in this process end now (unless shared by name)
    # 3 every stage in order, each in its own pool with the actors it shares (a run ledger); the writer posts progress
    for stage in plan.stages:
        ctor = {**constructor_kwargs(plan, stage, board), **start_shared(stage.shared)}
        if stage.run_columns:  # decided over the whole run: every earlier stage finishes here (Ray keeps the rows,
            ds = ds.materialize()  # spilling to disk when its object store fills)
            ctor = {**ctor, **decide_over_run(stage, run_view(ds, stage.run_columns))}
        if stage.rows_per_block:  # small Parquet files are one block: split so every actor gets work
            ds = ds.repartition(target_num_rows_per_block=stage.rows_per_block)
        kwargs = map_batches_kwargs(stage.pool)
        if stage.call_rows:  # a whole block per call, batched by the actor itself
            kwargs["batch_size"] = stage.call_rows
        ds = ds.map_batches(stage_actor(plan, stage, board), fn_constructor_kwargs=ctor,
                            batch_format=stage.batch_format, **kwargs)
    return ds


def run_view(ds: ray.data.Dataset, columns: tuple[str, ...]) -> pa.Table:
    """`columns` of every row of a materialized dataset, as one table in the driver (a few numbers and a key per
    row: 1M rows are ~60 MB)."""
    import pyarrow
    import ray

    tables = ray.get(ds.select_columns(list(columns)).to_arrow_refs())
    return pyarrow.concat_tables(tables, promote_options="permissive") if tables else pyarrow.table(
        {c: pyarrow.array([], pyarrow.null()) for c in columns})


def source_pieces(cfg: JobConfig, stores: Stores, source: SourceInfo) -> tuple[Any, list[Piece]]:
    """The filesystem (with credentials) and the read pieces of the inspected source, as both executors read it."""
    from imagefleet.pipelines.prompt_table import pieces

    fs, _ = arrow_filesystem(cfg.source.uri, stores.source)
    paths = [f[5:] if f.startswith("s3://") else f for f in source.files]
    return fs, pieces(paths, source.row_groups)


def stage_actor(plan: Plan, stage: Stage, board: Any = None) -> type:
    """The class a stage's pool runs: its actor, telling the run's board when it is loading and ready and how many
    rows it finished (the last stage, the writer, posts its rows by generator through `on_batch` instead)."""
    if board is None:
        return stage.actor
    at = next(i for i, s in enumerate(plan.stages) if s is stage)  # a cascade's two score stages are equal
    return counted(stage.actor, board, list(plan.pools)[at], rows=stage is not plan.stages[-1])


def constructor_kwargs(plan: Plan, stage: Stage, board: Any = None) -> dict[str, Any]:
    """What a stage's actor is built with: its kwargs, and for the last stage (the image writer) the progress
    board's `post_written` as `on_batch` when the run has a board."""
    if stage is plan.stages[-1] and board is not None:
        return {**stage.kwargs, "on_batch": functools.partial(post_written, board)}
    return stage.kwargs


# Handles of the run's shared actors: named actors live while a handle does, so the driver keeps them for the run.
_RUN_SERVICES: list[Any] = []


def _input_columns(cfg: JobConfig, schema: pa.Schema, carry_all: bool = True) -> list[str]:
    """The columns of `schema` the run reads: those holding its fields, and those it carries to the manifest
    (`carry_all=False`: only those the user named, leaving out what `source.pass_through: all` would add)."""
    carried = list(cfg.source.pass_through) if isinstance(cfg.source.pass_through, list) else []
    if carry_all:
        carried = list(pass_through_columns(cfg.source, cfg.routing.column_read, schema.names))
    candidates = [
        cfg.source.prompt_column,
        cfg.source.id_column,
        cfg.source.negative_prompt_column,
        cfg.routing.column_read,
        *(column for setting, column in cfg.source.columns.by_field().items()
          if cfg.source.reads_inputs() or setting not in INPUT_FIELDS),
        *(cfg.source.template.columns() if cfg.source.template is not None else []),
        *carried,
    ]
    return [c for c in dict.fromkeys(candidates) if c in schema.names]


def failure_line(exc: BaseException) -> str:
    """The one line that explains a failed run or replica (Ray wraps actor errors in long tracebacks and hints)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for marker in (ABORT_MARKER, "QuotaExhausted:", "HostedFatal:"):
        for line in lines:
            if marker in line:
                return line[line.index(marker):][:400]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exhausted|Fatal)\b.*:", ln)]
    causes = [ln for ln in errors if not ln.startswith(("ray.", "Ray"))]  # Ray's wrappers name no cause
    errors = causes or errors
    last = errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)
    return f"{type(exc).__name__}: {last[:300]}"
