"""The manifest commit protocol: one run owns an output at a time, and a manifest becomes current in one step.

    acquire    manifest/_lease.json, created with a conditional put (If-None-Match) and renewed while the run
               lives; another run on the same output is refused; an expired lease (or one whose driver died on
               this host) is taken over
    stage      the run's parts stream to manifest/_staging/<attempt>/ (attempt = <run_id>.<nonce>: a rerun with
               the same --run-id never mixes its parts with a crashed attempt's)
    check      the staged rows must be exactly the rows the run requested (footers only), else nothing commits
    copy       staged parts → manifest/part-<attempt>-NNNNN.parquet (new names: nothing current is overwritten)
    commit     manifest/_manifest.json is rewritten to list exactly those parts: the single atomic step; readers
               that follow it see the old manifest or the new one, never a mix
    clean up   parts no longer listed and the staging folders are deleted (a crash here leaves only garbage,
               removed by the next run that holds the lease)
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagefleet.actors.layout import (
    LEASE,
    MANIFEST_DIR,
    MANIFEST_INDEX,
    STAGING_DIR,
    is_manifest_part,
    manifest_part,
    staging_dir,
)
from imagefleet.actors.storage import ObjectStore, StorageError, arrow_filesystem
from imagefleet.actors.store_errors import with_retries

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
MAX_LEASE_TTL_S = 7 * 24 * 3600.0
"""The longest lease a run may write (`output.lease_ttl_s` is capped there): a lease expiring later is absurd."""
COMMIT_THREADS = 16  # footer reads and copies are small requests: latency-bound


class OutputBusy(StorageError):
    """Another live run holds the output's lease."""


class CommitError(RuntimeError):
    """The staged manifest can't become current (wrong row count, lease lost, store failure): nothing committed."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease."""

    run_id: str
    attempt: str
    host: str
    pid: int
    expires_at: float

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            raw = json.loads(data)
            held = cls(run_id=str(raw["run_id"]), attempt=str(raw["attempt"]), host=str(raw["host"]),
                       pid=int(raw["pid"]), expires_at=float(raw["expires_at"]))
        except (ValueError, KeyError, TypeError, OverflowError):
            return None  # unreadable: treated as expired
        return held if math.isfinite(held.expires_at) else None  # NaN / Infinity: never a real expiry

    def dead(self, now: float) -> bool:
        """Expired, held by a driver process on this host that no longer exists (or by this process, in an attempt
        that ended: a notebook's run whose release met an outage), or with an expiry no run sets (beyond
        MAX_LEASE_TTL_S from now: a forged or corrupted lease must not block an output for good)."""
        if self.expires_at < now or self.expires_at > now + MAX_LEASE_TTL_S:
            return True
        if self.host == socket.gethostname() and self.pid == os.getpid():
            return self.attempt not in _LIVE_ATTEMPTS
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


_LIVE_ATTEMPTS: set[str] = set()
"""This process's lease attempts that are running (acquired, not yet released)."""


