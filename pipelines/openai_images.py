"""The OpenAI Images API face of `imagefleet serve`: request parsing and response/error bodies (no Ray, no I/O).

`POST /v1/images/generations` takes the body OpenAI's `images.generate` sends (shapes from OpenAI's API reference
and the official SDK's `ImageGenerateParams` / `ImagesResponse`) and turns it into the same `GenerateRequest` a
`POST /generate` body becomes, so both routes share the gateway's validation, seeds, image keys and generators.
`model` names one of the server's generators. OpenAI's API has no seed: each image's seed is derived from the job
seed, the prompt and the image's index, exactly like a `POST /generate` without `seed` (and a batch row without one).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

from imagefleet.pipelines.serve_protocol import (
    FORMATS,
    GenerateRequest,
    LongInteger,
    RequestProblem,
    check_text,
    json_type,
    parse_json_object,
)

IMAGES_ROUTE = "/v1/images/generations"
MODELS_ROUTE = "/v1/models"

CHOICES: dict[str, tuple[tuple[Any, ...], str]] = {
    "response_format": (("b64_json",), "images come back inline as base64; this server keeps no image URLs"),
    "quality": (("auto",), "a generator's quality is its config: generators.<name>.defaults"),
    "background": (("auto", "opaque"), "the generators draw opaque images"),
    "moderation": (("auto",), "moderation is each generator's own"),
    "stream": ((False,), "images come back in one response, not streamed"),
}
"""OpenAI parameters this server takes only at the values it can honour: (accepted values, why only those)."""
UNSUPPORTED = {
    "output_compression": "the encoding quality is the server's output.quality",
    "partial_images": "images come back in one response, not streamed",
    "style": "describe the style in the prompt",
    "complexity": "the generators have no separate planning step",
    "frame_count": "GIF output is not supported",
    "frame_duration_ms": "GIF output is not supported",
    "svg": "SVG output is not supported",
}
"""OpenAI parameters this server can't honour at all (null is taken as not given, as by the real API): why not."""
PARAMS = ("prompt", "model", "n", "size", "output_format", *CHOICES, "user", "safety_identifier", *UNSUPPORTED)
"""Every parameter of OpenAI's `images.generate`; anything else is refused like the real API does (400
`unknown_parameter`)."""
TYPES: dict[str, tuple[type, str]] = {
    **{name: (str, "a string") for name in PARAMS if name not in ("n", "stream", *UNSUPPORTED)},
    "n": (int, "an integer"),
    "stream": (bool, "a boolean"),
}
"""The JSON type each honoured parameter must have (as the Python type json.loads gives it, and in words)."""
_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")


def parse_images_request(body: bytes, *, models: Sequence[str], default_format: str, max_request_bytes: int,
                         max_images: int) -> GenerateRequest:
    """Check a POST /v1/images/generations body and turn it into the prompt row a POST /generate body would be.

    Args:
        body: the request body.
        models: the server's generator names (the API's `model` values).
        default_format: image encoding when the request names no `output_format`.
        max_request_bytes: larger bodies get 413.
        max_images: the largest `n`.

    Raises:
        RequestProblem: 400 (413 for a body over the limit) with the OpenAI error's `param` and `code`.
    """
    # 1 a JSON object within the size limit, holding only the API's parameters, with a text prompt
    data = parse_json_object(body, max_request_bytes)
    unknown = [name for name in data if name not in PARAMS]
    if unknown:
        raise _invalid(f"Unknown parameter: '{unknown[0]}'; this server takes OpenAI's images.generate parameters "
                       f"({', '.join(PARAMS)})", unknown[0], "unknown_parameter")
    if "prompt" not in data:
        raise _invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    given = {name: value for name, value in data.items() if value is not None or name == "prompt"}
    # 2 types, then what this server can't honour (null = not given)
    for name, value in given.items():
        _check_type(name, value)
    for name, why in UNSUPPORTED.items():
        if name in given:
            raise _invalid(f"Unsupported parameter: '{name}' is not supported by this server ({why}); omit it",
                           name, "unsupported_parameter")
    for name, (allowed, why) in CHOICES.items():
        if name in given and given[name] not in allowed:
            accepted = " or ".join(repr(v) for v in allowed)
            raise _invalid(f"Invalid value for '{name}': {given[name]!r}; this server takes {accepted} ({why})",
                           name, "invalid_value")
    # 3 the prompt row: model -> generator, n -> num_images, size -> width and height (their ranges, like every
    #   other value, are checked by the preprocessor batch rows go through)
    row: dict[str, Any] = {"prompt": given["prompt"]}
    if "model" in given:
        if given["model"] not in models:
            raise _invalid(f"Invalid value for 'model': {given['model']!r}; this server's models are its generators: "
                           f"{', '.join(map(repr, models))} (GET /v1/models lists them)", "model", "invalid_value")
        row["generator"] = given["model"]
    if "n" in given:
        row["num_images"] = _count(given["n"], max_images)
    if given.get("size", "auto") != "auto":
        match = _SIZE.fullmatch(given["size"])
        if match is None:
            raise _invalid(f"Invalid value for 'size': {given['size']!r}; send 'WIDTHxHEIGHT' in pixels such as "
                           f"'512x512', or 'auto' (the generator's default size)", "size", "invalid_value")
        row["width"], row["height"] = int(match[1]), int(match[2])
    fmt = given.get("output_format", default_format)
    if fmt not in FORMATS:
        raise _invalid(f"Invalid value for 'output_format': {fmt!r}; this server takes {', '.join(FORMATS)}",
                       "output_format", "invalid_value")
    return GenerateRequest(row=row, format=fmt, response="json")


