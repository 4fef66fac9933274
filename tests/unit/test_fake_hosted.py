"""The loopback fake of the hosted image APIs, driven by the real `openai` and `google-genai` SDKs: strict request
validation, failure modes, the paid ledger and served-bytes record, files and batches of both providers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from google import genai
from google.genai import errors as gerrors
from google.genai import types
from PIL import Image

from tests.support.fake_hosted import (
    GEMINI_KEY,
    OPENAI_KEY,
    OPENAI_PARAMS,
    FakeHosted,
    Paid,
    png,
    png_chunks,
    render,
)

FLASH, PRO, LITE = "gemini-3.1-flash-image", "gemini-3-pro-image", "gemini-3.1-flash-lite-image"
SMALL = "1024x640"  # the smallest gpt-image-2 area (655,360 px): cheap to render


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_API_KEY", "GEMINI_API_KEY",
                 "GOOGLE_CLOUD_PROJECT", "GOOGLE_GEMINI_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    yield server
    server.stop()


@pytest.fixture
def oa(fake: FakeHosted) -> openai.OpenAI:
    return openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.url + "/v1", max_retries=0, timeout=30)


@pytest.fixture
def gc(fake: FakeHosted) -> genai.Client:
    return gemini_client(fake)


def gemini_client(fake: FakeHosted, version: str = "v1beta", key: str = GEMINI_KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=fake.url, api_version=version))


def openai_error(call: Any, **kw: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call(**kw)
    return info.value


def gemini_error(call: Any, **kw: Any) -> gerrors.APIError:
    with pytest.raises(gerrors.APIError) as info:
        call(**kw)
    return info.value


def gen_config(aspect: str | None = None, size: str | None = None) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(response_modalities=["IMAGE"],
                                       image_config=types.ImageConfig(aspect_ratio=aspect, image_size=size))


def final_image(resp: types.GenerateContentResponse) -> bytes:
    parts = [p for p in (resp.parts or []) if p.inline_data and not p.thought]
    assert parts and parts[-1].inline_data and parts[-1].inline_data.data
    return parts[-1].inline_data.data


def raw(fake: FakeHosted, method: str, path: str, body: Any = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(fake.url + path, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


G = {"x-goog-api-key": GEMINI_KEY}
OA = {"authorization": f"Bearer {OPENAI_KEY}"}


def gemini_body(prompt: str = "a banana", **gen: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"responseModalities": ["IMAGE"], **gen}}


# == OpenAI: strict parameters ===================================================================================

def test_openai_params_are_the_sdks() -> None:
    from openai.types import image_generate_params as p

    sdk = set(p.ImageGenerateParamsNonStreaming.__annotations__) | set(p.ImageGenerateParamsStreaming.__annotations__)
    assert sdk == OPENAI_PARAMS


def test_openai_unknown_parameter(oa: openai.OpenAI) -> None:
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="x", size=SMALL, extra_body={"seed": 3})
    assert e.status_code == 400 and e.code == "unknown_parameter" and e.param == "seed"
    assert e.body["message"] == "Unknown parameter: 'seed'." and e.type == "invalid_request_error"


@pytest.mark.parametrize("param", [{"response_format": "b64_json"}, {"style": "vivid"}])
def test_openai_legacy_params_rejected(oa: openai.OpenAI, param: dict[str, str]) -> None:
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="x", size=SMALL, **param)
    assert e.status_code == 400 and e.param == next(iter(param)) and e.code == "unknown_parameter"


@pytest.mark.parametrize(("size", "ok"), [
    ("1024x640", True),  # 655,360 px: the minimum
    ("1024x624", False),  # below it
    ("3840x2160", True),  # 8,294,400 px: the maximum, and the longest edge
    ("2880x2880", True),  # the same area, square
    ("2896x2880", False),  # above it
    ("3856x1296", False),  # edge > 3840
    ("1536x512", True),  # exactly 3:1
    ("1568x512", False),  # beyond 3:1
    ("512x512", False),  # too few pixels
    ("1000x1024", False),  # not multiples of 16
    ("auto", True),
])
def test_openai_gpt_image_2_size_rules(oa: openai.OpenAI, fake: FakeHosted, size: str, ok: bool) -> None:
    if ok:
        r = oa.images.generate(model="gpt-image-2", prompt="sz", size=size, quality="low")
        w, h = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json or ""))).size
        assert r.size == (size if size != "auto" else "1024x1024") == f"{w}x{h}"
    else:
        e = openai_error(oa.images.generate, model="gpt-image-2", prompt="sz", size=size)
        assert e.status_code == 400 and e.param == "size" and e.code == "invalid_value"
        assert fake.paid_count() == 0


@pytest.mark.parametrize("model", ["gpt-image-1-mini", "gpt-image-1.5"])
def test_openai_fixed_size_models(oa: openai.OpenAI, model: str) -> None:
    assert oa.images.generate(model=model, prompt="x", size="1536x1024").size == "1536x1024"
    e = openai_error(oa.images.generate, model=model, prompt="x", size=SMALL)
    assert e.param == "size" and e.code == "invalid_value"


def test_openai_quality_per_model(oa: openai.OpenAI) -> None:
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="x", size=SMALL, quality="xhigh")
    assert e.status_code == 400 and e.param == "quality"
    for q, tokens in (("xhigh", 10536), ("max", 14048)):  # high's 7,024 (the price calculator) x 1.5 and x 2
        r = oa.images.generate(model="gpt-image-2.5-sunburst", prompt="x", size="1024x1024", quality=q)
        assert r.quality == q and r.usage and r.usage.output_tokens_details.image_tokens == tokens


@pytest.mark.parametrize(("model", "allowed"), [
    ("gpt-image-2", False), ("gpt-image-2-2026-04-21", False), ("gpt-image-2.5-flare", True),
    ("gpt-image-2.6-sunburst", True), ("gpt-image-1-mini", True), ("gpt-image-1.5", True)])
def test_openai_transparent_background_per_model(oa: openai.OpenAI, model: str, allowed: bool) -> None:
    size = "1024x1024"
    if not allowed:
        e = openai_error(oa.images.generate, model=model, prompt="t", size=size, background="transparent")
        assert e.status_code == 400 and e.param == "background"
        return
    for fmt in ("png", "webp"):
        r = oa.images.generate(model=model, prompt="t", size=size, background="transparent", output_format=fmt)
        im = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json or "")))
        assert r.background == "transparent" and im.mode == "RGBA"
        assert im.getpixel((0, 0))[3] == 0 and im.getpixel((600, 600))[3] == 255
    e = openai_error(oa.images.generate, model=model, prompt="t", size=size, background="transparent",
                     output_format="jpeg")
    assert e.param == "background"


@pytest.mark.parametrize(("fmt", "magic", "mime"), [
    ("png", b"\x89PNG\r\n\x1a\n", "image/png"), ("jpeg", b"\xff\xd8\xff", "image/jpeg"),
    ("webp", b"RIFF", "image/webp")])
def test_openai_output_formats_icc_and_served_record(oa: openai.OpenAI, fake: FakeHosted, fmt: str, magic: bytes,
                                                     mime: str) -> None:
    r = oa.images.generate(model="gpt-image-2", prompt="fmt", size=SMALL, output_format=fmt)  # type: ignore[arg-type]
    data = base64.b64decode(r.data[0].b64_json or "")
    assert data.startswith(magic) and r.output_format == fmt and r.background == "opaque"
    im = Image.open(io.BytesIO(data))
    assert im.size == (1024, 640) and im.info.get("icc_profile")
    assert fake.served == {hashlib.sha256(data).hexdigest(): mime}


def test_openai_output_compression(oa: openai.OpenAI) -> None:
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="c", size=SMALL, output_compression=50)
    assert e.status_code == 400 and e.param == "output_compression"  # png has no compression
    small = oa.images.generate(model="gpt-image-2", prompt="c", size=SMALL, output_format="jpeg",
                               output_compression=10)
    assert base64.b64decode(small.data[0].b64_json or "").startswith(b"\xff\xd8")


def test_png_carries_icc_and_c2pa_chunk_after_ihdr() -> None:
    data = png(64, 48, "chunks")
    chunks = [t for t, _ in png_chunks(data)]  # also verifies every CRC
    assert chunks[:2] == [b"IHDR", b"caBX"] and b"iCCP" in chunks and chunks[-1] == b"IEND"
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.size == (64, 48) and im.info.get("icc_profile")
    assert render(64, 48, "chunks") == data  # deterministic


def test_openai_billing_hard_limit(oa: openai.OpenAI, fake: FakeHosted) -> None:
    fake.knobs.billing_hard_limit = True
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="x", size=SMALL)
    assert e.status_code == 400 and e.code == "billing_hard_limit_reached" and e.param is None
    assert e.body["message"] == "Billing hard limit has been reached" and e.type == "invalid_request_error"


def test_openai_unknown_and_retired_models(oa: openai.OpenAI, fake: FakeHosted) -> None:
    e = openai_error(oa.images.generate, model="gpt-image-1", prompt="x")
    assert isinstance(e, openai.BadRequestError) and e.param == "model" and e.code == "model_not_found"
    assert e.body["message"] == "The model 'gpt-image-1' does not exist or you do not have access to it."
    fake.knobs.unknown_model_404 = True
    assert isinstance(openai_error(oa.images.generate, model="dall-e-3", prompt="x"), openai.NotFoundError)
    fake.knobs.retired_model = True
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="x", size=SMALL)
    assert e.status_code == 404 and e.code == "model_not_found"


def test_openai_usage_tokens_and_reflected_fields(oa: openai.OpenAI, fake: FakeHosted) -> None:
    prompt = "p" * 40
    r = oa.images.generate(model="gpt-image-2", prompt=prompt, size="1536x1024", quality="high", n=2)
    assert len(r.data) == 2 and r.size == "1536x1024" and r.quality == "high" and r.output_format == "png"
    # the price calculator's 1536x1024 high: 5,488 tokens (fewer than 1024x1024's 7,024: not proportional to area)
    assert r.usage and r.usage.input_tokens == 10 and r.usage.output_tokens_details.image_tokens == 2 * 5488
    assert fake.paid == [Paid("openai", "sync", "gpt-image-2", prompt, (10 * 5 + 2 * 5488 * 30) / 1e6)]
    assert len(fake.served) == 2
    auto = oa.images.generate(model="gpt-image-1-mini", prompt="abc")  # auto size/quality resolve
    assert (auto.size, auto.quality, auto.background) == ("1024x1024", "high", "opaque")  # auto renders up to high
    assert fake.paid[-1].usd == pytest.approx((1 * 2 + 4160 * 8) / 1e6)


def test_openai_invalid_json_body_is_400(fake: FakeHosted) -> None:
    status, _, body = raw(fake, "POST", "/v1/images/generations", b"{nope", OA)
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


# == Gemini: strict parameters ===================================================================================

@pytest.mark.parametrize(("model", "aspect", "tier", "size", "tokens"), [
    (FLASH, "3:2", "512", (632, 424), 747),
    (FLASH, "16:9", "1K", (1376, 768), 1120),
    (FLASH, "8:1", "1K", (3072, 384), 1120),
    (FLASH, "1:4", "512", (256, 1024), 747),
    (FLASH, "21:9", "2K", (3168, 1344), 1680),
    (PRO, "9:16", "2K", (1536, 2752), 1120),
    (LITE, "4:5", "1K", (928, 1152), 1120),
])
def test_gemini_tiers_and_aspects(gc: genai.Client, fake: FakeHosted, model: str, aspect: str, tier: str,
                                  size: tuple[int, int], tokens: int) -> None:
    resp = gc.models.generate_content(model=model, contents="a banana", config=gen_config(aspect, tier))
    data = final_image(resp)
    assert Image.open(io.BytesIO(data)).size == size
    u = resp.usage_metadata
    assert u and u.candidates_tokens_details and u.candidates_tokens_details[0].token_count == tokens
    assert fake.served[hashlib.sha256(data).hexdigest()] == "image/png"


@pytest.mark.parametrize(("model", "aspect", "tier", "field"), [
    (FLASH, "1:1", "1k", "image_size"),  # lowercase k
    (PRO, "1:1", "512", "image_size"),  # 512 is 3.1 Flash only
    (LITE, "1:1", "2K", "image_size"),
    (PRO, "8:1", "1K", "aspect_ratio"),  # extreme aspects are 3.1 Flash only
    (FLASH, "2:1", "1K", "aspect_ratio"),
])
def test_gemini_rejects_unsupported_tier_or_aspect(gc: genai.Client, model: str, aspect: str, tier: str,
                                                   field: str) -> None:
    e = gemini_error(gc.models.generate_content, model=model, contents="x", config=gen_config(aspect, tier))
    assert e.code == 400 and e.status == "INVALID_ARGUMENT" and field in (e.message or "")


@pytest.mark.parametrize(("body", "where"), [
    ({**gemini_body(), "n": 2}, 'Unknown name "n": Cannot find field.'),
    (gemini_body(numberOfImages=2), "Unknown name \"numberOfImages\" at 'generation_config': Cannot find field."),
    (gemini_body(imageConfig={"personGeneration": "ALLOW_ALL"}),
     "Unknown name \"personGeneration\" at 'generation_config.image_config': Cannot find field."),
])
def test_gemini_unknown_fields(fake: FakeHosted, body: dict[str, Any], where: str) -> None:
    status, _, out = raw(fake, "POST", f"/v1beta/models/{FLASH}:generateContent", body, G)
    err = json.loads(out)["error"]
    assert status == 400 and err["status"] == "INVALID_ARGUMENT"
    assert err["message"] == "Invalid JSON payload received. " + where


def test_gemini_snake_case_fields_accepted(fake: FakeHosted) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}],
            "generation_config": {"response_modalities": ["IMAGE"], "image_config": {"image_size": "512"}}}
    assert raw(fake, "POST", f"/v1/models/{FLASH}:generateContent", body, G)[0] == 200


def test_gemini_unknown_model_and_bad_key(fake: FakeHosted, gc: genai.Client) -> None:
    e = gemini_error(gc.models.generate_content, model="gemini-2.5-flash-image", contents="x", config=gen_config())
    assert e.code == 404 and e.status == "NOT_FOUND"
    wrong = gemini_client(fake, key="wrong")  # keep a reference: a collected client closes its transport
    e = gemini_error(wrong.models.generate_content, model=FLASH, contents="x", config=gen_config())
    assert e.code == 400 and e.status == "INVALID_ARGUMENT" and (e.message or "").startswith("API key not valid")
    assert e.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize(("kind", "quota_id", "delay"), [
    ("per_minute", "GenerateRequestsPerMinutePerProjectPerModel", "0.050s"),
    ("per_day", "GenerateRequestsPerDayPerProjectPerModel", "43200s"),
    ("limit_zero", "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "0.050s"),
])
def test_gemini_quota_kinds_persist(gc: genai.Client, fake: FakeHosted, kind: str, quota_id: str,
                                    delay: str) -> None:
    fake.knobs.gemini_quota = kind
    for _ in range(2):  # every request while set
        e = gemini_error(gc.models.generate_content, model=PRO, contents="x", config=gen_config())
        assert e.code == 429 and e.status == "RESOURCE_EXHAUSTED"
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in e.details["error"]["details"]}
    violation = details["QuotaFailure"]["violations"][0]
    assert violation["quotaId"] == quota_id and violation["quotaDimensions"] == {"model": PRO, "location": "global"}
    assert details["RetryInfo"]["retryDelay"] == delay
    if kind == "limit_zero":
        assert (f"Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
                f"limit: 0, model: {PRO}") in (e.message or "")
    else:
        assert violation["quotaMetric"] == "generativelanguage.googleapis.com/generate_requests_per_model"
    assert fake.paid_count() == 0


def test_gemini_rate_limit_n_is_per_minute_quota(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.rate_limit_n = 1
    e = gemini_error(gc.models.generate_content, model=FLASH, contents="x", config=gen_config(None, "512"))
    quota = [d for d in e.details["error"]["details"] if d["@type"].endswith("QuotaFailure")][0]
    assert quota["violations"][0]["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert gc.models.generate_content(model=FLASH, contents="x", config=gen_config(None, "512")).parts


def test_gemini_failed_precondition(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.failed_precondition = True
    e = gemini_error(gc.models.generate_content, model=FLASH, contents="x", config=gen_config())
    assert e.code == 400 and e.status == "FAILED_PRECONDITION"
    assert e.message == "User location is not supported for the API use."


def test_gemini_usage_and_billing(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.thinking_tokens = 100
    resp = gc.models.generate_content(model=PRO, contents="x" * 40, config=gen_config("1:1", "4K"))
    u = resp.usage_metadata
    assert u and u.prompt_token_count == 10 and u.thoughts_token_count == 100
    assert u.candidates_token_count == 2000 + 4 and u.total_token_count == 10 + 2004 + 100
    assert [(d.modality, d.token_count) for d in u.candidates_tokens_details or []] == [
        (types.MediaModality.IMAGE, 2000), (types.MediaModality.TEXT, 4)]
    assert fake.paid == [Paid("gemini", "sync", PRO, "x" * 40, (10 * 2 + 2000 * 120 + 104 * 12) / 1e6)]


@pytest.mark.parametrize("marker", ["[refuse]", "[refuse:IMAGE_SAFETY]", "[refuse:NO_IMAGE]", "[refuse:TEXT]"])
def test_gemini_refusals_are_200_and_billed(gc: genai.Client, fake: FakeHosted, marker: str) -> None:
    resp = gc.models.generate_content(model=FLASH, contents=f"p {marker}", config=gen_config())
    assert not [p for p in (resp.parts or []) if p.inline_data]
    assert fake.paid_count("gemini") == 1 and fake.paid[0].usd > 0 and not fake.served
    assert resp.usage_metadata and resp.usage_metadata.thoughts_token_count == 120


def test_paid_ledger_counts(oa: openai.OpenAI, gc: genai.Client, fake: FakeHosted) -> None:
    oa.images.generate(model="gpt-image-2", prompt="ok", size=SMALL)
    openai_error(oa.images.generate, model="gpt-image-2", prompt="no [refuse]", size=SMALL)  # not billed
    openai_error(oa.images.generate, model="gpt-image-2", prompt="bad", size="64x64")  # not billed
    gc.models.generate_content(model=FLASH, contents="ok", config=gen_config(None, "512"))
    gc.models.generate_content(model=FLASH, contents="no [refuse]", config=gen_config())  # billed
    fake.knobs.server_error_n = 1
    gemini_error(gc.models.generate_content, model=FLASH, contents="x", config=gen_config())  # not billed
    assert (fake.paid_count(), fake.paid_count("openai"), fake.paid_count("gemini")) == (3, 1, 2)
    assert fake.paid_count(mode="batch") == 0 and fake.paid_usd() == pytest.approx(sum(p.usd for p in fake.paid))
    assert [p.key for p in fake.paid] == ["ok", "ok", "no [refuse]"]


# == faults common to both ========================================================================================

def test_slow_n_bills_before_sleeping(fake: FakeHosted) -> None:
    fake.knobs.slow_n, fake.knobs.slow_ms = 1, 1500
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.url + "/v1", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.images.generate(model="gpt-image-2", prompt="slow", size=SMALL)
    assert fake.paid_count() == 1 and fake.paid[0].key == "slow"  # the client gave up; the provider billed
    client.images.generate(model="gpt-image-2", prompt="fast", size=SMALL)  # only the next slow_n are slow
    assert fake.paid_count() == 2


def test_corrupt_image(oa: openai.OpenAI, gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.corrupt_image_n = 2
    data = base64.b64decode(oa.images.generate(model="gpt-image-2", prompt="c", size=SMALL).data[0].b64_json or "")
    gdata = final_image(gc.models.generate_content(model=FLASH, contents="c", config=gen_config(None, "512")))
    for blob in (data, gdata):
        assert blob.startswith(b"\x89PNG")
        with pytest.raises(Exception):  # noqa: B017 - any decoder error
            Image.open(io.BytesIO(blob)).load()
        assert hashlib.sha256(blob).hexdigest() in fake.corrupt
    assert fake.paid_count() == 2
    good = base64.b64decode(oa.images.generate(model="gpt-image-2", prompt="c", size=SMALL).data[0].b64_json or "")
    Image.open(io.BytesIO(good)).load()


def test_truncated_image(oa: openai.OpenAI, gc: genai.Client, fake: FakeHosted) -> None:
    """Valid base64 of the first half of a PNG (seen from both providers): its header reads, its pixels don't."""
    fake.knobs.truncated_image_n = 2
    data = base64.b64decode(oa.images.generate(model="gpt-image-2", prompt="t", size=SMALL).data[0].b64_json or "")
    gdata = final_image(gc.models.generate_content(model=FLASH, contents="t", config=gen_config(None, "512")))
    for blob in (data, gdata):
        with Image.open(io.BytesIO(blob)) as img:
            assert img.size[0] > 0  # the header is intact
            with pytest.raises(OSError, match="truncated"):
                img.load()
        assert hashlib.sha256(blob).hexdigest() in fake.corrupt
    assert fake.paid_count() == 2


