"""A prompt table of several files whose schemas each pass but don't merge (issue #30 item 6): refused before Ray
starts, naming both files; types that do merge (dictionary-encoded strings, int32 beside int64) are read as one."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import sleep_job


def _table(folder: Path, first: pa.Table, second: pa.Table) -> Path:
    folder.mkdir()
    pq.write_table(first, folder / "a.parquet")
    pq.write_table(second, folder / "b.parquet")
    return folder


def test_files_whose_column_types_dont_merge_are_refused_before_work(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import imagefleet
    from imagefleet.jobs.cli import main
    from tests.helpers import write_config

    src = _table(tmp_path / "t", pa.table({"id": pa.array([1, 2], pa.int64()), "prompt": ["a", "b"]}),
                 pa.table({"id": ["x", "y"], "prompt": ["c", "d"]}))
    raw = sleep_job(src, str(tmp_path / "out"))
    raw["source"]["id_column"] = "id"
    with pytest.raises(imagefleet.InputInvalid, match=r"column 'id' is int64 in .*a\.parquet but string in "
                                                      r".*b\.parquet; .*one type in every file"):
        imagefleet.run(raw, dry_run=True, echo=None)
    assert main(["run", str(write_config(tmp_path / "job.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.parquet" in err[0] and not (tmp_path / "out").exists()


def test_types_that_merge_are_read_as_one_table(tmp_path: Path) -> None:
    """A dictionary-encoded prompt beside a plain one, an int32 seed beside an int64 one: one table."""
    import imagefleet

    src = _table(tmp_path / "t",
                 pa.table({"prompt": pa.array(["a", "b"]).dictionary_encode(), "seed": pa.array([1, 2], pa.int32())}),
                 pa.table({"prompt": ["c", "d"], "seed": pa.array([3, 4], pa.int64())}))
    raw = sleep_job(src, str(tmp_path / "out"))
    raw["cluster"]["executor"] = "in_process"
    result = imagefleet.run(raw, echo=None)
    assert result.summary is not None and result.summary.num_ok == 4
