"""The manifest commit protocol: one run owns an output at a time, and a manifest becomes current in one step.

    acquire    manifest/_lease.json, created with a conditional put (If-None-Match) and renewed while the run
               lives; another run on the same output is refused; an expired lease (or one whose driver died on
               this host) is taken over
    write      the run's parts are written once, where they live: manifest/part-<attempt>-<uid>-<rows>r.parquet
               (attempt = <run_id>.<nonce>: a rerun with the same --run-id never mixes its parts with a crashed
               attempt's); no index lists them yet, so every reader that follows the index ignores them
    check      one LIST of the attempt's name prefix: the rows the names state must be exactly the rows the run
               requested (a part the store lost is missing from the listing), else nothing commits
    commit     manifest/_manifest.json is rewritten to list exactly those parts: the single atomic step; readers
               that follow it see the old manifest or the new one, never a mix
    clean up   parts no longer listed (earlier runs', attempts that never committed, whose rows resume read into
               this run) and older versions' staging folder (manifest/_staging/) are deleted: a crash here leaves
               only garbage, removed by the next commit

The commit's requests don't grow with the run: a LIST page per 1,000 parts, the lease's HEAD and GET, one PUT.
A kill before the index write leaves the previous manifest current and this attempt's parts unlisted: the next
run's resume reads them (an unreadable one is left out), so nothing done is lost, and its commit removes them.
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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagefleet.actors.layout import (
    LEASE,
    MANIFEST_DIR,
    MANIFEST_INDEX,
    STAGING_DIR,
    attempt_prefix,
    is_manifest_part,
    run_part,
    run_part_rows,
)
from imagefleet.actors.manifest_index import current_parts
from imagefleet.actors.storage import ObjectStore, StorageError

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

__all__ = ["PARQUET_TYPE", "CommitError", "Lease", "OutputBusy", "collect_garbage", "commit", "current_parts",
           "stage_part"]

INDEX_VERSION = 1
MAX_LEASE_TTL_S = 7 * 24 * 3600.0
"""The longest lease a run may write (`output.lease_ttl_s` is capped there): a lease expiring later is absurd."""


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


PARQUET_TYPE = "application/vnd.apache.parquet"


def stage_part(store: ObjectStore, attempt: str, table: pa.Table) -> str:
    """Write one manifest part of an attempt where it will live (`run_part`: its row count in its name), whole
    or not at all: written by the store's `put` (a local file is renamed into place once complete; an S3 PUT is
    atomic) within the retry budget. A part torn by a full disk or a kill never appears under a part's name, and
    no reader that follows the index sees it before the commit lists it. Returns its relative path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    rel = run_part(attempt, uuid.uuid4().hex, table.num_rows)
    store.put(rel, sink.getvalue().to_pybytes(), PARQUET_TYPE)
    return rel


def attempt_parts(store: ObjectStore, attempt: str) -> list[tuple[str, int]]:
    """(part, rows) of every part an attempt wrote, from one listing of its name prefix (rows from the names),
    in name order."""
    found = []
    for rel, size in store.list(attempt_prefix(attempt)):
        rows = run_part_rows(rel, attempt)
        if rows is not None and size > 0:  # (an empty object is no Parquet file: not a part)
            found.append((rel, rows))
    return sorted(found)


def commit(store: ObjectStore, lease: Lease, expected_rows: int) -> list[str]:
    """Make the lease attempt's parts the current manifest (see the module docstring); returns its parts.

    Raises:
        CommitError: the attempt's rows are not the rows requested, or the lease was lost; nothing is committed and
            the parts stay, unlisted, for the next run's resume.
    """
    # 1 check: exactly one row per requested image, from one listing (no read per part)
    found = attempt_parts(store, lease.attempt)
    parts, rows = [rel for rel, _ in found], sum(n for _, n in found)
    if rows != expected_rows:
        raise CommitError(f"the run staged {rows} manifest rows but requested {expected_rows} images; nothing was "
                          f"committed (a store that accepts writes but loses them? rerun to resume)")
    # 2 the commit point: one small object, written last, after checking nobody took the output over
    lease.check()
    index = {"version": INDEX_VERSION, "run_id": lease.run_id, "attempt": lease.attempt, "num_rows": rows,
             "committed_at": time.time(), "parts": parts}
    store.put(MANIFEST_INDEX, json.dumps(index, indent=1).encode(), "application/json")
    lease.committed = True
    # 3 garbage: every part the index doesn't list and older versions' staging folder (the lease holder is the only
    #   writer); after the commit point nothing may fail the run: what isn't removed now, the next commit removes
    try:
        collect_garbage(store, parts)
    except Exception as exc:  # noqa: BLE001 - garbage only
        logger.warning("committed; cleaning up old parts of %s failed (the next commit retries): %s",
                       store.location.uri, exc)
    return parts


def collect_garbage(store: ObjectStore, listed: list[str]) -> None:
    """Delete the manifest parts the just-written index (`listed`) doesn't name and older versions' staging folder
    (`manifest/_staging/`). Only right after a commit, holding the lease: until a commit includes their rows, the
    parts of interrupted runs are what the next run's resume reads."""
    keep, stale, staged = set(listed), [], False
    for rel, _ in store.list(f"{MANIFEST_DIR}/"):
        if is_manifest_part(rel) and rel not in keep:
            stale.append(rel)
        staged = staged or rel.startswith(f"{STAGING_DIR}/")
    if stale:  # a batch delete where the store has one (S3: 1,000 parts a request)
        try:
            failed = store.delete_many(stale)
        except Exception as exc:  # noqa: BLE001 - garbage; the next commit tries again
            failed = [str(exc)]
        for problem in failed[:3]:
            logger.warning("could not delete an old manifest part (the next commit retries): %s", problem)
    if staged:
        store.delete_prefix(STAGING_DIR)
