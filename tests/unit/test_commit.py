"""The manifest commit protocol on a local store: lease, row-count check, one-step commit, garbage; parts are
written once where they live (no copy), and the commit's requests don't grow with the parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.layout import LEASE, MANIFEST_INDEX, STAGING_DIR, attempt_prefix, run_part
from imagefleet.actors.resume_index import load_index
from imagefleet.actors.storage import ObjectStore
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.commit import CommitError, Lease, OutputBusy, commit, current_parts, stage_part

LOCAL = StoreSpec(kind="local")


def error_rows(prefix: str, count: int) -> pa.Table:
    """Manifest rows resume takes without an image object (error rows), keys `<prefix>-<i>`."""
    return pa.table({"image_key": [f"{prefix}-{i}" for i in range(count)], "status": ["error"] * count,
                     "error": ["boom"] * count})


def stage(root: Path, attempt: str, rows: int, files: int = 2) -> None:
    """An attempt's parts, as a run's write tasks leave them (`stage_part`)."""
    store = open_store(str(root), LOCAL)
    per = rows // files
    for n in range(files):
        count = per if n < files - 1 else rows - per * (files - 1)
        stage_part(store, attempt, error_rows(f"{attempt}-{n}", count))


def stage_old_layout(root: Path, attempt: str, rows: int) -> Path:
    """A part as versions before parts were written in place staged it: `manifest/_staging/<attempt>/<uuid>`."""
    folder = root / STAGING_DIR / attempt
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(error_rows(f"{attempt}-old", rows), folder / f"{uuid.uuid4().hex}.parquet")
    return folder


def rows_of(root: Path, parts: list[str]) -> int:
    return sum(pq.read_metadata(root / p).num_rows for p in parts)


def attempt_files(root: Path, attempt: str) -> list[Path]:
    return sorted(root.glob(f"{attempt_prefix(attempt)}*.parquet"))


class Killed(BaseException):
    """The driver killed at this point (nothing catches it, nothing cleans up)."""


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


def test_commit_makes_the_parts_current_in_one_step(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "r1", ttl_s=60) as one:
        stage(tmp_path, one.attempt, 10)
        written = sorted(str(p.relative_to(tmp_path)) for p in attempt_files(tmp_path, one.attempt))
        parts = commit(store, one, expected_rows=10)
    index = json.loads((tmp_path / MANIFEST_INDEX).read_text())
    assert index["parts"] == parts == current_parts(store) and index["num_rows"] == 10 and index["run_id"] == "r1"
    assert parts == written  # listed where they were written: nothing copied
    assert not (tmp_path / STAGING_DIR).exists()
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
        next(p for p in attempt_files(tmp_path, lease.attempt) if p.name.endswith("-2r.parquet")).unlink()  # lost
        with pytest.raises(CommitError, match="staged 3 manifest rows but requested 5"):
            commit(store, lease, expected_rows=5)
    assert not (tmp_path / MANIFEST_INDEX).exists() and current_parts(store) == []
    assert len(attempt_files(tmp_path, lease.attempt)) == 1  # kept, unlisted, for the next run's resume


@pytest.mark.parametrize("death", [Killed("kill -9"), OSError(28, "No space left on device")], ids=["kill", "full"])
def test_death_between_the_parts_and_the_index_leaves_the_old_manifest_and_loses_nothing(
        tmp_path: Path, death: BaseException) -> None:
    """The run's parts are written, its index write never happens: readers keep the previous manifest, the next
    run's resume reads the dead run's rows, and its commit removes them."""
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "good", ttl_s=60) as good:
        stage(tmp_path, good.attempt, 4)
        before = commit(store, good, expected_rows=4)
    real_put = type(store).put

    def put(self: Any, rel: str, data: bytes, content_type: str = "") -> None:
        if rel == MANIFEST_INDEX:
            raise death
        real_put(self, rel, data, content_type)

    with Lease(store, "dies", ttl_s=60) as dead:
        stage(tmp_path, dead.attempt, 9, files=3)
        with mock.patch.object(type(store), "put", put), pytest.raises(type(death)):
            commit(store, dead, expected_rows=9)
        assert not dead.committed
    assert current_parts(store) == before and rows_of(tmp_path, before) == 4
    assert len(attempt_files(tmp_path, dead.attempt)) == 3  # unlisted: only plain folder readers could see them
    # the next run resumes the dead run's rows (and the current manifest's)
    index = load_index(store, "png")
    assert {f"{dead.attempt}-{n}-0" for n in range(3)} | {f"{good.attempt}-0-0"} <= set(index.keys.astype(str))
    with Lease(store, "next", ttl_s=60) as after:
        stage(tmp_path, after.attempt, 9, files=3)
        parts = commit(store, after, expected_rows=9)
    assert sorted((tmp_path / "manifest").glob("*.parquet")) == sorted(tmp_path / p for p in parts)


def test_a_rerun_with_the_same_run_id_commits_only_its_own_rows(tmp_path: Path) -> None:
    """Orchestrators retry with deterministic ids: a crashed attempt's parts must not be committed, nor those of
    an attempt whose name merely starts with this one's."""
    store = open_store(str(tmp_path), LOCAL)
    crashed = Lease(store, "nightly-7", ttl_s=60)  # crashed attempt: written, never committed, lease gone
    stage(tmp_path, crashed.attempt, 512)
    with Lease(store, "nightly-7", ttl_s=60) as retry:
        assert retry.attempt != crashed.attempt
        stage(tmp_path, f"{retry.attempt}-x.1", 5, files=1)  # run id `nightly-7.<nonce>-x`: same name prefix
        stage(tmp_path, retry.attempt, 600)
        commit(store, retry, expected_rows=600)
    assert rows_of(tmp_path, current_parts(store)) == 600
    assert not attempt_files(tmp_path, crashed.attempt)  # its rows were the retry's to resume: now garbage


