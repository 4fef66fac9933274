"""The driver's reads: the prompt table as read tasks made from its footers (pipelines/prompt_table.py) and the
committed manifest part by part (pipelines/manifest.iter_manifest_batches), without Ray."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from imagefleet.actors.layout import MANIFEST_INDEX, manifest_part
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.manifest import iter_manifest_batches
from imagefleet.pipelines.prompt_source import PromptTable
from imagefleet.pipelines.prompt_table import pieces
from imagefleet.pipelines.schema import MANIFEST


def test_prompt_table_reads_every_row_once_in_order_from_row_group_pieces(tmp_path: Path) -> None:
    """Row groups are grouped into read tasks (never split, never across files); reading every task gives each
    file's rows once, in order, only the selected columns, and each task's metadata names its row count."""
    files = []
    for n, rows in enumerate((10, 2)):
        path = tmp_path / f"p{n}.parquet"
        pq.write_table(pa.table({"prompt": [f"f{n} r{i}" for i in range(rows)], "wide": list(range(rows))}),
                       path, row_group_size=3)
        files.append(str(path))
    groups = [tuple(pq.ParquetFile(f).metadata.row_group(i).num_rows
                    for i in range(pq.ParquetFile(f).num_row_groups)) for f in files]
    assert groups == [(3, 3, 3, 1), (2,)]
    parts = pieces(files, groups, rows_per_task=4)
    assert [(Path(p.path).name, p.groups, p.num_rows) for p in parts] == [
        ("p0.parquet", (0, 1), 6), ("p0.parquet", (2, 3), 4), ("p1.parquet", (0,), 2)]
    assert [p.groups for p in pieces(files, ())] == [(), ()]  # row groups unknown: whole files
    for chosen in (parts, pieces(files, ())):
        tasks = PromptTable(chosen, ["prompt"], pafs.LocalFileSystem()).get_read_tasks(parallelism=1)
        blocks = [block for task in tasks for block in task.read_fn()]
        assert all(b.column_names == ["prompt"] for b in blocks)
        assert pa.concat_tables(blocks).column("prompt").to_pylist() == (
            [f"f0 r{i}" for i in range(10)] + ["f1 r0", "f1 r1"])
    assert [t.metadata.num_rows for t in PromptTable(parts, ["prompt"], None).get_read_tasks(1)] == [6, 4, 2]


def test_manifest_batches_are_typed_and_fill_columns_an_older_part_lacks(tmp_path: Path) -> None:
    """Parts are read one by one: a part written before a column existed gives nulls for it, and a column stored
    with a narrower type comes back as MANIFEST's; the order is the index's."""
    out = tmp_path / "out"
    (out / "manifest").mkdir(parents=True)
    old = pa.table({"status": ["ok", "error"], "bytes": pa.array([7, 0], pa.int32())})
    new = pa.table({"status": ["ok"], "bytes": pa.array([9], pa.int64()), "route": ["escalated"]})
    names = [manifest_part("a1", 0), manifest_part("a1", 1)]
    for rel, table in zip(names, (old, new), strict=True):
        pq.write_table(table, out / rel)
    (out / MANIFEST_INDEX).write_text(json.dumps({"run_id": "r", "parts": names}))
    batches = list(iter_manifest_batches(open_store(str(out), StoreSpec(kind="local")), ["status", "route", "bytes"],
                                         batch_size=1))
    assert [b.num_rows for b in batches] == [1, 1, 1]
    table = pa.Table.from_batches(batches)
    assert table.schema == pa.schema([MANIFEST.field(c) for c in ("status", "route", "bytes")])
    assert table.to_pylist() == [{"status": "ok", "route": None, "bytes": 7}, {"status": "error", "route": None,
                                 "bytes": 0}, {"status": "ok", "route": "escalated", "bytes": 9}]


def test_manifest_parts_bundle_writer_batches_to_a_sixteenth_of_the_run_capped() -> None:
    """Each staged part is one write task, object and commit copy: about 1/16 of the run's rows, never more than
    MAX_PART_ROWS (what a killed run can lose per part in flight), at least 1."""
    from imagefleet.pipelines.manifest import MAX_PART_ROWS, part_rows

    assert part_rows(3200) == 200
    assert part_rows(48) == 3  # a small run still stages several parts (the commit chaos test kills between them)
    assert part_rows(5) == 1
    assert part_rows(1_000_000) == MAX_PART_ROWS == 512
