"""Shared machinery of the hosted backends: error verdicts, retries with server hints, the shared rate limiter,
the run's spend ledger, and turning a provider's answer into an Outcome without ever raising for one row.

The SDKs' own retries are off (OpenAI max_retries=0, Gemini no retry_options): imagefleet owns the policy so
retries are per row, observable, paced and billed once. Billing rules every hosted backend keeps:
- A backend never raises for one row: a row's failure (bad payload, a limiter hiccup) becomes that row's Outcome,
  so `run_generation` never retries a chunk whose other rows were already paid for.
- Errors that would fail every row the same way (quota, billing limit, bad key, unknown model, region) raise
  `QuotaExhausted` / `HostedFatal` and stop the run with one line.
- A timed-out request may have been completed and billed by the provider: when it is sent again, its estimated
  price is recorded in the row's `maybe_billed_usd`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from imagefleet.actors.contract import ray_running
from imagefleet.configs.hosted import HostedCommon, RateLimits

if TYPE_CHECKING:
    from imagefleet.actors.backend_io import Outcome
    from imagefleet.actors.generation import Batch
    from imagefleet.actors.inputs import InputFiles

logger = logging.getLogger(__name__)
T = TypeVar("T")
NAMESPACE = "imagefleet"


class QuotaExhausted(RuntimeError):
    """Billing or quota is used up (retrying can't help): stop the run."""


STOPPED = "stopped by the provider:"  # the error of a row never sent once the account hit its quota (skipped)


class HostedFatal(RuntimeError):
    """Bad key, no permission, unknown or retired model, unsupported region: every row would fail the same way."""


@dataclass(frozen=True)
class Verdict:
    """How to treat one failed call."""

    kind: str  # "retry" | "refused" | "row_error" | "fatal" | "quota"
    message: str
    delay_s: float | None = None  # server's hint (retry-after(-ms), RetryInfo.retryDelay)
    uncertain: bool = False  # the provider may have done (and billed) the work: a timeout or dropped connection


@dataclass(frozen=True)
class Attempted(Generic[T]):
    """What `call_with_retries` got: the result or the final verdict, and how many requests it sent."""

    result: T | None
    verdict: Verdict | None
    requests: int
    uncertain: int
    """Requests that timed out or lost their connection (the provider may have billed them)."""


def parse_duration(text: str) -> float | None:
    """'33s' / '0.050s' (google.protobuf.Duration JSON) → seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)s\s*", text or "")
    return float(m.group(1)) if m else None


def retry_after_s(headers: Any) -> float | None:
    """OpenAI hints: retry-after-ms first, then retry-after (seconds)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return float(value) / scale
            except ValueError:
                continue
    return None


def fingerprint(*parts: str) -> str:
    """Stable, non-reversible name for secrets-derived scopes (a key never leaves its actor)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def limiter_name(cfg: HostedCommon, api_key: str) -> str:
    """The shared limiter of a provider scope and model: providers count limits per project/organization and
    model. The scope is `limits.scope`, else the OpenAI project/organization, else the API key (hashed)."""
    scope = cfg.limits.scope or getattr(cfg, "project", "") or getattr(cfg, "organization", "") or f"key:{api_key}"
    return f"imagefleet-limiter-{fingerprint(cfg.provider, scope, cfg.model)}"


def ledger_name(output_uri: str) -> str:
    """The spend ledger of the run writing `output_uri` (one run per output at a time: the output lease)."""
    return f"imagefleet-ledger-{fingerprint(output_uri)}"


# -- retries -----------------------------------------------------------------------------------------------
def call_with_retries(
    fn: Callable[[], T], classify: Callable[[BaseException], Verdict], limits: RateLimits, limiter: Any,
    images: int = 1, sleep: Callable[[float], None] = time.sleep,
) -> Attempted[T]:
    """Run `fn` under the retry policy, taking a limiter slot before every request (retries included).

    Returns the result, or the final verdict for a refusal / row error; raises QuotaExhausted or HostedFatal for
    errors that end the run."""
    backoff, uncertain = limits.initial_backoff_s, 0
    for attempt in range(1, limits.max_attempts + 1):
        limiter.wait_turn(images)
        try:
            return Attempted(fn(), None, attempt, uncertain)
        except Exception as exc:  # noqa: BLE001 - classified right below
            verdict = classify(exc)
        if verdict.kind == "quota":
            raise QuotaExhausted(verdict.message)
        if verdict.kind == "fatal":
            raise HostedFatal(verdict.message)
        uncertain += verdict.uncertain
        stop = verdict.kind != "retry" or attempt == limits.max_attempts
        if verdict.uncertain and not limits.retry_timeouts:
            stop = True
        if stop:
            if verdict.kind == "retry":
                verdict = Verdict("row_error", f"gave up after {attempt} attempt(s): {verdict.message}")
            return Attempted(None, verdict, attempt, uncertain)
        wait = verdict.delay_s if verdict.delay_s is not None else backoff * (0.5 + random.random())
        wait = min(wait, limits.max_backoff_s)
        if verdict.delay_s is not None:
            limiter.pause_all(wait)  # a 429 with a hint slows every actor on this scope, not just this one
        logger.info("retryable error (%s); attempt %d, waiting %.2fs", verdict.message[:120], attempt, wait)
        sleep(wait)
        backoff = min(backoff * 2, limits.max_backoff_s)
    raise AssertionError("unreachable")


POLL_ATTEMPTS = 50
"""Attempts for reads (polls, result downloads): a batch runs for hours, so minutes of 5xx or network trouble
must not end the run (and cancel paid batches)."""


def api_call(fn: Callable[[], T], classify: Callable[[BaseException], Verdict], limits: RateLimits,
             limiter: Any, creates: bool = False) -> T:
    """A control-plane call (files, batches) under the retry policy; any final failure ends the run.

    `creates`: the call creates a billable thing (a batch). A timed-out create may have succeeded, and sending it
    again would create (and bill) a second batch, so it is not retried: the run stops and says so. Reads are
    retried far longer than requests (POLL_ATTEMPTS)."""
    update = {"retry_timeouts": False} if creates else {"max_attempts": max(limits.max_attempts, POLL_ATTEMPTS)}
    got = call_with_retries(fn, classify, limits.model_copy(update=update), _NoPacing(limiter))
    if got.verdict is not None:
        if creates and got.uncertain:
            raise HostedFatal(f"creating a provider batch timed out; it may exist and be billed: look for it in "
                              f"the provider's console before rerunning ({got.verdict.message})")
        raise HostedFatal(f"batch API call failed: {got.verdict.message}")
    return got.result  # type: ignore[return-value]  # verdict None means fn returned


class _NoPacing:
    """Control-plane calls don't take image slots but still honour pauses."""

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter

    def wait_turn(self, images: int) -> None:
        pass

    def pause_all(self, seconds: float) -> None:
        self.limiter.pause_all(seconds)


# -- the shared limiter --------------------------------------------------------------------------------------
class RateLimiter:
    """Token-bucket pacing for one provider scope and model: `acquire(n_images)` reserves the next slot and returns
    how long the caller must wait; `pause(s)` holds everyone back after a rate-limit answer."""

    def __init__(self, requests_per_min: float, images_per_min: float) -> None:
        self.next_req = 0.0
        self.next_img = 0.0
        self.paused_until = 0.0
        self.configure(requests_per_min, images_per_min)

    def configure(self, requests_per_min: float, images_per_min: float) -> None:
        """Apply a run's limits (the newest run's config wins)."""
        self.req_gap = 60.0 / requests_per_min
        self.img_gap = 60.0 / images_per_min

    def limits(self) -> tuple[float, float]:
        return 60.0 / self.req_gap, 60.0 / self.img_gap

    def acquire(self, images: int) -> float:
        now = time.time()
        start = max(now, self.next_req, self.next_img, self.paused_until)
        self.next_req = start + self.req_gap
        self.next_img = start + self.img_gap * images
        return start - now

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.time() + seconds)