def test_the_commit_copies_nothing_and_its_requests_do_not_grow_with_the_parts(tmp_path: Path) -> None:
    """One LIST of the attempt's parts (rows from their names), the lease's HEAD and GET, the index PUT and the
    garbage LIST, whether the run wrote 1 part or 50: no footer read, no copy per part."""

    class Counting:
        """The store, counting calls per method (on S3 each is one request; a LIST one per 1,000 names)."""

        def __init__(self, store: ObjectStore) -> None:
            self.store, self.calls = store, Counter[str]()

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self.store, name)
            if not callable(attr):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return attr(*args, **kwargs)
            return call

    counts = {}
    for n in (1, 50):
        store = open_store(str(tmp_path / f"parts{n}"), LOCAL)
        with Lease(store, "r", ttl_s=60) as lease:
            stage(tmp_path / f"parts{n}", lease.attempt, 3 * n, files=n)
            counting = Counting(store)
            lease.store = counting  # type: ignore[assignment]
            no_reads = mock.patch("pyarrow.parquet.read_metadata", side_effect=AssertionError("a footer read"))
            with no_reads, mock.patch("pyarrow.parquet.ParquetFile", side_effect=AssertionError("a part read")):
                assert len(commit(counting, lease, expected_rows=3 * n)) == n  # type: ignore[arg-type]
            lease.store = store
        counts[n] = counting.calls
    assert counts[1] == counts[50] == {"list": 2, "exists": 1, "get": 1, "put": 1}


def test_an_old_layout_staged_part_is_resumed_and_removed_by_the_next_commit(tmp_path: Path) -> None:
    """Outputs of versions that staged parts in `manifest/_staging/<attempt>/`: an interrupted run's rows there
    are resumed (a torn one left out) and the next commit removes the folder."""
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "r1", ttl_s=60) as one:
        stage(tmp_path, one.attempt, 3)
        current = commit(store, one, expected_rows=3)
    folder = stage_old_layout(tmp_path, "old.dead", 2)
    (folder / "torn.parquet").write_bytes(b"PAR1 half a part")
    assert current_parts(store) == current  # readers following the index never see it
    index = load_index(store, "png")
    assert {"old.dead-old-0", "old.dead-old-1", f"{one.attempt}-0-0"} <= set(index.keys.astype(str))
    with Lease(store, "r2", ttl_s=60) as two:
        stage(tmp_path, two.attempt, 4)
        commit(store, two, expected_rows=4)
    assert not (tmp_path / STAGING_DIR).exists()