class Lease:
    """Exclusive ownership of an output for one run attempt, renewed by a background thread until released.

    Args:
        store: the output store.
        run_id: the run (shown to a refused second run).
        ttl_s: how long the lease lives without renewal (a crashed driver blocks the output at most this long;
            on the same host, a dead driver's lease is taken over at once).
    """

    def __init__(self, store: ObjectStore, run_id: str, ttl_s: float) -> None:
        self.store, self.run_id, self.ttl_s = store, run_id, ttl_s
        self.attempt = f"{run_id}.{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.committed = False
        """Set at the commit point (the index write): what fails later can't undo the run."""

    def _body(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "attempt": self.attempt, "host": socket.gethostname(),
                           "pid": os.getpid(), "expires_at": time.time() + self.ttl_s}).encode()

    def holder(self) -> Holder | None:
        """The current holder (None when there is no lease)."""
        try:
            return Holder.parse(self.store.get(LEASE)) if self.store.exists(LEASE) else None
        except StorageError:
            return None

    def acquire(self) -> Lease:
        """Take the lease or raise OutputBusy naming the run that holds it."""
        for _ in range(3):
            body = self._body()
            written, _ = self.store.put_if_absent(LEASE, body, "application/json", "")
            if written or ((held := self.holder()) is not None and held.attempt == self.attempt):
                _LIVE_ATTEMPTS.add(self.attempt)
                self._start_renewing()
                return self
            if held is not None and not held.dead(time.time()):
                until = time.strftime("%H:%M:%S", time.localtime(held.expires_at))
                raise OutputBusy(
                    f"{self.store.location.uri} is being written by run {held.run_id!r} (host {held.host}, pid "
                    f"{held.pid}; lease until {until}): wait for it, or write to another output.uri")
            logger.warning("taking over the expired lease of run %s", held.run_id if held else "?")
            self.store.delete(LEASE)
        raise OutputBusy(f"could not take the lease of {self.store.location.uri}; another run is starting there")

    def check(self) -> None:
        """Raise CommitError unless this attempt still holds the lease (checked right before committing)."""
        held = self.holder()
        if held is None or held.attempt != self.attempt:
            raise CommitError(f"the lease on {self.store.location.uri} was taken over by run "
                              f"{held.run_id if held else '?'} (this run was paused longer than its lease)")

    def _start_renewing(self) -> None:
        def renew() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    held = self.holder()
                    if held is None or held.attempt == self.attempt:
                        self.store.put(LEASE, self._body(), "application/json")
                except StorageError as exc:  # the next renewal may get through; check() decides at commit
                    logger.warning("lease renewal failed: %s", exc)

        self._thread = threading.Thread(target=renew, name="imagefleet-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this attempt's."""
        self._stop.set()
        _LIVE_ATTEMPTS.discard(self.attempt)
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:  # called from `finally`: never raises (a lease left behind expires by itself)
            held = self.holder()
            if held is not None and held.attempt == self.attempt:
                self.store.delete(LEASE)
        except Exception as exc:  # noqa: BLE001 - the run's outcome is decided; this is cleanup
            logger.warning("could not release the lease on %s (it expires by itself): %s",
                           self.store.location.uri, exc)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def current_parts(store: ObjectStore) -> list[str]:
    """The parts of the current manifest: those `_manifest.json` lists (outputs written before the index existed:
    every part in `manifest/`)."""
    if store.exists(MANIFEST_INDEX):
        index = json.loads(store.get(MANIFEST_INDEX))
        return [str(p) for p in index["parts"]]
    return sorted(rel for rel, _ in store.list(f"{MANIFEST_DIR}/") if is_manifest_part(rel))


def staged_rows(store: ObjectStore, parts: list[str]) -> int:
    """Rows in Parquet parts, from their footers (read concurrently: a run stages one part per block)."""
    import pyarrow.parquet as pq

    fs, root = arrow_filesystem(store.location.uri, store.spec)

    def rows(part: str) -> int:
        return int(with_retries(lambda: pq.read_metadata(f"{root}/{part}", filesystem=fs).num_rows,
                                store.spec.retry_budget_s, f"read {part}"))

    with ThreadPoolExecutor(max_workers=COMMIT_THREADS) as pool:
        return sum(pool.map(rows, parts))


PARQUET_TYPE = "application/vnd.apache.parquet"


def stage_part(store: ObjectStore, attempt: str, table: pa.Table) -> str:
    """Stage one manifest part of an attempt, whole or not at all: written by the store's `put` (a local file is
    renamed into place once complete; an S3 PUT is atomic) within the retry budget. A part torn by a full disk
    or a kill never appears under a part's name. Returns its relative path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    rel = f"{staging_dir(attempt)}/{uuid.uuid4().hex}.parquet"
    store.put(rel, sink.getvalue().to_pybytes(), PARQUET_TYPE)
    return rel


def commit(store: ObjectStore, lease: Lease, expected_rows: int) -> list[str]:
    """Make the lease attempt's staged parts the current manifest (see the module docstring); returns its parts.

    Raises:
        CommitError: the staged rows are not the rows requested, or the lease was lost; nothing is committed and
            the staged parts stay for the next run's resume.
    """
    # 1 check: exactly one staged row per requested image
    staged = sorted(rel for rel, _ in store.list(f"{staging_dir(lease.attempt)}/") if rel.endswith(".parquet"))
    rows = staged_rows(store, staged)
    if rows != expected_rows:
        raise CommitError(f"the run staged {rows} manifest rows but requested {expected_rows} images; nothing was "
                          f"committed (a store that accepts writes but loses them? rerun to resume)")
    # 2 copy under new names: the current manifest's files are never touched
    parts = [manifest_part(lease.attempt, n) for n in range(len(staged))]
    try:
        with ThreadPoolExecutor(max_workers=COMMIT_THREADS) as pool:
            list(pool.map(store.copy, staged, parts))  # server-side copies; list() re-raises the first failure
    except Exception:
        _delete_quietly(store, parts)  # not listed anywhere: only plain folder readers could see them
        raise
    # 3 the commit point: one small object, written last, after checking nobody took the output over
    lease.check()
    index = {"version": INDEX_VERSION, "run_id": lease.run_id, "attempt": lease.attempt, "num_rows": rows,
             "committed_at": time.time(), "parts": parts}
    store.put(MANIFEST_INDEX, json.dumps(index, indent=1).encode(), "application/json")
    lease.committed = True
    # 4 garbage: earlier parts and every staging folder (the lease holder is the only writer); after the commit
    #   point nothing may fail the run: what isn't removed now is removed by the next run's collection
    try:
        collect_garbage(store, staging=True)
    except Exception as exc:  # noqa: BLE001 - garbage only
        logger.warning("committed; cleaning up old parts of %s failed (the next run retries): %s",
                       store.location.uri, exc)
    return parts


def collect_garbage(store: ObjectStore, staging: bool) -> None:
    """Delete manifest parts the index doesn't list (left by a commit that died before its index write), and with
    `staging` all staged parts. Only call while holding the lease.

    Staged parts of interrupted runs are read by resume when a run starts, so they may only go once that run's
    manifest, which includes their rows, is committed.
    """
    if store.exists(MANIFEST_INDEX):  # before the first index, every part in manifest/ is the manifest
        listed = set(current_parts(store))
        stale = [rel for rel, _ in store.list(f"{MANIFEST_DIR}/") if is_manifest_part(rel) and rel not in listed]
        _delete_quietly(store, stale)
    if staging:
        store.delete_prefix(STAGING_DIR)


def _delete_quietly(store: ObjectStore, rels: list[str]) -> None:
    for rel in rels:
        try:
            store.delete(rel)
        except Exception as exc:  # noqa: BLE001 - garbage; the next commit tries again
            logger.warning("could not delete %s: %s", rel, exc)
