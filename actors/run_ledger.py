"""RunLedger: what a run counts over all of its rows, one per run, shared by the preprocessor pool.

Two counts can't live in any one preprocessor actor once the preprocessor is a pool: which image keys an earlier
run settled (the resume index) and the estimated spend of the images scheduled so far (the budget). The ledger
builds the index once, in its constructor (`load_index`: the manifest parts and one listing of the images), and
answers one call per preprocessor batch (`RunLedger.settle`): for each key, the earlier manifest row that settles
it (taken from the index's table as Arrow rows: the preprocessor makes the row's resume state from them, so the
ledger's own work per row is a dict lookup), or the record of a stored image no manifest row names (adopted,
`resume_index.Unlisted`), and which pending rows fit the budget, in order: the estimates reserved never pass
`budget_usd`, however many preprocessors ask.

On Ray the run starts one ledger actor (`pipelines.pools.start_shared`) and hands it to every preprocessor; in
process (a preview, serving's gateway, `pipelines.in_process`) the one preprocessor keeps its own. `settle` (the
module function) hides which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagefleet.actors.manifest_schema import PRIOR, prior_text
from imagefleet.actors.resume_index import Prior, ResumeIndex, load_index, part_rows, prior_of_row
from imagefleet.actors.resume_scan import PartRows, ReadRows
from imagefleet.configs.prep import PrepConfig, ResumeConfig

PENDING: dict[str, Any] = {PRIOR: "", "status": "pending", "error": ""}
"""The resume state of a row nothing settled yet (it is made this run)."""


@dataclass(frozen=True)
class Settled:
    """The ledger's answer for one batch's keys; positions index the keys asked about."""

    locs: list[int] = field(default_factory=list)
    """Where the earlier manifest rows that settle keys are (`resume_scan.ROW_BITS`), read with `PartRows`."""
    rows: list[int] = field(default_factory=list)
    """The key position each of `locs` settles."""
    parts: dict[int, str] = field(default_factory=dict)
    """Part number → relative path of the parts `locs` name."""
    redirected: frozenset[int] = frozenset()
    """Keys found through their escalated cascade draft: their row is the final (heavy) image's."""
    adopted: dict[int, Prior] = field(default_factory=dict)
    """Keys of stored images no manifest row names, with what their records say."""
    skipped: frozenset[int] = frozenset()
    """Pending keys past the budget."""


class RunLedger:
    """One run's resume index and budget counter.

    Args:
        resume: where earlier results live (None, or `skip_existing: false`: nothing is looked up).
        budget_usd: the run's estimated-cost budget (0 = none).
    """

    def __init__(self, resume: ResumeConfig | None = None, budget_usd: float = 0.0) -> None:
        from imagefleet.actors.stores import open_store

        self.budget_usd, self.spent_usd = budget_usd, 0.0
        self.retry_failed = resume is not None and resume.retry_failed
        self.index = ResumeIndex()
        if resume is not None and resume.skip_existing:
            self.index = load_index(open_store(resume.output_uri, resume.store), resume.image_format,
                                    resume.keep_provider_bytes)
        self.empty = not (len(self.index) or self.index.unlisted)

    def settle(self, keys: list[str], usd: list[float]) -> Settled:
        """What earlier runs settled for each of `keys` (one batch's rows to make, in order), and which of the
        others fit the budget, each at its estimate in `usd`: reserved in order, a row that would pass the
        budget is skipped (a later, cheaper one may still fit)."""
        at: dict[int, int] = {}
        redirected: set[int] = set()
        adopted: dict[int, Prior] = {}
        pending: list[int] | range = range(len(keys))
        if not self.empty:
            pending = self._look_up(keys, at, redirected, adopted)
        skipped = []
        if self.budget_usd > 0:
            for i in pending:
                if self.spent_usd + usd[i] > self.budget_usd:
                    skipped.append(i)
                else:
                    self.spent_usd += usd[i]
        locs = list(at.values())
        return Settled(locs, list(at), self.index.parts_of(locs), frozenset(redirected), adopted, frozenset(skipped))

    def _look_up(self, keys: list[str], at: dict[int, int], redirected: set[int], adopted: dict[int, Prior]
                 ) -> list[int]:
        """Fill `at` (key position → row location), `redirected` and `adopted` as `ResumeIndex.get` decides
        (`ResumeIndex.find`); the positions of the keys left to make."""
        pending = []
        for i, found in enumerate(self.index.find(keys)):
            if found.adopted is not None:
                adopted[i] = found.adopted
            elif found.loc < 0 or (not found.ok and self.retry_failed):
                pending.append(i)
            else:
                at[i] = found.loc
                if found.redirected:
                    redirected.add(i)
        return pending


