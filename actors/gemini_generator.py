"""GeminiImageGenerator: Nano Banana models (gemini-*-image) through the official `google-genai` SDK."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import SecretStr

from actors.batch_mode import poll
from actors.generation import (
    GENERATOR_INPUT_COLUMNS,
    GENERATOR_OUTPUT_COLUMNS,
    Batch,
    Outcome,
    Request,
)
from actors.hosted import (
    Verdict,
    api_call,
    call_with_retries,
    decode_image,
    hosted_plumbing,
    parse_duration,
    run_hosted,
)
from configs.hosted import GeminiImageConfig, TokenPrices
from configs.storage import StoreSpec

logger = logging.getLogger(__name__)

ASPECTS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
WIDE_ASPECTS = ["1:4", "4:1", "1:8", "8:1"]  # gemini-3.1-flash-image only


def gemini_image_config(model: str, width: int, height: int) -> tuple[str, str]:
    """(aspectRatio, imageSize) closest to a pixel size. Gemini has no pixel sizes, only ratios and tiers."""
    choices = ASPECTS + (WIDE_ASPECTS if model.startswith("gemini-3.1-flash-image") else [])
    target = width / height
    aspect = min(choices, key=lambda a: abs(int(a.split(":")[0]) / int(a.split(":")[1]) - target))
    side = max(width, height)
    if side <= 512 and model.startswith("gemini-3.1-flash-image"):
        return aspect, "512"
    return aspect, "1K" if side <= 1024 else "2K" if side <= 2048 else "4K"


def gemini_cost(usage: Any, prices: TokenPrices) -> float | None:
    """USD from usageMetadata: image tokens x image rate, other answer + thinking tokens x text rate, prompt."""
    if usage is None:
        return None
    image = sum(d.token_count or 0 for d in (usage.candidates_tokens_details or [])
                if str(getattr(d.modality, "value", d.modality)) == "IMAGE")
    answer = (usage.candidates_token_count or 0) - image + (usage.thoughts_token_count or 0)
    return ((usage.prompt_token_count or 0) * prices.text_input + image * prices.image_output
            + max(answer, 0) * prices.text_output) / 1e6


def refusal_of(resp: Any) -> str:
    """Gemini refuses with HTTP 200: a blocked prompt, a candidate without image, or a text-only answer."""
    feedback = getattr(resp, "prompt_feedback", None)
    if feedback is not None and feedback.block_reason:
        return f"blockReason={getattr(feedback.block_reason, 'value', feedback.block_reason)}"
    candidates = resp.candidates or []
    if not candidates:
        return "no candidates"
    parts = (candidates[0].content.parts if candidates[0].content else None) or []
    if any(p.inline_data and not p.thought for p in parts):
        return ""
    reason = candidates[0].finish_reason
    reason = str(getattr(reason, "value", reason))
    if reason and reason != "STOP":
        return f"finishReason={reason}"
    text = " ".join(p.text for p in parts if p.text)[:200]
    return f"text-only answer: {text}" if text else "no image in the answer"


class GeminiImageGenerator:
    """One generateContent call per image (Gemini has no `n`); takes the last non-thought image part.

    Args:
        cfg: this generator's config slice.
        api_key: resolved key (never logged).
    """

    CONFIG = GeminiImageConfig
    INPUT_COLUMNS = GENERATOR_INPUT_COLUMNS
    OUTPUT_COLUMNS = GENERATOR_OUTPUT_COLUMNS

    def __init__(self, cfg: GeminiImageConfig, api_key: SecretStr, state_uri: str = "",
                 state_store: StoreSpec = StoreSpec(kind="local"), name: str = "") -> None:
        self.name = name  # the generator this actor makes images for (rows routed elsewhere pass through)
        from google import genai
        from google.genai import errors, types

        self.cfg, self.types, self.errors = cfg, types, errors
        options = types.HttpOptions(base_url=cfg.base_url or None, api_version=cfg.api_version,
                                    timeout=int(cfg.limits.timeout_s * 1000))  # ms; no retry_options: we retry
        self.client = genai.Client(api_key=api_key.get_secret_value(), http_options=options)
        self.limiter, self.pool, self.batch = hosted_plumbing(
            "gemini", api_key.get_secret_value(), cfg, state_uri, state_store, self._submit, self._collect)

    def __call__(self, batch: Batch) -> Batch:
        return run_hosted(batch, self.cfg.cost.usd_per_image, self.cfg.pool.batch_size, self._generate, self.name)

    def _generate(self, requests: Sequence[Request]) -> list[np.ndarray | Outcome]:
        if self.batch is not None:
            return list(self.batch.run(requests))
        return list(self.pool.map(self._one, requests))

    def _config(self, r: Request) -> Any:
        """Pixel size → aspect ratio + size tier (Gemini has no pixel sizes), plus the seed."""
        aspect, tier = gemini_image_config(self.cfg.model, r.width, r.height)
        t = self.types
        return t.GenerateContentConfig(response_modalities=["IMAGE"], seed=r.seed,
                                       image_config=t.ImageConfig(aspect_ratio=aspect, image_size=tier))

    def _answer(self, resp: Any, discount: float = 1.0) -> Outcome:
        """Refusals are 200s; otherwise the LAST non-thought image part is the final render."""
        cost = gemini_cost(resp.usage_metadata, self.cfg.prices)
        cost = None if cost is None else cost * discount
        refusal = refusal_of(resp)
        if refusal:
            return Outcome(refusal=refusal, cost_usd=cost)
        parts = [p for p in resp.candidates[0].content.parts if p.inline_data and not p.thought]
        return Outcome(image=decode_image(parts[-1].inline_data.data), cost_usd=cost)

    # -- Batch API (inline requests; results come back inside the job, keyed by metadata.key) ---------
    def _api(self, fn: Any) -> Any:
        return api_call(fn, self._classify, self.cfg.limits, self.limiter.pause_all)

    def _submit(self, requests: Sequence[Request]) -> str:
        src: Any = [{"contents": [{"parts": [{"text": r.prompt}], "role": "user"}], "config": self._config(r),
                "metadata": {"key": r.key}} for r in requests]
        job = self._api(lambda: self.client.batches.create(model=self.cfg.model, src=src,
                                                           config={"display_name": "imagefleet"}))
        return str(job.name)

    def _collect(self, batch_id: str) -> dict[str, Outcome]:
        holder: dict[str, Any] = {}
        done = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}

        def state() -> tuple[str, str]:
            holder["job"] = job = self._api(lambda: self.client.batches.get(name=batch_id))
            return str(getattr(job.state, "value", job.state)), ""

        final = poll(state, done, self.cfg.batch_poll_s, f"gemini batch {batch_id}")
        job, out = holder["job"], {}
        for item in (job.dest.inlined_responses if job.dest else None) or []:
            key = (item.metadata or {}).get("key", "")
            if item.response is not None:
                out[key] = self._answer(item.response, self.cfg.batch_discount)
            else:
                out[key] = Outcome(error=f"batch request failed: {item.error}"[:400])
        if not out:
            keys = [k for k, b in self.batch.batch_of.items() if b == batch_id] if self.batch else []
            return {k: Outcome(error=f"gemini batch {batch_id} ended {final}") for k in keys}
        return out

    def _one(self, r: Request) -> Outcome:
        # 1 pixel size → aspect ratio + size tier
        config = self._config(r)
        # 2 pace, call, retry per policy
        self.limiter.wait_turn(1)
        resp, verdict, _ = call_with_retries(
            lambda: self.client.models.generate_content(model=self.cfg.model, contents=r.prompt, config=config),
            self._classify, self.cfg.limits, self.limiter.pause_all)
        if verdict is not None:
            return Outcome(refusal=verdict.message) if verdict.kind == "refused" else Outcome(error=verdict.message)
        # 3 refusal, or the final image
        return self._answer(resp)

    def _classify(self, exc: BaseException) -> Verdict:
        e = self.errors
        msg = f"{type(exc).__name__}: {exc}"[:400]
        if isinstance(exc, e.APIError):
            if exc.code == 429:
                return Verdict("retry", msg, _retry_delay(exc.details))
            if exc.code == 404:
                return Verdict("fatal", f"model {self.cfg.model!r} is unknown or retired (404): {msg}")
            if exc.code in (401, 403) or "API key not valid" in str(exc):
                return Verdict("fatal", f"Gemini rejected the API key or permission: {msg}")
            if exc.code in (408, 500, 502, 503, 504):
                return Verdict("retry", msg)
            return Verdict("row_error", msg)
        name = type(exc).__name__
        if "Timeout" in name or "Connect" in name or "RemoteProtocol" in name:
            return Verdict("retry", msg)
        return Verdict("row_error", msg)


def _retry_delay(details: Any) -> float | None:
    """google.rpc.RetryInfo.retryDelay from an error body (the SDK ignores it)."""
    body = details.get("error", details) if isinstance(details, dict) else {}
    for item in body.get("details", []) if isinstance(body, dict) else []:
        if isinstance(item, dict) and item.get("@type", "").endswith("google.rpc.RetryInfo"):
            return parse_duration(item.get("retryDelay", ""))
    return None
