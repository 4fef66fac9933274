"""Batch-API mode for hosted generators: submit a chunk, persist the batch id, poll with progress, collect.

Resumable: every submitted batch is recorded as `<output>/_batches/<provider>/<batch id>.json` (its image keys)
before polling starts. An actor loads all records at start; rows whose key belongs to a recorded batch are
collected from that batch instead of being submitted again, so a job restarted while a batch is in flight
pays for it once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from actors.generation import Outcome, Request
from actors.layout import batch_record, batches_dir
from actors.storage import ObjectStore

logger = logging.getLogger(__name__)

# submit(requests) -> batch id ; collect(batch id) -> {image key: Outcome}
Submit = Callable[[Sequence[Request]], str]
Collect = Callable[[str], dict[str, Outcome]]


class BatchRunner:
    """Provider-independent batch bookkeeping; the provider supplies submit/collect."""

    def __init__(self, provider: str, store: ObjectStore, submit: Submit, collect: Collect) -> None:
        self.provider, self.store, self.submit, self.collect = provider, store, submit, collect
        self.batch_of: dict[str, str] = {}
        for rel, _ in store.list(f"{batches_dir(provider)}/"):
            record = json.loads(store.get(rel))
            for key in record["keys"]:
                self.batch_of[key] = record["batch_id"]
        if self.batch_of:
            logger.info("resuming %d recorded %s batch request(s)", len(self.batch_of), provider)

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        # 1 submit what no recorded batch covers, and record it before waiting
        new = [r for r in requests if r.key not in self.batch_of]
        if new:
            batch_id = self.submit(new)
            record = {"batch_id": batch_id, "provider": self.provider, "keys": [r.key for r in new],
                      "created_at": time.time()}
            self.store.put(batch_record(self.provider, batch_id), json.dumps(record).encode(), "application/json")
            self.batch_of.update({r.key: batch_id for r in new})
        # 2 wait for every batch these rows live in, then hand results back in order
        results: dict[str, Outcome] = {}
        for batch_id in dict.fromkeys(self.batch_of[r.key] for r in requests):
            results.update(self.collect(batch_id))
        return [results.get(r.key, Outcome(error="no result for this request in its batch")) for r in requests]


def poll(get_state: Callable[[], tuple[str, str]], done: set[str], interval_s: float, what: str) -> str:
    """Poll until the state is terminal, logging progress; returns the final state."""
    last = ""
    while True:
        state, progress = get_state()
        if state != last or progress:
            logger.info("%s: %s %s", what, state, progress)
            last = state
        if state in done:
            return state
        time.sleep(interval_s)
