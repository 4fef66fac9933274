"""Other engines read the committed manifest without a recipe, typed, even mid-commit: given the part list
(`imagefleet.manifest_files`, `imagefleet cat --parts`), DuckDB and pyarrow read exactly the committed rows while
another run sits between its copy and its index write; a glob of `manifest/*.parquet` then sees both runs."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imagefleet
from bench.manifest_formats import manifest_table
from imagefleet.actors.storage import ObjectStore, resolve_store_spec
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import S3Config, StoreSpec
from imagefleet.jobs import cat
from imagefleet.pipelines.commit import Lease, commit, stage_part
from imagefleet.pipelines.schema import MANIFEST
from tests.helpers import CLI, REPO

ROWS = 24
DUCKDB_TYPES = {  # what DuckDB makes of the typed columns: no casts, no JSON parsing
    "generated_at": "TIMESTAMP WITH TIME ZONE",
    "template_vars": "STRUCT(\"key\" VARCHAR, \"value\" VARCHAR)[]",
    "input_images": "VARCHAR[]",
    "adapters": "STRUCT(\"name\" VARCHAR, weight DOUBLE)[]",
    "candidates": "STRUCT(seed BIGINT, score DOUBLE)[]",
}


def commit_rows(store: ObjectStore, table: pa.Table, run_id: str) -> None:
    """One run's commit of `table`, staged as two parts (as a run stages them)."""
    with Lease(store, run_id, ttl_s=60) as lease:
        half = table.num_rows // 2
        stage_part(store, lease.attempt, table.slice(0, half))
        stage_part(store, lease.attempt, table.slice(half))
        commit(store, lease, table.num_rows)


@contextmanager
def commit_paused_before_its_index(store: ObjectStore, table: pa.Table, run_id: str) -> Iterator[None]:
    """Another run's commit, held (by events) after its parts are copied into manifest/ and before
    `_manifest.json` names them, for the duration of the block; then let through and checked."""
    copied, resume, failed = threading.Event(), threading.Event(), []
    real_check = Lease.check

    def check(self: Lease) -> None:  # called right between the copy and the index write
        copied.set()
        if not resume.wait(60):
            raise TimeoutError("the test never let the commit through")
        real_check(self)

    def run() -> None:
        try:
            commit_rows(store, table, run_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)
            copied.set()

    with mock.patch.object(Lease, "check", check):
        thread = threading.Thread(target=run)
        thread.start()
        assert copied.wait(60) and not failed, failed
        try:
            yield
        finally:
            resume.set()
            thread.join(60)
    assert not failed, failed


def by_key(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda row: row["image_key"])


def test_engines_given_the_part_list_read_exactly_the_committed_rows_mid_commit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    store = open_store(str(out), StoreSpec(kind="local"))
    first, second = manifest_table(ROWS, "first", seed=1), manifest_table(ROWS, "second", seed=2)
    commit_rows(store, first, "first")
    glob = f"{out}/manifest/*.parquet"
    with commit_paused_before_its_index(store, second, "second"):
        files = imagefleet.manifest_files(str(out))
        assert cat.main(["--parts", str(out)]) == 0
        assert capsys.readouterr().out.splitlines() == files  # the CLI prints the same list, one URI a line
        assert len(files) == 2 and all(Path(f).is_absolute() and "part-first." in f for f in files)
        # pyarrow: the parts' own schema is the manifest's typed schema; the rows are the first run's, exactly
        read = pq.read_table(files)
        assert read.schema.equals(MANIFEST) and by_key(read) == by_key(first)
        # DuckDB: typed columns as SQL types, the first run's rows only
        rel = duckdb.read_parquet(files)
        assert {c: str(t) for c, t in zip(rel.columns, rel.types, strict=True) if c in DUCKDB_TYPES} == DUCKDB_TYPES
        row = duckdb.sql("select count(*), count(distinct image_key), min(run_id), max(run_id), "
                         "max(map_from_entries(template_vars)['style']), max(candidates[1].seed), "
                         "max(adapters[1].name), "
                         "max(extract('year' from generated_at)) from read_parquet($files)",
                         params={"files": files}).fetchall()[0]
        assert row[:4] == (ROWS, ROWS, "first", "first") and row[4] in ("ink", "oil") and row[5] is not None
        assert row[6] == "pixel" and row[7] >= 2026
        # a glob over the folder sees both runs' parts: every image twice
        assert duckdb.sql(f"select count(*), count(distinct image_key) from read_parquet('{glob}')"
                          ).fetchall() == [(2 * ROWS, 2 * ROWS)]
        assert pq.read_table(f"{out}/manifest").num_rows == 2 * ROWS  # pyarrow's folder discovery alike
    # committed: the list names the second run's parts, and the old ones are gone
    after = imagefleet.manifest_files(str(out))
    assert after != files and by_key(pq.read_table(after)) == by_key(second)
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall() == [(ROWS,)]


def test_an_output_without_a_committed_manifest_is_one_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert cat.main(["--parts", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no committed manifest at" in err and "finished run" in err
    with pytest.raises(imagefleet.InputInvalid, match="no committed manifest"):
        imagefleet.manifest_files(str(tmp_path / "empty"))


@pytest.mark.slow
def test_an_s3_outputs_part_list_reads_typed_mid_commit(s3_env: Any, bucket: str) -> None:
    """On the embedded S3: `imagefleet cat --parts` prints s3:// URIs that pyarrow (and DuckDB over pyarrow's
    dataset: no extension download) read as the committed rows while the next commit is paused."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    uri = f"s3://{bucket}/run"
    store = open_store(uri, resolve_store_spec(uri, S3Config()))
    first, second = manifest_table(ROWS, "first", seed=1), manifest_table(ROWS, "second", seed=2)
    commit_rows(store, first, "first")
    with commit_paused_before_its_index(store, second, "second"):
        listed = subprocess.run([*CLI, "cat", "--parts", uri], capture_output=True, text=True, cwd=REPO, check=True)
        files = listed.stdout.splitlines()
        assert files == imagefleet.manifest_files(uri) and all(f.startswith(f"s3://{bucket}/run/manifest/part-")
                                                               for f in files)
        fs, _ = pafs.FileSystem.from_uri(uri)  # pyarrow's S3: AWS_ENDPOINT_URL and the keys from the environment
        parts = pads.dataset([f.removeprefix("s3://") for f in files], filesystem=fs)
        read = parts.to_table()
        assert read.schema.equals(MANIFEST) and by_key(read) == by_key(first)
        assert duckdb.from_arrow(parts).aggregate("count(*), min(run_id), max(run_id)").fetchall() == [
            (ROWS, "first", "first")]
        globbed = pads.dataset(f"{bucket}/run/manifest", filesystem=fs, format="parquet")
        assert globbed.count_rows() == 2 * ROWS
    after = [f.removeprefix("s3://") for f in imagefleet.manifest_files(uri)]
    assert by_key(pads.dataset(after, filesystem=fs).to_table()) == by_key(second)
