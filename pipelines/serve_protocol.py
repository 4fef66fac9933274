"""The HTTP contract of `imagefleet serve`: request parsing/validation and response bodies (no Ray, no I/O)."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

from imagefleet.actors.image_writer import CONTENT_TYPES
from imagefleet.configs.request import REQUEST

FORMATS = tuple(CONTENT_TYPES)  # the encodings the image writer knows
RESPONSES = ("image", "json")

SERVED = {s.column or s.name: s for s in REQUEST if s.default != "none"}
"""The request table's settings a request sets by name (input images and the mask come as base64 files)."""
_SAYS = {
    "negative_prompt": "what to avoid",
    "seed": "whole number; omitted = derived from the prompt, like a batch row without a seed",
    "width": "pixels, multiple of 8",
    "height": "pixels, multiple of 8",
    "num_images": "images for this prompt (needs a JSON response when > 1)",
    "strength": "image-to-image / inpaint: how far from the input image (0..1]",
    "loras": "LoRA adapters of the generator, `name` or `name:weight` separated by commas ('' = none)",
}
"""What this API says of a setting where it says more than the request table's description."""
REQUEST_FIELDS = {
    "prompt": "text to draw (required)",
    "generator": "which configured generator (default: the config's default generator)",
    **{field: _SAYS.get(field, s.description) for field, s in SERVED.items()},
    "images": "input image(s) as base64 strings (one, or a list of references), for the config's source.task",
    "mask": "mask image as a base64 string (white = change; the first image's size), for inpaint / edit",
    "format": "png | jpeg | webp (default: output.format; a hosted provider's file comes in its own format)",
    "response": "image (raw bytes) | json (base64 images + metadata)",
}
NUMBER_FIELDS = tuple(f for f, s in SERVED.items() if s.kind in ("int32", "int64", "float64"))
WHOLE_NUMBER_FIELDS = tuple(f for f, s in SERVED.items() if s.kind in ("int32", "int64"))
TEXT_FIELDS = ("prompt", "generator", *(f for f, s in SERVED.items() if s.kind == "text"))
MAX_INPUT_IMAGES = 16  # the most any backend takes (OpenAI edits); a backend's own limit is checked per row
# whole numbers must fit the 32-bit columns a prompt row has (the preprocessor checks the real ranges, which are
# narrower); anything bigger is refused here, before it reaches a column
MAX_WHOLE_NUMBER = 2**31 - 1
MAX_INT_DIGITS = 30  # longer integer literals are not parsed at all (Python refuses beyond 4300 digits anyway)


