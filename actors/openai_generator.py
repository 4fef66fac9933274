"""OpenAIImageGenerator: GPT Image models through the official `openai` SDK (retries owned by imagefleet)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import SecretStr

from imagefleet.actors.backend_io import Outcome, Request, encoded_info
from imagefleet.actors.batch_mode import BatchState, poll, unless_gone
from imagefleet.actors.hosted import Verdict, api_call, image_outcome, retry_after_s
from imagefleet.actors.hosted_actor import HostedGenerator
from imagefleet.actors.layout import CONTENT_TYPES
from imagefleet.configs.generator_base import RunBudget
from imagefleet.configs.hosted import OpenAIImagesConfig, TokenPrices
from imagefleet.configs.hosted_models import (
    OPENAI_BATCH_MAX_BYTES,
    OPENAI_JSON_EDIT_QUALITIES,
    OPENAI_JSON_EDIT_SIZES,
    OPENAI_MAX_IMAGE_BYTES,
    OPENAI_MAX_IMAGE_URL_CHARS,
    OPENAI_MAX_MASK_BYTES,
)
from imagefleet.configs.storage import StoreSpec

logger = logging.getLogger(__name__)
BATCH_FINAL = {"completed", "failed", "expired", "cancelled"}
KEEP_RESULTS_S = 7 * 24 * 3600
"""Batch output files expire a week after the batch (long enough for a crashed run's next attempt to collect
them; openai `batches.create(output_expires_after=...)`), and input files right after the batch ends."""


def openai_mask(mask: bytes, size: tuple[int, int]) -> bytes | str:
    """imagefleet's mask (single-channel, white = change, the first input's size) as OpenAI wants it: a PNG whose
    alpha is 0 where the image should change (mid-grey and lighter counts as white) and 255 elsewhere; or why it
    can't be (a message for the row's error)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(mask)) as im:
            grey = im.convert("L")
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        return f"the mask can't be read as an image ({type(exc).__name__})"
    if grey.size != size:
        return (f"the mask is {grey.size[0]}x{grey.size[1]} but the first input image is {size[0]}x{size[1]}; "
                f"they must be the same size")
    out = Image.new("RGBA", grey.size, (0, 0, 0, 255))
    out.putalpha(grey.point(lambda v: 0 if v >= 128 else 255))
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    if buf.tell() >= OPENAI_MAX_MASK_BYTES:
        return f"the mask PNG is {buf.tell():,} bytes; OpenAI takes masks under {OPENAI_MAX_MASK_BYTES:,} bytes"
    return buf.getvalue()


def data_url(data: bytes) -> str:
    """An image file as the `image_url` of an ImageRefParam (the form a batch line can carry)."""
    info = encoded_info(data)
    return f"data:{info[0] if info else 'image/png'};base64,{base64.b64encode(data).decode()}"


def openai_cost(usage: Any, prices: TokenPrices) -> float | None:
    """USD from an ImagesResponse.usage (None when the response has no usage)."""
    if usage is None:
        return None
    din, dout = getattr(usage, "input_tokens_details", None), getattr(usage, "output_tokens_details", None)
    text_in = getattr(din, "text_tokens", None)
    if text_in is None:
        text_in = getattr(usage, "input_tokens", 0) or 0
    image_in = getattr(din, "image_tokens", 0) or 0
    image_out = getattr(dout, "image_tokens", None)
    if image_out is None:
        image_out = getattr(usage, "output_tokens", 0) or 0
    text_out = getattr(dout, "text_tokens", 0) or 0
    return (text_in * prices.text_input + image_in * prices.image_input + image_out * prices.image_output
            + text_out * prices.text_output) / 1e6