def test_null_image(oa: openai.OpenAI, gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.null_image_n = 2
    assert oa.images.generate(model="gpt-image-2", prompt="n", size=SMALL).data[0].b64_json is None
    resp = gc.models.generate_content(model=FLASH, contents="n", config=gen_config(None, "512"))
    images = [p for p in (resp.parts or []) if p.inline_data]
    assert len(images) == 1 and images[0].inline_data and images[0].inline_data.data is None
    assert fake.paid_count() == 2 and not fake.served


def test_handler_exception_is_a_500_not_a_dropped_connection(oa: openai.OpenAI, gc: genai.Client,
                                                             fake: FakeHosted) -> None:
    fake.knobs.crash_n = 2
    e = openai_error(oa.images.generate, model="gpt-image-2", prompt="x", size=SMALL)
    assert isinstance(e, openai.InternalServerError) and e.type == "server_error"
    g = gemini_error(gc.models.generate_content, model=FLASH, contents="x", config=gen_config())
    assert isinstance(g, gerrors.ServerError) and g.code == 500 and g.status == "INTERNAL"
    assert len(fake.errors) == 2 and "injected handler crash" in fake.errors[0]


def test_unknown_routes_and_delete_verb(fake: FakeHosted) -> None:
    assert raw(fake, "DELETE", "/v1/nothing", headers=OA)[0] == 404
    status, _, body = raw(fake, "GET", "/v1beta/nothing", headers=G)
    assert status == 404 and json.loads(body)["error"]["status"] == "NOT_FOUND"


# == OpenAI files and batches =====================================================================================

def batch_file(oa: openai.OpenAI, bodies: dict[str, dict[str, Any]]) -> str:
    lines = [json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/images/generations", "body": body})
             for cid, body in bodies.items()]
    return oa.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch").id


def body(prompt: str, size: str = SMALL, **kw: Any) -> dict[str, Any]:
    return {"model": "gpt-image-2", "prompt": prompt, "size": size, "quality": "low", **kw}


def jsonl(oa: openai.OpenAI, fid: str | None) -> list[dict[str, Any]]:
    assert fid
    return [json.loads(ln) for ln in oa.files.content(fid).text.splitlines()]


def test_openai_batch_completed_unordered_and_billed(oa: openai.OpenAI, fake: FakeHosted) -> None:
    bodies = {f"row-{i}": body(f"p{i}") for i in range(4)}
    bodies["row-refused"] = body("x [refuse]")
    bodies["row-bad-size"] = body("y", size="512x512")
    b = oa.batches.create(input_file_id=batch_file(oa, bodies), endpoint="/v1/images/generations",
                          completion_window="24h", metadata={"job": "t"})
    assert b.status == "validating" and b.expires_at == b.created_at + 86400
    assert oa.batches.retrieve(b.id).status == "in_progress"  # batch_ticks = 2
    done = oa.batches.retrieve(b.id)
    assert done.status == "completed" and done.completed_at and done.model == "gpt-image-2"
    assert done.request_counts and (done.request_counts.total, done.request_counts.completed,
                                    done.request_counts.failed) == (6, 4, 2)
    out, errs = jsonl(oa, done.output_file_id), jsonl(oa, done.error_file_id)
    assert [x["custom_id"] for x in out] != [f"row-{i}" for i in range(4)]  # no order promised
    assert sorted(x["custom_id"] for x in out) == [f"row-{i}" for i in range(4)]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert {x["custom_id"]: x["response"]["body"]["error"]["param"] for x in errs} == {
        "row-refused": None, "row-bad-size": "size"}
    assert done.usage and done.usage.output_tokens == 4 * 107  # 1024x640 low by the price calculator
    assert fake.paid_count(mode="batch") == 4 and {p.key for p in fake.paid} == {f"row-{i}" for i in range(4)}
    assert fake.paid[0].usd == pytest.approx((1 * 5 + 107 * 30) / 1e6 * 0.5)
    assert not any(r.path.endswith("/images/generations") for r in fake.log)


def test_openai_batch_shuffle_off_keeps_order(oa: openai.OpenAI, fake: FakeHosted) -> None:
    fake.knobs.batch_shuffle_output, fake.batch_ticks = False, 1
    ids = [f"r{i}" for i in range(5)]
    b = oa.batches.create(input_file_id=batch_file(oa, {i: body(i) for i in ids}),
                          endpoint="/v1/images/generations", completion_window="24h")
    assert [x["custom_id"] for x in jsonl(oa, oa.batches.retrieve(b.id).output_file_id)] == ids


def test_openai_batch_failed_token_limit(oa: openai.OpenAI, fake: FakeHosted) -> None:
    fake.knobs.batch_outcome, fake.batch_ticks = "failed", 0
    b = oa.batches.create(input_file_id=batch_file(oa, {"a": body("a")}), endpoint="/v1/images/generations",
                          completion_window="24h")
    got = oa.batches.retrieve(b.id)
    assert got.status == "failed" and got.failed_at and got.errors and got.errors.data
    assert got.errors.data[0].code == "token_limit_exceeded" and got.errors.data[0].line is None
    assert "Enqueued token limit reached for gpt-image-2" in (got.errors.data[0].message or "")
    assert got.output_file_id is None and got.error_file_id is None and fake.paid_count() == 0


def test_openai_batch_expired_keeps_finished_half(oa: openai.OpenAI, fake: FakeHosted) -> None:
    fake.knobs.batch_outcome, fake.batch_ticks = "expired", 1
    ids = [f"r{i}" for i in range(5)]
    b = oa.batches.create(input_file_id=batch_file(oa, {i: body(i) for i in ids}),
                          endpoint="/v1/images/generations", completion_window="24h")
    got = oa.batches.retrieve(b.id)
    assert got.status == "expired" and got.expired_at
    assert sorted(x["custom_id"] for x in jsonl(oa, got.output_file_id)) == ["r0", "r1"]
    errs = jsonl(oa, got.error_file_id)
    assert sorted(x["custom_id"] for x in errs) == ["r2", "r3", "r4"]
    assert all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in errs)
    assert fake.paid_count() == 2


