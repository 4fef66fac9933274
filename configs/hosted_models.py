"""What each hosted image model accepts and what it costs: the per-model capability and price table.

Both the config checks (refuse settings a model can't serve, refuse models without prices) and the backends (turn
a row's pixel size into a request, price an image before it is made) read this one table. Model ids stay plain
strings: ids are retired often (shared/HOSTED_APIS.md §0), so a retired id is refused with its replacement named,
and an id the table doesn't know needs `prices` (and `like`, a known id whose capabilities it shares) in config.

Sources (as of 2026-11; "3rd-party" = not the vendor):
- OpenAI sizes: API reference `images/generate` and the `openai` 3.54 SDK docstring of `size` (gpt-image-2 family:
  both edges multiples of 16, long edge <= 3840, aspect within 3:1, total pixels 655,360..8,294,400).
- OpenAI prices: developers.openai.com model pages (gpt-image-2.6-sunburst: text in $5, image in $8, image out $30
  per 1M; gpt-image-1-mini: $2 / $2.50 / $8); gpt-image-1.5 image out $32 (3rd-party: llmreference). Output image
  tokens per image for the gpt-image-1 family: 272/1056/4160 (low/medium/high at 1024x1024; 3rd-party: OpenAI
  community forum, agrees with the official per-image prices). The gpt-image-2 family counts output tokens by a
  size/quality formula, the algorithm behind OpenAI's price calculator (3rd-party: OpenAI developer forum, "gpt-image-2
  output pricing calculator", 2026-06-05): quality factor q (low 16, medium 48, high 96), short-axis factor
  s = round(q x short edge / long edge), tokens = ceil(q x s x (2,000,000 + width x height) / 4,000,000); e.g.
  1024x1024 high 7,024, 1536x1024 high 5,488, 1792x1024 high 5,063, 1024x1024 low 196 (`gpt2_image_tokens`).
  `quality: auto` renders and bills up to high (3rd-party reports: Bike4Mind #2899/#2977, open-webui #19228), so
  it is estimated and budgeted as high. xhigh and max (the 2.5 family) are not in the published calculator: high's
  tokens x 1.5 and x 2 (the ratios of fal's per-image estimates, 3rd-party). Estimates are used before the call
  (dry run, budget, maybe-billed); the response's `usage` is what is billed.
- Gemini: ai.google.dev image-generation guide (aspect ratios, `imageSize` 512/1K/2K/4K with uppercase K, the 1K
  pixel table), Vertex model pages (tokens per image: 3.1 Flash Image 747/1120/1680/2520; 3 Pro Image
  1120/1120/2000), pricing page (3.1 Flash Image: input $0.50, image output $60 per 1M; 3 Pro Image: input $2,
  image output $120). Text and thinking output: 3.1 Flash Image $3 per 1M (3rd-party: core.today), 3 Pro $12.
- Edits and reference images, OpenAI: `openai` 3.54 SDK docstrings of `images.edit` (up to 16 `png`/`webp`/`jpg`
  images under 50MB each; mask: a PNG under 4MB, the size of the first image, whose alpha 0 marks what to change;
  `input_fidelity`: omit it for gpt-image-2) and openai/openai-openapi openapi.yaml (CreateImageEditRequest;
  EditImageBodyJsonParam, the JSON edit body a Batch API line carries: `images`/`mask` as ImageRefParam
  `image_url` data URLs of at most 20,971,520 characters, `size` only auto/1024x1024/1536x1024/1024x1536,
  `quality` only auto/low/medium/high; CreateBatchRequest: `/v1/images/edits` is a batch endpoint, input files
  up to 200 MB). Input image tokens per image: 65 + 129 per 512px tile after scaling the short side to 512
  (3rd-party: OpenAI community forum, gpt-image-1 edits billed 194 image tokens for a 1024x1024 input), plus
  4,160 (square) or 6,240 tokens at high input fidelity, which gpt-image-2 always uses (3rd-party: lumenfall);
  only an estimate: the response's `usage.input_tokens_details.image_tokens` is billed.
- Reference images, Gemini: Vertex model pages of gemini-3.1-flash-image and gemini-3-pro-image (GA 2026-05-28):
  at most 14 images per prompt, png/jpeg/webp/heic/heif, 1,120 (3.1 Flash Image) and 560 (3 Pro Image) input
  tokens per input image; a Gemini API request with inline data must stay under 20 MB (ai.google.dev, files /
  batch-api guides; bigger inputs need the Files API, which imagefleet does not use). No mask parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OPENAI = "openai"
GEMINI = "gemini"

# Gemini's pixel sizes at the 1K tier for each aspect ratio (the guide's table); 2K and 4K are 2x and 4x, 512 half.
GEMINI_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024), "2:3": (848, 1264), "3:2": (1264, 848), "3:4": (896, 1200), "4:3": (1200, 896),
    "4:5": (928, 1152), "5:4": (1152, 928), "9:16": (768, 1376), "16:9": (1376, 768), "21:9": (1584, 672),
    "1:4": (512, 2048), "4:1": (2048, 512), "1:8": (384, 3072), "8:1": (3072, 384),
}
GEMINI_TIER_SCALE = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}
STANDARD_ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
WIDE_ASPECTS = ("1:4", "4:1", "1:8", "8:1")


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens."""

    text_input: float = 0.0
    image_input: float = 0.0
    image_output: float = 0.0
    text_output: float = 0.0