class RequestProblem(ValueError):
    """A request that cannot be served; `status` is the HTTP code and the message says what to change. `param` and
    `code` (the request parameter at fault, a machine-readable reason) fill OpenAI-shaped error bodies."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass(frozen=True)
class GenerateRequest:
    """A validated POST /generate body."""

    row: dict[str, Any]
    """The request as one prompt-table row (the batch preprocessor validates values and derives seeds)."""
    format: str
    """Image encoding."""
    response: str
    """image | json."""
    images: tuple[bytes, ...] = ()
    """Input image files (decoded from base64; checked and hashed by the gateway like the batch input reader)."""
    mask: bytes = b""
    """Mask image file (b'' = none)."""


@dataclass(frozen=True)
class LongInteger:
    """An integer literal too long to be a valid value, kept unparsed so the field check can name its field."""

    text: str


def _parse_int(text: str) -> int | LongInteger:
    return int(text) if len(text) <= MAX_INT_DIGITS else LongInteger(text)


def json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), "number")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON; send a finite number")


async def read_body(chunks: AsyncIterable[bytes], content_length: str | None, max_request_bytes: int) -> bytes:
    """Read a request body without ever holding more than `max_request_bytes` + one chunk of it.

    A declared `Content-Length` over the limit is refused before reading anything; a body without one (chunked)
    is read chunk by chunk and refused as soon as it passes the limit. Raises RequestProblem (413, or 400 for a
    Content-Length that is not a number).
    """
    if content_length is not None:
        if not content_length.strip().isdigit():
            raise RequestProblem(400, f"Content-Length {content_length[:40]!r} is not a byte count")
        if int(content_length) > max_request_bytes:
            raise RequestProblem(413, f"request body is {int(content_length)} bytes; the limit is {max_request_bytes}")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_request_bytes:
            raise RequestProblem(413, f"request body is over {max_request_bytes} bytes; the limit is "
                                      f"{max_request_bytes}")
    return bytes(body)


def parse_json_object(body: bytes, max_request_bytes: int) -> dict[str, Any]:
    """A request body as a JSON object. Raises RequestProblem: 413 over the limit; 400 not UTF-8 JSON, nested
    too deeply, NaN/Infinity, or not an object. Integer literals too long for any field stay unparsed
    (`LongInteger`, refused by the field's check, which names the field)."""
    if len(body) > max_request_bytes:
        raise RequestProblem(413, f"request body is {len(body)} bytes; the limit is {max_request_bytes}")
    try:
        text = body.decode("utf-8")
        data = json.loads(text, parse_int=_parse_int, parse_constant=_refuse_constant) if text.strip() else None
    except RecursionError:
        field = _too_deep_field(text)
        where = f'"{field}" nests' if field else "body nests"
        raise RequestProblem(400, f'{where} arrays/objects too deeply; send a flat JSON object such as '
                                  f'{{"prompt": "a red fox"}}') from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RequestProblem(400, f'body is not valid JSON ({exc}); send e.g. {{"prompt": "a red fox"}}') from exc
    if not isinstance(data, dict):
        raise RequestProblem(400, 'body must be a JSON object such as {"prompt": "a red fox"}')
    return data


def parse_generate_request(
    body: bytes, accept: str, *, default_format: str, default_response: str, max_request_bytes: int,
    max_images: int,
) -> GenerateRequest:
    """Check a POST /generate body. Raises RequestProblem (413 too large, 400 anything else)."""
    # 1 size and syntax
    data = parse_json_object(body, max_request_bytes)
    # 2 names and types (value ranges are checked by the same preprocessor batch rows go through)
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestProblem(400, f"unknown field(s) {unknown}; allowed: {sorted(REQUEST_FIELDS)}")
    if "prompt" not in data:
        raise RequestProblem(400, 'missing "prompt"')
    for name in TEXT_FIELDS:
        if name in data:
            check_text(name, data[name])
    for name in NUMBER_FIELDS:
        _check_number(name, data.get(name))
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
    images = _files("images", data.get("images"), MAX_INPUT_IMAGES)
    mask = _files("mask", data.get("mask"), 1)
    row = {k: v for k, v in data.items() if k not in ("format", "response", "images", "mask") and v is not None}
    return GenerateRequest(row=row, format=fmt, response=response, images=images, mask=mask[0] if mask else b"")


def _files(name: str, value: Any, most: int) -> tuple[bytes, ...]:
    """A base64 string (or, for images, a list of them) as file bytes; RequestProblem naming the field."""
    if value is None:
        return ()
    values = value if isinstance(value, list) and most > 1 else [value]
    if len(values) > most:
        raise RequestProblem(400, f'"{name}" has {len(values)} images; at most {most}')
    out = []
    for k, item in enumerate(values):
        where = f'"{name}"[{k}]' if isinstance(value, list) else f'"{name}"'
        if not isinstance(item, str):
            raise RequestProblem(400, f"{where} must be a base64 string, got {json_type(item)}")
        if item.startswith("data:"):  # data:image/png;base64,<data>
            head, comma, item = item.partition(",")
            if not comma or not head.endswith(";base64"):
                raise RequestProblem(400, f"{where} is a data: URL without ';base64,<data>'")
        try:
            out.append(base64.b64decode(item, validate=True))
        except ValueError:
            raise RequestProblem(400, f"{where} is not valid base64") from None
    return tuple(out)


def check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise RequestProblem(400, f'"{name}" must be a string, got {json_type(value)}')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestProblem(400, f'"{name}" is not valid Unicode text (an unpaired \\u surrogate escape)') from None


def _check_number(name: str, value: Any) -> None:
    """A number field is absent, or a finite number; whole-number fields also fit a 32-bit column."""
    if value is None:
        return
    if isinstance(value, LongInteger):
        raise RequestProblem(400, f'"{name}" has {len(value.text.lstrip("-"))} digits; it must be a whole number '
                                  f"between {-MAX_WHOLE_NUMBER} and {MAX_WHOLE_NUMBER}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestProblem(400, f'"{name}" must be a number, got {json_type(value)}')
    if not math.isfinite(value):
        raise RequestProblem(400, f'"{name}" must be a finite number, got {value}')
    if name in WHOLE_NUMBER_FIELDS and abs(value) > MAX_WHOLE_NUMBER:
        raise RequestProblem(400, f'"{name}" must be a whole number between {-MAX_WHOLE_NUMBER} and '
                                  f"{MAX_WHOLE_NUMBER}, got {value if isinstance(value, int) else f'{value:.6g}'}")


_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, i: int) -> int:
    match = _SPACE.match(text, i)
    return match.end() if match else i


def _too_deep_field(text: str) -> str:
    """The top-level field whose value nests too deeply for the JSON parser, or '' (the body itself, or unknown)."""
    decoder = json.JSONDecoder()
    i = _skip_space(text, 0)
    if text[i:i + 1] != "{":
        return ""
    try:
        while True:  # "key": value pairs, one value at a time, until the one the parser can't descend into
            key, i = decoder.raw_decode(text, _skip_space(text, i + 1))
            i = _skip_space(text, i)
            if text[i:i + 1] != ":":
                return ""
            try:
                _, i = decoder.raw_decode(text, _skip_space(text, i + 1))
            except RecursionError:
                return str(key)
            i = _skip_space(text, i)
            if text[i:i + 1] != ",":
                return ""
    except (ValueError, RecursionError):
        return ""


def _from_accept(accept: str) -> str:
    """`image` when the client asks for image/*, `json` for application/json only, else '' (no preference)."""
    accept = accept.lower()
    if "image/" in accept:
        return "image"
    if "application/json" in accept:
        return "json"
    return ""


def image_entry(result: dict[str, Any]) -> dict[str, Any]:
    """One image of a JSON response (base64 bytes plus what the manifest would record). `format` is the bytes'
    own: the requested one, or a hosted provider's when its file is answered as sent."""
    return {
        "image_key": result["image_key"],
        "seed": int(result["seed"]),
        "width": int(result["width"]),
        "height": int(result["height"]),
        "format": result["format"],
        "content_type": CONTENT_TYPES[result["format"]],
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
