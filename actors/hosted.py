"""Shared machinery of the hosted backends: error classification, retry with server hints, the per-key limiter.

The SDKs' own retries are off (OpenAI max_retries=0, Gemini no retry_options): imagefleet owns the policy so
retries are per row, observable and bounded. One `RateLimiter` actor per API key (named by a hash of the key,
never the key) spaces requests and images for every actor that uses the key.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from configs.hosted import RateLimits

if TYPE_CHECKING:
    from actors.generation import Batch

logger = logging.getLogger(__name__)
T = TypeVar("T")


class QuotaExhausted(RuntimeError):
    """Billing/quota is used up (OpenAI insufficient_quota): stop the run, don't retry."""


class HostedFatal(RuntimeError):
    """Bad key, no permission, retired model: every row would fail the same way; stop the run."""


@dataclass(frozen=True)
class Verdict:
    """How to treat one failed call."""

    kind: str  # "retry" | "refused" | "row_error" | "fatal" | "quota"
    message: str
    delay_s: float | None = None  # server's hint (retry-after(-ms), RetryInfo.retryDelay)


def parse_duration(text: str) -> float | None:
    """'33s' / '0.050s' (google.protobuf.Duration JSON) → seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)s\s*", text or "")
    return float(m.group(1)) if m else None


def retry_after_s(headers: Any) -> float | None:
    """OpenAI hints: retry-after-ms first, then retry-after (seconds)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    sec = headers.get("retry-after")
    try:
        return float(sec) if sec else None
    except ValueError:
        return None


def key_fingerprint(provider: str, api_key: str, model: str) -> str:
    """Stable, non-reversible name for a key's limiter (the key itself never leaves the actor)."""
    return hashlib.sha256(f"{provider}\x1f{api_key}\x1f{model}".encode()).hexdigest()[:16]


def call_with_retries(
    fn: Callable[[], T], classify: Callable[[BaseException], Verdict], limits: RateLimits,
    pause_all: Callable[[float], None], sleep: Callable[[float], None] = time.sleep,
) -> tuple[T | None, Verdict | None, int]:
    """Run `fn` under the retry policy. Returns (result, None, attempts) or (None, verdict, attempts) for a
    refusal / row error; raises QuotaExhausted or HostedFatal for errors that end the run."""
    backoff = limits.initial_backoff_s
    for attempt in range(1, limits.max_attempts + 1):
        try:
            return fn(), None, attempt
        except Exception as exc:  # noqa: BLE001 - classified right below
            verdict = classify(exc)
        if verdict.kind == "quota":
            raise QuotaExhausted(verdict.message)
        if verdict.kind == "fatal":
            raise HostedFatal(verdict.message)
        if verdict.kind != "retry" or attempt == limits.max_attempts:
            if verdict.kind == "retry":
                verdict = Verdict("row_error", f"gave up after {attempt} attempts: {verdict.message}")
            return None, verdict, attempt
        wait = verdict.delay_s if verdict.delay_s is not None else backoff * (0.5 + random.random())
        wait = min(wait, limits.max_backoff_s)
        if verdict.delay_s is not None:
            pause_all(wait)  # a 429 with a hint slows every actor on this key, not just this one
        logger.info("retryable error (%s); attempt %d, waiting %.2fs", verdict.message[:120], attempt, wait)
        sleep(wait)
        backoff = min(backoff * 2, limits.max_backoff_s)
    raise AssertionError("unreachable")


class RateLimiter:
    """Token-bucket pacing for one API key: `acquire(n_images)` reserves the next slot and returns how long
    the caller must wait; `pause(s)` holds everyone back after a rate-limit answer."""

    def __init__(self, requests_per_min: float, images_per_min: float) -> None:
        self.req_gap = 60.0 / requests_per_min
        self.img_gap = 60.0 / images_per_min
        self.next_req = 0.0
        self.next_img = 0.0
        self.paused_until = 0.0

    def acquire(self, images: int) -> float:
        now = time.time()
        start = max(now, self.next_req, self.next_img, self.paused_until)
        self.next_req = start + self.req_gap
        self.next_img = start + self.img_gap * images
        return start - now

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.time() + seconds)


class LimiterClient:
    """Talks to the shared limiter actor of one key (created on first use, detached so all actors share it).

    This is the one place an actor calls Ray itself: a rate limit shared by many actors needs a shared counter.
    """

    def __init__(self, name: str, limits: RateLimits) -> None:
        import ray

        remote = ray.remote(num_cpus=0)(RateLimiter)
        self.handle: Any = remote.options(
            name=f"imagefleet-limiter-{name}", namespace="imagefleet", get_if_exists=True, lifetime="detached",
        ).remote(limits.requests_per_min, limits.images_per_min)
        self.ray = ray

    def wait_turn(self, images: int) -> None:
        delay = float(self.ray.get(self.handle.acquire.remote(images)))
        if delay > 0:
            time.sleep(delay)

    def pause_all(self, seconds: float) -> None:
        self.handle.pause.remote(seconds)


class LocalLimiter:
    """Same interface without Ray (unit tests, a single process)."""

    def __init__(self, limits: RateLimits) -> None:
        self.limiter = RateLimiter(limits.requests_per_min, limits.images_per_min)

    def wait_turn(self, images: int) -> None:
        delay = self.limiter.acquire(images)
        if delay > 0:
            time.sleep(delay)

    def pause_all(self, seconds: float) -> None:
        self.limiter.pause(seconds)


def make_limiter(name: str, limits: RateLimits) -> LimiterClient | LocalLimiter:
    import ray

    return LimiterClient(name, limits) if ray.is_initialized() else LocalLimiter(limits)


def decode_image(data: bytes) -> Any:
    """Provider bytes (PNG/JPEG/WebP) → HxWx3 uint8."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def run_hosted(batch: Batch, usd_per_image: float, batch_size: int, generate: Any, name: str) -> Batch:
    """`run_generation` for a hosted backend: prices come from usage, quota/key/model errors end the run."""
    from actors.generation import run_generation

    return run_generation(
        batch,
        batch_size=batch_size,
        generate=generate,
        is_fatal=lambda exc: isinstance(exc, (QuotaExhausted, HostedFatal)),
        usd_per_second=0.0,
        usd_per_image=usd_per_image,
        name=name,
    )


def api_call(fn: Callable[[], T], classify: Callable[[BaseException], Verdict], limits: RateLimits,
             pause_all: Callable[[float], None]) -> T:
    """A control-plane call (files, batches) under the retry policy; any final failure ends the run."""
    result, verdict, _ = call_with_retries(fn, classify, limits, pause_all)
    if verdict is not None:
        raise HostedFatal(f"batch API call failed: {verdict.message}")
    return result  # type: ignore[return-value]  # verdict None means fn returned


def hosted_plumbing(provider: str, api_key: str, cfg: Any, state_uri: str, state_store: Any,
                    submit: Any, collect: Any) -> tuple[LimiterClient | LocalLimiter, Any, Any]:
    """What every hosted actor sets up: the key's shared limiter, a thread pool for concurrent requests, and
    (in batch mode) the resumable BatchRunner."""
    from concurrent.futures import ThreadPoolExecutor

    from actors.batch_mode import BatchRunner
    from actors.storage import open_store

    limiter = make_limiter(key_fingerprint(provider, api_key, cfg.model), cfg.limits)
    pool = ThreadPoolExecutor(max_workers=max(1, min(cfg.pool.batch_size, 32)))
    batch = BatchRunner(provider, open_store(state_uri, state_store), submit, collect) if cfg.batch_mode else None
    return limiter, pool, batch