@dataclass(frozen=True)
class ModelInfo:
    """One hosted model: what it accepts, how many tokens an image takes, what a token costs."""

    provider: str
    prices: Prices
    # OpenAI: "flexible" sizes (the gpt-image-2 rules) or only `fixed_sizes`
    flexible_sizes: bool = False
    fixed_sizes: tuple[tuple[int, int], ...] = ()
    qualities: tuple[str, ...] = ("auto", "low", "medium", "high")
    transparent: bool = False
    formats: tuple[str, ...] = ("png", "jpeg", "webp")
    # output image tokens of one 1024x1024 image per quality (OpenAI gpt-image-1 family; scaled by area)
    tokens_1024: dict[str, int] = field(default_factory=dict)
    # OpenAI gpt-image-2 family: output image tokens by the calculator's formula (`gpt2_image_tokens`)
    token_formula: bool = False
    # Gemini: aspect ratios, size tiers and image tokens per tier
    aspects: tuple[str, ...] = STANDARD_ASPECTS
    tiers: dict[str, int] = field(default_factory=dict)
    thinking_tokens: int = 0
    """Typical thinking + text tokens of one answer (estimate only; Gemini 3 image models always think)."""
    retires: str = ""
    """Announced shutdown date (a warning until then)."""
    max_input_images: int = 0
    """Input (reference) images one request may carry; 0 = text-to-image only."""
    masks: bool = False
    """Takes a mask with its input images (OpenAI edits)."""
    input_image_tokens: int = 0
    """Gemini: input tokens per input image (flat); OpenAI: 0, counted by size (`openai_input_image_tokens`)."""
    high_fidelity: bool = False
    """OpenAI: input images are always read at high fidelity (gpt-image-2 family: extra input tokens)."""


GPT1_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
GPT2_QUALITY_FACTORS = {"low": 16, "medium": 48, "high": 96}
"""The calculator's quality factor per quality (gpt-image-2 family)."""
GPT2_BEYOND_HIGH = {"xhigh": 1.5, "max": 2.0}
"""Qualities beyond high (2.5 family), as a multiple of high's tokens: an estimate, not the calculator's."""
GPT1_SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))
GPT2_PRICES = Prices(text_input=5.0, image_input=8.0, image_output=30.0)
OPENAI_MAX_INPUT_IMAGES = 16
GPT2 = ModelInfo(OPENAI, GPT2_PRICES, flexible_sizes=True, token_formula=True, high_fidelity=True,
                 max_input_images=OPENAI_MAX_INPUT_IMAGES, masks=True)
GPT2_5 = ModelInfo(OPENAI, GPT2_PRICES, flexible_sizes=True, transparent=True, token_formula=True,
                   qualities=("auto", "low", "medium", "high", "xhigh", "max"), high_fidelity=True,
                   max_input_images=OPENAI_MAX_INPUT_IMAGES, masks=True)
GEMINI_MAX_INPUT_IMAGES = 14

