"""The prompt table as a Ray Data datasource: one read task per piece (`pipelines.prompt_table`), its row count
in the task's metadata, so Ray Data needs no listing task and no footer pass of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from imagefleet.pipelines.prompt_table import Piece, read_piece

if TYPE_CHECKING:
    import pyarrow as pa


class PromptTable(Datasource):
    """The prompt table's `columns`, read piece by piece with `filesystem` (pyarrow; credentials included) as
    `types` (merged across its files)."""

    def __init__(self, parts: Sequence[Piece], columns: Sequence[str], filesystem: Any,
                 types: pa.Schema | None = None) -> None:
        super().__init__()
        self._parts, self._columns, self._fs, self._types = list(parts), list(columns), filesystem, types

    def get_name(self) -> str:
        return "PromptTable"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [ReadTask(_reader(p, self._columns, self._fs, self._types),
                         BlockMetadata(num_rows=p.num_rows, size_bytes=None, input_files=(p.path,), exec_stats=None),
                         per_task_row_limit=per_task_row_limit)
                for p in self._parts]


def _reader(piece: Piece, columns: Sequence[str], fs: Any, types: pa.Schema | None
            ) -> Callable[[], Iterable[pa.Table]]:
    def read() -> Iterable[pa.Table]:
        yield read_piece(piece, columns, fs, types)

    return read
