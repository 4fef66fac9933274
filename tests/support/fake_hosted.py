"""A strict loopback fake of the OpenAI Images API and the Gemini generateContent API (their documented wire
formats, including how they fail), for tests and offline development:
`python -m tests.support.fake_hosted --port 8123` (from the repo root).

Every behaviour is a switch on `server.knobs` (a `Knobs` dataclass), so a test flips it while Ray actors talk to the
server; switches are on by default where the real service behaves so (strict parameter validation, unordered
OpenAI batch output). Per-row refusals come from prompt markers: `[refuse]` (OpenAI 400 moderation_blocked, Gemini
blockReason), `[refuse:IMAGE_SAFETY]`, `[refuse:NO_IMAGE]`, `[refuse:TEXT]` (Gemini finishReason forms).

Records a test can assert on:
- `server.log`: every HTTP request (method, path, lower-cased headers, JSON body or raw bytes);
- `server.paid`: one `Paid` per request the real service would bill (200 image generations, sync or inside a batch,
  and Gemini's 200 refusals, which carry usage); `server.paid_count()`, `server.paid_usd()`;
- `server.served`: sha256 hex of every final image's bytes it returned -> mime type (`server.corrupt`: the subset
  that were deliberately undecodable);
- `server.inputs`: the input images (and OpenAI mask) of every billed edit / reference-image request, as received;
  such answers are the inputs' mean colour (`mean_colour`), so a test can tell the references arrived;
- `server.deleted_files`, `server.cancelled_batches`, `server.errors` (tracebacks of handler exceptions).

Routes: POST /v1/images/generations, POST /v1/images/edits (multipart, or the JSON edit body), POST /v1/files,
GET|DELETE /v1/files/{id}, GET /v1/files/{id}/content,
POST|GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel; for Gemini ({v} in v1, v1beta):
POST /{v}/models/{m}:generateContent, POST /{v}/models/{m}:batchGenerateContent, GET|DELETE /{v}/batches/{id},
POST /{v}/batches/{id}:cancel, POST /upload/{v}/files (resumable start + upload/finalize), GET|DELETE
/{v}/files/{id}, GET [/download]/{v}/files/{id}:download?alt=media. `/v1/files/...` and `/v1/batches/...` are
shared by both providers: a Gemini key (x-goog-api-key header or ?key=) routes them to Gemini.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import io
import json
import random
import re
import struct
import sys
import threading
import time
import traceback
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OPENAI_KEY = "sk-fake-imagefleet"
GEMINI_KEY = "g-fake-imagefleet"

Reply = tuple[int, dict[str, str], Any]  # status, headers, JSON-able payload or raw bytes


# == capability tables =============================================================================================

@dataclass(frozen=True)
class OpenAICaps:
    flexible_sizes: bool  # any WxH within the gpt-image-2 limits, else only auto + the three standard sizes
    qualities: frozenset[str]
    transparent: bool
    text_in: float  # USD per 1M input text tokens
    image_out: float  # USD per 1M output image tokens
    image_in: float = 8.0  # USD per 1M input image tokens (edits)
    high_fidelity: bool = True  # edits read every input image at high fidelity (gpt-image-2 family)
    fidelities: frozenset[str] = frozenset()  # accepted `input_fidelity` values (gpt-image-2: "omit this parameter")
    calculator: bool = True  # output tokens by the price calculator's size/quality algorithm (gpt-image-2 family)


_Q = frozenset({"auto", "low", "medium", "high"})
_QX = _Q | {"xhigh", "max"}
_GPT2 = OpenAICaps(True, _Q, False, 5.0, 30.0)  # transparent background: preview only on gpt-image-2
_GPT25 = OpenAICaps(True, _QX, True, 5.0, 30.0)
OPENAI_CAPS: dict[str, OpenAICaps] = {
    "gpt-image-2": _GPT2,
    "gpt-image-2-2026-04-21": _GPT2,
    "gpt-image-2.5-sunburst": _GPT25,
    "gpt-image-2.5-flare": _GPT25,
    "gpt-image-2.5-sunburst-2026-09-08": _GPT25,
    "gpt-image-2.5-flare-2026-09-08": _GPT25,
    "gpt-image-2.6-sunburst": _GPT25,
    "gpt-image-2.6-flare": _GPT25,
    # input_fidelity per the openai 3.54 SDK docstring: high and low on gpt-image-1.5, only low on gpt-image-1-mini
    "gpt-image-1-mini": OpenAICaps(False, _Q, True, 2.0, 8.0, 2.5, False, frozenset({"low"}), False),
    "gpt-image-1.5": OpenAICaps(False, _Q, True, 5.0, 32.0, 8.0, False, frozenset({"low", "high"}), False),  # image-out
    # rate 3rd-party (HOSTED_APIS.md §1.7)
}
OPENAI_MODELS = set(OPENAI_CAPS)
OPENAI_STANDARD_SIZES = ("1024x1024", "1536x1024", "1024x1536")
# flexible-size limits (gpt-image-2 family): both sides multiples of 16, long edge, aspect ratio, total pixels
OPENAI_MAX_EDGE, OPENAI_MAX_RATIO, OPENAI_MIN_PIXELS, OPENAI_MAX_PIXELS = 3840, 3.0, 655_360, 8_294_400
# output image tokens at 1024x1024 of the gpt-image-1 family (fixed sizes; scaled by area)
OPENAI_TOKENS_1024 = {"low": 272, "medium": 1056, "high": 4160}
# the gpt-image-2 family bills output image tokens by the algorithm behind OpenAI's price calculator (OpenAI
# developer forum, "gpt-image-2 output pricing calculator", 2026-06-05): a quality factor, a short-axis factor, and
# the area plus a 2,000,000-pixel offset over 4,000,000. Published: 1024x1024 high 7,024 tokens, 1536x1024 high
# 5,488, 1024x1024 low 196. xhigh/max (2.5 family, not published) bill here as 1.5x and 2x high.
OPENAI_CALCULATOR_QUALITY = {"low": 16, "medium": 48, "high": 96}
OPENAI_BEYOND_HIGH = {"xhigh": 3, "max": 4}  # halves of high
# the body parameters of the installed SDK's ImageGenerateParams (openai 3.54.0, types/image_generate_params.py)
OPENAI_PARAMS = frozenset({
    "prompt", "background", "complexity", "frame_count", "frame_duration_ms", "model", "moderation", "n",
    "output_compression", "output_format", "partial_images", "quality", "response_format", "safety_identifier",
    "size", "style", "svg", "user", "stream"})
# legacy DALL-E parameters the SDK still types but GPT image models reject as unknown
# (real body: vercel/ai#6102, lofcz/LLMTornado#155: "Unknown parameter: 'response_format'.", code unknown_parameter)
OPENAI_LEGACY_PARAMS = ("response_format", "style")
# edits: the multipart parameters of ImageEditParams (openai 3.54.0, types/image_edit_params.py; no `moderation`)
# and the JSON body's (openai-openapi EditImageBodyJsonParam, which a Batch API line carries)
OPENAI_EDIT_PARAMS = frozenset({
    "image", "prompt", "background", "complexity", "frame_count", "frame_duration_ms", "input_fidelity", "markup",
    "mask", "model", "n", "output_compression", "output_format", "partial_images", "quality", "response_format",
    "safety_identifier", "size", "stream", "svg", "user"})
OPENAI_JSON_EDIT_PARAMS = frozenset({
    "model", "images", "mask", "prompt", "n", "quality", "input_fidelity", "size", "user", "output_format",
    "output_compression", "moderation", "background", "stream", "partial_images"})
OPENAI_JSON_EDIT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")  # EditImageBodyJsonParam.size enum
OPENAI_JSON_EDIT_QUALITIES = frozenset({"auto", "low", "medium", "high"})
OPENAI_MAX_EDIT_IMAGES = 16  # "You can provide up to 16 images" (SDK docstring; openapi maxItems)
OPENAI_MAX_IMAGE_URL_CHARS = 20_971_520  # ImageRefParam.image_url maxLength
OPENAI_BATCH_ENDPOINTS = frozenset({"/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                                    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos"})


@dataclass(frozen=True)
class GeminiCaps:
    aspects: tuple[str, ...]
    tokens: dict[str, int]  # imageSize tier -> output image tokens
    text_in: float  # USD per 1M prompt tokens
    image_out: float  # USD per 1M output image tokens
    text_out: float  # USD per 1M output text + thinking tokens
    image_in_tokens: int = 1120  # prompt tokens per input (reference) image (Vertex model pages)
    image_in: float = 0.5  # USD per 1M input image tokens


GEMINI_STANDARD_ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
GEMINI_EXTREME_ASPECTS = ("1:4", "4:1", "1:8", "8:1")
GEMINI_CAPS: dict[str, GeminiCaps] = {
    "gemini-3.1-flash-image": GeminiCaps(GEMINI_STANDARD_ASPECTS + GEMINI_EXTREME_ASPECTS,
                                         {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}, 0.5, 60.0, 3.0, 1120, 0.5),
    "gemini-3-pro-image": GeminiCaps(GEMINI_STANDARD_ASPECTS, {"1K": 1120, "2K": 1120, "4K": 2000}, 2.0, 120.0, 12.0,
                                     560, 2.0),
    # no public price for the Lite model (HOSTED_APIS.md §2.7): assumed half of 3.1 Flash Image
    "gemini-3.1-flash-lite-image": GeminiCaps(GEMINI_STANDARD_ASPECTS, {"1K": 1120}, 0.25, 30.0, 1.5, 1120, 0.25),
}
GEMINI_MAX_INPUT_IMAGES = 14  # "Maximum images per prompt: 14" (Vertex pages of both models)
GEMINI_INPUT_MIMES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
GEMINI_MODELS = set(GEMINI_CAPS)
# pixel sizes at 1K (the published table); 2K = x2, 4K = x4, 512 = x0.5
GEMINI_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024), "2:3": (848, 1264), "3:2": (1264, 848), "3:4": (896, 1200), "4:3": (1200, 896),
    "4:5": (928, 1152), "5:4": (1152, 928), "9:16": (768, 1376), "16:9": (1376, 768), "21:9": (1584, 672),
    "1:4": (512, 2048), "4:1": (2048, 512), "1:8": (384, 3072), "8:1": (3072, 384)}
GEMINI_SCALE = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}
GEMINI_TIERS = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}  # legacy names, kept for importers
GEMINI_TOKENS = dict(GEMINI_CAPS["gemini-3.1-flash-image"].tokens)
GEMINI_TEXT_PART = "Here you go"
GEMINI_TEXT_TOKENS = 4  # output tokens of the text part that precedes the image
# the fields the Developer API accepts (lowerCamel; snake_case spellings are accepted too, as proto JSON does)
GEMINI_REQUEST_FIELDS = frozenset({"contents", "generationConfig", "safetySettings", "tools", "toolConfig",
                                   "systemInstruction", "cachedContent", "labels", "serviceTier", "store", "model"})
GEMINI_GENERATION_FIELDS = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "seed", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
    "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
    "mediaResolution"})
GEMINI_IMAGE_FIELDS = frozenset({"aspectRatio", "imageSize"})  # personGeneration etc. are Vertex-only
GRPC_CODES = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "PERMISSION_DENIED": 7,
              "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14}
GEMINI_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"
GEMINI_BATCH_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"


# == knobs and records ============================================================================================

@dataclass
class Knobs:
    # -- both providers
    rate_limit_n: int = 0  # next N sync requests: 429 (OpenAI rate_limit_exceeded + retry-after-ms; Gemini per-minute)
    retry_after_ms: int = 50  # the retry hint of those 429s (retry-after-ms header / RetryInfo.retryDelay)
    server_error_n: int = 0  # next N sync requests: OpenAI 500, Gemini 503 UNAVAILABLE
    latency_ms: int = 0  # every HTTP request sleeps this long first
    retired_model: bool = False  # every generation: 404 model_not_found / NOT_FOUND
    slow_n: int = 0  # next N billed sync generations are billed, then sleep slow_ms before answering
    slow_ms: int = 0
    corrupt_image_n: int = 0  # next N successful generations (billed) return undecodable image bytes
    null_image_n: int = 0  # next N successful generations (billed): OpenAI "b64_json": null; Gemini inlineData w/o data
    truncated_image_n: int = 0  # next N successful generations (billed): valid base64 of the first half of the file
    bad_base64_n: int = 0  # next N Gemini generations (billed): inlineData.data that is not base64 (the SDK can't
    # parse the answer)
    quota_after_paid: int = -1  # once this many requests are billed, every sync request meets the account's quota
    # (OpenAI 429 insufficient_quota; Gemini 429 RESOURCE_EXHAUSTED per day); -1 = never
    crash_n: int = 0  # next N HTTP requests raise inside the handler (answered 500 in the provider's error shape)
    batch_ticks: int = 2  # GETs of a batch before it may finish (also `server.batch_ticks`)
    batch_turnaround_s: float = 0.0  # and seconds after creation before it may finish
    batch_outcome: str = "completed"  # "completed" | "failed" | "expired" (first half of the lines run) |
    # "cancelled" (an operator cancelled it in the provider's console before any line ran)
    batch_vanish: bool = False  # a batch that has run answers 404 from then on (batches can disappear)
    batch_results_expired: bool = False  # result files answer 404 (OpenAI output_expires_after; Gemini files: 48 h)
    # -- OpenAI
    quota_exhausted: bool = False  # every request: 429 insufficient_quota
    billing_hard_limit: bool = False  # every request: 400 billing_hard_limit_reached
    unknown_model_404: bool = False  # an unknown model answers 404 instead of 400
    batch_shuffle_output: bool = True  # output/error file lines not in input order (the API promises no order)
    batch_drop_lines: int = 0  # a completed batch's output file lacks its last N lines (they ran and were billed)
    batch_max_lines: int = 50_000  # input-file limits; beyond them the batch ends failed
    batch_max_bytes: int = 200 * 1024 * 1024
    openai_max_image_bytes: int = 50 * 1024 * 1024  # each edit input image is smaller than this
    openai_max_mask_bytes: int = 4 * 1024 * 1024  # an edit's mask is smaller than this
    # -- Gemini
    thought_images: int = 0  # interim `thought: true` images before the final one
    thinking_tokens: int = 120  # usageMetadata.thoughtsTokenCount (billed at the text-output rate)
    gemini_quota: str = ""  # "per_minute" | "per_day" | "limit_zero": every sync request answers that 429
    failed_precondition: bool = False  # every request: 400 FAILED_PRECONDITION (unsupported location)
    gemini_inline_max_bytes: int = 20 * 1024 * 1024  # inline batchGenerateContent body limit
    gemini_request_max_bytes: int = 20 * 1024 * 1024  # generateContent body limit (inline data included)
    gemini_batch_omit_metadata: bool = False  # inline responses come back without their request metadata
    gemini_batch_reorder: bool = False  # responses (inline and file) come back reversed
    gemini_batch_drop_n: int = 0  # batch SUCCEEDS but the last N results are missing (billed nonetheless)


@dataclass(frozen=True)
class Paid:
    provider: str  # "openai" | "gemini"
    mode: str  # "sync" | "batch"
    model: str
    key: str  # batch custom_id / metadata key in a batch, else the prompt
    usd: float


@dataclass(frozen=True)
class Inputs:
    """The input images a billed edit / reference request carried, as the fake received them."""

    provider: str
    mode: str
    key: str  # batch custom_id / metadata key in a batch, else the prompt
    images: list[bytes]
    mask: bytes | None  # OpenAI's mask PNG (alpha 0 = change)


@dataclass(frozen=True)
class _Options:
    """A generation's or edit's checked options."""

    model: str
    caps: OpenAICaps
    prompt: str
    n: int
    width: int
    height: int
    quality: str
    fmt: str
    background: str
    compression: int | None


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    raw: bytes
    body: Any  # parsed JSON, or None when there is no body / it is not JSON
    json_ok: bool


# == images =======================================================================================================

@functools.lru_cache(maxsize=1)
def icc_profile() -> bytes:
    """An sRGB ICC profile (as real providers' PNGs carry one)."""
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


C2PA_MANIFEST = b"\x00\x00\x00\x20jumbc2pa" + b"fake-c2pa-manifest-store:imagefleet"


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG, verifying each CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(ctype + payload) & 0xFFFFFFFF, f"bad CRC in {ctype!r}"
        out.append((ctype, payload))
        pos += 12 + length
    return out


def _colour(seed_text: str) -> tuple[int, int, int]:
    h = hashlib.sha256(seed_text.encode()).digest()
    return h[0], h[1], h[2]


MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@functools.lru_cache(maxsize=64)
def render(width: int, height: int, seed_text: str, fmt: str = "png", transparent: bool = False,
           compression: int = 100) -> bytes:
    """A deterministic flat-colour image (colour from the prompt) with an ICC profile; PNGs also carry a C2PA
    `caBX` chunk after IHDR. Transparent: RGBA whose top-left quarter has alpha 0."""
    return render_rgb(width, height, _colour(seed_text), fmt, transparent, compression)


@functools.lru_cache(maxsize=64)
def render_rgb(width: int, height: int, rgb: tuple[int, int, int], fmt: str = "png", transparent: bool = False,
               compression: int = 100) -> bytes:
    """`render` in a given colour (edits and reference images: the mean colour of the inputs)."""
    from PIL import Image

    if transparent:
        im = Image.new("RGBA", (width, height), (*rgb, 255))
        im.paste((0, 0, 0, 0), (0, 0, max(1, width // 4), max(1, height // 4)))
    else:
        im = Image.new("RGB", (width, height), rgb)
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=1, icc_profile=icc_profile())
        data = buf.getvalue()
        ihdr_end = 8 + 25  # signature + IHDR (4 length + 4 type + 13 data + 4 CRC)
        return data[:ihdr_end] + png_chunk(b"caBX", C2PA_MANIFEST) + data[ihdr_end:]
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=max(1, min(100, compression)), icc_profile=icc_profile())
    else:
        im.save(buf, format="WEBP", quality=max(1, min(100, compression)), icc_profile=icc_profile())
    return buf.getvalue()


def png(width: int, height: int, seed_text: str) -> bytes:
    """The PNG the fake returns for this prompt at this size (opaque)."""
    return render(width, height, seed_text)


def corrupt_bytes(fmt: str, seed_text: str) -> bytes:
    """Starts like the format (magic bytes) but does not decode."""
    magic = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "webp": b"RIFF\x10\x00\x00\x00WEBP"}[fmt]
    return magic + hashlib.sha256(b"corrupt:" + seed_text.encode()).digest() * 3


def mean_colour(images: list[bytes]) -> tuple[int, int, int]:
    """The mean RGB of the input images' mean colours: the colour an edit or reference request comes back in."""
    from PIL import Image, ImageStat

    sums = [0.0, 0.0, 0.0]
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            means = ImageStat.Stat(im.convert("RGB")).mean
        sums = [a + b for a, b in zip(sums, means, strict=True)]
    r, g, b = (round(v / len(images)) for v in sums)
    return r, g, b


def _image_kind(data: bytes) -> str:
    """png | jpeg | webp | gif | '' from the magic bytes (what the API checks, whatever the declared type)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "gif" if data.startswith((b"GIF87a", b"GIF89a")) else ""


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        return None


def _openai_input_tokens(caps: OpenAICaps, width: int, height: int, high: bool) -> int:
    """Input image tokens of one edit input: 65 + 129 per 512px tile once the short side is 512 (gpt-image-1 edits
    billed 194 for a 1024x1024 input: OpenAI community forum), plus 4,160 (square) / 6,240 at high fidelity."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = 512 / min(w, h)
    tiles = -(-int(w * scale) // 512) * -(-int(h * scale) // 512)
    extra = (4160 if width == height else 6240) if caps.high_fidelity or high else 0
    return 65 + 129 * tiles + extra


def gemini_size(aspect: str, tier: str) -> tuple[int, int]:
    w, h = GEMINI_1K[aspect]
    s = GEMINI_SCALE[tier]
    return round(w * s), round(h * s)


def openai_image_tokens(caps: OpenAICaps, quality: str, width: int, height: int) -> int:
    """What the service bills for one image's output; `quality` as rendered (auto renders as high)."""
    if not caps.calculator:
        return round(OPENAI_TOKENS_1024[quality] * width * height / (1024 * 1024))
    if quality in OPENAI_BEYOND_HIGH:
        return -(-openai_image_tokens(caps, "high", width, height) * OPENAI_BEYOND_HIGH[quality] // 2)
    factor = OPENAI_CALCULATOR_QUALITY[quality]
    short_axis = int(factor * min(width, height) / max(width, height) + 0.5)
    numerator = factor * short_axis * (2_000_000 + width * height)
    return numerator // 4_000_000 + (1 if numerator % 4_000_000 else 0)


def openai_size_problem(model: str, size: str) -> str:
    """'' when `size` is valid for `model`, else why not."""
    caps = OPENAI_CAPS[model]
    if size == "auto" or size in OPENAI_STANDARD_SIZES:
        return ""
    if not caps.flexible_sizes:
        return f"Invalid size '{size}'. Supported sizes are auto, {', '.join(OPENAI_STANDARD_SIZES)}."
    m = re.fullmatch(r"(\d+)x(\d+)", size)
    if not m:
        return f"Invalid size '{size}'. Expected 'auto' or WIDTHxHEIGHT."
    w, h = int(m[1]), int(m[2])
    if w <= 0 or h <= 0 or w % 16 or h % 16:
        return f"Invalid size '{size}'. Width and height must both be multiples of 16."
    if max(w, h) > OPENAI_MAX_EDGE:
        return f"Invalid size '{size}'. The longest edge must be at most {OPENAI_MAX_EDGE} pixels."
    if max(w, h) > OPENAI_MAX_RATIO * min(w, h):
        return f"Invalid size '{size}'. The aspect ratio must be between 1:3 and 3:1."
    if not OPENAI_MIN_PIXELS <= w * h <= OPENAI_MAX_PIXELS:
        return (f"Invalid size '{size}'. The total number of pixels must be between {OPENAI_MIN_PIXELS:,} and "
                f"{OPENAI_MAX_PIXELS:,}.")
    return ""


def _now_rfc3339(t: float | None = None) -> str:
    return _dt.datetime.fromtimestamp(time.time() if t is None else t, _dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _oerr(status: int, message: str, type_: str, code: str | None, param: str | None = None,
          headers: dict[str, str] | None = None) -> Reply:
    return status, dict(headers or {}), {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _gerr(status: int, name: str, message: str, details: list[Any] | None = None) -> Reply:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = details
    return status, {}, {"error": error}


def _field_violation(field_path: str, description: str) -> list[Any]:
    return [{"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": field_path, "description": description}]}]


def _gemini_invalid(field_path: str, message: str) -> Reply:
    return _gerr(400, "INVALID_ARGUMENT", message, _field_violation(field_path, message))


# == the server ===================================================================================================

class FakeHosted:
    """Run with `start()`; `url` is the base for OpenAI (`url + "/v1"`) and Gemini (`url`)."""

    def __init__(self, port: int = 0, knobs: Knobs | None = None, batch_ticks: int | None = None) -> None:
        self.port = port
        self.knobs = knobs or Knobs()
        if batch_ticks is not None:
            self.knobs.batch_ticks = batch_ticks
        self.log: list[Logged] = []
        self.files: dict[str, bytes] = {}  # OpenAI "file-…" and Gemini "files/…" contents
        self.file_meta: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # OpenAI "batch_…" and Gemini "batches/…"
        self.paid: list[Paid] = []
        self.served: dict[str, str] = {}
        self.corrupt: set[str] = set()
        self.deleted_files: set[str] = set()
        self.cancelled_batches: set[str] = set()
        self.errors: list[str] = []
        self.inputs: list[Inputs] = []  # input images of every billed edit / reference request
        self.uploads: dict[str, dict[str, Any]] = {}  # Gemini resumable sessions
        self.lock = threading.Lock()
        self.batch_lock = threading.RLock()

    @property
    def batch_ticks(self) -> int:
        return self.knobs.batch_ticks

    @batch_ticks.setter
    def batch_ticks(self, value: int) -> None:
        self.knobs.batch_ticks = value

    def start(self) -> FakeHosted:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

            def do_DELETE(self) -> None:  # noqa: N802
                server._handle(self)

            def do_PUT(self) -> None:  # noqa: N802
                server._handle(self)

            def do_PATCH(self) -> None:  # noqa: N802
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- ledger helpers -----------------------------------------------------------------------------------------
    def paid_count(self, provider: str | None = None, mode: str | None = None) -> int:
        with self.lock:
            return sum(1 for p in self.paid if provider in (None, p.provider) and mode in (None, p.mode))

    def paid_usd(self, provider: str | None = None, mode: str | None = None) -> float:
        with self.lock:
            return sum(p.usd for p in self.paid if provider in (None, p.provider) and mode in (None, p.mode))

    def _over_quota(self) -> bool:
        with self.lock:
            return 0 <= self.knobs.quota_after_paid <= len(self.paid)

    def _bill(self, provider: str, mode: str, model: str, key: str, usd: float) -> None:
        with self.lock:
            self.paid.append(Paid(provider, mode, model, key, usd * (0.5 if mode == "batch" else 1.0)))

    def _serve(self, data: bytes, mime: str, corrupt: bool = False) -> None:
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.served[sha] = mime
            if corrupt:
                self.corrupt.add(sha)

    def _take(self, knob: str) -> bool:
        with self.lock:
            if getattr(self.knobs, knob) > 0:
                setattr(self.knobs, knob, getattr(self.knobs, knob) - 1)
                return True
        return False

    def _slow(self, mode: str) -> None:
        """Called after billing: the provider finished (and billed) the work, the client may have given up."""
        if mode == "sync" and self._take("slow_n"):
            time.sleep(self.knobs.slow_ms / 1000)

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        req: _Request | None = None
        try:
            split = urlsplit(h.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            headers = {k.lower(): v for k, v in h.headers.items()}
            length = int(headers.get("content-length") or 0)
            raw = h.rfile.read(length) if length else b""
            body: Any = None
            json_ok = True
            if raw:
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    json_ok = False
            req = _Request(h.command, split.path, query, headers, raw, body, json_ok)
            with self.lock:
                self.log.append(Logged(h.command, h.path, headers, body if json_ok else raw))
            if self._take("crash_n"):
                raise RuntimeError("injected handler crash (knobs.crash_n)")
            if self.knobs.latency_ms:
                time.sleep(self.knobs.latency_ms / 1000)
            status, out_headers, payload = self._route(req)
        except Exception:  # never drop the connection: answer 500 in the provider's shape
            with self.lock:
                self.errors.append(traceback.format_exc())
            if req is not None and self._is_gemini(req):
                status, out_headers, payload = _gerr(500, "INTERNAL", "Internal error encountered.")
            else:
                status, out_headers, payload = _oerr(
                    500, "The server had an error while processing your request. Sorry about that!", "server_error",
                    None)
        try:
            if isinstance(payload, bytes):
                data = payload
                content_type = out_headers.pop("content-type", "application/octet-stream")
            else:
                data = json.dumps(payload).encode()
                content_type = "application/json"
            h.send_response(status)
            h.send_header("content-type", content_type)
            h.send_header("content-length", str(len(data)))
            for k, v in out_headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout on slow_n)
            pass

    @staticmethod
    def _gemini_key(req: _Request) -> str | None:
        return req.headers.get("x-goog-api-key") or req.query.get("key")

    def _is_gemini(self, req: _Request) -> bool:
        p = req.path
        return (self._gemini_key(req) is not None or ":" in p or p.startswith(("/upload/", "/download/", "/v1beta/"))
                or "/models/" in p)

    def _route(self, req: _Request) -> Reply:
        p, m = req.path, req.method
        if p == "/v1/images/generations" and m == "POST":
            return self._openai_generate(req.headers, req.body if req.json_ok else None, raw=req.raw)
        if p == "/v1/images/edits" and m == "POST":
            if req.headers.get("content-type", "").startswith("multipart/form-data"):
                return self._openai_edit_multipart(req)
            return self._openai_edit_json(req.headers, req.body if req.json_ok else None)
        if mm := re.fullmatch(r"/(v1|v1beta)/models/([^/:]+):(generateContent|batchGenerateContent)", p):
            if m != "POST":
                return _gerr(404, "NOT_FOUND", f"Method not found: {m} {p}")
            if problem := self._gemini_auth(req):
                return problem
            if mm[3] == "generateContent":
                if len(req.raw) > self.knobs.gemini_request_max_bytes:
                    return _gerr(400, "INVALID_ARGUMENT", f"Request payload size exceeds the limit: "
                                                          f"{self.knobs.gemini_request_max_bytes} bytes.")
                return self._gemini_generate(mm[1], mm[2], req.body if req.json_ok else None)
            return self._gemini_batch_create(req, mm[1], mm[2])
        if mm := re.fullmatch(r"/upload/(v1|v1beta)/files", p):
            if m != "POST":
                return _gerr(404, "NOT_FOUND", f"Method not found: {m} {p}")
            if "upload_id" in req.query:  # the session URL is the capability: no key needed (as the SDK sends none)
                return self._gemini_upload_chunk(req)
            return self._gemini_auth(req) or self._gemini_upload_start(req, mm[1])
        if mm := re.fullmatch(r"/(?:download/)?(v1|v1beta)/files/([^/:]+):download", p):
            return self._gemini_auth(req) or self._gemini_download(mm[2])
        if mm := re.fullmatch(r"/(v1|v1beta)/batches/([^/:]+):cancel", p):
            return self._gemini_auth(req) or self._gemini_batch_cancel(mm[2])
        gemini = self._gemini_key(req) is not None or p.startswith("/v1beta/")
        if mm := re.fullmatch(r"/(v1|v1beta)/files/([^/:]+)", p):
            if gemini:
                return self._gemini_auth(req) or self._gemini_file(m, mm[2], mm[1])
            return self._openai_auth(req.headers) or self._openai_file(m, mm[2])
        if mm := re.fullmatch(r"/(v1|v1beta)/batches/([^/:]+)", p):
            if gemini:
                return self._gemini_auth(req) or self._gemini_batch(m, mm[2])
            return self._openai_auth(req.headers) or self._openai_batch_get(mm[2])
        if p == "/v1/files" and m == "POST":
            return self._openai_auth(req.headers) or self._openai_file_upload(req)
        if mm := re.fullmatch(r"/v1/files/([^/]+)/content", p):
            return self._openai_auth(req.headers) or self._openai_file_content(mm[1])
        if p == "/v1/batches" and m == "POST":
            return self._openai_auth(req.headers) or self._openai_batch_create(req)
        if p == "/v1/batches" and m == "GET":
            return self._openai_auth(req.headers) or self._openai_batch_list()
        if mm := re.fullmatch(r"/v1/batches/([^/]+)/cancel", p):
            return self._openai_auth(req.headers) or self._openai_batch_cancel(mm[1])
        if self._is_gemini(req):
            return _gerr(404, "NOT_FOUND", f"The requested URL {p} was not found on this server.")
        return _oerr(404, f"Invalid URL ({m} {p})", "invalid_request_error", None)

    # == OpenAI =================================================================================================
    @staticmethod
    def _openai_auth(headers: dict[str, str]) -> Reply | None:
        if headers.get("authorization") != f"Bearer {OPENAI_KEY}":
            return _oerr(401, "Incorrect API key provided. You can find your API key at "
                              "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                         "invalid_api_key")
        return None

    @staticmethod
    def _openai_err(rid: dict[str, str]) -> Any:
        def err(status: int, message: str, type_: str, code: str | None, param: str | None = None,
                extra: dict[str, str] | None = None) -> Reply:
            return _oerr(status, message, type_, code, param, {**rid, **(extra or {})})

        return err

    def _openai_checks(self, headers: dict[str, str], body: Any, mode: str, rid: dict[str, str],
                       params: frozenset[str], default_model: str, json_edit: bool = False) -> _Options | Reply:
        """What generations and edits check alike, in the real service's order: auth, body, unknown parameters,
        account state, rate limits, model, prompt, n, size, quality, format, background, compression,
        moderation, stream. `json_edit`: the JSON edit body's narrower size and quality enums."""
        err = self._openai_err(rid)
        if problem := self._openai_auth(headers):
            return problem[0], {**rid, **problem[1]}, problem[2]
        if not isinstance(body, dict):
            return err(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
                       "invalid_request_error", None)
        for name in body:
            if name not in params or name in OPENAI_LEGACY_PARAMS:
                return err(400, f"Unknown parameter: '{name}'.", "invalid_request_error", "unknown_parameter", name)
        if self.knobs.billing_hard_limit:
            return err(400, "Billing hard limit has been reached", "invalid_request_error",
                       "billing_hard_limit_reached")
        if self.knobs.quota_exhausted or (mode == "sync" and self._over_quota()):
            return err(429, "You exceeded your current quota, please check your plan and billing details.",
                       "insufficient_quota", "insufficient_quota")
        if mode == "sync" and self._take("rate_limit_n"):
            return err(429, "Rate limit reached for gpt-image in organization org-fake on images per min (IPM): "
                            "Limit 5, Used 5, Requested 1.", "requests", "rate_limit_exceeded", None,
                       {"retry-after-ms": str(self.knobs.retry_after_ms), "x-ratelimit-limit-requests": "5",
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{self.knobs.retry_after_ms}ms"})
        if mode == "sync" and self._take("server_error_n"):
            return err(500, "The server had an error while processing your request. Sorry about that!",
                       "server_error", None)
        model = body.get("model") or default_model
        if self.knobs.retired_model:
            return err(404, f"The model '{model}' has been deprecated.", "invalid_request_error",
                       "model_not_found", "model")
        caps = OPENAI_CAPS.get(str(model))
        if caps is None:
            return err(404 if self.knobs.unknown_model_404 else 400,
                       f"The model '{model}' does not exist or you do not have access to it.",
                       "invalid_request_error", "model_not_found", "model")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return err(400, "Missing required parameter: 'prompt'.", "invalid_request_error",
                       "missing_required_parameter", "prompt")
        if len(prompt) > 32000:
            return err(400, "Invalid 'prompt': string too long. Expected a string with maximum length 32000.",
                       "invalid_request_error", "string_above_max_length", "prompt")
        n = body.get("n", 1)
        if n is None:
            n = 1
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            return err(400, f"Invalid 'n': {n!r}. Expected an integer between 1 and 10.", "invalid_request_error",
                       "invalid_value", "n")
        size = body.get("size") or "auto"
        if json_edit and size not in OPENAI_JSON_EDIT_SIZES:  # EditImageBodyJsonParam.size is an enum
            return err(400, f"Invalid value: '{size}'. Supported values are: "
                            f"{', '.join(repr(s) for s in OPENAI_JSON_EDIT_SIZES)}.", "invalid_request_error",
                       "invalid_value", "size")
        if not isinstance(size, str) or (why := openai_size_problem(str(model), size)):
            return err(400, why if isinstance(size, str) else "Invalid 'size'.", "invalid_request_error",
                       "invalid_value", "size")
        quality = body.get("quality") or "auto"
        qualities = caps.qualities & OPENAI_JSON_EDIT_QUALITIES if json_edit else caps.qualities
        if quality not in qualities:
            return err(400, f"Invalid value: '{quality}'. Supported values are: "
                            f"{', '.join(repr(q) for q in sorted(qualities))}.",
                       "invalid_request_error", "invalid_value", "quality")
        fmt = body.get("output_format") or "png"
        if fmt not in MIME:
            return err(400, f"Invalid value: '{fmt}'. Supported values are: 'png', 'jpeg' and 'webp'.",
                       "invalid_request_error", "invalid_value", "output_format")
        background = body.get("background") or "auto"
        if background not in ("auto", "opaque", "transparent"):
            return err(400, f"Invalid value: '{background}'. Supported values are: 'auto', 'opaque' and "
                            "'transparent'.", "invalid_request_error", "invalid_value", "background")
        if background == "transparent" and not caps.transparent:
            return err(400, f"Transparent background is not supported for model '{model}'.",
                       "invalid_request_error", "invalid_value", "background")
        if background == "transparent" and fmt == "jpeg":
            return err(400, "Transparent background requires output_format 'png' or 'webp'.",
                       "invalid_request_error", "invalid_value", "background")
        compression = body.get("output_compression")
        if compression is not None:
            if fmt == "png":
                return err(400, "output_compression is only supported for the 'jpeg' and 'webp' output formats.",
                           "invalid_request_error", "invalid_value", "output_compression")
            if not isinstance(compression, int) or isinstance(compression, bool) or not 0 <= compression <= 100:
                return err(400, f"Invalid 'output_compression': {compression!r}. Expected an integer between 0 "
                                "and 100.", "invalid_request_error", "invalid_value", "output_compression")
        if body.get("moderation") not in (None, "auto", "low"):
            return err(400, f"Invalid value: '{body['moderation']}'. Supported values are: 'low' and 'auto'.",
                       "invalid_request_error", "invalid_value", "moderation")
        if body.get("stream"):
            return err(400, "Streaming is not implemented by this fake.", "invalid_request_error", "invalid_value",
                       "stream")
        if size == "auto":
            size = "1024x1024"
        w, h = (int(x) for x in size.split("x"))
        # quality auto renders (and bills) up to high (Bike4Mind #2899/#2977, open-webui #19228): here, high
        return _Options(str(model), caps, prompt, n, w, h, "high" if quality == "auto" else quality, fmt,
                        "opaque" if background == "auto" else background, compression)

    def _openai_refusal(self, rid: dict[str, str]) -> Reply:
        status, hdrs, payload = self._openai_err(rid)(
            400, "Your request was rejected by the safety system. If you believe this is an error, contact us. "
                 "safety_violations=[violence].", "image_generation_user_error", "moderation_blocked")
        payload["error"]["moderation_details"] = {"moderation_stage": "input", "categories": ["violence"]}
        return status, hdrs, payload

    def _openai_images(self, o: _Options, rid: dict[str, str], mode: str, key: str | None,
                       rgb: tuple[int, int, int] | None = None, input_tokens: int = 0) -> Reply:
        """A billed 200: n images (flat colour from the prompt, or `rgb`), usage and the ledger entry."""
        transparent = o.background == "transparent"
        compression = 100 if o.compression is None else o.compression
        corrupt = self._take("corrupt_image_n")
        null = not corrupt and self._take("null_image_n")  # one fault per response
        truncated = not corrupt and not null and self._take("truncated_image_n")
        data: list[dict[str, Any]] = []
        for i in range(o.n):
            seed = f"{o.prompt}/{i}"
            if null:
                data.append({"b64_json": None})
                continue
            if corrupt:
                img = corrupt_bytes(o.fmt, seed)
            elif rgb is not None:
                img = render_rgb(o.width, o.height, rgb, o.fmt, transparent, compression)
            else:
                img = render(o.width, o.height, seed, o.fmt, transparent, compression)
            if truncated:
                img = img[: len(img) // 2]
            self._serve(img, MIME[o.fmt], corrupt or truncated)
            data.append({"b64_json": base64.b64encode(img).decode()})
        text_tokens = max(1, len(o.prompt) // 4)
        image_tokens = openai_image_tokens(o.caps, o.quality, o.width, o.height) * o.n
        usage = {"input_tokens": text_tokens + input_tokens, "output_tokens": image_tokens,
                 "total_tokens": text_tokens + input_tokens + image_tokens,
                 "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": input_tokens},
                 "output_tokens_details": {"image_tokens": image_tokens, "text_tokens": 0}}
        c = o.caps
        self._bill("openai", mode, o.model, o.prompt if key is None else key,
                   (text_tokens * c.text_in + input_tokens * c.image_in + image_tokens * c.image_out) / 1e6)
        self._slow(mode)
        return 200, rid, {"created": int(time.time()), "data": data, "background": o.background,
                          "output_format": o.fmt, "size": f"{o.width}x{o.height}", "quality": o.quality,
                          "usage": usage}

    def _openai_generate(self, headers: dict[str, str], body: Any, mode: str = "sync", key: str | None = None,
                         raw: bytes = b"") -> Reply:
        rid = {"x-request-id": "req_" + uuid.uuid4().hex[:24]}
        o = self._openai_checks(headers, body, mode, rid, OPENAI_PARAMS, "dall-e-2")  # the legacy server default
        if not isinstance(o, _Options):
            return o
        if "[refuse]" in o.prompt:
            return self._openai_refusal(rid)
        return self._openai_images(o, rid, mode, key)

    # -- OpenAI edits (multipart as the SDK sends them, or the JSON body a batch line carries) ----------------
    def _openai_edit_multipart(self, req: _Request) -> Reply:
        rid = {"x-request-id": "req_" + uuid.uuid4().hex[:24]}
        fields: dict[str, Any] = {}
        images: list[tuple[str, bytes]] = []
        mask: bytes | None = None
        for name, is_file, value in _form_parts(req.headers, req.raw):
            if name in ("image", "image[]") and is_file:
                images.append((f"image[{len(images)}]" if name == "image[]" else "image", value))
            elif name == "mask" and is_file:
                mask = value
            else:  # form fields are strings; the API reads numbers and booleans from them
                text = value.decode("utf-8", "replace")
                number = name in ("n", "output_compression", "partial_images") and re.fullmatch(r"-?\d+", text)
                fields[name] = int(text) if number else (text == "true") if name == "stream" else text
        o = self._openai_checks(req.headers, fields, "sync", rid, OPENAI_EDIT_PARAMS, "gpt-image-1.5")
        if not isinstance(o, _Options):
            return o
        return self._openai_edit(o, rid, fields, images, mask, "sync", None)

    def _openai_edit_json(self, headers: dict[str, str], body: Any, mode: str = "sync",
                          key: str | None = None) -> Reply:
        rid = {"x-request-id": "req_" + uuid.uuid4().hex[:24]}
        o = self._openai_checks(headers, body, mode, rid, OPENAI_JSON_EDIT_PARAMS, "gpt-image-1.5", json_edit=True)
        if not isinstance(o, _Options):
            return o
        err = self._openai_err(rid)
        refs = body.get("images")
        if not isinstance(refs, list) or not refs:
            return err(400, "Missing required parameter: 'images'.", "invalid_request_error",
                       "missing_required_parameter", "images")
        images: list[tuple[str, bytes]] = []
        for i, ref in enumerate(refs):
            got = self._image_ref(ref, f"images[{i}]", err)
            if not isinstance(got, bytes):
                return got
            images.append((f"images[{i}]", got))
        mask: bytes | None = None
        if body.get("mask") is not None:
            got = self._image_ref(body["mask"], "mask", err)
            if not isinstance(got, bytes):
                return got
            mask = got
        return self._openai_edit(o, rid, body, images, mask, mode, key)

    def _image_ref(self, ref: Any, where: str, err: Any) -> bytes | Reply:
        """An ImageRefParam's bytes: exactly one of `image_url` (a data URL here: the fake downloads nothing) and
        `file_id` (an uploaded file)."""
        if not isinstance(ref, dict) or len(ref) != 1 or not {"image_url", "file_id"} & set(ref):
            return err(400, f"Invalid '{where}': provide exactly one of 'image_url' or 'file_id'.",
                       "invalid_request_error", "invalid_value", where)
        if "file_id" in ref:
            content = self.files.get(str(ref["file_id"]))
            if content is None:
                return err(400, f"Invalid '{where}.file_id': no file {ref['file_id']!r}.", "invalid_request_error",
                           "invalid_value", f"{where}.file_id")
            return content
        url = ref["image_url"]
        if not isinstance(url, str) or len(url) > OPENAI_MAX_IMAGE_URL_CHARS:
            return err(400, f"Invalid '{where}.image_url': string too long. Expected a string with maximum length "
                            f"{OPENAI_MAX_IMAGE_URL_CHARS}.", "invalid_request_error", "string_above_max_length",
                       f"{where}.image_url")
        m = re.fullmatch(r"data:image/[a-z]+;base64,([A-Za-z0-9+/=]*)", url)
        if m is None:
            return err(400, f"Invalid '{where}.image_url': expected a base64 data URL (this fake downloads no "
                            "URLs).", "invalid_request_error", "invalid_value", f"{where}.image_url")
        try:
            return base64.b64decode(m[1], validate=True)
        except (ValueError, binascii.Error):
            return err(400, f"Invalid '{where}.image_url': invalid base64 data.", "invalid_request_error",
                       "invalid_value", f"{where}.image_url")

    def _openai_edit(self, o: _Options, rid: dict[str, str], fields: dict[str, Any],
                     images: list[tuple[str, bytes]], mask: bytes | None, mode: str, key: str | None) -> Reply:
        """The edit-only checks (input fidelity, the images, the mask), then a billed answer whose colour is the
        mean colour of the input images (so a test can tell they arrived) and whose usage bills them."""
        err = self._openai_err(rid)
        fidelity = fields.get("input_fidelity")
        if fidelity is not None and fidelity not in o.caps.fidelities:
            allowed = ", ".join(sorted(o.caps.fidelities)) or f"omit it for {o.model}"
            return err(400, f"Invalid value: '{fidelity}' for 'input_fidelity' ({allowed}).",
                       "invalid_request_error", "invalid_value", "input_fidelity")
        if not images:
            return err(400, "Missing required parameter: 'image'.", "invalid_request_error",
                       "missing_required_parameter", "image")
        if len(images) > OPENAI_MAX_EDIT_IMAGES:
            return err(400, f"Invalid 'image': array too long. Expected an array with maximum length "
                            f"{OPENAI_MAX_EDIT_IMAGES}, but got an array with length {len(images)} instead.",
                       "invalid_request_error", "array_above_max_length", "image")
        sizes = []
        for where, data in images:
            if len(data) >= self.knobs.openai_max_image_bytes:
                return err(400, f"Invalid '{where}': file too large ({len(data):,} bytes); each image must be "
                                f"smaller than {self.knobs.openai_max_image_bytes:,} bytes.",
                           "invalid_request_error", "image_too_large", where)
            if _image_kind(data) not in ("png", "jpeg", "webp"):
                return err(400, f"Invalid file '{where}': unsupported image format. Supported formats are "
                                "'image/jpeg', 'image/png' and 'image/webp'.", "invalid_request_error",
                           "invalid_image_format", where)
            size = _image_size(data)
            if size is None:
                return err(400, f"Invalid image file for '{where}', please check your image file.",
                           "invalid_request_error", "invalid_image", where)
            sizes.append(size)
        if mask is not None and (problem := self._mask_problem(mask, sizes[0])):
            return err(400, problem, "invalid_request_error", "invalid_value", "mask")
        if "[refuse]" in o.prompt:
            return self._openai_refusal(rid)
        with self.lock:
            self.inputs.append(Inputs("openai", mode, o.prompt if key is None else key, [d for _, d in images],
                                      mask))
        tokens = sum(_openai_input_tokens(o.caps, w, h, fidelity == "high") for w, h in sizes)
        return self._openai_images(o, rid, mode, key, mean_colour([d for _, d in images]), tokens)

    def _mask_problem(self, mask: bytes, image_size: tuple[int, int]) -> str:
        """The mask rules of the API reference: a PNG under 4MB with an alpha channel, the first image's size."""
        if len(mask) >= self.knobs.openai_max_mask_bytes:
            return (f"Invalid 'mask': file too large ({len(mask):,} bytes); the mask must be smaller than "
                    f"{self.knobs.openai_max_mask_bytes:,} bytes.")
        if _image_kind(mask) != "png":
            return "Invalid 'mask': the mask must be a PNG file."
        from PIL import Image

        try:
            with Image.open(io.BytesIO(mask)) as im:
                has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
                size = im.size
        except Exception:  # noqa: BLE001 - any undecodable mask
            return "Invalid 'mask': the file could not be decoded as an image."
        if not has_alpha:
            return "Invalid 'mask': the mask must have an alpha channel (transparent areas mark what to edit)."
        if size != image_size:
            return (f"Invalid 'mask': the mask ({size[0]}x{size[1]}) and the image ({image_size[0]}x{image_size[1]}) "
                    "must have the same dimensions.")
        return ""

    # -- OpenAI files --------------------------------------------------------------------------------------------
    def _openai_file_upload(self, req: _Request) -> Reply:
        purpose, content, filename = _multipart(req.headers, req.raw)
        if content is None:
            return _oerr(400, "Missing required parameter: 'file'.", "invalid_request_error",
                         "missing_required_parameter", "file")
        if purpose not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            return _oerr(400, f"Invalid value for 'purpose': {purpose!r}.", "invalid_request_error", "invalid_value",
                         "purpose")
        fid = "file-" + uuid.uuid4().hex[:22]
        return 200, {}, self._openai_store_file(fid, content, purpose, filename or "upload.jsonl")

    def _openai_store_file(self, fid: str, content: bytes, purpose: str, filename: str) -> dict[str, Any]:
        meta = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
                "status_details": None}
        with self.lock:
            self.files[fid] = content
            self.file_meta[fid] = meta
        return meta

    def _openai_file(self, method: str, fid: str) -> Reply:
        if fid not in self.files:
            return _oerr(404, f"No such File object: {fid}", "invalid_request_error", None, "id")
        if method == "GET":
            return 200, {}, self.file_meta[fid]
        if method == "DELETE":
            with self.lock:
                self.files.pop(fid, None)
                self.file_meta.pop(fid, None)
                self.deleted_files.add(fid)
            return 200, {}, {"id": fid, "object": "file", "deleted": True}
        return _oerr(405, f"Method {method} not allowed", "invalid_request_error", None)

    def _openai_file_content(self, fid: str) -> Reply:
        if fid not in self.files or (self.knobs.batch_results_expired
                                     and self.file_meta[fid].get("purpose") == "batch_output"):
            return _oerr(404, f"No such File object: {fid}", "invalid_request_error", None, "id")
        return 200, {"content-type": "application/octet-stream"}, self.files[fid]

    # -- OpenAI batches ------------------------------------------------------------------------------------------
    def _openai_batch_create(self, req: _Request) -> Reply:
        body = req.body if req.json_ok else None
        if not isinstance(body, dict):
            return _oerr(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                return _oerr(400, f"Missing required parameter: '{name}'.", "invalid_request_error",
                             "missing_required_parameter", name)
        for name in body:
            if name not in ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"):
                return _oerr(400, f"Unknown parameter: '{name}'.", "invalid_request_error", "unknown_parameter", name)
        if body["endpoint"] not in OPENAI_BATCH_ENDPOINTS:
            return _oerr(400, f"Invalid value: '{body['endpoint']}'.", "invalid_request_error", "invalid_value",
                         "endpoint")
        if body["endpoint"] not in ("/v1/images/generations", "/v1/images/edits"):
            return _oerr(400, "This fake only runs /v1/images/generations and /v1/images/edits batches.",
                         "invalid_request_error", "invalid_value", "endpoint")
        if body["completion_window"] != "24h":
            return _oerr(400, f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                         "invalid_request_error", "invalid_value", "completion_window")
        fid = body["input_file_id"]
        if fid not in self.files:
            return _oerr(404, f"No such File object: {fid}", "invalid_request_error", None, "input_file_id")
        now = time.time()
        bid = "batch_" + uuid.uuid4().hex[:24]
        b: dict[str, Any] = {
            "id": bid, "object": "batch", "endpoint": body["endpoint"], "model": None, "errors": None,
            "input_file_id": fid, "completion_window": "24h", "status": "validating", "output_file_id": None,
            "error_file_id": None, "created_at": int(now), "in_progress_at": None, "expires_at": int(now) + 86400,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": None,
            "metadata": body.get("metadata"),
            "_auth": req.headers.get("authorization"), "_ticks": 0, "_created": now,
            "_input": self.files[fid],  # the service reads the file at submission
        }
        with self.batch_lock:
            self.batches[bid] = b
        return 200, {}, _public(b)

    def _openai_batch_list(self) -> Reply:
        data = [_public(b) for k, b in self.batches.items() if k.startswith("batch_")]
        data.reverse()
        return 200, {}, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": False}

    def _openai_batch_cancel(self, bid: str) -> Reply:
        with self.batch_lock:
            b = self.batches.get(bid)
            if b is None:
                return _oerr(404, f"No batch found with id '{bid}'.", "invalid_request_error", None, "batch_id")
            if b["status"] in ("validating", "in_progress", "finalizing"):
                b["status"], b["cancelling_at"] = "cancelling", int(time.time())
                self.cancelled_batches.add(bid)
            return 200, {}, _public(b)

    def _openai_batch_get(self, bid: str) -> Reply:
        with self.batch_lock:
            b = self.batches.get(bid)
            gone = b is not None and self.knobs.batch_vanish and b["status"] in ("completed", "expired", "failed")
            if b is None or not bid.startswith("batch_") or gone:
                return _oerr(404, f"No batch found with id '{bid}'.", "invalid_request_error", None, "batch_id")
            b["_ticks"] += 1
            now = time.time()
            if b["status"] == "cancelling":
                b["status"], b["cancelled_at"] = "cancelled", int(now)
            elif b["status"] == "validating":
                self._openai_batch_validate(b)
            if b["status"] == "in_progress" and self._batch_ready(b["_ticks"], b["_created"]):
                if self.knobs.batch_outcome == "cancelled":  # by an operator, outside the run
                    b["status"], b["cancelled_at"] = "cancelled", int(now)
                    return 200, {}, _public(b)
                self._openai_batch_run(b)
                if self.knobs.batch_vanish:  # it ran (and billed), then disappeared
                    return _oerr(404, f"No batch found with id '{bid}'.", "invalid_request_error", None,
                                 "batch_id")
            return 200, {}, _public(b)

    def _batch_ready(self, ticks: int, created: float) -> bool:
        return ticks >= self.knobs.batch_ticks and time.time() >= created + self.knobs.batch_turnaround_s

    def _openai_batch_validate(self, b: dict[str, Any]) -> None:
        raw: bytes = b["_input"]
        lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]

        def fail(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
            b["status"], b["failed_at"] = "failed", int(time.time())
            b["errors"] = {"object": "list", "data": [{"code": code, "message": message, "param": param,
                                                       "line": line}]}

        if len(raw) > self.knobs.batch_max_bytes:
            return fail("file_too_large", f"The input file is {len(raw):,} bytes; the maximum is "
                                          f"{self.knobs.batch_max_bytes:,} bytes.")
        if len(lines) > self.knobs.batch_max_lines:
            return fail("too_many_requests", f"The input file has {len(lines):,} requests; the maximum is "
                                             f"{self.knobs.batch_max_lines:,}.")
        parsed, seen = [], set()
        for i, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
                assert isinstance(item, dict) and isinstance(item.get("body"), dict)
            except (ValueError, AssertionError):
                return fail("invalid_json_line", f"This line is not parseable as valid JSON: line {i}.", i)
            if item.get("url") != b["endpoint"]:
                return fail("mismatched_endpoint", f"The url of line {i} does not match the batch endpoint "
                                                   f"{b['endpoint']}.", i, "url")
            if item.get("method") != "POST":
                return fail("invalid_method", f"Line {i}: method must be POST.", i, "method")
            cid = item.get("custom_id")
            if not isinstance(cid, str) or not cid:
                return fail("missing_required_parameter", f"Line {i} has no custom_id.", i, "custom_id")
            if cid in seen:
                return fail("duplicate_custom_id", f"The custom_id for this request is a duplicate of another "
                                                   f"request (line {i}).", i, "custom_id")
            seen.add(cid)
            parsed.append(item)
        if self.knobs.batch_outcome == "failed":
            # the real enqueued-token failure, e.g. openai/openai-python#2084
            model = parsed[0]["body"].get("model", "gpt-image-2") if parsed else "gpt-image-2"
            return fail("token_limit_exceeded", f"Enqueued token limit reached for {model} in organization org-x. "
                                                "Limit: 90,000 enqueued tokens. Please try submitting a smaller "
                                                "batch, or try again once some in_progress batches have completed.")
        b["_lines"] = parsed
        b["model"] = parsed[0]["body"].get("model") if parsed else None
        b["status"], b["in_progress_at"] = "in_progress", int(time.time())
        b["request_counts"] = {"total": len(parsed), "completed": 0, "failed": 0}

    def _openai_batch_run(self, b: dict[str, Any]) -> None:
        lines: list[dict[str, Any]] = b["_lines"]
        expired = self.knobs.batch_outcome == "expired"
        n_run = len(lines) // 2 if expired else len(lines)
        ok: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        usage = {"input_tokens": 0, "output_tokens": 0}
        for item in lines[:n_run]:
            run = self._openai_edit_json if b["endpoint"] == "/v1/images/edits" else self._openai_generate
            status, headers, payload = run({"authorization": b["_auth"]}, item["body"], "batch", item["custom_id"])
            out = {"id": "batch_req_" + uuid.uuid4().hex[:24], "custom_id": item["custom_id"],
                   "response": {"status_code": status, "request_id": headers.get("x-request-id", ""),
                                "body": payload}, "error": None}
            (ok if status == 200 else bad).append(out)
            if status == 200:
                usage["input_tokens"] += payload["usage"]["input_tokens"]
                usage["output_tokens"] += payload["usage"]["output_tokens"]
        for item in lines[n_run:]:  # batch expired: lines that never ran (litellm-docs#1571 mirrors this shape)
            bad.append({"id": "batch_req_" + uuid.uuid4().hex[:24], "custom_id": item["custom_id"], "response": None,
                        "error": {"code": "batch_expired",
                                  "message": "This request could not be executed before the completion window "
                                             "expired."}})
        if self.knobs.batch_shuffle_output:  # the API promises no order: match on custom_id
            for group in (ok, bad):
                before = [x["custom_id"] for x in group]
                random.Random(len(group)).shuffle(group)
                if len(group) > 1 and [x["custom_id"] for x in group] == before:
                    group.reverse()
        if self.knobs.batch_drop_lines and not expired:  # ran and billed, but missing from the output file
            ok = ok[: max(0, len(ok) - self.knobs.batch_drop_lines)]
        for name, group in (("output_file_id", ok), ("error_file_id", bad)):
            if group:
                fid = "file-" + uuid.uuid4().hex[:22]
                content = "".join(json.dumps(x) + "\n" for x in group).encode()
                self._openai_store_file(fid, content, "batch_output", f"{b['id']}_{name[:-8]}.jsonl")
                b[name] = fid
        now = int(time.time())
        b["request_counts"] = {"total": len(lines), "completed": len(ok), "failed": len(bad)}
        b["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
                      "total_tokens": usage["input_tokens"] + usage["output_tokens"],
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
        b["finalizing_at"] = now
        if expired:
            b["status"], b["expired_at"] = "expired", now
        else:
            b["status"], b["completed_at"] = "completed", now

    # == Gemini =================================================================================================
    def _gemini_auth(self, req: _Request) -> Reply | None:
        key = self._gemini_key(req)
        if key is None:
            return _gerr(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                                                   "established identity). Please use API Key or other form of API "
                                                   "consumer identity to call this API.")
        if key != GEMINI_KEY:
            return _gerr(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                 "message": "API key not valid. Please pass a valid API key."}])
        return None

    def _gemini_quota_error(self, kind: str, model: str) -> Reply:
        # shapes from google-gemini/gemini-cli#8437, continuedev/continue#10066 (limit: 0 still says "retry in")
        help_ = {"@type": "type.googleapis.com/google.rpc.Help", "links": [
            {"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}
        dims = {"model": model, "location": "global"}
        metric = "generativelanguage.googleapis.com/generate_requests_per_model"
        message = ("You exceeded your current quota, please check your plan and billing details. For more "
                   "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")
        if kind == "per_day":
            quota_id, delay = "GenerateRequestsPerDayPerProjectPerModel", "43200s"
        elif kind == "limit_zero":
            metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
            quota_id = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
            delay = f"{self.knobs.retry_after_ms / 1000:.3f}s"
            message += (f"\n* Quota exceeded for metric: {metric}, limit: 0, model: {model}\n"
                        f"Please retry in {self.knobs.retry_after_ms / 1000:.3f}s.")
        else:
            quota_id, delay = "GenerateRequestsPerMinutePerProjectPerModel", f"{self.knobs.retry_after_ms / 1000:.3f}s"
        violation: dict[str, Any] = {"quotaMetric": metric, "quotaId": quota_id, "quotaDimensions": dims}
        if kind == "limit_zero":
            violation["quotaValue"] = "0"
        return _gerr(429, "RESOURCE_EXHAUSTED", message, [
            help_, {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}])

    def _gemini_generate(self, version: str, model: str, body: Any, mode: str = "sync",
                         key: str | None = None) -> Reply:
        if self.knobs.failed_precondition:
            return _gerr(400, "FAILED_PRECONDITION", "User location is not supported for the API use.")
        if mode == "sync" and self.knobs.gemini_quota:
            return self._gemini_quota_error(self.knobs.gemini_quota, model)
        if mode == "sync" and self._over_quota():
            return self._gemini_quota_error("per_day", model)
        if mode == "sync" and self._take("rate_limit_n"):
            return self._gemini_quota_error("per_minute", model)
        if mode == "sync" and self._take("server_error_n"):
            return _gerr(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        caps = GEMINI_CAPS.get(model)
        if self.knobs.retired_model or caps is None:
            return _gerr(404, "NOT_FOUND", f"models/{model} is not found for API version {version}, or is not "
                                           "supported for generateContent. Call ListModels to see the list of "
                                           "available models and their supported methods.")
        if not isinstance(body, dict):
            return _gerr(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unexpected token.")
        for name in body:
            if _camel(name) not in GEMINI_REQUEST_FIELDS:
                return _gemini_invalid(name, f'Invalid JSON payload received. Unknown name "{name}": Cannot find '
                                             'field.')
        gen = body.get("generationConfig", body.get("generation_config")) or {}
        if not isinstance(gen, dict):
            return _gemini_invalid("generation_config", "Invalid JSON payload received. generation_config must be "
                                                        "an object.")
        for name in gen:
            if _camel(name) not in GEMINI_GENERATION_FIELDS:
                return _gemini_invalid("generation_config", f'Invalid JSON payload received. Unknown name "{name}" '
                                                            "at 'generation_config': Cannot find field.")
        gen = {_camel(k): v for k, v in gen.items()}
        img = gen.get("imageConfig") or {}
        for name in img:
            if _camel(name) not in GEMINI_IMAGE_FIELDS:
                return _gemini_invalid("generation_config.image_config",
                                       f'Invalid JSON payload received. Unknown name "{name}" at '
                                       "'generation_config.image_config': Cannot find field.")
        img = {_camel(k): v for k, v in img.items()}
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return _gemini_invalid("contents", "* GenerateContentRequest.contents: contents is not specified")
        modalities = gen.get("responseModalities") or ["TEXT"]
        if "IMAGE" not in modalities:
            return _gemini_invalid("generation_config.response_modalities",
                                   f"Model {model} requires responseModalities to include IMAGE.")
        if (gen.get("candidateCount") or 1) != 1:
            return _gemini_invalid("generation_config.candidate_count",
                                   "Multiple candidates is not enabled for this model.")
        tier, aspect = img.get("imageSize", "1K"), img.get("aspectRatio", "1:1")
        if tier not in caps.tokens:
            return _gemini_invalid("generation_config.image_config.image_size",
                                   f"* GenerateContentRequest.generation_config.image_config.image_size: unsupported "
                                   f"value {tier!r} for model {model}; supported: {', '.join(caps.tokens)} "
                                   "(uppercase K).")
        if aspect not in caps.aspects:
            return _gemini_invalid("generation_config.image_config.aspect_ratio",
                                   f"* GenerateContentRequest.generation_config.image_config.aspect_ratio: "
                                   f"unsupported value {aspect!r} for model {model}.")
        prompt = "".join(p.get("text", "") for c in contents if isinstance(c, dict)
                         for p in c.get("parts", []) if isinstance(p, dict))
        images = _gemini_images(contents)
        if isinstance(images, tuple):
            return images
        if len(images) > GEMINI_MAX_INPUT_IMAGES:
            return _gemini_invalid("contents", f"Too many images: {len(images)}; {model} accepts at most "
                                               f"{GEMINI_MAX_INPUT_IMAGES} images per prompt.")
        text_tokens_in = max(1, len(prompt) // 4)
        image_tokens_in = len(images) * caps.image_in_tokens
        prompt_tokens = text_tokens_in + image_tokens_in
        thinking = max(0, self.knobs.thinking_tokens)
        bill_key = prompt if key is None else key
        if images:
            with self.lock:
                self.inputs.append(Inputs("gemini", mode, bill_key, images, None))

        def usage(image_tokens: int, text_tokens: int) -> dict[str, Any]:
            prompt_details = [{"modality": "TEXT", "tokenCount": text_tokens_in}]
            if image_tokens_in:
                prompt_details.append({"modality": "IMAGE", "tokenCount": image_tokens_in})
            u: dict[str, Any] = {"promptTokenCount": prompt_tokens,
                                 "candidatesTokenCount": image_tokens + text_tokens,
                                 "totalTokenCount": prompt_tokens + image_tokens + text_tokens + thinking,
                                 "promptTokensDetails": prompt_details}
            details = []
            if image_tokens:
                details.append({"modality": "IMAGE", "tokenCount": image_tokens})
            if text_tokens:
                details.append({"modality": "TEXT", "tokenCount": text_tokens})
            if details:
                u["candidatesTokensDetails"] = details
            if thinking:
                u["thoughtsTokenCount"] = thinking
            usd = (text_tokens_in * caps.text_in + image_tokens_in * caps.image_in + image_tokens * caps.image_out
                   + (text_tokens + thinking) * caps.text_out) / 1e6
            self._bill("gemini", mode, model, bill_key, usd)
            return u

        def base(u: dict[str, Any]) -> dict[str, Any]:
            return {"modelVersion": model, "responseId": uuid.uuid4().hex[:22], "usageMetadata": u}

        if "[refuse]" in prompt:
            out = {**base(usage(0, 0)), "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}
            self._slow(mode)
            return 200, {}, out
        for reason in ("IMAGE_SAFETY", "NO_IMAGE"):
            if f"[refuse:{reason}]" in prompt:
                out = {**base(usage(0, 0)), "candidates": [{"content": {"role": "model", "parts": []},
                                                            "finishReason": reason, "index": 0}]}
                self._slow(mode)
                return 200, {}, out
        if "[refuse:TEXT]" in prompt:
            text = "I can't draw that, but here is a description."
            out = {**base(usage(0, max(1, len(text) // 4))), "candidates": [{"content": {"role": "model", "parts": [
                {"text": text}]}, "finishReason": "STOP", "index": 0}]}
            self._slow(mode)
            return 200, {}, out

        w, h = gemini_size(aspect, tier)
        parts: list[dict[str, Any]] = [{"text": GEMINI_TEXT_PART}]
        for t in range(self.knobs.thought_images):  # interim "thinking" images come first and must be skipped
            parts.append({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(
                render(w, h, f"thought-{t}")).decode()}, "thought": True, "thoughtSignature": "c2ln"})
        corrupt = self._take("corrupt_image_n")
        null = not corrupt and self._take("null_image_n")
        truncated = not corrupt and not null and self._take("truncated_image_n")
        if null:
            parts.append({"inlineData": {"mimeType": "image/png"}})
        else:
            if corrupt:
                data = corrupt_bytes("png", prompt)
            else:  # with reference images, the answer's colour is their mean colour (a test sees they arrived)
                data = render_rgb(w, h, mean_colour(images)) if images else render(w, h, prompt)
            if truncated:
                data = data[: len(data) // 2]
            self._serve(data, "image/png", corrupt or truncated)
            encoded = base64.b64encode(data).decode()
            if self._take("bad_base64_n"):
                encoded = "%" + encoded[1:]  # one character outside the base64 alphabet
            parts.append({"inlineData": {"mimeType": "image/png", "data": encoded}})
        out = {**base(usage(caps.tokens[tier], GEMINI_TEXT_TOKENS)),
               "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}]}
        self._slow(mode)
        return 200, {}, out

    # -- Gemini files --------------------------------------------------------------------------------------------
    def _gemini_file_meta(self, fid: str, version: str, content: bytes, mime: str, display: str | None,
                          generated: bool) -> dict[str, Any]:
        now = time.time()
        meta: dict[str, Any] = {
            "name": f"files/{fid}", "mimeType": mime, "sizeBytes": str(len(content)),
            "createTime": _now_rfc3339(now), "updateTime": _now_rfc3339(now),
            "expirationTime": _now_rfc3339(now + 48 * 3600),
            "sha256Hash": base64.b64encode(hashlib.sha256(content).hexdigest().encode()).decode(),
            "uri": f"{self.url}/{version}/files/{fid}", "state": "ACTIVE",
            "source": "GENERATED" if generated else "UPLOADED"}
        if display:
            meta["displayName"] = display
        if generated:
            meta["downloadUri"] = f"{self.url}/download/{version}/files/{fid}:download?alt=media"
        with self.lock:
            self.files[f"files/{fid}"] = content
            self.file_meta[f"files/{fid}"] = meta
        return meta

    def _gemini_upload_start(self, req: _Request, version: str) -> Reply:
        if req.headers.get("x-goog-upload-protocol") != "resumable" or \
                req.headers.get("x-goog-upload-command") != "start":
            return _gerr(400, "INVALID_ARGUMENT", "Only the resumable upload protocol is supported.")
        spec = (req.body or {}).get("file", {}) if req.json_ok and isinstance(req.body, dict) else {}
        spec = {_camel(k): v for k, v in spec.items()}
        declared = req.headers.get("x-goog-upload-header-content-length") or spec.get("sizeBytes")
        mime = req.headers.get("x-goog-upload-header-content-type") or spec.get("mimeType")
        if not mime:
            return _gerr(400, "INVALID_ARGUMENT", "* CreateFileRequest.file.mime_type: mime_type is required")
        name = spec.get("name")
        fid = name.split("files/", 1)[-1] if isinstance(name, str) and name else uuid.uuid4().hex[:12]
        if not re.fullmatch(r"[a-z0-9-]{1,40}", fid):
            return _gemini_invalid("file.name", f"Invalid file name {name!r}: only lowercase alphanumerics and "
                                                "dashes, at most 40 characters.")
        if f"files/{fid}" in self.files:
            return _gerr(409, "ALREADY_EXISTS", f"File files/{fid} already exists.")
        uid = uuid.uuid4().hex
        with self.lock:
            self.uploads[uid] = {"fid": fid, "version": version, "mime": mime, "display": spec.get("displayName"),
                                 "declared": int(declared) if declared is not None else None, "buf": bytearray()}
        return 200, {"x-goog-upload-url": f"{self.url}/upload/{version}/files?upload_id={uid}"
                                          "&upload_protocol=resumable",
                     "x-goog-upload-status": "active", "x-goog-upload-chunk-granularity": "8388608"}, b""

    def _gemini_upload_chunk(self, req: _Request) -> Reply:
        session = self.uploads.get(req.query["upload_id"])
        if session is None:
            return _gerr(404, "NOT_FOUND", "Upload session not found.")
        command = {c.strip() for c in req.headers.get("x-goog-upload-command", "").split(",")}
        offset = int(req.headers.get("x-goog-upload-offset") or 0)
        if "upload" in command:
            if offset != len(session["buf"]):
                return _gerr(400, "INVALID_ARGUMENT", f"Upload offset {offset} does not match the "
                                                      f"{len(session['buf'])} bytes received so far.")
            session["buf"] += req.raw
        if "finalize" not in command:
            return 200, {"x-goog-upload-status": "active"}, b""
        content = bytes(session["buf"])
        if session["declared"] is not None and session["declared"] != len(content):
            return _gerr(400, "INVALID_ARGUMENT", f"Upload finalized with {len(content)} bytes; "
                                                  f"{session['declared']} were declared.")
        with self.lock:
            self.uploads.pop(req.query["upload_id"], None)
        meta = self._gemini_file_meta(session["fid"], session["version"], content, session["mime"],
                                      session["display"], generated=False)
        return 200, {"x-goog-upload-status": "final"}, {"file": meta}

    @staticmethod
    def _gemini_no_file(fid: str) -> Reply:
        # real wording for unknown/expired/deleted files (google-gemini/deprecated-generative-ai-python#692)
        return _gerr(403, "PERMISSION_DENIED", f"You do not have permission to access the File {fid} or it may "
                                               "not exist.")

    def _gemini_file(self, method: str, fid: str, version: str) -> Reply:
        name = f"files/{fid}"
        if name not in self.files:
            return self._gemini_no_file(fid)
        if method == "GET":
            return 200, {}, self.file_meta[name]
        if method == "DELETE":
            with self.lock:
                self.files.pop(name, None)
                self.file_meta.pop(name, None)
                self.deleted_files.add(name)
            return 200, {}, {}
        return _gerr(405, "INVALID_ARGUMENT", f"Method {method} not allowed")

    def _gemini_download(self, fid: str) -> Reply:
        name = f"files/{fid}"
        if name not in self.files or (self.knobs.batch_results_expired
                                      and self.file_meta[name].get("source") == "GENERATED"):
            return self._gemini_no_file(fid)
        if self.file_meta[name].get("source") != "GENERATED":
            # the SDK documents it: "Only generated files can be downloaded, uploaded files can't be downloaded."
            return _gerr(400, "INVALID_ARGUMENT", f"File {name} was uploaded; only generated files can be "
                                                  "downloaded.")
        return 200, {"content-type": "application/octet-stream"}, self.files[name]

    # -- Gemini batches ------------------------------------------------------------------------------------------
    def _gemini_batch_create(self, req: _Request, version: str, model: str) -> Reply:
        if GEMINI_CAPS.get(model) is None or self.knobs.retired_model:
            return _gerr(404, "NOT_FOUND", f"models/{model} is not found for API version {version}, or is not "
                                           "supported for batchGenerateContent.")
        if len(req.raw) > self.knobs.gemini_inline_max_bytes:
            return _gerr(400, "INVALID_ARGUMENT", f"Request payload size exceeds the limit: "
                                                  f"{self.knobs.gemini_inline_max_bytes} bytes.")
        body = req.body if req.json_ok else None
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, dict):
            return _gemini_invalid("batch", "* BatchGenerateContentRequest.batch: batch is required")
        cfg = batch.get("inputConfig", batch.get("input_config"))
        if not isinstance(cfg, dict):
            return _gemini_invalid("batch.input_config", "* batch.input_config is required")
        items: list[tuple[str, dict[str, Any], Any]] = []  # (key, request metadata, request)
        file_name = cfg.get("fileName", cfg.get("file_name"))
        if file_name is not None:
            if file_name not in self.files:
                return self._gemini_no_file(str(file_name).split("files/", 1)[-1])
            for i, line in enumerate(self.files[file_name].decode("utf-8", "replace").splitlines()):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    assert isinstance(item, dict)
                except (ValueError, AssertionError):
                    return _gemini_invalid("batch.input_config.file_name", f"Line {i + 1} of {file_name} is not "
                                                                           "valid JSON.")
                items.append((str(item.get("key", f"#{i}")), {}, item.get("request")))
        else:
            reqs = (cfg.get("requests") or {}).get("requests")
            if not isinstance(reqs, list) or not reqs:
                return _gemini_invalid("batch.input_config", "* batch.input_config: requests or file_name is "
                                                             "required")
            for i, item in enumerate(reqs):
                meta = item.get("metadata") if isinstance(item, dict) else None
                meta = meta if isinstance(meta, dict) else {}
                items.append((str(meta.get("key", f"#{i}")), meta,
                              item.get("request") if isinstance(item, dict) else None))
        bid = uuid.uuid4().hex[:16]
        now = time.time()
        b: dict[str, Any] = {"provider": "gemini", "name": f"batches/{bid}", "id": bid, "model": model,
                             "version": version, "display_name": batch.get("displayName", batch.get("display_name")),
                             "items": items, "file_input": file_name is not None, "state": "BATCH_STATE_PENDING",
                             "ticks": 0, "created": now, "updated": now, "ended": None, "output": None,
                             "error": None, "stats": {"requestCount": str(len(items)), "pendingRequestCount":
                                                      str(len(items))}}
        with self.batch_lock:
            self.batches[b["name"]] = b
        return 200, {}, self._gemini_op(b)

    def _gemini_batch(self, method: str, bid: str) -> Reply:
        with self.batch_lock:
            b = self.batches.get(f"batches/{bid}")
            ran = b is not None and b["state"] not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
            if b is None or (self.knobs.batch_vanish and ran):
                return _gerr(404, "NOT_FOUND", f"Batch batches/{bid} not found.")
            if method == "DELETE":
                self.batches.pop(f"batches/{bid}", None)
                return 200, {}, {}
            if method != "GET":
                return _gerr(405, "INVALID_ARGUMENT", f"Method {method} not allowed")
            b["ticks"] += 1
            if b["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                if self._batch_ready(b["ticks"], b["created"]):
                    self._gemini_batch_run(b)
                    if self.knobs.batch_vanish:  # it ran (and billed), then disappeared
                        return _gerr(404, "NOT_FOUND", f"Batch batches/{bid} not found.")
                else:
                    b["state"], b["updated"] = "BATCH_STATE_RUNNING", time.time()
            return 200, {}, self._gemini_op(b)

    def _gemini_batch_cancel(self, bid: str) -> Reply:
        with self.batch_lock:
            b = self.batches.get(f"batches/{bid}")
            ran = b is not None and b["state"] not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
            if b is None or (self.knobs.batch_vanish and ran):
                return _gerr(404, "NOT_FOUND", f"Batch batches/{bid} not found.")
            if b["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                # cancel is immediately terminal (tobert/kaibo#8 observed no interim state)
                b["state"], b["ended"] = "BATCH_STATE_CANCELLED", time.time()
                b["updated"] = b["ended"]
                self.cancelled_batches.add(b["name"])
            return 200, {}, {}

    def _gemini_batch_run(self, b: dict[str, Any]) -> None:
        now = time.time()
        b["ended"] = b["updated"] = now
        outcome = self.knobs.batch_outcome
        items = b["items"]
        if outcome == "cancelled":  # by an operator, outside the run, before anything ran
            b["state"] = "BATCH_STATE_CANCELLED"
            b["stats"] = {"requestCount": str(len(items))}
            return
        if outcome == "failed":
            b["state"] = "BATCH_STATE_FAILED"
            b["error"] = {"code": GRPC_CODES["RESOURCE_EXHAUSTED"],
                          "message": f"Batch failed: enqueued token limit exceeded for model {b['model']}."}
            b["stats"] = {"requestCount": str(len(items)), "failedRequestCount": str(len(items))}
            return
        n_run = len(items) // 2 if outcome == "expired" else len(items)
        results = []
        for key, meta, request in items[:n_run]:
            status, _, payload = self._gemini_generate(b["version"], b["model"], request, "batch", key)
            results.append((key, meta, status, payload))
        if outcome != "expired" and self.knobs.gemini_batch_drop_n:
            results = results[:max(0, len(results) - self.knobs.gemini_batch_drop_n)]
        if self.knobs.gemini_batch_reorder:  # python-genai#1909: responses are not returned in input order
            results.reverse()
        ok = sum(1 for r in results if r[2] == 200)
        b["stats"] = {"requestCount": str(len(items)), "successfulRequestCount": str(ok),
                      "failedRequestCount": str(len(results) - ok)}
        if len(items) - len(results):
            b["stats"]["pendingRequestCount"] = str(len(items) - len(results))

        def status_of(payload: dict[str, Any]) -> dict[str, Any]:  # google.rpc.Status: a gRPC code, not HTTP
            e = payload.get("error", {})
            return {"code": GRPC_CODES.get(e.get("status", ""), 2), "message": e.get("message", "")}

        if b["file_input"]:
            lines = []
            for key, _, status, payload in results:
                lines.append({"key": key, "response": payload} if status == 200 else
                             {"key": key, "error": status_of(payload)})
            content = "".join(json.dumps(x) + "\n" for x in lines).encode()
            meta = self._gemini_file_meta(f"batch-{b['id']}", b["version"], content, "application/jsonl", None,
                                          generated=True)
            b["output"] = {"responsesFile": meta["name"]}
        else:
            inlined = []
            for _, meta, status, payload in results:
                entry: dict[str, Any] = {"response": payload} if status == 200 else {"error": status_of(payload)}
                # python-genai#2008 / #1886: the metadata the request carried may not come back
                if meta and not self.knobs.gemini_batch_omit_metadata:
                    entry["metadata"] = meta
                inlined.append(entry)
            b["output"] = {"inlinedResponses": {"inlinedResponses": inlined}}
        b["state"] = "BATCH_STATE_EXPIRED" if outcome == "expired" else "BATCH_STATE_SUCCEEDED"

    def _gemini_op(self, b: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"@type": GEMINI_BATCH_TYPE, "model": f"models/{b['model']}", "name": b["name"],
                                "state": b["state"], "createTime": _now_rfc3339(b["created"]),
                                "updateTime": _now_rfc3339(b["updated"]), "batchStats": b["stats"]}
        if b["display_name"]:
            meta["displayName"] = b["display_name"]
        if b["ended"] is not None:
            meta["endTime"] = _now_rfc3339(b["ended"])
        if b["output"] is not None:
            meta["output"] = b["output"]
        op: dict[str, Any] = {"name": b["name"], "metadata": meta}
        if b["state"] not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
            op["done"] = True
            if b["error"] is not None:
                op["error"] = b["error"]
            elif b["state"] == "BATCH_STATE_CANCELLED":
                op["error"] = {"code": GRPC_CODES["CANCELLED"], "message": "The batch was cancelled."}
            elif b["output"] is not None:  # the Operation's response mirrors metadata.output (maximhq/bifrost#4904)
                op["response"] = {"@type": GEMINI_BATCH_OUTPUT_TYPE, **b["output"]}
        return op


def _gemini_images(contents: list[Any]) -> list[bytes] | Reply:
    """The bytes of every inline image part (camelCase or snake_case keys, as the SDK mixes them), or the 400 the
    API answers for an unsupported type, bad base64 or an image it can't read."""
    images = []
    for ci, content in enumerate(contents):
        parts = content.get("parts", []) if isinstance(content, dict) else []
        for pi, part in enumerate(parts if isinstance(parts, list) else []):
            inline = part.get("inlineData", part.get("inline_data")) if isinstance(part, dict) else None
            if inline is None:
                continue
            where = f"contents[{ci}].parts[{pi}].inline_data"
            mime = inline.get("mimeType", inline.get("mime_type"))
            if mime not in GEMINI_INPUT_MIMES:
                return _gemini_invalid(f"{where}.mime_type", f"Unsupported MIME type: {mime}")
            try:  # proto3 JSON bytes: standard or URL-safe base64, padded or not (the SDK sends URL-safe)
                text = str(inline.get("data", "")).replace("-", "+").replace("_", "/")
                data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except (ValueError, binascii.Error):
                return _gemini_invalid(f"{where}.data", f"Invalid value at '{where}.data' (TYPE_BYTES), Base64 "
                                                        "decoding failed.")
            if mime in ("image/heic", "image/heif") or _image_size(data) is None:
                return _gemini_invalid(where, "Unable to process input image. Please retry or report in "
                                              "https://developers.generativeai.google/guide/troubleshooting")
            images.append(data)
    return images


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if not k.startswith("_")}


def _form_parts(headers: dict[str, str], raw: bytes) -> list[tuple[str, bool, bytes]]:
    """(name, is a file, bytes) of every part of a multipart/form-data body, in order."""
    from email.parser import BytesParser
    from email.policy import default

    msg = BytesParser(policy=default).parsebytes(
        b"Content-Type: " + headers.get("content-type", "").encode() + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        return []
    return [(str(part.get_param("name", header="content-disposition")), part.get_filename() is not None,
             bytes(part.get_payload(decode=True) or b"")) for part in msg.iter_parts()]


def _multipart(headers: dict[str, str], raw: bytes) -> tuple[str | None, bytes | None, str | None]:
    """(purpose, file bytes, filename) of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import default

    msg = BytesParser(policy=default).parsebytes(
        b"Content-Type: " + headers.get("content-type", "").encode() + b"\r\n\r\n" + raw)
    purpose = content = filename = None
    if not msg.is_multipart():
        return None, None, None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "file":
            content = bytes(part.get_payload(decode=True) or b"")
            filename = part.get_filename()
        elif name == "purpose":
            value = part.get_payload(decode=True)
            purpose = value.decode() if isinstance(value, bytes) else None
    return purpose, content, filename


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.support.fake_hosted")
    p.add_argument("--port", type=int, default=8123)
    args = p.parse_args(argv)
    server = FakeHosted(port=args.port).start()
    print(f"fake OpenAI at {server.url}/v1 (key {OPENAI_KEY}); fake Gemini at {server.url} (key {GEMINI_KEY})")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