def _shared_actor(cls: type, name: str, setup: str, *args: Any) -> Any:
    """Create or find the named (never detached) actor of `cls`, then call its `setup(*args)`: an actor an earlier
    run left alive takes this run's settings. It belongs to whoever created it and ends with them."""
    import ray

    handle: Any = ray.remote(num_cpus=0)(cls)
    handle = handle.options(name=name, namespace=NAMESPACE, get_if_exists=True).remote(*args)
    ray.get(getattr(handle, setup).remote(*args))
    return handle


def start_limiter(name: str, limits: RateLimits) -> Any:
    """Create (or find) the named limiter and apply `limits`. The driver calls this before a run starts, so the
    limiter belongs to the run's driver and ends with it (never detached: a later run gets its own limits)."""
    return _shared_actor(RateLimiter, name, "configure", limits.requests_per_min, limits.images_per_min)


class LimiterClient:
    """An actor's view of its shared limiter. A failing limiter never fails a row: the client finds or recreates
    it, and paces locally meanwhile (a warning, not an error)."""

    def __init__(self, name: str, limits: RateLimits) -> None:
        self.name, self.limits = name, limits
        self.local = LocalLimiter(limits)
        self.handle: Any = None
        self.lock = threading.Lock()

    def _remote(self) -> Any:
        with self.lock:
            if self.handle is None:
                self.handle = start_limiter(self.name, self.limits)
            return self.handle

    def wait_turn(self, images: int) -> None:
        import ray

        try:
            delay = float(ray.get(self._remote().acquire.remote(images), timeout=30))
        except Exception as exc:  # noqa: BLE001 - pacing must not fail a row
            logger.warning("shared rate limiter unavailable (%s); pacing this actor alone", type(exc).__name__)
            with self.lock:
                self.handle = None
            self.local.wait_turn(images)
            return
        if delay > 0:
            time.sleep(delay)

    def pause_all(self, seconds: float) -> None:
        self.local.pause_all(seconds)
        with contextlib.suppress(Exception):  # best effort: the local pause holds this actor back anyway
            self._remote().pause.remote(seconds)


