"""The HTTP contract of `imagefleet serve`: request parsing/validation and response bodies (no Ray, no I/O)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from actors.image_writer import CONTENT_TYPES

FORMATS = tuple(CONTENT_TYPES)  # the encodings the image writer knows
RESPONSES = ("image", "json")

REQUEST_FIELDS = {
    "prompt": "text to draw (required)",
    "negative_prompt": "what to avoid",
    "generator": "which configured generator (default: the config's default generator)",
    "seed": "whole number; omitted = derived from the prompt, like a batch row without a seed",
    "width": "pixels, multiple of 8",
    "height": "pixels, multiple of 8",
    "num_steps": "denoising steps",
    "guidance_scale": "CFG scale",
    "num_images": "images for this prompt (needs a JSON response when > 1)",
    "format": "png | jpeg | webp (default: output.format)",
    "response": "image (raw bytes) | json (base64 images + metadata)",
}
NUMBER_FIELDS = ("seed", "width", "height", "num_steps", "guidance_scale", "num_images")
TEXT_FIELDS = ("prompt", "negative_prompt", "generator")


class RequestProblem(ValueError):
    """A request that cannot be served; `status` is the HTTP code and the message says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GenerateRequest:
    """A validated POST /generate body."""

    row: dict[str, Any]
    """The request as one prompt-table row (the batch preprocessor validates values and derives seeds)."""
    format: str
    """Image encoding."""
    response: str
    """image | json."""


def parse_generate_request(
    body: bytes, accept: str, *, default_format: str, default_response: str, max_request_bytes: int,
    max_images: int,
) -> GenerateRequest:
    """Check a POST /generate body. Raises RequestProblem (413 too large, 400 anything else)."""
    # 1 size and syntax
    if len(body) > max_request_bytes:
        raise RequestProblem(413, f"request body is {len(body)} bytes; the limit is {max_request_bytes}")
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestProblem(400, f'body is not valid JSON ({exc}); send e.g. {{"prompt": "a red fox"}}') from None
    if not isinstance(data, dict):
        raise RequestProblem(400, 'body must be a JSON object such as {"prompt": "a red fox"}')
    # 2 names and types (value ranges are checked by the same preprocessor batch rows go through)
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestProblem(400, f"unknown field(s) {unknown}; allowed: {sorted(REQUEST_FIELDS)}")
    if "prompt" not in data:
        raise RequestProblem(400, 'missing "prompt"')
    for name in TEXT_FIELDS:
        if name in data and not isinstance(data[name], str):
            raise RequestProblem(400, f'"{name}" must be a string, got {type(data[name]).__name__}')
    for name in NUMBER_FIELDS:
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RequestProblem(400, f'"{name}" must be a number, got {json.dumps(value)[:40]}')
    fmt = data.get("format", default_format)
    if fmt not in FORMATS:
        raise RequestProblem(400, f'"format" must be one of {list(FORMATS)}, got {fmt!r}')
    # 3 response kind: the body's choice, then the Accept header, then the server default
    response = data.get("response") or _from_accept(accept) or default_response
    if response not in RESPONSES:
        raise RequestProblem(400, f'"response" must be one of {list(RESPONSES)}, got {response!r}')
    num_images = data.get("num_images", 1)
    if isinstance(num_images, (int, float)) and num_images > max_images:
        raise RequestProblem(400, f"num_images={num_images} exceeds this server's limit of {max_images}")
    if response == "image" and num_images != 1:
        raise RequestProblem(400, 'num_images > 1 needs a JSON response: add "response": "json"')
    row = {k: v for k, v in data.items() if k not in ("format", "response") and v is not None}
    return GenerateRequest(row=row, format=fmt, response=response)


def _from_accept(accept: str) -> str:
    """`image` when the client asks for image/*, `json` for application/json only, else '' (no preference)."""
    accept = accept.lower()
    if "image/" in accept:
        return "image"
    if "application/json" in accept:
        return "json"
    return ""


def image_entry(result: dict[str, Any], fmt: str) -> dict[str, Any]:
    """One image of a JSON response (base64 bytes plus what the manifest would record)."""
    return {
        "image_key": result["image_key"],
        "seed": int(result["seed"]),
        "width": int(result["width"]),
        "height": int(result["height"]),
        "format": fmt,
        "content_type": CONTENT_TYPES[fmt],
        "image_base64": base64.b64encode(result["encoded"]).decode("ascii"),
        "generate_ms": round(float(result["generate_ms"]), 3),
        "cost_usd": float(result["cost_usd"]),
        "batch_size": int(result["batch_size"]),
    }


def image_headers(result: dict[str, Any], generator: str) -> dict[str, str]:
    """Metadata of a raw-image response, as headers."""
    return {
        "X-Imagefleet-Generator": generator,
        "X-Imagefleet-Image-Key": str(result["image_key"]),
        "X-Imagefleet-Seed": str(int(result["seed"])),
        "X-Imagefleet-Generate-Ms": f"{float(result['generate_ms']):.3f}",
        "X-Imagefleet-Cost-Usd": f"{float(result['cost_usd']):.8f}",
        "X-Imagefleet-Batch-Size": str(int(result["batch_size"])),
    }


def failure_status(result: dict[str, Any]) -> int:
    """HTTP code for a row that produced no image: refusals are the request's content, errors the server's."""
    return 422 if result["status"] == "refused" else 500
