"""StagedParts: the Ray Data sink that writes a run's manifest parts where they live, unlisted until the commit
(pipelines/commit.py `stage_part`: each part whole or not at all, within the store's retry budget)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.commit import stage_part


class StagedParts(Datasink[None]):
    """Writes each write task's blocks as one manifest part of `attempt` (Ray bundles blocks up to `min_rows`).

    Args:
        uri: the output.
        spec: its resolved connection.
        attempt: the lease attempt whose parts these are (`manifest/part-<attempt>-…`).
        min_rows: the fewest rows a part gets (`pipelines.manifest.part_rows`).
    """

    def __init__(self, uri: str, spec: StoreSpec, attempt: str, min_rows: int) -> None:
        self.uri, self.spec, self.attempt, self.min_rows = uri, spec, attempt, min_rows

    def write(self, blocks: Iterable[Block], ctx: Any) -> None:
        import pyarrow as pa

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if tables:
            stage_part(open_store(self.uri, self.spec), self.attempt, pa.concat_tables(tables))

    @property
    def min_rows_per_write(self) -> int:
        return self.min_rows

    def get_name(self) -> str:
        return "StagedManifestParts"