def test_an_unreadable_part_fails_resume_only_when_it_is_committed(tmp_path: Path) -> None:
    """A torn part no index lists (a dead run's) is left out; a torn committed part is a broken output: loud."""
    store = open_store(str(tmp_path), LOCAL)
    with Lease(store, "r1", ttl_s=60) as one:
        stage(tmp_path, one.attempt, 4)
        current = commit(store, one, expected_rows=4)
    (tmp_path / run_part("dead.1", uuid.uuid4().hex, 7)).write_bytes(b"PAR1 torn")
    assert f"{one.attempt}-1-0" in load_index(store, "png")
    (tmp_path / current[0]).write_bytes(b"PAR1 torn")
    with pytest.raises(pa.ArrowInvalid):
        load_index(store, "png")


def test_readers_of_the_part_list_see_only_committed_parts_mid_commit(tmp_path: Path) -> None:
    """Before the first commit nothing is current (the parts written so far are no manifest yet); right before a
    later commit's index write, the previous run's parts and nothing else."""
    from imagefleet.pipelines.manifest import manifest_files

    store = open_store(str(tmp_path), LOCAL)
    seen: list[list[str]] = []
    real_check = Lease.check

    def check(self: Lease) -> None:  # right before the index write: every part of the run is in manifest/
        seen.append(manifest_files(store))
        real_check(self)

    with mock.patch.object(Lease, "check", check):
        for run, rows in (("first", 4), ("second", 6)):
            with Lease(store, run, ttl_s=60) as lease:
                stage(tmp_path, lease.attempt, rows)
                commit(store, lease, expected_rows=rows)
            seen.append(manifest_files(store))
    before_first, first, before_second, second = seen
    assert before_first == [] and before_second == first and len(first) == 2 and first != second
    assert rows_of(tmp_path, [store.rel_of(f) for f in second]) == 6


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
    assert len(attempt_files(tmp_path, lease.attempt)) == 2  # unlisted, for the next run's resume
    os.remove(tmp_path / LEASE)


def test_a_rerun_removes_the_earlier_manifests_parts_in_batches_on_s3(s3_server: Any, bucket: str) -> None:
    """The garbage after a commit is the earlier manifest's parts (one per ≤512 rows): S3's DeleteObjects takes
    1,000 a request, so 1,001 old parts go in 2 requests, not 1,001."""
    from imagefleet.actors.layout import manifest_part
    from tests.unit.test_storage import spec

    store = open_store(f"s3://{bucket}/out", spec(s3_server))
    old = [manifest_part("old.1", n) for n in range(1001)]
    for rel in old:
        store.put(rel, b"PAR1", "application/octet-stream")
    client = store.client  # type: ignore[attr-defined]
    calls = Counter[str]()
    for name in ("delete_object", "delete_objects"):
        real = getattr(client, name)
        setattr(client, name, lambda *a, _real=real, _name=name, **k: (calls.update([_name]), _real(*a, **k))[1])
    with Lease(store, "r", ttl_s=60) as lease:
        stage_part(store, lease.attempt, error_rows("new", 3))
        parts = commit(store, lease, expected_rows=3)
    assert calls == {"delete_objects": 2, "delete_object": 1}  # (the one single delete: the lease's release)
    assert {rel for rel, _ in store.list("manifest/") if rel.endswith(".parquet")} == set(parts)


def test_a_part_that_cannot_be_deleted_is_a_warning_and_the_next_commit_retries(tmp_path: Path,
                                                                                caplog: Any) -> None:
    from imagefleet.actors.layout import manifest_part

    store = open_store(str(tmp_path), LOCAL)
    store.put(manifest_part("old.1", 0), b"PAR1", "application/octet-stream")
    with mock.patch.object(type(store), "delete", side_effect=OSError("read-only")), Lease(store, "r", 60) as lease:
        stage_part(store, lease.attempt, error_rows("new", 2))
        parts = commit(store, lease, expected_rows=2)  # committed all the same
    assert "could not delete an old manifest part" in caplog.text and "read-only" in caplog.text
    assert current_parts(store) == parts and (tmp_path / manifest_part("old.1", 0)).exists()
    with Lease(store, "r2", ttl_s=60) as lease:
        stage_part(store, lease.attempt, error_rows("newer", 2))
        commit(store, lease, expected_rows=2)
    assert not (tmp_path / manifest_part("old.1", 0)).exists()