def test_openai_batch_cancel(oa: openai.OpenAI, fake: FakeHosted) -> None:
    b = oa.batches.create(input_file_id=batch_file(oa, {"a": body("a")}), endpoint="/v1/images/generations",
                          completion_window="24h")
    assert oa.batches.cancel(b.id).status == "cancelling"
    got = oa.batches.retrieve(b.id)
    assert got.status == "cancelled" and got.cancelled_at and b.id in fake.cancelled_batches
    assert oa.batches.retrieve(b.id).status == "cancelled" and fake.paid_count() == 0


def test_openai_batch_turnaround(oa: openai.OpenAI, fake: FakeHosted) -> None:
    fake.knobs.batch_turnaround_s, fake.batch_ticks = 0.3, 0
    b = oa.batches.create(input_file_id=batch_file(oa, {"a": body("a")}), endpoint="/v1/images/generations",
                          completion_window="24h")
    assert oa.batches.retrieve(b.id).status == "in_progress"
    time.sleep(0.35)
    assert oa.batches.retrieve(b.id).status == "completed"


@pytest.mark.parametrize(("knob", "lines", "code"), [
    ({"batch_max_lines": 2}, 3, "too_many_requests"),
    ({"batch_max_bytes": 100}, 1, "file_too_large"),
])
def test_openai_batch_input_limits(oa: openai.OpenAI, fake: FakeHosted, knob: dict[str, int], lines: int,
                                   code: str) -> None:
    for k, v in knob.items():
        setattr(fake.knobs, k, v)
    b = oa.batches.create(input_file_id=batch_file(oa, {f"r{i}": body("x") for i in range(lines)}),
                          endpoint="/v1/images/generations", completion_window="24h")
    got = oa.batches.retrieve(b.id)
    assert got.status == "failed" and got.errors and got.errors.data and got.errors.data[0].code == code
    assert fake.paid_count() == 0


