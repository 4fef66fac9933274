"""HostedGenerator: what both hosted actors share — pacing, budget, billing-safe requests, batch mode.

A provider subclass supplies the wire details: `_call` (one request), `_answer` (a response → an Outcome with the
provider's bytes and price), `_classify` (an exception → a Verdict), `_input_problem` (what this provider can't
take of a row's input images, before anything is paid), and for batch mode `_submit`/`_collect`/`_cancel`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from pydantic import SecretStr

from imagefleet.actors.backend_io import (
    GENERATOR_INPUT_COLUMNS,
    GENERATOR_OPTIONAL_COLUMNS,
    GENERATOR_OUTPUT_COLUMNS,
    Outcome,
    Request,
    encoded_info,
)
from imagefleet.actors.batch_mode import BatchRunner, BatchState
from imagefleet.actors.generation import Batch
from imagefleet.actors.hosted import (
    STOPPED,
    HostedFatal,
    LedgerClient,
    QuotaExhausted,
    Verdict,
    call_with_retries,
    ledger_name,
    limiter_name,
    make_limiter,
    never_raise,
    run_hosted,
    start_ledger,
    start_limiter,
)
from imagefleet.actors.inputs import InputFiles
from imagefleet.configs.generator_base import RunBudget
from imagefleet.configs.hosted import HostedCommon
from imagefleet.configs.storage import StoreSpec

logger = logging.getLogger(__name__)


class HostedGenerator:
    """Base of the hosted actors. One request per image; every paid request is billed once in the manifest."""

    INPUT_COLUMNS = GENERATOR_INPUT_COLUMNS
    OPTIONAL_COLUMNS = GENERATOR_OPTIONAL_COLUMNS
    OUTPUT_COLUMNS = GENERATOR_OUTPUT_COLUMNS
    PROVIDER = ""
    INPUT_FORMATS: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
    """Input image types the provider takes (read from the bytes' header, whatever the file is called)."""

    def __init__(self, cfg: HostedCommon, api_key: SecretStr, state_uri: str = "",
                 state_store: StoreSpec = StoreSpec(kind="local"), name: str = "",
                 budget: RunBudget | None = None, input_store: StoreSpec | None = None) -> None:
        from imagefleet.actors.stores import open_store

        self.cfg, self.name = cfg, name  # rows routed to other generators pass through
        # image-conditioned rows: their input files are read again here (and checked against their hashes)
        self.inputs = InputFiles(input_store, 2**31) if input_store is not None else None
        self.limiter = make_limiter(cfg, api_key.get_secret_value())
        self.ledger = LedgerClient(ledger_name(budget.ledger), budget.usd) if budget else LedgerClient("", 0.0)
        self.threads = ThreadPoolExecutor(max_workers=max(1, min(cfg.pool.batch_size, 32)))
        self.stopped = ""  # the account's quota or spend cap was hit: no more requests from this actor
        self.batch = (BatchRunner(self.PROVIDER, open_store(state_uri, state_store), self._submit, self._collect,
                                  self._cancel) if cfg.batch_mode else None)

    @staticmethod
    def start_run(cfg: HostedCommon, api_key: SecretStr, budget: RunBudget | None = None, **_: Any) -> list[Any]:
        """Driver side, before the run: the shared limiter of this provider scope (with this run's limits) and the
        run's spend ledger. Both belong to the driver and end with the run."""
        handles = [start_limiter(limiter_name(cfg, api_key.get_secret_value()), cfg.limits)]
        if budget is not None:
            handles.append(start_ledger(ledger_name(budget.ledger), budget.usd))
        return handles

    def close(self) -> None:
        """Stop the request threads (a run in process calls this when it ends; a Ray actor just exits)."""
        self.threads.shutdown(wait=True)

    def __call__(self, batch: Batch) -> Batch:
        return run_hosted(batch, self._generate, self.cfg, self.name, self.inputs)

    def _generate(self, requests: Sequence[Request]) -> list[Outcome]:
        """One outcome per request; never raises for a row (a raise here would make `run_generation` retry the
        chunk row by row, paying again for rows already paid), only for run-ending errors."""
        checked = {r.key: self.cfg.size_problem(r.width, r.height) or self._inputs_problem(r) for r in requests}
        # 1 rows the API can't serve never leave the actor; rows with one image key are one request
        unique = list({r.key: r for r in requests if not checked[r.key]}.values())
        if self.batch is None:
            answers = self.threads.map(never_raise(self._one, "request failed"), unique)
            done = dict(zip([r.key for r in unique], answers, strict=True))
        else:
            try:
                done = dict(zip([r.key for r in unique], self.batch.run(unique, self._reserve, self._settle),
                                strict=True))
            except (QuotaExhausted, HostedFatal):
                self.batch.cancel_open()  # the run is ending: don't leave paid work running at the provider
                raise
            except Exception as exc:  # noqa: BLE001 - a row-level retry would submit (and pay) again
                logger.warning("batch call failed: %s: %s", type(exc).__name__, str(exc)[:200])
                failed = Outcome(error=f"batch call failed: {type(exc).__name__}: {exc}"[:500])
                done = {r.key: failed for r in unique}
        # 2 a key's second row points at the same stored image: paid (and priced) once
        out, seen = [], set()
        for r in requests:
            answer = done.get(r.key) or Outcome(error=checked[r.key])
            if r.key in seen and r.key in done:
                answer = replace(answer, cost_usd=0.0, requests=0, maybe_billed_usd=0.0)
            seen.add(r.key)
            out.append(answer)
        return out

    def _inputs_problem(self, r: Request) -> str:
        """Why this row's task and input images can't be sent ('' when they can): checked before any paid call,
        so a row the provider would refuse for its inputs is an error row that costs nothing."""
        if r.task == "text-to-image":
            return ""
        cfg = self.cfg
        if r.task not in cfg.tasks():
            return f"task {r.task!r} is not offered by {cfg.model} (it does {', '.join(cfg.tasks())})"
        if not r.images:
            return f"task {r.task!r} needs at least one input image"
        if len(r.images) > cfg.max_input_images():
            return f"{len(r.images)} input images: {cfg.model} takes at most {cfg.max_input_images()} per request"
        if r.mask and not cfg.takes_mask(r.task):
            return f"{cfg.model} takes no mask for task {r.task!r}"
        if r.task == "inpaint" and not r.mask:
            return "task 'inpaint' needs a mask (white = the area to change)"
        for i, data in enumerate(r.images):
            info = encoded_info(data)
            if info is None or info[0] not in self.INPUT_FORMATS:
                return f"input image {i + 1} is not {' / '.join(self.INPUT_FORMATS)} (or can't be read)"
        return self._input_problem(r)

    # -- one synchronous request ------------------------------------------------------------------------
    def _reserve(self, r: Request) -> float | None:
        """The request's estimated price (input images included) if the run's budget allows it, else None."""
        sizes = [(info[1], info[2]) for info in map(encoded_info, r.images) if info is not None]
        est = self.cfg.estimate_image_usd(r.width, r.height, len(r.prompt), sizes)
        return est if self.ledger.reserve(est) else None

    def _settle(self, reserved: float, answer: Outcome | None) -> None:
        """Settle a reservation at the billed price (None: the request never ran, nothing billed)."""
        if answer is None:
            self.ledger.settle(reserved, 0.0)
            return
        billed = answer.cost_usd if answer.cost_usd is not None else self.cfg.cost.usd_per_image
        self.ledger.settle(reserved, billed + answer.maybe_billed_usd)

    def _one(self, r: Request) -> Outcome:
        # 1 nothing more once the account stopped us; the run's budget, on actual spend so far
        if self.stopped:
            return Outcome(skipped=self.stopped)
        est = self._reserve(r)
        if est is None:
            return Outcome(skipped=f"limits.budget_usd={self.ledger.budget_usd:g} reached by actual spend; "
                                   f"rerun with a larger budget to continue")
        # 2 pace, call, retry per policy (each attempt takes its own limiter slot); an account-level stop (quota,
        #   spend cap) ends this actor's sending, but every answer already delivered still reaches the writer
        try:
            got = call_with_retries(lambda: self._call(r), self._classify, self.cfg.limits, self.limiter)
        except QuotaExhausted as exc:
            self.ledger.settle(est, 0.0)  # a quota answer is not billed
            self.stopped = self.stopped or f"{STOPPED} {exc}"
            logger.warning("%s", self.stopped)
            return Outcome(skipped=self.stopped, requests=1)
        maybe = got.uncertain * est
        if got.verdict is not None:
            self.ledger.settle(est, maybe)
            failed = Outcome(requests=got.requests, maybe_billed_usd=maybe)
            if got.verdict.kind == "refused":
                return replace(failed, refusal=got.verdict.message)
            return replace(failed, error=got.verdict.message)
        # 3 the provider's bytes and the billed price (an undecodable answer is still billed)
        out = self._answer(got.result, got.requests, maybe, 1.0)
        self._settle(est, out)
        return out

    # -- provider hooks -----------------------------------------------------------------------------------
    def _input_problem(self, r: Request) -> str:
        """What this provider can't take of a row's (otherwise valid) input images; '' = fine."""
        raise NotImplementedError

    def _call(self, r: Request) -> Any:
        raise NotImplementedError

    def _answer(self, response: Any, requests: int, maybe_billed: float, discount: float) -> Outcome:
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> Verdict:
        raise NotImplementedError

    def _submit(self, requests: Sequence[Request]) -> str:
        raise NotImplementedError

    def _collect(self, batch_id: str, keys: Sequence[str]) -> BatchState:
        raise NotImplementedError

    def _cancel(self, batch_id: str) -> None:
        raise NotImplementedError
