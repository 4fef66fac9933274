"""Batch-API mode for hosted generators: submit, persist the batch id, poll, collect; resubmit what never ran.

Scale: each actor call submits its rows as one provider batch and waits on it, and a batch-mode actor runs
`batch_in_flight` calls at once (threads), so images in flight are pool size x batch_in_flight x batch size,
not pool size x batch size: a provider turnaround of T finishes a job of many pool-fulls in about T.

Records (`<output>/_batches/<provider>/<batch id>.json`) make it resumable and billing-safe:
- written before the batch is polled: a job restarted while a batch is in flight collects it, never pays again;
- updated when the batch ends with its final state and the keys that got an answer (an image or a refusal);
  keys without one (a failed, expired or cancelled batch, or a per-request error) are free to be submitted
  again, now (up to `RESUBMITS` more batches) or by a later run (`--retry-failed` for error rows).
Results that can't be had for requests that ran — a completed batch missing some lines, results that came back
without keys (never matched by position), a batch or a results file that is gone (404/410: OpenAI results expire
after `output_expires_after`, Gemini's files after 48 h) — are `BatchState.lost`: each becomes an error row naming
the batch and why, carrying its estimate as maybe billed; they are not sent again in this run (they may have been
billed), and `--retry-failed` sends them once more. Never fatal for the run: the batch's good, paid lines are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imagefleet.actors.backend_io import Outcome, Request
from imagefleet.actors.hosted import HostedFatal
from imagefleet.actors.layout import batch_record, batches_dir
from imagefleet.actors.storage import ObjectStore

logger = logging.getLogger(__name__)
T = TypeVar("T")
RESUBMITS = 2
"""Further batches for requests a failed/expired/cancelled batch never ran, before they become error rows."""


@dataclass
class BatchState:
    """A finished provider batch as the backend read it."""

    state: str
    """The provider's final state (completed, failed, expired, cancelled, JOB_STATE_…)."""
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    """Per image key: what the provider answered (image, refusal, or that request's error)."""
    errors: str = ""
    """The batch's own errors (e.g. token_limit_exceeded), for rows that never ran."""
    lost: dict[str, str] = field(default_factory=dict)
    """Per image key: why a request that ran (or may have) has no result that can be had (module docstring)."""


Submit = Callable[[Sequence[Request]], str]
Collect = Callable[[str, Sequence[str]], BatchState]
Cancel = Callable[[str], None]