def test_openai_batch_duplicate_custom_id_fails(oa: openai.OpenAI, fake: FakeHosted) -> None:
    line = json.dumps({"custom_id": "same", "method": "POST", "url": "/v1/images/generations", "body": body("x")})
    fid = oa.files.create(file=("in.jsonl", f"{line}\n{line}\n".encode()), purpose="batch").id
    b = oa.batches.create(input_file_id=fid, endpoint="/v1/images/generations", completion_window="24h")
    got = oa.batches.retrieve(b.id)
    assert got.status == "failed" and got.errors and got.errors.data
    assert (got.errors.data[0].code, got.errors.data[0].line) == ("duplicate_custom_id", 2)


def test_openai_file_delete(oa: openai.OpenAI, fake: FakeHosted) -> None:
    fid = oa.files.create(file=("a.jsonl", b"{}\n"), purpose="batch").id
    assert oa.files.retrieve(fid).bytes == 3 and oa.files.content(fid).content == b"{}\n"
    deleted = oa.files.delete(fid)
    assert deleted.deleted and deleted.id == fid and fid in fake.deleted_files
    with pytest.raises(openai.NotFoundError):
        oa.files.content(fid)
    with pytest.raises(openai.NotFoundError):
        oa.files.content("file-unknown")


# == Gemini batches and files =====================================================================================