def row_reader(cfg: PrepConfig) -> PartRows | None:
    """What reads the earlier rows a ledger's answers point at (None when the run resumes nothing)."""
    resume = cfg.resume
    if resume is None or not resume.skip_existing:
        return None
    return part_rows(resume.output_uri, resume.store)


def start_kwargs(cfg: PrepConfig) -> dict[str, Any] | None:
    """The constructor arguments of the ledger a preprocessor pool shares, or None when a run needs none (no
    budget and nothing to resume: each preprocessor's own empty ledger answers the same)."""
    resume = cfg.resume if cfg.resume is not None and cfg.resume.skip_existing else None
    if resume is None and cfg.budget_usd <= 0:
        return None
    return {"resume": resume, "budget_usd": cfg.budget_usd}


def settle(ledger: Any, keys: list[str], usd: list[float]) -> Settled:
    """`ledger.settle(keys, usd)` on the run's ledger actor (a Ray actor handle) or on a preprocessor's own."""
    if isinstance(ledger, RunLedger):
        return ledger.settle(keys, usd)
    import ray

    return ray.get(ledger.settle.remote(keys, usd))  # type: ignore[no-any-return]


def resume_states(settled: Settled, n: int, budget_usd: float, read_rows: ReadRows | None) -> list[dict[str, Any]]:
    """The resume state of each of the `n` keys `settled` answers, as a preprocessed row takes it: `pending`;
    `cached` with what the earlier run recorded (PRIOR, the stored image's settings, a cascade's final image; the
    rows read with `read_rows`, the run's `PartRows.take`); `error` carried over from an earlier run; `skipped`
    past the budget."""
    states = [PENDING] * n
    over = {**PENDING, "status": "skipped", "error": f"budget_usd={budget_usd} reached; rerun with a larger budget"}
    for i in settled.skipped:
        states[i] = over
    if settled.locs and read_rows is None:
        raise ValueError("the ledger found earlier rows but there is nothing to read them with (no resume config)")
    found = read_rows(settled.locs, settled.parts) if settled.locs and read_rows is not None else []
    for i, row in zip(settled.rows, found, strict=True):
        states[i] = prior_state(prior_of_row(row, i in settled.redirected))
    for i, prior in settled.adopted.items():
        states[i] = prior_state(prior)
    return states


def prior_state(prior: Prior) -> dict[str, Any]:
    """A row an earlier run settled: `cached` (its image is there), or its earlier error (`--retry-failed` makes
    such rows pending: the ledger doesn't return them)."""
    if prior.status != "ok":
        return {**PENDING, "status": "error",
                "error": f"earlier run: {prior.error} (rerun with --retry-failed to redo)"}
    state = {"status": "cached", "error": "", PRIOR: prior_text(prior.sha256, prior.bytes, prior.carried)}
    state.update(prior.settings)  # the stored image's own settings (a cascade's heavy ones, API sizes)
    if prior.final_key:  # a cascade draft escalated earlier: the row is its final heavy image
        state.update(image_key=prior.final_key, generator=prior.final_generator, model=prior.final_model)
    return state