def _invalid(message: str, param: str, code: str) -> RequestProblem:
    return RequestProblem(400, message, param=param, code=code)


def _check_type(name: str, value: Any) -> None:
    if name not in TYPES:
        return  # an unsupported parameter: refused whatever its type
    kind, words = TYPES[name]
    if isinstance(value, LongInteger) and kind is int:
        return  # a whole number too long to parse: _count refuses it as above the maximum
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(f"Invalid type for '{name}': expected {words}, but got {json_type(value)} instead.",
                       name, "invalid_type")
    if kind is str:
        try:
            check_text(name, value)
        except RequestProblem as exc:
            raise _invalid(str(exc), name, "invalid_value") from exc


def _count(n: int | LongInteger, most: int) -> int:
    if isinstance(n, LongInteger) or n > most:
        shown = n.text if isinstance(n, LongInteger) else n
        raise _invalid(f"Invalid 'n': integer above maximum value. Expected a value <= {most} "
                       f"(serve.max_images_per_request), but got {shown} instead.", "n", "integer_above_max_value")
    if n < 1:
        raise _invalid(f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} instead.",
                       "n", "integer_below_min_value")
    return n


def images_response(results: list[dict[str, Any]], created: int) -> dict[str, Any]:
    """The `ImagesResponse` body for a request's images (all of one generator, size and format).

    Args:
        results: the generator deployment's results, one per image (`encoded`, `format`, `width`, `height`).
        created: Unix time of the response, in seconds.
    """
    first = results[0]
    return {
        "created": created,
        "data": [{"b64_json": base64.b64encode(r["encoded"]).decode("ascii")} for r in results],
        "output_format": first["format"],  # the bytes' own: a hosted provider's file may come in its own format
        "size": f"{int(first['width'])}x{int(first['height'])}",
    }


def images_headers(results: list[dict[str, Any]], generator: str) -> dict[str, str]:
    """What the OpenAI body has no field for, as headers: the generator, and each image's key and seed in order."""
    return {
        "X-Imagefleet-Generator": generator,
        "X-Imagefleet-Image-Keys": ",".join(str(r["image_key"]) for r in results),
        "X-Imagefleet-Seeds": ",".join(str(int(r["seed"])) for r in results),
    }


def models_body(models: Sequence[str]) -> dict[str, Any]:
    """GET /v1/models: the generators, as OpenAI's model list (the `model` values images.generate takes)."""
    return {"object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "imagefleet"} for name in models]}


def error_body(problem: RequestProblem) -> dict[str, Any]:
    """An OpenAI error body, which the SDK raises as the status's error class (BadRequestError for 400, ...)."""
    kind = "server_error" if problem.status >= 500 else "invalid_request_error"
    return {"error": {"message": str(problem), "type": kind, "param": problem.param, "code": problem.code}}