def inline(prompts: dict[str, str], size: str = "512") -> list[dict[str, Any]]:
    return [{"contents": [{"parts": [{"text": p}], "role": "user"}],
             "config": {"response_modalities": ["IMAGE"], "image_config": {"image_size": size}},
             "metadata": {"key": k}} for k, p in prompts.items()]


PROMPTS = {f"k{i}": f"prompt {i}" for i in range(4)}


def run_inline(gc: genai.Client, fake: FakeHosted, prompts: dict[str, str] = PROMPTS) -> types.BatchJob:
    fake.batch_ticks = 1
    job = gc.batches.create(model=FLASH, src=inline(prompts))  # type: ignore[arg-type]
    assert job.state == types.JobState.JOB_STATE_PENDING and job.name
    return gc.batches.get(name=job.name)


def test_gemini_inline_batch(gc: genai.Client, fake: FakeHosted) -> None:
    fake.batch_ticks = 2
    job = gc.batches.create(model=FLASH, src=inline(PROMPTS))  # type: ignore[arg-type]
    assert job.name and gc.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
    job = gc.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest and job.dest.inlined_responses
    got = job.dest.inlined_responses
    assert [r.metadata for r in got] == [{"key": k} for k in PROMPTS]  # in input order by default
    for r, prompt in zip(got, PROMPTS.values(), strict=True):
        assert r.response and final_image(r.response) == render(512, 512, prompt)
    assert fake.paid_count(mode="batch") == 4
    assert fake.paid[0].usd == pytest.approx((2 * 0.5 + 747 * 60 + 124 * 3) / 1e6 * 0.5)


