"""Reading the prompt table from what the driver already knows (no Ray here: the in-process executor reads with
it too; `pipelines.prompt_source.PromptTable` makes these pieces Ray Data read tasks). Parquet, CSV and JSON Lines
files (`pipelines.table_formats`); a CSV or JSON Lines file has no row groups: it is one piece.

The driver reads every file's footer before a run starts (files, row groups, row counts), so the read needs no
listing task and no footer pass of its own: each read task is a known slice of row groups with its row count
in its metadata. Ray Data's own `read_parquet` lists the files in a task and reads the footers again in a pool
of 32 `FooterReader` actors; on a small machine those processes delayed a one-prompt job's first image by
seconds (BENCHMARKS.md, time to first image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagefleet.pipelines.table_formats import PARQUET, file_format, read_file

if TYPE_CHECKING:
    import pyarrow as pa

ROWS_PER_TASK = 65_536
"""Row groups are grouped into read tasks of about this many rows (a task never splits a row group)."""


@dataclass(frozen=True)
class Piece:
    """Row groups `groups` of one file (path as the filesystem names it) and how many rows they hold; no groups =
    the whole file, rows unknown (a CSV or JSON Lines file: one group, the whole file)."""

    path: str
    groups: tuple[int, ...] = ()
    num_rows: int | None = None


def pieces(files: Sequence[str], row_groups: Sequence[Sequence[int]], rows_per_task: int = ROWS_PER_TASK
           ) -> list[Piece]:
    """Consecutive row groups of each file, grouped until a piece holds at least `rows_per_task` rows (no
    `row_groups` known: one whole file per piece)."""
    if not row_groups:
        return [Piece(path) for path in files]
    out: list[Piece] = []
    for path, sizes in zip(files, row_groups, strict=True):
        groups: list[int] = []
        rows = 0
        for index, size in enumerate(sizes):
            groups.append(index)
            rows += size
            if rows >= rows_per_task:
                out.append(Piece(path, tuple(groups), rows))
                groups, rows = [], 0
        if groups:
            out.append(Piece(path, tuple(groups), rows))
    return out


def read_piece(piece: Piece, columns: Sequence[str], fs: Any, types: pa.Schema | None = None) -> pa.Table:
    """The selected `columns` of one piece's row groups (the whole file when its groups aren't known; a CSV or
    JSON Lines file is always read whole), cast to `types` where a column is there (the types merged across the
    table's files: every piece reads alike)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file_format(piece.path) != PARQUET:
        read = read_file(fs, piece.path, columns, types)
    else:
        with fs.open_input_file(piece.path) as handle:
            table = pq.ParquetFile(handle)
            groups = list(piece.groups) or list(range(table.num_row_groups))
            read = table.read_row_groups(groups, columns=list(columns))
    if types is None:
        return read
    target = pa.schema([types.field(c) if c in types.names else f for c, f in zip(read.column_names, read.schema,
                                                                                  strict=True)])
    return read if read.schema.equals(target) else read.cast(target)