class OpenAIImageGenerator(HostedGenerator):
    """One Images API call per image (n=1, so each image has its own key, cost and refusal status).

    Args:
        cfg: this generator's config slice.
        api_key: resolved key (never logged).
        state_uri, state_store: where batch mode records its batches (next to the outputs).
        name: the generator this actor makes images for.
        budget: the run's budget and ledger (actual spend is checked before each request).
        input_store: where image-conditioned rows' input files are read from (s3:// connection; local paths too).
    """

    CONFIG = OpenAIImagesConfig
    PROVIDER = "openai"

    def __init__(self, cfg: OpenAIImagesConfig, api_key: SecretStr, state_uri: str = "",
                 state_store: StoreSpec = StoreSpec(kind="local"), name: str = "",
                 budget: RunBudget | None = None, input_store: StoreSpec | None = None) -> None:
        import openai

        self.ocfg, self.openai = cfg, openai
        self.client = openai.OpenAI(api_key=api_key.get_secret_value(), base_url=cfg.base_url or None,
                                    organization=cfg.organization or None, project=cfg.project or None,
                                    max_retries=0, timeout=cfg.limits.timeout_s)
        self.prices = cfg.token_prices()
        self.warned_moderation = False
        super().__init__(cfg, api_key, state_uri, state_store, name, budget, input_store)

    def _body(self, r: Request) -> dict[str, Any]:
        c = self.ocfg
        body: dict[str, Any] = dict(model=c.model, prompt=r.prompt, n=1, size=f"{r.width}x{r.height}",
                                    quality=c.quality, output_format=c.output_format, moderation=c.moderation)
        if c.background != "auto":
            body["background"] = c.background
        if c.output_format != "png" and c.output_compression != 100:
            body["output_compression"] = c.output_compression
        return body

    def _call(self, r: Request) -> Any:
        if r.task == "text-to-image":
            return self.client.images.generate(**self._body(r))
        return self.client.images.edit(**self._edit_body(r))

    def _edit_body(self, r: Request) -> dict[str, Any]:
        """`images.edit` arguments: the input files as multipart parts (`image[]`; the first is the one a mask
        applies to) and the mask converted to OpenAI's convention. The multipart edit has no `moderation`."""
        body = self._body(r)
        if body.pop("moderation") != "auto" and not self.warned_moderation:
            self.warned_moderation = True
            logger.warning("moderation=%s has no effect on edits: the edit endpoint takes no moderation setting",
                           self.ocfg.moderation)
        body["image"] = [(f"input-{i}.{_ext(data)}", data, _mime(data)) for i, data in enumerate(r.images)]
        if r.mask:
            mask = openai_mask(r.mask, _size(r.images[0]))
            if isinstance(mask, str):  # checked in _input_problem, so not reached for rows that get here
                raise ValueError(mask)
            body["mask"] = ("mask.png", mask, "image/png")
        return body

    def _json_edit_body(self, r: Request) -> dict[str, Any]:
        """The JSON edit body a batch line carries (EditImageBodyJsonParam): images and mask as data URLs."""
        body = self._body(r)
        body["images"] = [{"image_url": data_url(data)} for data in r.images]
        if r.mask:
            mask = openai_mask(r.mask, _size(r.images[0]))
            if isinstance(mask, str):
                raise ValueError(mask)
            body["mask"] = {"image_url": data_url(mask)}
        return body

    def _input_problem(self, r: Request) -> str:
        """OpenAI's input limits (sizes, the mask; in batch mode what a JSON batch line can carry)."""
        for i, data in enumerate(r.images):
            if len(data) >= OPENAI_MAX_IMAGE_BYTES:
                return f"input image {i + 1} is {len(data):,} bytes; OpenAI takes images under 50 MB"
        if r.mask:
            mask = openai_mask(r.mask, _size(r.images[0]))
            if isinstance(mask, str):
                return mask
        if not self.ocfg.batch_mode:
            return ""
        # a batch line is JSON: sizes and qualities of the JSON edit body, images as data URLs
        size = f"{r.width}x{r.height}"
        if size not in OPENAI_JSON_EDIT_SIZES or self.ocfg.quality not in OPENAI_JSON_EDIT_QUALITIES:
            return (f"batch-mode edits go as JSON lines, which take sizes {', '.join(OPENAI_JSON_EDIT_SIZES)} and "
                    f"qualities {', '.join(OPENAI_JSON_EDIT_QUALITIES)} (got {size}, {self.ocfg.quality}); "
                    f"change them or set batch_mode: false")
        for i, data in enumerate(r.images):
            if (len(data) + 2) // 3 * 4 + 30 > OPENAI_MAX_IMAGE_URL_CHARS:
                return (f"input image {i + 1} is {len(data):,} bytes: too large for a batch line's data URL "
                        f"({OPENAI_MAX_IMAGE_URL_CHARS:,} characters, ~15 MB); set batch_mode: false")
        return ""

    def _answer(self, response: Any, requests: int, maybe_billed: float, discount: float) -> Outcome:
        """The first image's bytes as sent (base64-decoded only) and the usage-priced cost."""
        cost = openai_cost(getattr(response, "usage", None), self.prices)
        cost = None if cost is None else cost * discount
        data = getattr(response, "data", None) or []
        b64 = getattr(data[0], "b64_json", None) if data else None
        try:
            raw = base64.b64decode(b64, validate=True) if b64 else None
        except (binascii.Error, ValueError):
            raw = b""
        fmt = getattr(response, "output_format", None) or self.ocfg.output_format
        return image_outcome(raw, CONTENT_TYPES.get(str(fmt), ""), cost, requests, maybe_billed)

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
            if code == "billing_hard_limit_reached":  # the account's spend cap: every request fails the same way
                return Verdict("quota", f"OpenAI billing hard limit reached: {msg}")
            if getattr(exc, "param", None) == "model" or code == "model_not_found":
                return Verdict("fatal", f"OpenAI does not offer model {self.ocfg.model!r} to this key: {msg}")
            return Verdict("row_error", msg)
        if isinstance(exc, o.NotFoundError):
            return Verdict("fatal", f"model {self.ocfg.model!r} is unknown or retired (404): {msg}")
        if isinstance(exc, (o.AuthenticationError, o.PermissionDeniedError)):
            return Verdict("fatal", f"OpenAI rejected the API key or permission: {msg}")
        if isinstance(exc, o.APIConnectionError):  # timeouts and dropped connections: it may have run (and billed)
            unsent = type(exc.__cause__).__name__ in ("ConnectError", "ConnectTimeout")  # never reached the API
            return Verdict("retry", msg, uncertain=not unsent)
        if isinstance(exc, (o.InternalServerError, o.ConflictError)):
            return Verdict("retry", msg, retry_after_s(getattr(getattr(exc, "response", None), "headers", None)))
        return Verdict("row_error", msg)

    # -- Batch API -----------------------------------------------------------------------------------
    def _api(self, fn: Any, creates: bool = False) -> Any:
        return api_call(fn, self._classify, self.cfg.limits, self.limiter, creates)

    def _submit(self, requests: Sequence[Request]) -> str:
        # a batch has one endpoint: the run's task is one for every row (edits: the JSON body, images as data URLs)
        edits = {r.task != "text-to-image" for r in requests}
        if len(edits) != 1:
            raise ValueError("one OpenAI batch can't mix text-to-image and edit requests")
        edit = edits.pop()
        url: Literal["/v1/images/edits", "/v1/images/generations"] = (
            "/v1/images/edits" if edit else "/v1/images/generations")
        lines = "".join(json.dumps({"custom_id": r.key, "method": "POST", "url": url,
                                    "body": self._json_edit_body(r) if edit else self._body(r)}) + "\n"
                        for r in requests).encode()
        if len(lines) > OPENAI_BATCH_MAX_BYTES:
            raise ValueError(f"the batch input file would be {len(lines) / 2**20:.0f} MB; OpenAI takes up to 200 MB: "
                             f"lower pool.batch_size")
        upload = self._api(lambda: self.client.files.create(file=("imagefleet.jsonl", lines), purpose="batch"))
        created = self._api(lambda: self.client.batches.create(
            input_file_id=upload.id, endpoint=url, completion_window="24h",
            metadata={"source": "imagefleet"},
            output_expires_after={"anchor": "created_at", "seconds": KEEP_RESULTS_S}), creates=True)
        return str(created.id)

    def _collect(self, batch_id: str, keys: Sequence[str]) -> BatchState:
        holder: dict[str, Any] = {}

        def state() -> tuple[str, str]:
            holder["b"] = b = self._api(lambda: unless_gone(lambda: self.client.batches.retrieve(batch_id),
                                                            self._gone))
            if b is None:
                return "gone", ""
            c = b.request_counts
            return str(b.status), f"{c.completed}+{c.failed}/{c.total}" if c else ""

        final = poll(state, {*BATCH_FINAL, "gone"}, self.cfg.batch_poll_s, f"openai batch {batch_id}")
        b = holder["b"]
        if b is None:  # the batch itself is gone: whatever ran can't be collected
            why = f"openai batch {batch_id} is gone at the provider (404); its results can't be collected"
            return BatchState("gone", {}, why, lost=dict.fromkeys(keys, why))
        out: dict[str, Outcome] = {}
        unreadable = [fid for fid in (b.output_file_id, b.error_file_id)  # an expired batch returns what completed
                      if fid and not self._read_lines(fid, out)]
        errors = "; ".join(f"{e.code}: {e.message}" for e in (b.errors.data or [])) if b.errors else ""
        lost: dict[str, str] = {}
        if unreadable:  # results expired (output_expires_after) or deleted: which requests ran is unknown
            why = (f"openai batch {batch_id}: its results file {unreadable[0]} is gone (404: expired or deleted); "
                   f"rerun with --retry-failed to make the image again")
            lost = {k: why for k in keys if k not in out}
        elif final == "completed":  # ran and billed, yet no line names them: never matched by guess
            why = (f"openai batch {batch_id} completed without a result for this request (billed; it can't be "
                   f"matched); rerun with --retry-failed to make it again")
            lost = {k: why for k in keys if k not in out}
        self._delete(b.input_file_id)
        return BatchState(final, out, errors, lost)

    def _read_lines(self, file_id: str, out: dict[str, Outcome]) -> bool:
        """Stream a result file line by line (each line holds a 1–3 MB image): never the whole file in memory.
        False when the file is gone (404/410)."""
        def read() -> bool:
            with self.client.files.with_streaming_response.content(file_id) as response:
                for line in response.iter_lines():
                    if line.strip():
                        item = json.loads(line)
                        answer = self._batch_outcome(item)
                        if answer is not None:
                            out[item["custom_id"]] = answer
            return True

        return bool(self._api(lambda: unless_gone(read, self._gone)))

    def _gone(self, exc: Exception) -> bool:
        """A batch or file that no longer exists: 404, or 410."""
        o = self.openai
        return isinstance(exc, o.NotFoundError) or (isinstance(exc, o.APIStatusError) and exc.status_code == 410)

    def _batch_outcome(self, item: dict[str, Any]) -> Outcome | None:
        """A result line's Outcome; None for a request that never ran (it may be submitted again)."""
        response = item.get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") == 200:
            return self._answer(_ns(body), 1, 0.0, self.ocfg.batch_discount)
        err = body.get("error") or item.get("error") or {}
        if err.get("code") == "moderation_blocked":
            return Outcome(refusal=f"moderation_blocked: {err.get('message', '')}"[:400], requests=1)
        if err.get("code") in ("batch_expired", "batch_cancelled"):
            return None
        return Outcome(error=f"batch request failed: {err.get('code')}: {err.get('message', '')}"[:400], requests=1)

    def _delete(self, file_id: str | None) -> None:
        if file_id:
            try:
                self.client.files.delete(file_id)
            except Exception as exc:  # noqa: BLE001 - input files also expire on their own
                logger.info("could not delete batch input file %s: %s", file_id, type(exc).__name__)

    def _cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(batch_id)


def _mime(data: bytes) -> str:
    info = encoded_info(data)
    return info[0] if info else "application/octet-stream"


def _ext(data: bytes) -> str:
    return {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(_mime(data), "bin")


def _size(data: bytes) -> tuple[int, int]:
    info = encoded_info(data)
    return (info[1], info[2]) if info else (0, 0)


def _ns(value: Any) -> Any:
    """JSON dicts → attribute objects, so batch results price like SDK responses."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _ns(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_ns(v) for v in value]
    return value