# input limits of edits and reference images (sources in the module docstring)
OPENAI_MAX_IMAGE_BYTES = 50 * 1024 * 1024
"""Each input image of an OpenAI edit is smaller than this."""
OPENAI_MAX_MASK_BYTES = 4 * 1024 * 1024
"""An OpenAI edit's mask PNG is smaller than this."""
OPENAI_MAX_IMAGE_URL_CHARS = 20_971_520
"""An ImageRefParam.image_url (a data URL in a batch line) is at most this long."""
OPENAI_BATCH_MAX_BYTES = 200 * 1024 * 1024
"""A Batch API input file is at most this large."""
OPENAI_JSON_EDIT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
"""Sizes the JSON edit body (the only form a batch line can carry) accepts."""
OPENAI_JSON_EDIT_QUALITIES = ("auto", "low", "medium", "high")
"""Qualities the JSON edit body accepts."""
OPENAI_INPUT_FORMATS = ("image/png", "image/jpeg", "image/webp")
GEMINI_MAX_REQUEST_BYTES = 20 * 1024 * 1024
"""A Gemini API request with inline data (the images base64-encoded) stays under this."""
GEMINI_INPUT_FORMATS = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")

MODELS: dict[str, ModelInfo] = {
    "gpt-image-2": GPT2,
    "gpt-image-2-2026-04-21": GPT2,
    "gpt-image-2.5-sunburst": GPT2_5,
    "gpt-image-2.5-sunburst-2026-09-08": GPT2_5,
    "gpt-image-2.5-flare": GPT2_5,
    "gpt-image-2.5-flare-2026-09-08": GPT2_5,
    "gpt-image-2.6-sunburst": GPT2_5,
    "gpt-image-2.6-flare": GPT2_5,
    "gpt-image-1.5": ModelInfo(OPENAI, Prices(text_input=5.0, image_input=8.0, image_output=32.0),
                               fixed_sizes=GPT1_SIZES, transparent=True, tokens_1024=GPT1_TOKENS,
                               retires="2026-12-01", max_input_images=OPENAI_MAX_INPUT_IMAGES,
                               masks=True),
    "gpt-image-1-mini": ModelInfo(OPENAI, Prices(text_input=2.0, image_input=2.5, image_output=8.0),
                                  fixed_sizes=GPT1_SIZES, transparent=True, tokens_1024=GPT1_TOKENS,
                                  retires="2026-12-01", max_input_images=OPENAI_MAX_INPUT_IMAGES,
                                  masks=True),
    "gemini-3.1-flash-image": ModelInfo(GEMINI, Prices(text_input=0.5, image_input=0.5, image_output=60.0,
                                                       text_output=3.0),
                                        aspects=STANDARD_ASPECTS + WIDE_ASPECTS,
                                        tiers={"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}, thinking_tokens=150,
                                        max_input_images=GEMINI_MAX_INPUT_IMAGES, input_image_tokens=1120),
    "gemini-3-pro-image": ModelInfo(GEMINI, Prices(text_input=2.0, image_input=2.0, image_output=120.0,
                                                   text_output=12.0),
                                    tiers={"1K": 1120, "2K": 1120, "4K": 2000}, thinking_tokens=300,
                                    max_input_images=GEMINI_MAX_INPUT_IMAGES, input_image_tokens=560),
}

RETIRED: dict[str, str] = {
    "gpt-image-1": "shut down 2026-10-23; use gpt-image-2 (or gpt-image-2.6-sunburst)",
    "dall-e-2": "retired 2026-05-12; use gpt-image-2",
    "dall-e-3": "retired 2026-05-12; use gpt-image-2",
    "chatgpt-image-latest": "deprecated (shutdown 2026-12-01); use gpt-image-2",
    "gemini-2.5-flash-image": "shut down 2026-10-02; use gemini-3.1-flash-image (Nano Banana 2)",
    "gemini-2.5-flash-image-preview": "shut down; use gemini-3.1-flash-image (Nano Banana 2)",
    "gemini-3-pro-image-preview": "shut down 2026-06-25; use gemini-3-pro-image",
    "gemini-3.1-flash-image-preview": "shut down 2026-06-25; use gemini-3.1-flash-image",
}


def lookup(provider: str, model: str, like: str = "") -> ModelInfo | None:
    """The table entry for `model` (or for `like` when the id is unknown); None when neither is known."""
    for name in (model, like):
        info = MODELS.get(name)
        if name and info is not None and info.provider == provider:
            return info
    return None


def openai_size_problem(info: ModelInfo | None, model: str, width: int, height: int) -> str:
    """Why `model` can't make a WxH image ('' when it can). None = unknown model: only generic checks."""
    if info is not None and not info.flexible_sizes:
        if (width, height) in info.fixed_sizes:
            return ""
        sizes = ", ".join(f"{w}x{h}" for w, h in info.fixed_sizes)
        return f"size {width}x{height}: {model} only makes {sizes}"
    if width % 16 or height % 16:
        return f"size {width}x{height}: both sides must be multiples of 16 for {model}"
    if max(width, height) > 3 * min(width, height):
        return f"size {width}x{height}: aspect ratio must be within 3:1 for {model}"
    if max(width, height) > 3840:
        return f"size {width}x{height}: the long edge must be at most 3840 for {model}"
    if not 655_360 <= width * height <= 8_294_400:
        return (f"size {width}x{height}: {model} needs between 655,360 and 8,294,400 pixels "
                f"(e.g. 1024x1024 up to 2880x2880), got {width * height:,}")
    return ""


def openai_image_tokens(info: ModelInfo, quality: str, width: int, height: int) -> int:
    """Expected output image tokens of one WxH image at `quality` ('auto' as high: it renders and bills up to
    high): the calculator's formula for the gpt-image-2 family, the gpt-image-1 table scaled by area otherwise."""
    quality = "high" if quality == "auto" else quality
    if info.token_formula:
        if quality in GPT2_BEYOND_HIGH:
            return math.ceil(gpt2_image_tokens("high", width, height) * GPT2_BEYOND_HIGH[quality])
        return gpt2_image_tokens(quality, width, height)
    per = info.tokens_1024.get(quality) or max(info.tokens_1024.values())
    return round(per * width * height / (1024 * 1024))


def gpt2_image_tokens(quality: str, width: int, height: int) -> int:
    """Output image tokens of one WxH gpt-image-2 image at low, medium or high quality, as OpenAI's price
    calculator computes them (module docstring): integer arithmetic, so the published examples hold exactly."""
    q = GPT2_QUALITY_FACTORS[quality]
    long_edge, short_edge = max(width, height), min(width, height)
    short_axis = (2 * q * short_edge + long_edge) // (2 * long_edge)  # round(q x short / long)
    return -(-q * short_axis * (2_000_000 + width * height) // 4_000_000)


def gemini_request_size(info: ModelInfo | None, model: str, width: int, height: int) -> tuple[str, str, str]:
    """(aspectRatio, imageSize, problem) for a pixel size: the nearest aspect ratio the model offers, then the
    smallest tier whose image is at least ~the requested area (tiers are about area: 1280x720 is 1K at 16:9,
    whose image is 1376x768). problem is '' unless no tier is large enough."""
    aspects = info.aspects if info is not None else STANDARD_ASPECTS
    tiers = list(info.tiers) if info is not None else ["1K", "2K", "4K"]
    aspect = min(aspects, key=lambda a: abs(GEMINI_1K[a][0] / GEMINI_1K[a][1] - width / height))
    base_w, base_h = GEMINI_1K[aspect]
    for tier in sorted(tiers, key=GEMINI_TIER_SCALE.__getitem__):
        scale = GEMINI_TIER_SCALE[tier]
        if base_w * scale * base_h * scale >= 0.9 * width * height:
            return aspect, tier, ""
    top = max(tiers, key=GEMINI_TIER_SCALE.__getitem__)
    w, h = (round(v * GEMINI_TIER_SCALE[top]) for v in (base_w, base_h))
    return aspect, top, f"size {width}x{height}: {model} makes at most {w}x{h} at {aspect}"


def gemini_pixels(aspect: str, tier: str) -> tuple[int, int]:
    """The pixel size Gemini returns for an aspect ratio and tier."""
    w, h = GEMINI_1K[aspect]
    return round(w * GEMINI_TIER_SCALE[tier]), round(h * GEMINI_TIER_SCALE[tier])


def openai_input_image_tokens(info: ModelInfo, width: int, height: int) -> int:
    """Estimated input tokens of one WxH input image of an OpenAI edit: 65 + 129 per 512px tile once the short side
    is scaled to 512 (long side at most 2048), plus the high-fidelity surcharge of models that always read inputs
    at high fidelity (4,160 square, 6,240 otherwise). Only an estimate: the response's usage is billed."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = 512 / min(w, h)
    w, h = w * scale, h * scale
    tiles = -(-int(w) // 512) * -(-int(h) // 512)
    extra = (4160 if width == height else 6240) if info.high_fidelity else 0
    return 65 + 129 * tiles + extra