class BatchRunner:
    """Provider-independent batch bookkeeping; the provider supplies submit/collect/cancel."""

    def __init__(self, provider: str, store: ObjectStore, submit: Submit, collect: Collect, cancel: Cancel) -> None:
        self.provider, self.store = provider, store
        self.submit, self.collect, self.cancel = submit, collect, cancel
        self.lock = threading.Lock()
        self.batch_of: dict[str, str] = {}  # image key → the recorded batch that has (or will have) its answer
        self.open: set[str] = set()  # batches submitted by this actor and not finished
        self.stopping = False
        self.records: dict[str, dict[str, Any]] = {}  # batch id → its record (what the store holds)
        for rel, _ in store.list(f"{batches_dir(provider)}/"):
            record = json.loads(store.get(rel))
            self.records[record["batch_id"]] = record
            keys = record["keys"] if not record.get("final") else record.get("answered", [])
            for key in keys:
                self.batch_of[key] = record["batch_id"]
        if self.batch_of:
            logger.info("resuming %d recorded %s batch request(s)", len(self.batch_of), provider)

    def run(self, requests: Sequence[Request], reserve: Callable[[Request], float | None],
            settle: Callable[[float, Outcome | None], None]) -> list[Outcome]:
        """One outcome per request, in order: submitted (or found in a recorded batch), waited for, collected.
        Each submitted request reserves its estimate from the run's budget and settles at the billed price."""
        results: dict[str, Outcome] = {}
        why: dict[str, str] = {}
        reserved: dict[str, float] = {}
        todo = list(requests)
        for _ in range(1 + RESUBMITS):
            if self.stopping:
                raise HostedFatal(f"the run is stopping: no new {self.provider} batches")
            # 1 submit what no recorded batch covers (within the budget), and record it before waiting
            with self.lock:
                new = [r for r in todo if r.key not in self.batch_of]
            allowed = []
            for r in new:
                est = reserve(r)
                if est is None:
                    results[r.key] = Outcome(skipped="limits.budget_usd reached by actual spend; rerun with a "
                                                     "larger budget to continue")
                else:
                    reserved[r.key] = est
                    allowed.append(r)
            if allowed:
                try:
                    new_id = self.submit(allowed)
                except Exception:
                    for r in allowed:  # no batch was made for them: release their budget reservations
                        settle(reserved.pop(r.key), None)
                    raise
                self._record_new(new_id, allowed)
            # 2 wait for each batch these rows live in (a key another call just released is submitted next round)
            groups: dict[str, list[str]] = {}
            with self.lock:
                for r in todo:
                    batch_id = self.batch_of.get(r.key)
                    if r.key not in results and batch_id is not None:
                        groups.setdefault(batch_id, []).append(r.key)
            for batch_id, keys in groups.items():
                state = self.collect(batch_id, self._keys_of(batch_id))
                halted = ""
                if "cancel" in state.state.lower() and not self.stopping:  # an operator stopped its spend
                    halted = (f"{self.provider} batch {batch_id} was cancelled at the provider, not by this run: "
                              f"not resubmitted; rerun with --retry-failed to make it")
                self._record_end(batch_id, state)
                for key in keys:
                    answer = state.outcomes.get(key)
                    if answer is None and key in state.lost:  # it ran (or may have): an error row, not resent
                        answer = Outcome(error=state.lost[key][:500], requests=1,
                                         maybe_billed_usd=reserved.get(key, 0.0))
                    elif answer is None and halted:  # never ran, and its spend was stopped on purpose
                        answer = Outcome(error=halted[:500])
                    if key in reserved:
                        settle(reserved.pop(key), answer)  # never ran: released; ran: the billed price
                    if answer is not None:  # an image, a refusal, or the provider's no for this request
                        results[key] = answer
                    else:
                        why[key] = f"{self.provider} batch {batch_id} ended {state.state} without running it" + (
                            f": {state.errors}" if state.errors else "")
            todo = [r for r in todo if r.key not in results]
            if not todo:
                break
            logger.warning("%d request(s) never ran in their %s batch; submitting them again", len(todo),
                           self.provider)
        return [results.get(r.key) or Outcome(error=why.get(r.key, "no result in its batch")[:500])
                for r in requests]

    def cancel_open(self) -> None:
        """Cancel this actor's unfinished batches and submit no more (the run is ending)."""
        with self.lock:
            self.stopping = True
            batches = list(self.open)
        for batch_id in batches:
            try:
                self.cancel(batch_id)
                logger.warning("cancelled %s batch %s (the run is ending)", self.provider, batch_id)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                logger.warning("could not cancel %s batch %s: %s", self.provider, batch_id, exc)

    def _keys_of(self, batch_id: str) -> list[str]:
        """Every key of a recorded batch, in submission order (results may be matched by position)."""
        with self.lock:
            return list(self.records[batch_id]["keys"])

    def _record_new(self, batch_id: str, requests: Sequence[Request]) -> None:
        record = {"batch_id": batch_id, "provider": self.provider, "keys": [r.key for r in requests],
                  "created_at": time.time(), "final": ""}
        try:
            self.store.put(batch_record(self.provider, batch_id), json.dumps(record).encode(), "application/json")
            with self.lock:
                self.records[batch_id] = record
        except Exception:
            # an unrecorded batch could be paid again by a restart: cancel it rather than keep it
            with contextlib.suppress(Exception):
                self.cancel(batch_id)
            raise
        with self.lock:
            self.batch_of.update({r.key: batch_id for r in requests})
            self.open.add(batch_id)

    def _record_end(self, batch_id: str, state: BatchState) -> None:
        """The final state and the keys that got an answer; the others may be submitted again."""
        with self.lock:
            record = dict(self.records[batch_id])
        answered = [k for k in record["keys"] if k in state.outcomes and not state.outcomes[k].error]
        record.update(final=state.state, answered=answered, errors=state.errors[:2000], ended_at=time.time())
        self.store.put(batch_record(self.provider, batch_id), json.dumps(record).encode(), "application/json")
        with self.lock:
            self.records[batch_id] = record
            self.open.discard(batch_id)
            for key in record["keys"]:
                if key not in answered and self.batch_of.get(key) == batch_id:
                    del self.batch_of[key]


def unless_gone(fn: Callable[[], T], gone: Callable[[Exception], bool]) -> T | None:
    """`fn()`, or None when it fails because what it reads is gone (`gone(exc)`: the provider's 404/410): a batch
    or results file that expired or was deleted is a fact about that batch, not an unknown model."""
    try:
        return fn()
    except Exception as exc:
        if gone(exc):
            return None
        raise


def poll(get_state: Callable[[], tuple[str, str]], done: set[str], interval_s: float, what: str) -> str:
    """Poll until the state is terminal, logging progress; returns the final state."""
    last = ""
    while True:
        state, progress = get_state()
        if state != last:
            logger.info("%s: %s %s", what, state, progress)
            last = state
        if state in done:
            return state
        time.sleep(interval_s)
