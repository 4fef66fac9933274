"""Reading the prompt table into Ray Data from what the driver already knows.

The driver reads every file's footer before a run starts (files, row groups, row counts), so the read needs no
listing task and no footer pass of its own: each read task is a known slice of row groups with its row count
in its metadata. Ray Data's own `read_parquet` lists the files in a task and reads the footers again in a pool
of 32 `FooterReader` actors; on a small machine those processes delayed a one-prompt job's first image by
seconds (BENCHMARKS.md, time to first image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

if TYPE_CHECKING:
    import pyarrow as pa

ROWS_PER_TASK = 65_536
"""Row groups are grouped into read tasks of about this many rows (a task never splits a row group)."""


@dataclass(frozen=True)
class Piece:
    """Row groups `groups` of one file (path as the filesystem names it) and how many rows they hold; no groups =
    the whole file, rows unknown."""

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


class PromptTable(Datasource):
    """The prompt table's `columns`, read piece by piece with `filesystem` (pyarrow; credentials included)."""

    def __init__(self, parts: Sequence[Piece], columns: Sequence[str], filesystem: Any) -> None:
        super().__init__()
        self._parts, self._columns, self._fs = list(parts), list(columns), filesystem

    def get_name(self) -> str:
        return "PromptTable"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [ReadTask(_reader(p, self._columns, self._fs),
                         BlockMetadata(num_rows=p.num_rows, size_bytes=None, input_files=(p.path,), exec_stats=None),
                         per_task_row_limit=per_task_row_limit)
                for p in self._parts]


def _reader(piece: Piece, columns: Sequence[str], fs: Any) -> Callable[[], Iterable[pa.Table]]:
    def read() -> Iterable[pa.Table]:
        import pyarrow.parquet as pq

        with fs.open_input_file(piece.path) as handle:
            table = pq.ParquetFile(handle)
            groups = list(piece.groups) or list(range(table.num_row_groups))
            yield table.read_row_groups(groups, columns=list(columns))

    return read