def test_gemini_inline_batch_omits_metadata(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.gemini_batch_omit_metadata = True
    job = run_inline(gc, fake)
    assert job.dest and job.dest.inlined_responses
    assert all(r.metadata is None and r.response for r in job.dest.inlined_responses)


def test_gemini_inline_batch_reordered(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.gemini_batch_reorder = True
    job = run_inline(gc, fake)
    assert job.dest and job.dest.inlined_responses
    assert [(r.metadata or {})["key"] for r in job.dest.inlined_responses] == list(reversed(PROMPTS))


def test_gemini_inline_batch_drops_results_but_succeeds(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.gemini_batch_drop_n = 1
    job = run_inline(gc, fake)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest and job.dest.inlined_responses
    assert [(r.metadata or {})["key"] for r in job.dest.inlined_responses] == ["k0", "k1", "k2"]
    assert fake.paid_count() == 4  # the missing result was billed nonetheless


def test_gemini_inline_batch_expired(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.batch_outcome = "expired"
    job = run_inline(gc, fake, {f"k{i}": f"p{i}" for i in range(5)})
    assert job.state == types.JobState.JOB_STATE_EXPIRED and job.dest and job.dest.inlined_responses
    assert [(r.metadata or {})["key"] for r in job.dest.inlined_responses] == ["k0", "k1"]
    assert fake.paid_count() == 2


def test_gemini_batch_failed(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.batch_outcome = "failed"
    job = run_inline(gc, fake)
    assert job.state == types.JobState.JOB_STATE_FAILED and job.dest is None and fake.paid_count() == 0
    status, _, out = raw(fake, "GET", f"/v1beta/{job.name}", headers=G)
    op = json.loads(out)
    assert op["done"] and op["error"]["code"] == 8 and "response" not in op  # the SDK does not surface op.error


def test_gemini_batch_cancel(gc: genai.Client, fake: FakeHosted) -> None:
    job = gc.batches.create(model=FLASH, src=inline(PROMPTS))  # type: ignore[arg-type]
    assert job.name
    gc.batches.cancel(name=job.name)
    assert gc.batches.get(name=job.name).state == types.JobState.JOB_STATE_CANCELLED
    assert job.name in fake.cancelled_batches and fake.paid_count() == 0


def test_gemini_inline_batch_size_limit(gc: genai.Client, fake: FakeHosted) -> None:
    fake.knobs.gemini_inline_max_bytes = 2000
    e = gemini_error(gc.batches.create, model=FLASH, src=inline({f"k{i}": "x" * 200 for i in range(10)}))
    assert e.code == 400 and e.status == "INVALID_ARGUMENT" and "exceeds the limit" in (e.message or "")


def test_gemini_batch_per_item_errors_and_v1_routes(fake: FakeHosted) -> None:
    gc1 = gemini_client(fake, version="v1")  # /v1/batches/... is shared with OpenAI: the Gemini key routes it
    fake.batch_ticks = 1
    src = inline({"ok": "fine"}) + inline({"bad": "x"}, size="1k")
    job = gc1.batches.create(model=FLASH, src=src)  # type: ignore[arg-type]
    assert job.name
    job = gc1.batches.get(name=job.name)
    assert job.dest and job.dest.inlined_responses
    ok, bad = job.dest.inlined_responses
    assert ok.response and ok.error is None
    assert bad.response is None and bad.error and bad.error.code == 3  # google.rpc.Status: gRPC code, not HTTP
    assert "image_size" in (bad.error.message or "") and fake.paid_count() == 1


def test_gemini_file_upload_batch_download_delete(gc: genai.Client, fake: FakeHosted, tmp_path: Any) -> None:
    lines = [{"key": "a", "request": gemini_body("alpha", imageConfig={"imageSize": "512"})},
             {"key": "b", "request": {"contents": [{"parts": [{"text": "beta"}]}],
                                      "generation_config": {"response_modalities": ["IMAGE"],
                                                            "image_config": {"image_size": "512"}}}},
             {"key": "c", "request": gemini_body("gamma [refuse]")},
             {"key": "d", "request": gemini_body("delta", imageConfig={"imageSize": "1k"})}]
    content = "".join(json.dumps(x) + "\n" for x in lines).encode()
    up = gc.files.upload(file=io.BytesIO(content), config={"mime_type": "application/jsonl"})
    assert up.name and up.state == types.FileState.ACTIVE and up.size_bytes == len(content)
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    up2 = gc.files.upload(file=str(path), config={"mime_type": "application/jsonl", "display_name": "in"})
    assert up2.display_name == "in" and fake.files[up2.name or ""] == content

    fake.knobs.gemini_batch_reorder, fake.batch_ticks = True, 1
    job = gc.batches.create(model=FLASH, src=up.name, config={"display_name": "file-job"})
    assert job.name
    job = gc.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.display_name == "file-job"
    assert job.dest and job.dest.file_name == f"files/batch-{job.name.split('/')[1]}"
    data = gc.files.download(file=job.dest.file_name)
    out = [json.loads(ln) for ln in data.splitlines()]
    assert [x["key"] for x in out] == ["d", "c", "b", "a"]  # reorder applies to files too
    by = {x["key"]: x for x in out}
    assert by["d"]["error"]["code"] == 3 and "response" not in by["d"]
    assert by["c"]["response"]["promptFeedback"]["blockReason"] == "PROHIBITED_CONTENT"
    image = base64.b64decode(by["a"]["response"]["candidates"][0]["content"]["parts"][-1]["inlineData"]["data"])
    assert hashlib.sha256(image).hexdigest() in fake.served
    assert fake.paid_count(mode="batch") == 3 and {p.key for p in fake.paid} == {"a", "b", "c"}
    fid = job.dest.file_name.split("/", 1)[1]
    assert raw(fake, "GET", f"/download/v1beta/files/{fid}:download?alt=media", headers=G)[2] == data
    assert raw(fake, "GET", f"/v1/files/{fid}:download?alt=media&key={GEMINI_KEY}")[2] == data
    assert raw(fake, "GET", f"/v1beta/files/{up.name.split('/')[1]}:download?alt=media", headers=G)[0] == 400

    gc.files.delete(name=job.dest.file_name)
    gc.files.delete(name=up.name)
    assert {job.dest.file_name, up.name} <= fake.deleted_files
    e = gemini_error(gc.files.download, file=job.dest.file_name)
    assert e.code == 403 and e.status == "PERMISSION_DENIED"
    e = gemini_error(gc.files.get, name=up.name)
    assert e.code == 403


def test_batch_ticks_knob_and_attribute_agree() -> None:
    server = FakeHosted(batch_ticks=3)
    assert server.batch_ticks == server.knobs.batch_ticks == 3
    server.batch_ticks = 0
    assert server.knobs.batch_ticks == 0