class LocalLimiter:
    """Same interface without Ray (unit tests, a single process)."""

    def __init__(self, limits: RateLimits) -> None:
        self.limiter = RateLimiter(limits.requests_per_min, limits.images_per_min)
        self.lock = threading.Lock()

    def wait_turn(self, images: int) -> None:
        with self.lock:
            delay = self.limiter.acquire(images)
        if delay > 0:
            time.sleep(delay)

    def pause_all(self, seconds: float) -> None:
        self.limiter.pause(seconds)


def make_limiter(cfg: HostedCommon, api_key: str) -> LimiterClient | LocalLimiter:
    """The shared limiter of the actor's provider scope on Ray; without Ray (a run in process: the only actor) the
    limits are kept here."""
    return LimiterClient(limiter_name(cfg, api_key), cfg.limits) if ray_running() else LocalLimiter(cfg.limits)


# -- the run's spend ledger ----------------------------------------------------------------------------------
class SpendLedger:
    """Actual hosted spend of one run against its budget: every hosted request reserves its estimated price
    first and settles at the billed price, so the run stops scheduling hosted requests once spend reaches the
    budget (in-flight requests can only overshoot by their own estimates)."""

    def __init__(self, budget_usd: float) -> None:
        self.lock = threading.Lock()  # the local fallback is shared by an actor's threads
        self.reset(budget_usd)

    def reset(self, budget_usd: float) -> None:
        """A new run on this output starts from zero (the output lease makes it the only one)."""
        self.budget_usd = budget_usd
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, usd: float) -> bool:
        with self.lock:
            if self.budget_usd > 0 and self.spent + self.reserved + usd > self.budget_usd:
                return False
            self.reserved += usd
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self.lock:
            self.reserved = max(0.0, self.reserved - reserved)
            self.spent += actual

    def totals(self) -> tuple[float, float]:
        return self.spent, self.reserved


