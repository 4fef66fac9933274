"""The manifest commit protocol on a local store: lease, row-count check, one-step commit, garbage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.layout import LEASE, MANIFEST_INDEX, manifest_part, staging_dir
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.commit import CommitError, Lease, OutputBusy, collect_garbage, commit, current_parts

LOCAL = StoreSpec(kind="local")


def stage(root: Path, attempt: str, rows: int, files: int = 2) -> None:
    folder = root / staging_dir(attempt)
    folder.mkdir(parents=True, exist_ok=True)
    per = rows // files
    for n in range(files):
        count = per if n < files - 1 else rows - per * (files - 1)
        pq.write_table(pa.table({"image_key": [f"{attempt}-{n}-{i}" for i in range(count)]}), folder / f"{n}.parquet")


def rows_of(root: Path, parts: list[str]) -> int:
    return sum(pq.read_metadata(root / p).num_rows for p in parts)


def test_a_second_run_is_refused_while_the_first_holds_the_output(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "first", ttl_s=60), pytest.raises(OutputBusy, match="is being written by run 'first'"):
        Lease(store, "second", ttl_s=60).acquire()
    # released: the next run gets it
    with Lease(store, "second", ttl_s=60) as lease:
        assert json.loads((tmp_path / LEASE).read_text())["attempt"] == lease.attempt
    assert not (tmp_path / LEASE).exists()


def test_an_expired_or_dead_drivers_lease_is_taken_over(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    (tmp_path / "manifest").mkdir()
    # expired (a driver on another host that stopped renewing)
    (tmp_path / LEASE).write_text(json.dumps({"run_id": "old", "attempt": "old.1", "host": "elsewhere", "pid": 1,
                                              "expires_at": time.time() - 1}))
    with Lease(store, "new", ttl_s=60) as lease:
        assert json.loads((tmp_path / LEASE).read_text())["attempt"] == lease.attempt
    # not expired, but its driver process on this host is gone (kill -9)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / LEASE).write_text(json.dumps({"run_id": "killed", "attempt": "killed.1", "host": socket.gethostname(),
                                              "pid": dead.pid, "expires_at": time.time() + 3600}))
    with Lease(store, "after-kill", ttl_s=60):
        pass


def test_the_lease_is_renewed_while_the_run_lives(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "long", ttl_s=0.6):
        first = json.loads((tmp_path / LEASE).read_text())["expires_at"]
        time.sleep(0.9)  # past the first ttl: only renewal keeps it
        assert json.loads((tmp_path / LEASE).read_text())["expires_at"] > first
        with pytest.raises(OutputBusy):
            Lease(store, "other", ttl_s=60).acquire()


def test_commit_makes_the_staged_parts_current_in_one_step(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "r1", ttl_s=60) as one:
        stage(tmp_path, one.attempt, 10)
        parts = commit(store, one, expected_rows=10)
    index = json.loads((tmp_path / MANIFEST_INDEX).read_text())
    assert index["parts"] == parts == current_parts(store) and index["num_rows"] == 10 and index["run_id"] == "r1"
    assert not (tmp_path / "manifest" / "_staging").exists()
    # the next run replaces it: old parts go, and plain folder readers see only the new manifest
    with Lease(store, "r2", ttl_s=60) as two:
        stage(tmp_path, two.attempt, 7, files=3)
        commit(store, two, expected_rows=7)
    assert rows_of(tmp_path, current_parts(store)) == 7
    assert sorted(p.name for p in (tmp_path / "manifest").glob("*.parquet")) == sorted(
        Path(p).name for p in current_parts(store))


def test_a_row_count_mismatch_commits_nothing(tmp_path: Path) -> None:
    """A store that accepts writes but loses them (or a run that dropped rows) must not commit 0 rows."""
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "r1", ttl_s=60) as lease:
        stage(tmp_path, lease.attempt, 5)
        with pytest.raises(CommitError, match="staged 5 manifest rows but requested 6 images; nothing was committed"):
            commit(store, lease, expected_rows=6)
        vanished = mock.patch.object(type(store), "list", return_value=iter([]))  # writes that were lost
        with vanished, pytest.raises(CommitError, match="staged 0 manifest rows"):
            commit(store, lease, expected_rows=5)
    assert not (tmp_path / MANIFEST_INDEX).exists()
    assert (tmp_path / staging_dir(lease.attempt)).exists()  # kept for the next run's resume


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_a_failure_during_the_copy_leaves_the_previous_manifest_current(tmp_path: Path, fail_after: int) -> None:
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "good", ttl_s=60) as good:
        stage(tmp_path, good.attempt, 4)
        before = commit(store, good, expected_rows=4)
    real_copy, calls = type(store).copy, []

    def flaky(self: Any, src: str, dst: str) -> None:
        if len(calls) >= fail_after:
            raise OSError(28, "No space left on device")
        calls.append(dst)
        real_copy(self, src, dst)

    with Lease(store, "full-disk", ttl_s=60) as lease:
        stage(tmp_path, lease.attempt, 9, files=3)
        with mock.patch.object(type(store), "copy", flaky), pytest.raises(OSError):
            commit(store, lease, expected_rows=9)
    assert current_parts(store) == before and rows_of(tmp_path, before) == 4
    # the half-copied parts were removed: even a plain folder reader sees only the current manifest
    assert sorted((tmp_path / "manifest").glob("*.parquet")) == sorted(tmp_path / p for p in before)


def test_a_rerun_with_the_same_run_id_commits_only_its_own_rows(tmp_path: Path) -> None:
    """Orchestrators retry with deterministic ids: a crashed attempt's staged parts must not be committed."""
    store = open_store(str(tmp_path), LOCAL)
    crashed = Lease(store, "nightly-7", ttl_s=60)  # crashed attempt: staged, never committed, lease gone
    stage(tmp_path, crashed.attempt, 512)
    with Lease(store, "nightly-7", ttl_s=60) as retry:
        assert retry.attempt != crashed.attempt
        stage(tmp_path, retry.attempt, 600)
        commit(store, retry, expected_rows=600)
    assert rows_of(tmp_path, current_parts(store)) == 600


def test_parts_of_a_commit_that_died_before_its_index_write_are_garbage(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "r1", ttl_s=60) as one:
        stage(tmp_path, one.attempt, 3)
        current = commit(store, one, expected_rows=3)
    orphan = tmp_path / manifest_part("r2.dead", 0)  # copied, then kill -9 before the index write
    pq.write_table(pa.table({"image_key": ["x"]}), orphan)
    stage(tmp_path, "r2.dead", 1, files=1)
    assert current_parts(store) == current  # readers following the index never see it
    with Lease(store, "r3", ttl_s=60):
        collect_garbage(store, staging=False)  # what a run does right after taking the lease
    assert not orphan.exists() and (tmp_path / staging_dir("r2.dead")).exists()  # staging stays for resume


def test_losing_the_lease_before_the_commit_point_commits_nothing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    lease = Lease(store, "paused", ttl_s=60).acquire()
    stage(tmp_path, lease.attempt, 2)
    (tmp_path / LEASE).write_text(json.dumps({"run_id": "thief", "attempt": "thief.1", "host": "h", "pid": 1,
                                              "expires_at": time.time() + 60}))
    with pytest.raises(CommitError, match="taken over by run thief"):
        commit(store, lease, expected_rows=2)
    lease.release()
    assert not (tmp_path / MANIFEST_INDEX).exists() and (tmp_path / LEASE).exists()  # the thief's lease stays
    os.remove(tmp_path / LEASE)
