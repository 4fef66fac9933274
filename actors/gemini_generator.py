"""GeminiImageGenerator: Nano Banana models (gemini-*-image) through the official `google-genai` SDK."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from imagefleet.actors.backend_io import Outcome, Request, encoded_info
from imagefleet.actors.batch_mode import BatchState, poll, unless_gone
from imagefleet.actors.hosted import HostedFatal, Verdict, api_call, image_outcome, parse_duration
from imagefleet.actors.hosted_actor import HostedGenerator
from imagefleet.configs.generator_base import RunBudget
from imagefleet.configs.hosted import GeminiImageConfig, TokenPrices
from imagefleet.configs.hosted_models import GEMINI_MAX_REQUEST_BYTES, gemini_request_size
from imagefleet.configs.storage import StoreSpec

logger = logging.getLogger(__name__)
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
FILE_ABOVE = 100
"""batch_input=auto: requests per batch above which the requests go as an uploaded JSONL file."""
REQUEST_OVERHEAD = 4096
"""Bytes of a generateContent request besides the prompt and the images (JSON, config), for the size check."""


def _image_tokens(details: Any) -> int:
    return sum(d.token_count or 0 for d in (details or []) if str(getattr(d.modality, "value", d.modality)) == "IMAGE")


def gemini_cost(usage: Any, prices: TokenPrices) -> float | None:
    """USD from usageMetadata: image tokens x image rate, the answer's other tokens and thinking x text-output
    rate, the prompt's image tokens (reference images) x image-input rate and its other tokens x input rate."""
    if usage is None:
        return None
    image = _image_tokens(usage.candidates_tokens_details)
    answer = (usage.candidates_token_count or 0) - image + (usage.thoughts_token_count or 0)
    image_in = _image_tokens(usage.prompt_tokens_details)
    text_in = max((usage.prompt_token_count or 0) - image_in, 0)
    return (text_in * prices.text_input + image_in * prices.image_input + image * prices.image_output
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
    if reason and reason not in ("STOP", "None"):
        return f"finishReason={reason}"
    text = " ".join(p.text for p in parts if p.text)[:200]
    return f"text-only answer: {text}" if text else "no image in the answer"


class GeminiImageGenerator(HostedGenerator):
    """One generateContent call per image (Gemini has no `n`); takes the last non-thought image part.

    Args:
        cfg: this generator's config slice.
        api_key: resolved key (never logged).
        state_uri, state_store: where batch mode records its batches (next to the outputs).
        name: the generator this actor makes images for.
        budget: the run's budget and ledger (actual spend is checked before each request).
        input_store: where image-conditioned rows' input files are read from (s3:// connection; local paths too).
    """

    CONFIG = GeminiImageConfig
    PROVIDER = "gemini"

    def __init__(self, cfg: GeminiImageConfig, api_key: SecretStr, state_uri: str = "",
                 state_store: StoreSpec = StoreSpec(kind="local"), name: str = "",
                 budget: RunBudget | None = None, input_store: StoreSpec | None = None) -> None:
        from google import genai
        from google.genai import errors, types

        self.gcfg, self.types, self.errors = cfg, types, errors
        options = types.HttpOptions(base_url=cfg.base_url or None, api_version=cfg.api_version,
                                    timeout=int(cfg.limits.timeout_s * 1000))  # ms; no retry_options: we retry
        self.client = genai.Client(api_key=api_key.get_secret_value(), http_options=options)
        self.prices = cfg.token_prices()
        self.uploads: dict[str, str] = {}  # batch → its uploaded request file
        super().__init__(cfg, api_key, state_uri, state_store, name, budget, input_store)

    def _config(self, r: Request) -> Any:
        """Pixel size → aspect ratio + size tier (Gemini has no pixel sizes), plus the seed."""
        aspect, tier, _ = gemini_request_size(self.gcfg.info(), self.gcfg.model, r.width, r.height)
        t = self.types
        return t.GenerateContentConfig(response_modalities=["IMAGE"], seed=r.seed,
                                       image_config=t.ImageConfig(aspect_ratio=aspect, image_size=tier))

    def _call(self, r: Request) -> Any:
        contents = [self._content(r)] if r.images else r.prompt
        return self.client.models.generate_content(model=self.gcfg.model, contents=contents, config=self._config(r))

    def _content(self, r: Request) -> Any:
        """The user turn: the reference images as inline parts, then the instruction (the order the guide uses)."""
        t = self.types
        parts = [t.Part.from_bytes(data=data, mime_type=_mime(data)) for data in r.images]
        return t.Content(role="user", parts=[*parts, t.Part.from_text(text=r.prompt)])

    def _input_problem(self, r: Request) -> str:
        """A request with inline images must stay under Gemini's 20 MB request limit (bigger needs the Files API,
        which imagefleet does not use)."""
        size = _request_bytes(r)
        if size > GEMINI_MAX_REQUEST_BYTES:
            return (f"the input images make a {size / 2**20:.1f} MB request (base64); Gemini takes inline requests "
                    f"up to {GEMINI_MAX_REQUEST_BYTES // 2**20} MB: use smaller input images")
        return ""

    def _answer(self, response: Any, requests: int, maybe_billed: float, discount: float) -> Outcome:
        """Refusals are 200s (and billed); otherwise the LAST non-thought image part is the final render."""
        cost = gemini_cost(response.usage_metadata, self.prices)
        cost = None if cost is None else cost * discount
        refusal = refusal_of(response)
        if refusal:
            return Outcome(refusal=refusal, cost_usd=cost, requests=requests, maybe_billed_usd=maybe_billed)
        part = [p for p in response.candidates[0].content.parts if p.inline_data and not p.thought][-1]
        return image_outcome(part.inline_data.data, part.inline_data.mime_type or "", cost, requests, maybe_billed)

    def _classify(self, exc: BaseException) -> Verdict:
        e = self.errors
        msg = f"{type(exc).__name__}: {exc}"[:400]
        if isinstance(exc, e.APIError):
            status = str(getattr(exc, "status", "") or "")
            if exc.code == 429:
                quota = _hard_quota(exc)
                if quota:  # a daily quota or a quota of 0: waiting minutes can't help
                    return Verdict("quota", f"Gemini quota exhausted ({quota}): {msg}")
                return Verdict("retry", msg, _retry_delay(exc.details))
            if exc.code == 404:
                return Verdict("fatal", f"model {self.gcfg.model!r} is unknown or retired (404): {msg}")
            if exc.code in (401, 403) or "API key not valid" in str(exc) or "API_KEY_INVALID" in str(exc.details):
                return Verdict("fatal", f"Gemini rejected the API key or permission: {msg}")
            if status == "FAILED_PRECONDITION":  # billing not enabled, region not supported: every request fails
                return Verdict("fatal", f"Gemini refuses this project (FAILED_PRECONDITION): {msg}")
            if exc.code in (408, 500, 502, 503, 504):
                return Verdict("retry", msg)
            return Verdict("row_error", msg)
        name = type(exc).__name__
        if name == "ValidationError":  # the SDK couldn't parse a 200 answer (e.g. inlineData that isn't base64):
            # it was answered and billed; its usage is lost with it, so its estimate counts as maybe billed
            return Verdict("row_error", f"Gemini's answer could not be read (billed): {msg}", uncertain=True)
        if "Timeout" in name or name in ("RemoteProtocolError", "ReadError", "WriteError"):
            return Verdict("retry", msg, uncertain=True)  # sent, then lost: it may have run (and been billed)
        if "Connect" in name:
            return Verdict("retry", msg)
        return Verdict("row_error", msg)

    # -- Batch API ---------------------------------------------------------------------------------------
    def _api(self, fn: Any, creates: bool = False) -> Any:
        return api_call(fn, self._classify, self.cfg.limits, self.limiter, creates)

    def _as_file(self, requests: Sequence[Request]) -> bool:
        """The JSONL-file form above FILE_ABOVE requests (auto), or when inline requests (images included) would
        pass the inline batch's 20 MB."""
        mode = self.gcfg.batch_input
        big = sum(_request_bytes(r) for r in requests) > GEMINI_MAX_REQUEST_BYTES
        if mode == "inline" and big:
            logger.warning("batch_input=inline: these %d requests' images pass the inline batch's 20 MB; sending "
                           "them as a JSONL file instead", len(requests))
        return mode == "file" or big or (mode == "auto" and len(requests) > FILE_ABOVE)

    def _submit(self, requests: Sequence[Request]) -> str:
        if self._as_file(requests):
            lines = "".join(json.dumps({"key": r.key, "request": self._wire_request(r)}) + "\n" for r in requests)
            upload = self._api(lambda: self.client.files.upload(
                file=io.BytesIO(lines.encode()), config={"mime_type": "application/jsonl",
                                                          "display_name": "imagefleet-batch"}))
            src: Any = upload.name
        else:
            upload = None
            src = [{"contents": [self._content(r)], "config": self._config(r), "metadata": {"key": r.key}}
                   for r in requests]
        job = self._api(lambda: self.client.batches.create(model=self.gcfg.model, src=src,
                                                           config={"display_name": "imagefleet"}), creates=True)
        if upload is not None:
            self.uploads[str(job.name)] = str(upload.name)  # deleted once the batch ends (else it expires in 48 h)
        return str(job.name)

    def _wire_request(self, r: Request) -> dict[str, Any]:
        """A GenerateContentRequest as the file format wants it (wire field names, not the SDK's `config`)."""
        aspect, tier, _ = gemini_request_size(self.gcfg.info(), self.gcfg.model, r.width, r.height)
        images = [{"inlineData": {"mimeType": _mime(data), "data": base64.b64encode(data).decode()}}
                  for data in r.images]
        return {"contents": [{"parts": [*images, {"text": r.prompt}], "role": "user"}],
                "generationConfig": {"responseModalities": ["IMAGE"], "seed": r.seed,
                                     "imageConfig": {"aspectRatio": aspect, "imageSize": tier}}}

    def _collect(self, batch_id: str, keys: Sequence[str]) -> BatchState:
        holder: dict[str, Any] = {}

        def state() -> tuple[str, str]:
            holder["job"] = job = self._api(lambda: unless_gone(lambda: self.client.batches.get(name=batch_id),
                                                                self._gone))
            return (str(getattr(job.state, "value", job.state)), "") if job is not None else ("gone", "")

        final = poll(state, {*DONE, "gone"}, self.cfg.batch_poll_s, f"gemini batch {batch_id}")
        job = holder["job"]
        if job is None:  # the batch itself is gone: whatever ran can't be collected
            why = f"gemini batch {batch_id} is gone at the provider (404); its results can't be collected"
            return BatchState("gone", {}, why, lost=dict.fromkeys(keys, why))
        dest = job.dest
        lost: dict[str, str] = {}
        if dest is not None and dest.file_name:
            out = self._file_results(dest.file_name)
            if out is None:  # the results file expired (48 h) or was deleted
                out = {}
                why = (f"gemini batch {batch_id}: its results file {dest.file_name} is gone (404: expired or "
                       f"deleted); rerun with --retry-failed to make the image again")
                lost = dict.fromkeys(keys, why)
        else:
            out, lost = self._inline_results(batch_id, list(keys), (dest.inlined_responses if dest else None) or [])
        if final == "JOB_STATE_SUCCEEDED":  # ran and billed, yet no result names them: never matched by guess
            why = (f"gemini batch {batch_id} succeeded without a result for this request (billed; it can't be "
                   f"matched); rerun with --retry-failed to make it again")
            lost.update({k: why for k in keys if k not in out and k not in lost})
        errors = str(job.error.message) if getattr(job, "error", None) is not None else ""
        if final in ("JOB_STATE_FAILED", "JOB_STATE_EXPIRED") and not errors:
            errors = self._failure_reason(batch_id)
        self._delete_input(batch_id)
        return BatchState(final, out, errors, lost)

    def _failure_reason(self, batch_id: str) -> str:
        """The operation's `error.message`, which google-genai's Gemini API converter drops (it maps `error` only
        for Vertex): read from the raw operation, best effort ('' when it can't be had)."""
        try:
            raw = self._api(lambda: self.client._api_client.request("get", batch_id, {}))
            return str((json.loads(raw.body or "{}").get("error") or {}).get("message", ""))[:500]
        except Exception as exc:  # noqa: BLE001 - only the row's error text depends on it
            logger.info("gemini batch %s: its failure reason could not be read: %s", batch_id, type(exc).__name__)
            return ""

    def _gone(self, exc: Exception) -> bool:
        """A batch or file that no longer exists: 404 or 410; the Files API answers a file that is gone with 403
        "... or it may not exist"."""
        code = exc.code if isinstance(exc, self.errors.APIError) else 0
        return code in (404, 410) or (code == 403 and "may not exist" in str(exc))

    def _delete_input(self, batch_id: str) -> None:
        name = self.uploads.pop(batch_id, "")
        if name:
            try:
                self.client.files.delete(name=name)
            except Exception as exc:  # noqa: BLE001 - uploaded files also expire on their own
                logger.info("could not delete batch input file %s: %s", name, type(exc).__name__)

    def _inline_results(self, batch_id: str, keys: list[str], items: list[Any]
                        ) -> tuple[dict[str, Outcome], dict[str, str]]:
        """(outcomes, lost): results are matched by the key their request's `metadata` carries, never by position
        (inline responses may come back without metadata and out of order: python-genai #2008/#1886/#1909,
        js-genai #1191; both at once would swap images, prices and prompts silently). Requests whose result
        can't be matched that way are lost: error rows that say why."""
        matched: dict[str, Outcome] = {}
        unkeyed = 0
        for item in items:
            key = (item.metadata or {}).get("key")
            if key in keys:
                matched[str(key)] = self._item_outcome(item.response, item.error)
            else:
                unkeyed += 1
        if not unkeyed:
            return matched, {}
        why = (f"gemini batch {batch_id}: {unkeyed} result(s) came back without their request's key and can't be "
               f"matched (billed); rerun with --retry-failed to make the image again")
        logger.warning("%s", why)
        return matched, {k: why for k in keys if k not in matched}

    def _file_results(self, name: str) -> dict[str, Outcome] | None:
        """Each line's outcome by its key; None when the file is gone (404)."""
        data = self._api(lambda: unless_gone(lambda: self.client.files.download(file=name), self._gone))
        if data is None:
            return None
        out: dict[str, Outcome] = {}
        for line in bytes(data).splitlines():
            if not line.strip():
                continue
            item: Any = None
            try:
                item = json.loads(line)
                key = str(item.get("key", ""))
                response = item.get("response")
                parsed = (self.types.GenerateContentResponse.model_validate_json(json.dumps(response))
                          if response is not None else None)
                out[key] = self._item_outcome(parsed, item.get("error") or item.get("status"))
            except Exception as exc:  # noqa: BLE001 - one bad line is that request's (billed) error, not the batch's
                key = str(item.get("key", "")) if isinstance(item, dict) else ""
                if not key:
                    raise HostedFatal(f"gemini batch result file {name} has an unreadable line: {exc}") from exc
                out[key] = Outcome(error=f"unreadable batch result (billed): {type(exc).__name__}", requests=1,
                                   cost_usd=self.gcfg.estimate_usd() * self.gcfg.batch_discount)
        return out

    def _item_outcome(self, response: Any, error: Any) -> Outcome:
        if response is not None:
            return self._answer(response, 1, 0.0, self.gcfg.batch_discount)
        return Outcome(error=f"batch request failed: {error}"[:400], requests=1)

    def _cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(name=batch_id)


def _mime(data: bytes) -> str:
    info = encoded_info(data)
    return info[0] if info else "application/octet-stream"


def _request_bytes(r: Request) -> int:
    """About how large a generateContent request with these inline images is (base64 grows them by 4/3)."""
    return sum((len(data) + 2) // 3 * 4 for data in r.images) + len(r.prompt.encode()) + REQUEST_OVERHEAD


def _error_details(details: Any) -> list[dict[str, Any]]:
    body = details.get("error", details) if isinstance(details, dict) else {}
    items = body.get("details", []) if isinstance(body, dict) else []
    return [i for i in items if isinstance(i, dict)]


def _retry_delay(details: Any) -> float | None:
    """google.rpc.RetryInfo.retryDelay from an error body (the SDK ignores it)."""
    for item in _error_details(details):
        if item.get("@type", "").endswith("google.rpc.RetryInfo"):
            return parse_duration(item.get("retryDelay", ""))
    return None


def _hard_quota(exc: Any) -> str:
    """The quota a 429 names when waiting can't help: a per-day quota, or a limit of 0 (no quota on this tier).
    Sources: google.rpc.QuotaFailure in Gemini 429 bodies (google-gemini/gemini-cli#8437, RA.Aid#182), and
    "limit: 0" for image models without free tier (discuss.ai.google.dev)."""
    if "limit: 0" in str(getattr(exc, "message", "") or exc):
        return "limit: 0"
    for item in _error_details(exc.details):
        if item.get("@type", "").endswith("google.rpc.QuotaFailure"):
            for v in item.get("violations", []) or []:
                quota = str(v.get("quotaId", ""))
                if "PerDay" in quota:
                    return quota
    return ""
