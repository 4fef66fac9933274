"""OpenAIImageGenerator: GPT Image models through the official `openai` SDK (retries owned by imagefleet)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from types import SimpleNamespace
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
    retry_after_s,
    run_hosted,
)
from configs.hosted import OpenAIImagesConfig, TokenPrices
from configs.storage import StoreSpec

logger = logging.getLogger(__name__)


def openai_size_problem(model: str, width: int, height: int) -> str:
    """gpt-image-2+ take any WxH with sides divisible by 16, aspect within 1:3..3:1, at most 3840x2160."""
    fixed = {(1024, 1024), (1536, 1024), (1024, 1536)}
    if not model.startswith("gpt-image-2"):
        return "" if (width, height) in fixed else f"{model} only makes 1024x1024, 1536x1024 or 1024x1536"
    if width % 16 or height % 16:
        return f"size {width}x{height}: both sides must be multiples of 16 for {model}"
    if not 1 / 3 <= width / height <= 3:
        return f"size {width}x{height}: aspect ratio must be between 1:3 and 3:1 for {model}"
    if max(width, height) > 3840 or min(width, height) > 2160:
        return f"size {width}x{height}: larger than 3840x2160"
    return ""


def openai_cost(usage: Any, prices: TokenPrices) -> float | None:
    """USD from an ImagesResponse.usage (None when the response has no usage)."""
    if usage is None:
        return None
    din, dout = getattr(usage, "input_tokens_details", None), getattr(usage, "output_tokens_details", None)
    text_in = getattr(din, "text_tokens", None) or getattr(usage, "input_tokens", 0) or 0
    image_in = getattr(din, "image_tokens", 0) or 0
    image_out = getattr(dout, "image_tokens", None)
    if image_out is None:
        image_out = getattr(usage, "output_tokens", 0) or 0
    text_out = getattr(dout, "text_tokens", 0) or 0
    return (text_in * prices.text_input + image_in * prices.image_input + image_out * prices.image_output
            + text_out * prices.text_output) / 1e6


class OpenAIImageGenerator:
    """One Images API call per image (n=1, so each image has its own key, cost and refusal status).

    Args:
        cfg: this generator's config slice.
        api_key: resolved key (never logged).
    """

    CONFIG = OpenAIImagesConfig
    INPUT_COLUMNS = GENERATOR_INPUT_COLUMNS
    OUTPUT_COLUMNS = GENERATOR_OUTPUT_COLUMNS

    def __init__(self, cfg: OpenAIImagesConfig, api_key: SecretStr, state_uri: str = "",
                 state_store: StoreSpec = StoreSpec(kind="local"), name: str = "") -> None:
        self.name = name  # the generator this actor makes images for (rows routed elsewhere pass through)
        import openai

        self.cfg = cfg
        self.openai = openai
        self.client = openai.OpenAI(api_key=api_key.get_secret_value(), base_url=cfg.base_url or None,
                                    max_retries=0, timeout=cfg.limits.timeout_s)
        self.limiter, self.pool, self.batch = hosted_plumbing(
            "openai", api_key.get_secret_value(), cfg, state_uri, state_store, self._submit, self._collect)

    def __call__(self, batch: Batch) -> Batch:
        return run_hosted(batch, self.cfg.cost.usd_per_image, self.cfg.pool.batch_size, self._generate, self.name)

    def _generate(self, requests: Sequence[Request]) -> list[np.ndarray | Outcome]:
        if self.batch is None:
            return list(self.pool.map(self._one, requests))
        sizes = {r.key: openai_size_problem(self.cfg.model, r.width, r.height) for r in requests}
        ok = [r for r in requests if not sizes[r.key]]
        done = dict(zip([r.key for r in ok], self.batch.run(ok), strict=True)) if ok else {}
        return [done[r.key] if r.key in done else Outcome(error=sizes[r.key]) for r in requests]

    def _body(self, r: Request) -> dict[str, Any]:
        body: dict[str, Any] = dict(model=self.cfg.model, prompt=r.prompt, n=1, size=f"{r.width}x{r.height}",
                                    quality=self.cfg.quality, output_format=self.cfg.output_format,
                                    moderation=self.cfg.moderation)
        if self.cfg.background != "auto":
            body["background"] = self.cfg.background
        return body

    # -- Batch API ----------------------------------------------------------------------------------
    def _api(self, fn: Any) -> Any:
        return api_call(fn, self._classify, self.cfg.limits, self.limiter.pause_all)

    def _submit(self, requests: Sequence[Request]) -> str:
        lines = [json.dumps({"custom_id": r.key, "method": "POST", "url": "/v1/images/generations",
                             "body": self._body(r)}) for r in requests]
        upload = self._api(lambda: self.client.files.create(file=("imagefleet.jsonl", "\n".join(lines).encode()),
                                                            purpose="batch"))
        created = self._api(lambda: self.client.batches.create(
            input_file_id=upload.id, endpoint="/v1/images/generations", completion_window="24h",
            metadata={"source": "imagefleet"}))
        return str(created.id)

    def _collect(self, batch_id: str) -> dict[str, Outcome]:
        holder: dict[str, Any] = {}

        def state() -> tuple[str, str]:
            holder["b"] = b = self._api(lambda: self.client.batches.retrieve(batch_id))
            c = b.request_counts
            return str(b.status), f"{c.completed}+{c.failed}/{c.total}" if c else ""

        final = poll(state, {"completed", "failed", "expired", "cancelled"}, self.cfg.batch_poll_s,
                     f"openai batch {batch_id}")
        b, out = holder["b"], {}
        for file_id in (b.output_file_id, b.error_file_id):  # an expired batch still returns what completed
            if file_id:
                text = self._api(lambda fid=file_id: self.client.files.content(fid)).text
                for line in text.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        out[item["custom_id"]] = self._batch_outcome(item)
        if final != "completed" and not out:
            return {k: Outcome(error=f"openai batch {batch_id} ended {final}") for k in self._keys_of(batch_id)}
        return out

    def _keys_of(self, batch_id: str) -> list[str]:
        return [k for k, b in self.batch.batch_of.items() if b == batch_id] if self.batch else []

    def _batch_outcome(self, item: dict[str, Any]) -> Outcome:
        response = item.get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") == 200:
            image = decode_image(base64.b64decode(body["data"][0]["b64_json"]))
            cost = openai_cost(_ns(body.get("usage")), self.cfg.prices)
            return Outcome(image=image, cost_usd=None if cost is None else cost * self.cfg.batch_discount)
        err = body.get("error") or item.get("error") or {}
        if err.get("code") == "moderation_blocked":
            return Outcome(refusal=f"moderation_blocked: {err.get('message', '')}"[:400])
        return Outcome(error=f"batch request failed: {err.get('code')}: {err.get('message', '')}"[:400])

    def _one(self, r: Request) -> Outcome:
        # 1 requests the API can't serve never leave the actor
        problem = openai_size_problem(self.cfg.model, r.width, r.height)
        if problem:
            return Outcome(error=problem)
        # 2 pace, call, retry per policy
        self.limiter.wait_turn(1)
        kwargs = self._body(r)
        response, verdict, _ = call_with_retries(lambda: self.client.images.generate(**kwargs), self._classify,
                                                 self.cfg.limits, self.limiter.pause_all)
        if verdict is not None:
            return Outcome(refusal=verdict.message) if verdict.kind == "refused" else Outcome(error=verdict.message)
        # 3 decode and price (no verdict means the call returned a response)
        assert response is not None
        image = decode_image(base64.b64decode(response.data[0].b64_json))
        return Outcome(image=image, cost_usd=openai_cost(response.usage, self.cfg.prices))

    def _classify(self, exc: BaseException) -> Verdict:
        o = self.openai
        code = getattr(exc, "code", None)
        msg = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"[:400]
        if isinstance(exc, o.RateLimitError):
            if code == "insufficient_quota" or getattr(exc, "type", None) == "insufficient_quota":
                return Verdict("quota", f"OpenAI quota exhausted (insufficient_quota): {msg}")
            return Verdict("retry", msg, retry_after_s(exc.response.headers))
        if isinstance(exc, o.BadRequestError):
            if code == "moderation_blocked":
                return Verdict("refused", f"moderation_blocked: {getattr(exc, 'message', '')}"[:400])
            return Verdict("row_error", msg)
        if isinstance(exc, o.NotFoundError):
            return Verdict("fatal", f"model {self.cfg.model!r} is unknown or retired (404): {msg}")
        if isinstance(exc, (o.AuthenticationError, o.PermissionDeniedError)):
            return Verdict("fatal", f"OpenAI rejected the API key or permission: {msg}")
        if isinstance(exc, (o.InternalServerError, o.APIConnectionError, o.APITimeoutError, o.ConflictError)):
            return Verdict("retry", msg, retry_after_s(getattr(getattr(exc, "response", None), "headers", None)))
        return Verdict("row_error", msg)


def _ns(value: Any) -> Any:
    """JSON dicts → attribute objects, so batch results price like SDK responses."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _ns(v) for k, v in value.items()})
    return value