def start_ledger(name: str, budget_usd: float) -> Any:
    """The run's ledger, created by the driver (it ends with the run), starting from zero."""
    return _shared_actor(SpendLedger, name, "reset", budget_usd)


class LedgerClient:
    """An actor's view of the run's ledger; without one (no budget, unit tests) everything is allowed."""

    def __init__(self, name: str, budget_usd: float) -> None:
        self.name, self.budget_usd = name, budget_usd
        self.local = SpendLedger(budget_usd)
        self.handle: Any = None

    def _call(self, method: str, *args: Any) -> Any:
        if not ray_running():  # a run in process: this actor is the only one, its ledger is the run's
            return getattr(self.local, method)(*args)
        import ray

        try:
            if self.handle is None:
                self.handle = ray.get_actor(self.name, namespace=NAMESPACE)
            return ray.get(getattr(self.handle, method).remote(*args), timeout=30)
        except Exception as exc:  # noqa: BLE001 - keep the budget locally rather than fail rows
            logger.warning("spend ledger unavailable (%s); enforcing the budget in this actor", type(exc).__name__)
            self.handle = None
            return getattr(self.local, method)(*args)

    def reserve(self, usd: float) -> bool:
        return bool(self.budget_usd <= 0 or self._call("reserve", usd))

    def settle(self, reserved: float, actual: float) -> None:
        if self.budget_usd > 0:
            self._call("settle", reserved, actual)


# -- answers → outcomes --------------------------------------------------------------------------------------
def run_hosted(batch: Batch, generate: Any, cfg: HostedCommon, name: str, inputs: InputFiles | None = None) -> Batch:
    """`run_generation` for a hosted backend: prices come from usage, quota/key/model errors end the run; `inputs`
    reads image-conditioned rows' input files."""
    from imagefleet.actors.generation import run_generation

    return run_generation(
        batch,
        batch_size=cfg.pool.batch_size,
        generate=generate,
        is_fatal=lambda exc: isinstance(exc, (QuotaExhausted, HostedFatal)),
        usd_per_second=0.0,
        usd_per_image=cfg.cost.usd_per_image,
        name=name,
        inputs=inputs,
    )


def never_raise(one: Callable[[Any], Any], what: str) -> Callable[[Any], Any]:
    """Wrap a per-request function so only run-ending errors escape; anything else is that row's error (its
    siblings' paid results stay, and the chunk is never retried row by row)."""
    from imagefleet.actors.backend_io import Outcome

    def wrapped(request: Any) -> Any:
        try:
            return one(request)
        except (QuotaExhausted, HostedFatal):
            raise
        except Exception as exc:  # noqa: BLE001 - one row's problem
            logger.warning("%s: %s: %s", what, type(exc).__name__, str(exc)[:200])
            return Outcome(error=f"{what}: {type(exc).__name__}: {exc}"[:500])

    return wrapped


def image_outcome(data: bytes | None, mime: str, cost_usd: float | None, requests: int,
                  maybe_billed: float) -> Outcome:
    """A paid answer's Outcome: the provider's bytes as they came, with its declared type, or an error row that still
    carries the price when there are no bytes (bytes PIL can't read are `run_generation`'s check: an error row that
    keeps the price too)."""
    from imagefleet.actors.backend_io import Outcome

    billed = Outcome(cost_usd=cost_usd, requests=requests, maybe_billed_usd=maybe_billed)
    if not data:
        return replace(billed, error="provider answered without image bytes (billed)")
    return replace(billed, encoded=data, mime=mime)
