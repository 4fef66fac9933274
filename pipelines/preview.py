"""A preview: the first images of a run's prompt table through the run's own plan, in this process, written to a
local folder that is not the run's output (`jobs.preview` swaps the config's `output.uri` for it).

    first rows of the table (only as many as make N images)
      → the plan's stages, in this process (pipelines.in_process.execute; the preprocessor capped at N images)
      → rows shaped like the manifest's (nothing is committed: no manifest, no lease, no run.json)
      → the contact sheet (pipelines.preview_sheet)

The plan is the run's, stage for stage, with one change: its preprocessor expands one input row at a time and
stops after N images (`FirstImages`), so a template or variants row makes the same images as in a run and the
preview never pays for more than N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from imagefleet.pipelines.plan import Plan, Stage
from imagefleet.pipelines.prompt_table import Piece, read_piece
from imagefleet.pipelines.table_formats import PARQUET, file_format

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from imagefleet.configs.job import JobConfig
    from imagefleet.pipelines.plan import Stores
    from imagefleet.pipelines.text_to_image import SourceInfo

PREPROCESS = "preprocess"
"""The plan stage that turns input rows into one row per image (the one `capped` caps)."""


def images_of_rows(cfg: JobConfig, table: pa.Table) -> list[int]:
    """Images each row of `table` makes, as a run expands it: its `num_images` (null or out of range: 1, as the
    preprocessor counts it) × the template's prompts per row × the variants × the generators it is sent to."""
    factor = cfg.source.expansion() * cfg.routing.requests_per_image()
    column = cfg.source.columns.of("num_images")
    if column not in table.column_names:
        return [factor] * table.num_rows
    most = cfg.routing.max_images_per_row
    return [factor * (int(v) if isinstance(v, int | float) and 1 <= v <= most else 1)
            for v in table.column(column).to_pylist()]


def first_rows(cfg: JobConfig, stores: Stores, source: SourceInfo, columns: Sequence[str], n: int) -> pa.Table:
    """The first rows of the prompt table (in the run's file order) that make at least `n` images, and no more:
    a Parquet file is read a batch of rows at a time and reading stops there (a later row group is never read); a
    CSV or JSON Lines file is read whole, as the driver already read it to describe it. The whole table when it
    makes fewer than `n`.

    Args:
        cfg: the job config.
        stores: resolved store connections.
        source: the inspected source (files, row groups, merged types).
        columns: the prompt-table columns the plan reads (`Plan.source_columns`).
        n: images wanted.
    """
    import pyarrow as pa

    from imagefleet.pipelines.text_to_image import source_pieces

    fs, parts = source_pieces(cfg, stores, source)
    taken: list[pa.Table] = []
    images = 0
    for piece in parts:
        for table in _row_batches(piece, columns, fs, source.types, n):
            counts = images_of_rows(cfg, table)
            rows = 0
            while rows < len(counts) and images < n:
                images += counts[rows]
                rows += 1
            taken.append(table.slice(0, rows))
            if images >= n:
                return pa.concat_tables(taken)
    return pa.concat_tables(taken)


def _row_batches(piece: Piece, columns: Sequence[str], fs: Any, types: pa.Schema | None, batch_rows: int
                 ) -> Iterator[pa.Table]:
    """A piece's rows in order, typed as the run reads them: Parquet `batch_rows` rows at a time, each row group
    opened only when the rows before it were not enough; another format as one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file_format(piece.path) != PARQUET:
        yield read_piece(piece, columns, fs, types)
        return
    with fs.open_input_file(piece.path) as handle:
        parquet = pq.ParquetFile(handle)
        for group in list(piece.groups) or list(range(parquet.num_row_groups)):
            for batch in parquet.iter_batches(batch_size=max(1, batch_rows), row_groups=[group],
                                              columns=list(columns)):
                table = pa.Table.from_batches([batch])
                if types is None:
                    yield table
                    continue
                target = pa.schema([types.field(c) if c in types.names else f for c, f in zip(
                    table.column_names, table.schema, strict=True)])
                yield table if table.schema.equals(target) else table.cast(target)


class FirstImages:
    """The preview's preprocessor: the plan's own preprocessor actor, called one input row at a time, its output
    kept in input order until `limit` images in all (rows past it are not expanded). Per row, the rows are the ones
    a run makes for that row; only the order across rows differs (a run sorts a whole batch by shape).

    Args:
        inner: the stage's actor class (`PromptPreprocessor`).
        limit: images in all.
        kwargs: its constructor arguments.
    """

    INPUT_COLUMNS: dict[str, str] = {}  # the plan was checked with the inner actor's declarations
    OUTPUT_COLUMNS: dict[str, str] = {}

    def __init__(self, inner: type, limit: int, **kwargs: Any) -> None:
        self.inner = inner(**kwargs)
        self.left = limit

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        import numpy as np

        parts: list[dict[str, np.ndarray]] = []
        for i in range(batch.num_rows):
            if self.left <= 0:
                break
            out = self.inner(batch.slice(i, 1))
            take = min(self.left, len(next(iter(out.values()))))
            parts.append({k: v[:take] for k, v in out.items()})
            self.left -= take
        if not parts:
            return dict(self.inner(batch.slice(0, 0)))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def capped(plan: Plan, n: int) -> Plan:
    """`plan` with its preprocessor making at most `n` images (`FirstImages`); every other stage as it is."""
    def cap(stage: Stage) -> Stage:
        if stage.name != PREPROCESS:
            return stage
        return replace(stage, actor=FirstImages, kwargs={"inner": stage.actor, "limit": n, **stage.kwargs})

    return replace(plan, stages=tuple(cap(s) for s in plan.stages))


def render(cfg: JobConfig, stores: Stores, source: SourceInfo, plan: Plan, n: int) -> tuple[int, pa.Table]:
    """The first `n` images of the prompt table through `plan` in this process: (input rows read, the writer's rows
    shaped like the manifest's, one per image). Images go where `cfg.output.uri` says: the caller points it at a
    preview folder. A broken actor raises `in_process.StageFailed`.

    Args:
        cfg: the preview's config (its `output.uri` a local preview folder).
        stores: resolved store connections for it.
        source: the inspected source.
        plan: its checked plan (`text_to_image.plan_run`).
        n: images to make (at least 1).
    """
    import pyarrow as pa

    from imagefleet.pipelines.in_process import execute

    # 1 only the rows the first n images come from
    rows = first_rows(cfg, stores, source, plan.source_columns, n)
    # 2 the run's stages over them, the preprocessor stopping at n images
    tables = list(execute(capped(plan, n), [rows]))
    return rows.num_rows, pa.concat_tables(tables, promote_options="permissive")
