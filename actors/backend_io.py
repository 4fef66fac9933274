"""What a generator backend reads and writes (its columns), is asked (`Request`) and answers (`Outcome`), and how
a provider's file is read."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagefleet.configs.request import BY_NAME, KEY_SETTINGS, ROW_COLUMNS

GENERATOR_INPUT_COLUMNS = {
    "prompt": "prompt text",
    **{name: BY_NAME[name].description for name in KEY_SETTINGS},
    "image_key": "content hash (hosted batch mode matches results by it)",
    "generator": "only rows routed to this generator are generated; the rest pass through",
    "status": "only `pending` rows are generated; the rest pass through",
    "error": "passed through",
    "enqueued_at": "for queue time",
}
CONDITIONING_COLUMNS = ("task", "input_images", "input_sha256", "mask_uri", "mask_sha256",
                        *(name for name in ROW_COLUMNS if BY_NAME[name].keyed == "conditioning"))
"""What image-conditioned and adapter rows carry beyond GENERATOR_INPUT_COLUMNS (read when present)."""
"""What `run_generation` reads of every row (rows routed to other generators pass through unchanged)."""

GENERATOR_OPTIONAL_COLUMNS = (*CONDITIONING_COLUMNS, "num_candidates", "input_data", "image", "image_mime",
                              "queue_ms", "generate_ms", "cost_usd", "requests", "maybe_billed_usd", "generated_at")
"""Read when present: conditioning, best-of-N, a request's own files (serving), and what an earlier generator
stage wrote (a cascade's draft passes through the heavy stage; cost and requests accumulate)."""

GENERATOR_OUTPUT_COLUMNS = {
    "image": "raw RGB pixels, uint8 HWC bytes, or the provider's file bytes when `image_mime` is set (b'' = none)",
    "image_mime": "content type of provider file bytes in `image` ('' = raw RGB pixels)",
    "requests": "HTTP requests sent to a hosted API for this image, retries included (accumulates)",
    "maybe_billed_usd": "estimated price of attempts with an unknown outcome the provider may have billed",
    "queue_ms": "time from preprocessing to the start of generation",
    "generate_ms": "model time attributed to this image (batch time / batch size)",
    "cost_usd": "price of this image under the generator's cost model",
    "generated_at": "unix time the model call that made this image returned",
    "status": "generated | error | refused | skipped (rows that were not pending pass through)",
    "error": "why generation failed ('' when fine)",
    "width": "the image's width (a hosted provider's file: as its header says)",
    "height": "the image's height",
    **{f"candidate_{name}": f"best-of-N rows: every candidate's {name}"
       for name in ("images", "seeds", "mimes", "sizes")},
}


@dataclass(frozen=True)
class Request:
    """One image to generate."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    num_steps: int
    guidance_scale: float
    key: str = ""
    task: str = "text-to-image"
    """text-to-image | image-to-image | inpaint | edit (configs.generator_base.Task)."""
    images: tuple[bytes, ...] = ()
    """Input image files as stored (PNG/JPEG/WebP bytes; their sha256 is in the key); the first is the one redrawn
    by image-to-image and inpaint, all of them are references for edit."""
    mask: bytes = b""
    """Mask image file (b'' = none): a single-channel image the size of the first input, white = change."""
    strength: float = 0.0
    """image-to-image / inpaint: how far from the input the result may move (0..1)."""
    adapters: tuple[tuple[str, float], ...] = ()
    """LoRA adapters (name, weight) to apply; () = none."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The request table's settings that have no field of their own here (`configs.request.REQUEST`), by name: a
    backend that honours one reads it from here."""


@dataclass(frozen=True)
class Outcome:
    """What a backend returns for one request when a bare pixel array is not enough (hosted APIs).

    An image is either `image` (pixels) or `encoded` + `mime` (the provider's file, stored as sent: content
    credentials, alpha and ICC profile kept); `encoded` wins when both are set.
    """

    image: np.ndarray | None = None
    """HxWx3 uint8 pixels (the size may differ from the request: Gemini picks sizes by tier/aspect)."""
    encoded: bytes = b""
    """The provider's image file (PNG/JPEG/WebP bytes); its size is read from its header."""
    mime: str = ""
    """Content type the provider declared for `encoded` (e.g. `image/png`); the bytes' own header wins."""
    requests: int = 0
    """HTTP requests sent for this image, retries included (recorded for errors and refusals too). A delivered
    provider file counts at least 1 (batch mode: its line in the batch); resume tells hosted images by it."""
    maybe_billed_usd: float = 0.0
    """Estimated price of attempts whose outcome is unknown (timeouts, dropped connections) that the provider may
    have completed and billed."""
    cost_usd: float | None = None
    """Measured price (from the response's usage); None = the time-based cost model."""
    refusal: str = ""
    """Why the provider refused (content policy); the row becomes `status=refused`."""
    error: str = ""
    """A problem with this request alone (e.g. a size the API can't make); the row becomes an error row."""
    skipped: str = ""
    """Why the request was not sent (the run's budget, by actual spend); the row becomes `status=skipped`, which a
    rerun redoes."""


def parse_adapter_list(text: str) -> tuple[tuple[str, float], ...]:
    """`name:weight,...` (the `adapters` column) as (name, weight) pairs."""
    pairs = (part.rpartition(":") for part in text.split(",") if part)
    return tuple((name, float(weight)) for name, _, weight in pairs)


def sniff_mime(data: bytes) -> str:
    """The content type of image file bytes, by their magic bytes (for providers that declare none).

    Args:
        data: the start of an image file (12 bytes suffice).

    Returns:
        `image/png`, `image/jpeg`, `image/webp`, or '' when the bytes are none of these.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


def encoded_info(data: bytes, declared_mime: str = "") -> tuple[str, int, int] | None:
    """Content type, width and height of an image file, from its header (the pixels are not decoded).

    Args:
        data: the image file's bytes.
        declared_mime: what the sender said it is (used only when PIL names no content type for the format).

    Returns:
        (mime, width, height), or None when PIL can't read the header.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            mime = sniff_mime(data) or Image.MIME.get(img.format or "", "") or declared_mime
    except Exception:  # noqa: BLE001 - PIL raises many kinds for bad bytes (OSError, SyntaxError, ValueError…)
        return None
    return (mime, int(width), int(height)) if width > 0 and height > 0 else None


def decode_problem(data: bytes) -> str:
    """Why a provider's image file doesn't fully decode ('' when it does): every pixel is read once, so a file cut
    short (valid base64 of half a PNG, whose header still reads) is caught before it is stored as `ok`.

    Args:
        data: the image file's bytes (PNG, JPEG or WebP).
    """
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a process-wide PIL switch that would pad a cut file with grey
        return "PIL is set to load truncated images (PIL.ImageFile.LOAD_TRUNCATED_IMAGES); can't check the file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a cut or damaged file
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return ""
