"""Reliability at the store's edges (issue #30): a store that keeps nothing is found before any work; a store
that fails past its retry budget stops the run instead of writing paid images off; nothing the code wrote itself
(a torn staged part, a lease it can't read) wedges an output; driver-side store calls ride out outages."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import pytest

from imagefleet.actors.local_store import LocalStore
from imagefleet.actors.storage import StorageError
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from tests.helpers import sleep_job, write_prompts

LOCAL = StoreSpec(kind="local")


def _in_process_job(tmp_path: Path, n: int) -> dict[str, Any]:
    write_prompts(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(n)]})
    raw = sleep_job(tmp_path / "p.parquet", str(tmp_path / "out"))
    raw["cluster"]["executor"] = "in_process"
    return raw


def _manifest(out: Path) -> list[dict[str, Any]]:
    from imagefleet.pipelines.manifest import read_manifest_columns

    cols = ["image_key", "status", "image_uri", "sha256", "already_present"]
    return list(read_manifest_columns(str(out), LOCAL, cols).to_pylist())


def _assert_exact(out: Path, n: int) -> list[dict[str, Any]]:
    """rows = requested, no duplicate keys, every ok row's object present with its sha256."""
    rows = _manifest(out)
    assert len(rows) == n and len({r["image_key"] for r in rows}) == n
    for r in rows:
        assert r["status"] == "ok"
        data = Path(r["image_uri"].removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
    return rows


def test_a_store_that_keeps_nothing_fails_the_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes accepted, nothing kept: every image would be made (and paid) before the commit failed."""
    import imagefleet

    monkeypatch.setattr(LocalStore, "put", lambda self, rel, data, content_type="": None)
    with pytest.raises(StorageError, match="does not keep a written object"):
        open_store(str(tmp_path / "o"), LOCAL).check_writable()
    with pytest.raises(imagefleet.InputInvalid, match="does not keep a written object; use one that keeps"):
        imagefleet.run(_in_process_job(tmp_path, 2), dry_run=True, echo=None)


@pytest.mark.parametrize(("method", "problem"), [
    ("get", "returned other bytes than were written"),
    ("list", "does not list a written object"),
    ("put_if_absent", "accepted a conditional write over an existing object"),
])
def test_the_store_probe_reads_back_lists_and_checks_write_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                method: str, problem: str) -> None:
    forged = {"get": lambda self, rel: b"other", "list": lambda self, prefix: iter([]),
              "put_if_absent": lambda self, rel, *a, **k: (True, "")}
    monkeypatch.setattr(LocalStore, method, forged[method])
    with pytest.raises(StorageError, match=problem):
        open_store(str(tmp_path / "o"), LOCAL).check_writable()


def test_the_probe_leaves_nothing_in_a_local_output(tmp_path: Path) -> None:
    open_store(str(tmp_path / "o"), LOCAL).check_writable()
    assert list((tmp_path / "o").iterdir()) == []  # no empty _probe/ folder


def test_a_full_disk_fails_the_run_and_a_rerun_ends_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store failing under the writer is no property of the rows: the run stops (exit 1, one line, nothing
    committed) instead of committing error rows a plain rerun would carry over; the rerun makes exactly what
    is missing and adopts what was stored."""
    import imagefleet

    raw = _in_process_job(tmp_path, 4)
    real = LocalStore.put_if_absent
    calls = {"n": 0}

    def full_after_two(self: LocalStore, rel: str, *args: Any, **kwargs: Any) -> tuple[bool, str]:
        if rel.startswith("images/"):
            calls["n"] += 1
            if calls["n"] > 2:  # the 3rd image meets a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rel, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "put_if_absent", full_after_two)
    with pytest.raises(imagefleet.RunFailed) as failed:
        imagefleet.run(raw, echo=None)
    line = str(failed.value).splitlines()[0]
    assert "can't be written: No space left on device" in line and "nothing was committed" in line
    assert not (tmp_path / "out" / "manifest" / "_manifest.json").exists()
    monkeypatch.setattr(LocalStore, "put_if_absent", real)
    result = imagefleet.run(raw, echo=None)
    assert result.summary is not None and result.summary.num_ok == 4
    rows = _assert_exact(tmp_path / "out", 4)
    assert sum(r["already_present"] for r in rows) == 2  # stored before the disk filled: found, not made again


def test_a_row_specific_upload_refusal_stays_the_rows_error(tmp_path: Path) -> None:
    """Only store-wide failures stop the run; a refusal of one object (a policy, a bad name) is that row's."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    from imagefleet.actors.image_writer import store_is_down

    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Put")
    assert not store_is_down(denied) and not store_is_down(OSError(errno.ENAMETOOLONG, "name"))
    assert store_is_down(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert store_is_down(OSError(errno.ENOSPC, "full"))


def test_torn_staged_parts_of_a_dead_run_never_wedge_the_output(tmp_path: Path) -> None:
    """A kill -9 or a full disk mid part-write left a 0-byte or half-written staged part (older versions wrote
    parts in place): every rerun failed reading it. Resume now leaves such a part out (with a warning)."""
    import imagefleet

    raw = _in_process_job(tmp_path, 3)
    imagefleet.run(raw, echo=None)
    part = next((tmp_path / "out" / "manifest").glob("part-*.parquet"))
    dead = tmp_path / "out" / "manifest" / "_staging" / "dead-run.0000"
    dead.mkdir(parents=True)
    (dead / "empty.parquet").write_bytes(b"")
    (dead / "torn.parquet").write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    result = imagefleet.run(raw, echo=None)
    assert result.summary is not None and result.summary.num_already_present == 3
    _assert_exact(tmp_path / "out", 3)
    assert not (tmp_path / "out" / "manifest" / "_staging").exists()  # committed: the staging folders are gone


def test_a_part_write_that_fails_midway_leaves_no_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    from imagefleet.pipelines.commit import stage_part

    store = open_store(str(tmp_path / "o"), LOCAL)

    def half_then_full(self: Path, data: bytes) -> int:
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(OSError, match="No space"):
        stage_part(store, "run.attempt", pa.table({"image_key": ["k"]}))
    assert [p for p in (tmp_path / "o").rglob("*") if p.is_file()] == []  # no part, no temporary file


@pytest.mark.parametrize("expiry", ["NaN", "Infinity", "1e20", "-Infinity", '"soon"', "1e400"])
def test_a_lease_with_an_absurd_expiry_counts_as_expired(tmp_path: Path, expiry: str) -> None:
    """A forged or corrupted lease must not block an output for good (NaN never compares as expired)."""
    import json

    from imagefleet.pipelines.commit import Lease

    store = open_store(str(tmp_path / "o"), LOCAL)
    body = f'{{"run_id": "ghost", "attempt": "ghost.1", "host": "elsewhere", "pid": 1, "expires_at": {expiry}}}'
    store.put("manifest/_lease.json", body.encode())
    lease = Lease(store, "mine", ttl_s=60).acquire()
    try:
        assert json.loads(store.get("manifest/_lease.json"))["run_id"] == "mine"
    finally:
        lease.release()
    assert not store.exists("manifest/_lease.json")


def test_store_failures_after_the_commit_point_never_fail_the_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The store drops right after the index write: garbage collection, the lease release, run.json and the
    summary's read-back fail, yet the run is committed — exit 0, and nothing raises from a `finally`."""
    from botocore.exceptions import EndpointConnectionError

    import imagefleet
    import imagefleet.pipelines.commit
    from imagefleet.actors.layout import MANIFEST_INDEX

    raw = _in_process_job(tmp_path, 2)
    real_put = LocalStore.put
    down = {"on": False}

    def put(self: LocalStore, rel: str, data: bytes, content_type: str = "") -> None:
        if down["on"]:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        real_put(self, rel, data, content_type)
        if rel == MANIFEST_INDEX:
            down["on"] = True  # everything after the commit point meets an outage

    def outage(*_: Any, **__: Any) -> Any:
        if down["on"]:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return None

    for name in ("delete", "delete_prefix", "exists", "get"):
        real = getattr(LocalStore, name)
        monkeypatch.setattr(LocalStore, name, lambda self, *a, _real=real, **k: outage() or _real(self, *a, **k))
    monkeypatch.setattr(LocalStore, "put", put)
    monkeypatch.setattr(imagefleet.pipelines.commit, "collect_garbage", lambda *a, **k: outage())
    result = imagefleet.run(raw, echo=None)
    assert result.summary is not None and result.summary.unread.startswith("committed")
    assert "not written" in result.record_uri
    down["on"] = False
    _assert_exact(tmp_path / "out", 2)


@pytest.mark.parametrize(("field", "value"), [
    ("width", 2 ** 40),  # made every rerun crash (OverflowError in the preprocessor)
    ("cost_usd", float("inf")),
    ("cost_usd", -1000.0),
    ("model", "m" * 3_000),  # past what any record holds (an xattr here takes ~4 KB; S3 metadata 2 KB)
    ("seed", 999),  # not the request's seed
    ("sha256", "0" * 64),  # the digest kept with the object, not its bytes'
])
def test_forged_image_records_never_enter_the_manifest(tmp_path: Path, field: str, value: Any) -> None:
    """Anyone who can write object metadata can write an image's record: a rerun that adopts images whose rows
    were lost checks each record like input (type and range, size, the digest computed); a bad one means that
    row's image is made again (or reported with the request's own settings), never a crash."""
    import json
    import os
    import shutil

    import imagefleet
    from imagefleet.actors.local_store import RECORD_XATTR, SHA256_XATTR

    raw = _in_process_job(tmp_path, 2)
    imagefleet.run(raw, echo=None)
    before = {r["image_key"]: r for r in _manifest(tmp_path / "out")}
    shutil.rmtree(tmp_path / "out" / "manifest")  # every row lost: the images are adopted through their records
    image = Path(next(iter(before.values()))["image_uri"].removeprefix("file://"))
    if field == "sha256":
        os.setxattr(image, SHA256_XATTR, str(value).encode())
    else:
        record = json.loads(os.getxattr(image, RECORD_XATTR))
        record[field] = value
        os.setxattr(image, RECORD_XATTR, json.dumps(record).encode())
    result = imagefleet.run(raw, echo=None)
    assert result.summary is not None and result.summary.num_ok == 2
    rows = _assert_exact(tmp_path / "out", 2)  # digests checked against the bytes
    from imagefleet.pipelines.manifest import read_manifest_columns

    full = read_manifest_columns(str(tmp_path / "out"), LOCAL, ["width", "cost_usd", "model", "seed"]).to_pylist()
    for row in full:
        assert row["width"] == 16 and 0 <= row["cost_usd"] < 1 and len(row["model"]) < 200
    assert sorted(r["seed"] for r in full) == sorted(  # the request's seeds
        int(v) for v in read_manifest_columns(str(tmp_path / "out"), LOCAL, ["seed"]).column("seed").to_pylist())
    assert {r["image_key"] for r in rows} == set(before)
