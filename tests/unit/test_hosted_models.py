"""The per-model capability and price table: sizes, options, prices and estimates, checked at config load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from imagefleet.configs.hosted import GeminiImageConfig, OpenAIImagesConfig
from imagefleet.configs.hosted_models import MODELS, gemini_pixels, gemini_request_size, openai_size_problem
from imagefleet.configs.loader import load_config

ROOT = Path(__file__).resolve().parents[2]
GPT2 = MODELS["gpt-image-2"]


@pytest.mark.parametrize(("w", "h", "ok"), [
    (1024, 1024, True),
    (1024, 640, True),      # 655,360 pixels: the smallest allowed
    (1008, 640, False),     # just under
    (2880, 2880, True),     # 8,294,400 pixels: the largest square
    (3840, 2160, True),     # long edge 3840, 8,294,400 pixels
    (2896, 2880, False),    # just over 8,294,400
    (3856, 1296, False),    # long edge over 3840
    (512, 512, False),      # too few pixels: the API would answer 400
    (2304, 768, True),      # exactly 3:1
    (2320, 768, False),     # wider than 3:1
    (1000, 1000, False),    # not multiples of 16
])
def test_gpt_image_2_sizes(w: int, h: int, ok: bool) -> None:
    assert (openai_size_problem(GPT2, "gpt-image-2", w, h) == "") is ok


def test_fixed_size_models() -> None:
    mini = MODELS["gpt-image-1-mini"]
    assert openai_size_problem(mini, "gpt-image-1-mini", 1536, 1024) == ""
    assert "only makes" in openai_size_problem(mini, "gpt-image-1-mini", 1024, 768)


def test_config_refuses_defaults_the_model_cant_make() -> None:
    with pytest.raises(ValidationError, match="655,360"):
        OpenAIImagesConfig(defaults={"width": 512, "height": 512})
    assert OpenAIImagesConfig(defaults={"width": 2880, "height": 2880}).defaults.width == 2880


def test_transparent_background_per_model() -> None:
    with pytest.raises(ValidationError, match="rejects background=transparent"):
        OpenAIImagesConfig(model="gpt-image-2", background="transparent")
    for model in ("gpt-image-2.6-sunburst", "gpt-image-2.5-flare", "gpt-image-1.5"):
        assert OpenAIImagesConfig(model=model, background="transparent").background == "transparent"
    with pytest.raises(ValidationError, match="png or webp"):
        OpenAIImagesConfig(model="gpt-image-2.6-sunburst", background="transparent", output_format="jpeg")


def test_quality_per_model() -> None:
    assert OpenAIImagesConfig(model="gpt-image-2.6-flare", quality="max").quality == "max"
    with pytest.raises(ValidationError, match="not offered by gpt-image-2"):
        OpenAIImagesConfig(model="gpt-image-2", quality="xhigh")


@pytest.mark.parametrize("model", ["gpt-image-1", "dall-e-3"])
def test_retired_openai_models_name_their_replacement(model: str) -> None:
    with pytest.raises(ValidationError, match="gpt-image-2"):
        OpenAIImagesConfig(model=model)


def test_retired_gemini_preview_ids() -> None:
    with pytest.raises(ValidationError, match="use gemini-3.1-flash-image"):
        GeminiImageConfig(model="gemini-3.1-flash-image-preview")


def test_unknown_model_needs_prices_not_zero() -> None:
    with pytest.raises(ValidationError, match="not billed at \\$0"):
        OpenAIImagesConfig(model="gpt-image-3")
    cfg = OpenAIImagesConfig(model="gpt-image-3", like="gpt-image-2", prices={"image_output": 40.0})
    assert cfg.estimate_usd() > 0
    with pytest.raises(ValidationError, match="not a known"):
        OpenAIImagesConfig(model="gpt-image-3", like="nope", prices={"image_output": 40.0})
    # a Gemini model without a published price (Nano Banana 2 Lite) is refused until priced
    with pytest.raises(ValidationError, match="price table"):
        GeminiImageConfig(model="gemini-3.1-flash-lite-image")


def test_estimates_are_realistic() -> None:
    """Estimates before the call: gpt-image-2 at 1024² ~$0.006 / $0.053 / $0.211 (low/medium/high: 196 / 1,756 /
    7,024 output tokens at $30 per 1M, plus the prompt), `auto` as high; Nano Banana 2 $0.067 at 1K and $0.101 at
    2K, plus thinking at the text-output rate; batch mode halves them."""
    low = OpenAIImagesConfig(quality="low").estimate_usd()
    medium = OpenAIImagesConfig(quality="medium").estimate_usd()
    high = OpenAIImagesConfig(quality="high").estimate_usd()
    assert 0.0055 < low < 0.007 and 0.052 < medium < 0.055 and 0.21 < high < 0.212
    assert OpenAIImagesConfig().estimate_usd() == high  # the default quality, auto, may render and bill as high
    nb2 = GeminiImageConfig().estimate_usd()
    assert 0.067 < nb2 < 0.07
    assert GeminiImageConfig(batch_mode=True).estimate_usd() == pytest.approx(nb2 / 2)
    pro = GeminiImageConfig(model="gemini-3-pro-image").estimate_usd()
    assert pro > 1.9 * nb2  # a Pro model is priced as Pro, not at the Flash defaults


def test_gemini_tier_is_chosen_by_area_not_long_side() -> None:
    info = MODELS["gemini-3.1-flash-image"]
    assert gemini_request_size(info, "m", 1280, 720)[:2] == ("16:9", "1K")  # 1K 16:9 is 1376x768
    assert gemini_request_size(info, "m", 1920, 1080)[:2] == ("16:9", "2K")
    assert gemini_request_size(info, "m", 512, 512)[:2] == ("1:1", "512")
    assert gemini_request_size(info, "m", 1024, 1024)[:2] == ("1:1", "1K")
    assert gemini_pixels("16:9", "1K") == (1376, 768)
    pro = MODELS["gemini-3-pro-image"]
    assert gemini_request_size(pro, "m", 512, 512)[:2] == ("1:1", "1K")  # 512 exists on 3.1 Flash only
    assert "at most" in gemini_request_size(pro, "m", 8192, 8192)[2]


def test_example_config_estimates_a_realistic_cost() -> None:
    """The hosted A/B example: 1,000,000 prompts to both GPT Image 2 (medium) and Nano Banana 2 (1K)."""
    from imagefleet.jobs.run_text import cost_estimate

    cfg = load_config(ROOT / "configs" / "gpt_image_vs_nano_banana.yaml")
    text = cost_estimate(cfg, 1_000_000)
    usd = float(text.split()[0].lstrip("$").replace(",", ""))
    assert 100_000 < usd < 200_000, text  # ~$0.070 + ~$0.068 per prompt
    assert "priced at $0" not in text


# The published examples of OpenAI's price calculator (OpenAI developer forum, 2026-06; configs/hosted_models.py)
PUBLISHED = [("high", 1024, 1024, 7024), ("high", 1536, 1024, 5488), ("high", 1792, 1024, 5063),
             ("high", 3584, 2048, 12329), ("low", 1024, 1024, 196)]


@pytest.mark.parametrize(("quality", "width", "height", "tokens"), PUBLISHED)
def test_gpt_image_2_tokens_follow_the_price_calculator(quality: str, width: int, height: int, tokens: int) -> None:
    from imagefleet.configs.hosted_models import gpt2_image_tokens, openai_image_tokens

    assert gpt2_image_tokens(quality, width, height) == tokens
    assert openai_image_tokens(MODELS["gpt-image-2"], quality, width, height) == tokens
    # tokens are not proportional to area: the wide 1536x1024 high costs less than the square 1024x1024
    assert gpt2_image_tokens("high", 1536, 1024) < gpt2_image_tokens("high", 1024, 1024)


def test_the_estimate_is_what_the_strict_fake_bills_for_every_quality_and_size() -> None:
    """Two implementations of the calculator (the estimate's, and the loopback fake's, written from the same
    published algorithm) agree on every quality x size a gpt-image-2 family model offers: standard sizes and a sweep
    of flexible ones; `auto` is estimated as the high image the service may render."""
    from imagefleet.configs.hosted_models import openai_image_tokens
    from tests.support.fake_hosted import OPENAI_CAPS
    from tests.support.fake_hosted import openai_image_tokens as billed

    sizes = [(1024, 1024), (1536, 1024), (1024, 1536), (1792, 1024), (2048, 2048), (3840, 2160), (1200, 624),
             (2880, 2880), (768, 2304), (1008, 672)]
    for model in ("gpt-image-2", "gpt-image-2.6-sunburst"):
        info = MODELS[model]
        for quality in info.qualities:
            for w, h in sizes:
                rendered = "high" if quality == "auto" else quality
                estimate = openai_image_tokens(info, quality, w, h)
                assert estimate == billed(OPENAI_CAPS[model], rendered, w, h), (model, quality, w, h)


def test_gemini_takes_any_pixel_size_not_only_multiples_of_8() -> None:
    """Gemini takes an aspect ratio and a size tier: 1200x628 (a common ad size) is 16:9 at 1K, as a default and
    as a row's size; a diffusers generator still needs multiples of 8 (its VAE's factor)."""
    import pyarrow as pa

    from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
    from imagefleet.configs.loader import ConfigError, parse_config
    from imagefleet.pipelines.slices import prep_config

    ad = GeminiImageConfig(defaults={"width": 1200, "height": 628})
    assert ad.size_problem(1200, 628) == "" and ad.size_multiple() == 1
    with pytest.raises(ConfigError, match="multiple of 8"):
        parse_config({"name": "t", "source": {"uri": "p.parquet"}, "output": {"uri": "o"},
                      "generators": {"d": {"backend": "diffusers", "model": "m",
                                           "defaults": {"width": 1200, "height": 628}}}})
    cfg = parse_config({"name": "t", "source": {"uri": "p.parquet"}, "output": {"uri": "o"},
                        "generators": {"nb": {"backend": "gemini"}, "d": {"backend": "diffusers", "model": "m"}},
                        "routing": {"mode": "column", "default": "nb"}})
    out = PromptPreprocessor(prep_config(cfg))(pa.table({"prompt": ["ad", "ad"], "generator": ["nb", "d"],
                                                         "width": [1200, 1200], "height": [628, 628]}))
    by = dict(zip(out["generator"], zip(out["status"], out["error"], strict=True), strict=True))
    assert by["nb"] == ("pending", "") and "multiple of 8" in by["d"][1]
