"""Hosted edits and reference images (#15) with the official SDKs against the strict loopback fake (no Ray): what
goes on the wire (multipart image[] parts and an alpha-0 mask for OpenAI, inline parts before the text for Gemini,
JSON lines with data URLs in batch mode), what the providers refuse (and that a refused row is that row's error,
sent once), and billing: input image tokens are in the price, and the manifest's cost is what the fake billed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
from google import genai
from google.genai import errors as gerrors
from google.genai import types
from PIL import Image
from pydantic import SecretStr

from imagefleet.actors.backend_io import Outcome, Request
from imagefleet.actors.gemini_generator import GeminiImageGenerator
from imagefleet.actors.openai_generator import OpenAIImageGenerator, openai_mask
from imagefleet.configs.hosted import GeminiImageConfig, OpenAIImagesConfig, RateLimits
from imagefleet.configs.hosted_models import MODELS, openai_input_image_tokens
from imagefleet.configs.storage import StoreSpec
from tests.support.fake_hosted import GEMINI_KEY, OPENAI_KEY, FakeHosted, mean_colour

FAST = RateLimits(requests_per_min=6000, images_per_min=6000, initial_backoff_s=0.01, max_backoff_s=0.2)
RED, GREEN, BLUE = (200, 10, 10), (10, 200, 10), (10, 10, 200)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_API_KEY", "GEMINI_API_KEY",
                 "GOOGLE_GEMINI_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    yield server
    server.stop()


def image(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, rgb if mode == "RGB" else rgb[0]).save(buf, format=fmt)
    return buf.getvalue()


def user_mask(size: tuple[int, int] = (64, 48), box: tuple[int, int, int, int] = (8, 4, 40, 30)) -> bytes:
    """imagefleet's convention: single-channel, white = the area to change."""
    im = Image.new("L", size, 0)
    im.paste(255, box)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def request(prompt: str, images: list[bytes], mask: bytes = b"", task: str = "edit", key: str = "",
            size: tuple[int, int] = (1024, 1024)) -> Request:
    return Request(prompt=prompt, negative_prompt="", seed=7, width=size[0], height=size[1], num_steps=1,
                   guidance_scale=0.0, key=key or f"k-{prompt}", task=task, images=tuple(images), mask=mask)


def colour_of(out: Outcome) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(out.encoded)) as im:
        r, g, b = im.convert("RGB").getpixel((im.width // 2, im.height // 2))  # type: ignore[misc]
    return r, g, b


def openai_gen(fake: FakeHosted, **cfg: Any) -> OpenAIImageGenerator:
    return OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST, **cfg),
                                SecretStr(OPENAI_KEY))


def gemini_gen(fake: FakeHosted, **cfg: Any) -> GeminiImageGenerator:
    return GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, limits=FAST, **cfg), SecretStr(GEMINI_KEY))


def edits_sent(fake: FakeHosted) -> int:
    return sum(r.path == "/v1/images/edits" for r in fake.log)


# -- capabilities ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cfg", "tasks", "most", "mask"), [
    (OpenAIImagesConfig(), ("text-to-image", "edit", "inpaint"), 16, True),
    (OpenAIImagesConfig(model="gpt-image-1.5"), ("text-to-image", "edit", "inpaint"), 16, True),
    (GeminiImageConfig(), ("text-to-image", "edit"), 14, False),
    (GeminiImageConfig(model="gemini-3-pro-image"), ("text-to-image", "edit"), 14, False),
])
def test_capabilities_come_from_the_model_table(cfg: Any, tasks: tuple[str, ...], most: int, mask: bool) -> None:
    assert cfg.tasks() == tasks and cfg.max_input_images() == most
    assert cfg.takes_mask("inpaint") is mask and cfg.takes_mask("edit") is mask
    assert not cfg.takes_mask("text-to-image")
    # input images are priced in the estimate (budget, dry run)
    assert cfg.estimate_image_usd(1024, 1024, input_images=[(1024, 1024)]) > cfg.estimate_image_usd(1024, 1024)


def test_openai_input_token_estimate() -> None:
    """65 + 129 per 512px tile (gpt-image-1 edits were billed 194 for a 1024x1024 input), plus the high-fidelity
    surcharge gpt-image-2 always pays (4,160 square, 6,240 otherwise)."""
    assert openai_input_image_tokens(MODELS["gpt-image-1.5"], 1024, 1024) == 194
    assert openai_input_image_tokens(MODELS["gpt-image-2"], 1024, 1024) == 194 + 4160
    assert openai_input_image_tokens(MODELS["gpt-image-2"], 1536, 1024) == 65 + 129 * 2 + 6240


def test_unknown_model_takes_its_likes_capabilities() -> None:
    cfg = OpenAIImagesConfig(model="gpt-image-9", like="gpt-image-2", prices={"image_output": 30.0})
    assert cfg.tasks() == ("text-to-image", "edit", "inpaint") and cfg.max_input_images() == 16


# -- OpenAI ------------------------------------------------------------------------------------------------------
def test_openai_edit_one_reference_multipart_colour_and_billing(fake: FakeHosted) -> None:
    ref = image(RED, (64, 64))  # square: one tile + the square high-fidelity surcharge
    [out] = openai_gen(fake)._generate([request("make it a poster", [ref])])
    assert not out.error and out.requests == 1
    assert colour_of(out) == RED  # the answer is the reference's colour: the reference arrived
    sent = [r for r in fake.log if r.path == "/v1/images/edits"]
    assert len(sent) == 1 and sent[0].headers["content-type"].startswith("multipart/form-data")
    assert b'name="image[]"' in sent[0].body and b'name="moderation"' not in sent[0].body
    assert fake.inputs[0].images == [ref] and fake.inputs[0].mask is None
    assert out.cost_usd == pytest.approx(fake.paid_usd("openai"))  # the manifest's cost is what was billed
    # input image tokens are billed: the same prompt as text-to-image costs less by 194 + 4160 tokens at $8/1M
    [plain] = openai_gen(fake)._generate([request("make it a poster", [], task="text-to-image", key="t")])
    assert out.cost_usd - plain.cost_usd == pytest.approx((194 + 4160) * 8.0 / 1e6)  # type: ignore[operator]


def test_openai_edit_several_references_in_order(fake: FakeHosted) -> None:
    refs = [image(RED), image(GREEN, fmt="JPEG"), image(BLUE, (32, 96), fmt="WEBP")]
    [out] = openai_gen(fake)._generate([request("combine them", refs)])
    assert colour_of(out) == mean_colour(refs)
    assert fake.inputs[0].images == refs  # all of them, in order (the first is the one a mask applies to)
    assert out.cost_usd == pytest.approx(fake.paid_usd("openai"))


def test_openai_inpaint_mask_becomes_alpha_zero_where_the_user_painted_white(fake: FakeHosted) -> None:
    mask = user_mask()
    [out] = openai_gen(fake)._generate([request("a window here", [image(RED)], mask=mask, task="inpaint")])
    assert not out.error
    with Image.open(io.BytesIO(fake.inputs[0].mask or b"")) as sent:
        assert sent.format == "PNG" and sent.mode == "RGBA" and sent.size == (64, 48)
        alpha = np.array(sent.getchannel("A"))
    white = np.array(Image.open(io.BytesIO(mask))) == 255
    assert (alpha[white] == 0).all() and (alpha[~white] == 255).all()
    assert white.sum() == 32 * 26  # the box: alpha 0 exactly there


def test_openai_mask_conversion_refuses_a_mask_of_another_size() -> None:
    assert "same size" in str(openai_mask(user_mask((10, 10)), (64, 48)))
    assert "can't be read" in str(openai_mask(b"not an image", (64, 48)))


def test_openai_rows_it_cant_send_are_error_rows_without_a_call(fake: FakeHosted) -> None:
    red = image(RED)
    rows = [
        request("too many", [red] * 17, key="a"),
        request("mask size", [red], mask=user_mask((10, 10)), key="b"),
        request("not an image", [b"GIF89a....."], key="c"),
        request("no mask", [red], task="inpaint", key="d"),
        request("no inputs", [], key="e"),
        request("fine", [red], key="f"),
    ]
    outs = openai_gen(fake)._generate(rows)
    assert "at most 16" in outs[0].error and "same size" in outs[1].error
    assert "is not image/png" in outs[2].error and "needs a mask" in outs[3].error
    assert "at least one input image" in outs[4].error and not outs[5].error
    assert edits_sent(fake) == 1 and fake.paid_count() == 1  # only the good row left the actor
    assert all(o.cost_usd in (None, 0.0) for o in outs[:5])


def test_openai_provider_refusals_are_that_rows_error_sent_once(fake: FakeHosted) -> None:
    """Rows the API refuses (here: a file over the fake's shrunk size limit) are error rows; the others are made;
    nothing is retried and only the made images are billed."""
    fake.knobs.openai_max_image_bytes = 2000
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    assert len(buf.getvalue()) > 2000 > len(image(RED))
    outs = openai_gen(fake)._generate([request("ok", [image(RED)], key="a"), request("big", [buf.getvalue()], key="b"),
                                       request("ok2", [image(GREEN)], key="c")])
    assert [bool(o.error) for o in outs] == [False, True, False]
    assert "image_too_large" in outs[1].error or "too large" in outs[1].error
    assert edits_sent(fake) == 3 and fake.paid_count() == 2
    assert sum(o.cost_usd or 0.0 for o in outs) == pytest.approx(fake.paid_usd())


@pytest.fixture
def oa(fake: FakeHosted) -> openai.OpenAI:
    return openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.url + "/v1", max_retries=0, timeout=30)


def edit_error(oa: openai.OpenAI, **kw: Any) -> openai.APIStatusError:
    args: dict[str, Any] = {"model": "gpt-image-2", "prompt": "x", "size": "1024x1024", "quality": "low",
                            "image": [("a.png", image(RED), "image/png")], **kw}
    with pytest.raises(openai.APIStatusError) as info:
        oa.images.edit(**args)
    return info.value


def test_fake_edit_rejects_what_the_api_rejects(oa: openai.OpenAI, fake: FakeHosted) -> None:
    rgb_png = ("m.png", image(RED), "image/png")
    no_alpha = edit_error(oa, mask=rgb_png)
    assert no_alpha.status_code == 400 and no_alpha.param == "mask" and "alpha" in str(no_alpha.message)
    wrong_size = edit_error(oa, mask=("m.png", openai_mask(user_mask((32, 32)), (32, 32)), "image/png"))
    assert wrong_size.param == "mask" and "same dimensions" in str(wrong_size.message)
    jpeg_mask = edit_error(oa, mask=("m.jpg", image(RED, fmt="JPEG"), "image/jpeg"))
    assert jpeg_mask.param == "mask" and "PNG" in str(jpeg_mask.message)
    too_many = edit_error(oa, image=[("a.png", image(RED), "image/png")] * 17)
    assert too_many.code == "array_above_max_length" and too_many.param == "image"
    gif = edit_error(oa, image=[("a.gif", image(RED, fmt="GIF"), "image/gif")])
    assert gif.code == "invalid_image_format"
    unknown = edit_error(oa, extra_body={"moderation": "low"})  # not a parameter of the multipart edit
    assert unknown.code == "unknown_parameter" and unknown.param == "moderation"
    fidelity = edit_error(oa, input_fidelity="high")  # "For gpt-image-2, omit this parameter"
    assert fidelity.param == "input_fidelity"
    fake.knobs.openai_max_mask_bytes = 10
    big_mask = edit_error(oa, mask=("m.png", openai_mask(user_mask(), (64, 48)), "image/png"))
    assert big_mask.param == "mask" and "too large" in str(big_mask.message)
    assert fake.paid_count() == 0 and not fake.inputs


def test_fake_edit_usage_bills_input_image_tokens(oa: openai.OpenAI, fake: FakeHosted) -> None:
    r = oa.images.edit(model="gpt-image-1.5", prompt="x" * 40, size="1024x1024", quality="low",
                       image=[("a.png", image(RED, (1024, 1024)), "image/png")] * 2)
    details = r.usage.input_tokens_details  # type: ignore[union-attr]
    assert details.image_tokens == 2 * 194 and details.text_tokens == 10  # gpt-image-1.5: low fidelity by default
    high = oa.images.edit(model="gpt-image-1.5", prompt="x" * 40, size="1024x1024", quality="low",
                          input_fidelity="high", image=[("a.png", image(RED, (1024, 1024)), "image/png")])
    assert high.usage.input_tokens_details.image_tokens == 194 + 4160  # type: ignore[union-attr]
    assert fake.paid_usd() == pytest.approx((10 * 5 + 2 * 194 * 8 + 272 * 32 + 10 * 5 + 4354 * 8 + 272 * 32) / 1e6)


# -- Gemini ------------------------------------------------------------------------------------------------------
def test_gemini_references_go_before_the_text_and_are_billed(fake: FakeHosted) -> None:
    refs = [image(RED), image(BLUE, fmt="JPEG")]
    gen = gemini_gen(fake)
    [out] = gen._generate([request("a banana in this style", refs)])
    assert not out.error and colour_of(out) == mean_colour(refs)
    parts = fake.log[-1].body["contents"][0]["parts"]
    assert [("inlineData" in p, "text" in p) for p in parts] == [(True, False), (True, False), (False, True)]
    assert base64.urlsafe_b64decode(parts[1]["inlineData"]["data"]) == refs[1]  # the SDK sends URL-safe base64
    assert fake.inputs[0].images == refs
    assert out.cost_usd == pytest.approx(fake.paid_usd("gemini"))
    [plain] = gen._generate([request("a banana in this style", [], task="text-to-image", key="t")])
    assert out.cost_usd - plain.cost_usd == pytest.approx(2 * 1120 * 0.5 / 1e6)  # type: ignore[operator]


def test_gemini_takes_no_mask_and_its_request_limit_is_a_row_error(fake: FakeHosted,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gen = gemini_gen(fake)
    masked = gen._generate([request("x", [image(RED)], mask=user_mask(), key="m")])[0]
    assert "takes no mask" in masked.error
    monkeypatch.setattr("imagefleet.actors.gemini_generator.GEMINI_MAX_REQUEST_BYTES", 4200)
    [bmp] = gen._generate([request("bmp", [image(RED, fmt="BMP")], key="a")])
    assert "not image/png" in bmp.error  # BMP is no Gemini input type
    assert not fake.log  # nothing was sent for refused rows
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    [over] = gen._generate([request("over", [buf.getvalue()], key="c")])
    assert "Gemini takes inline requests up to" in over.error and not fake.log


def test_gemini_provider_refusal_is_that_rows_error_sent_once(fake: FakeHosted) -> None:
    fake.knobs.gemini_request_max_bytes = 3000
    small, noisy = image(RED), io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(noisy, "PNG")
    outs = gemini_gen(fake)._generate([request("ok", [small], key="a"), request("too big", [noisy.getvalue()],
                                                                                 key="b")])
    assert not outs[0].error and "payload size exceeds" in outs[1].error
    assert sum(":generateContent" in r.path for r in fake.log) == 2 and fake.paid_count() == 1


@pytest.fixture
def gc(fake: FakeHosted) -> genai.Client:
    return genai.Client(api_key=GEMINI_KEY, http_options=types.HttpOptions(base_url=fake.url, api_version="v1beta"))


def gemini_error(gc: genai.Client, parts: list[Any]) -> gerrors.APIError:
    with pytest.raises(gerrors.APIError) as info:
        gc.models.generate_content(model="gemini-3.1-flash-image", contents=[types.Content(role="user", parts=parts)],
                                   config=types.GenerateContentConfig(response_modalities=["IMAGE"]))
    return info.value


def test_fake_gemini_rejects_bad_image_parts(gc: genai.Client, fake: FakeHosted) -> None:
    text = types.Part.from_text(text="x")
    many = gemini_error(gc, [types.Part.from_bytes(data=image(RED), mime_type="image/png")] * 15 + [text])
    assert many.code == 400 and "at most 14" in str(many.message)
    gif = gemini_error(gc, [types.Part.from_bytes(data=image(RED, fmt="GIF"), mime_type="image/gif"), text])
    assert "Unsupported MIME type" in str(gif.message)
    junk = gemini_error(gc, [types.Part.from_bytes(data=b"\x89PNG but not really", mime_type="image/png"), text])
    assert "Unable to process input image" in str(junk.message)
    assert fake.paid_count() == 0
    ok = gc.models.generate_content(
        model="gemini-3-pro-image", contents=[types.Content(role="user", parts=[
            types.Part.from_bytes(data=image(GREEN), mime_type="image/png"), text])],
        config=types.GenerateContentConfig(response_modalities=["IMAGE"]))
    details = {str(getattr(d.modality, "value", d.modality)): d.token_count
               for d in ok.usage_metadata.prompt_tokens_details or []}  # type: ignore[union-attr]
    assert details["IMAGE"] == 560  # 3 Pro Image: 560 tokens per input image


# -- batch mode --------------------------------------------------------------------------------------------------
def batch_gen(fake: FakeHosted, backend: str, state: Any, **cfg: Any) -> Any:
    common: dict[str, Any] = {"limits": FAST, "batch_mode": True, "batch_poll_s": 0.01, **cfg}
    if backend == "openai":
        return OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", **common),
                                    SecretStr(OPENAI_KEY), state_uri=str(state))
    return GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, **common), SecretStr(GEMINI_KEY),
                                state_uri=str(state))


def test_openai_batch_edits_go_as_json_lines_with_data_urls(fake: FakeHosted, tmp_path: Any) -> None:
    rows = [request("a", [image(RED)], mask=user_mask(), task="inpaint", key="ka"),
            request("b", [image(GREEN), image(BLUE)], key="kb")]
    outs = batch_gen(fake, "openai", tmp_path)._generate(rows)
    assert [colour_of(o) for o in outs] == [RED, mean_colour([image(GREEN), image(BLUE)])]
    created = [r for r in fake.log if r.path == "/v1/batches" and r.method == "POST"][0]
    assert created.body["endpoint"] == "/v1/images/edits"
    [submitted] = [b for b in fake.batches.values() if b.get("input_file_id") == created.body["input_file_id"]]
    line = json.loads(submitted["_input"].splitlines()[0])
    assert line["url"] == "/v1/images/edits"
    assert line["body"]["images"][0]["image_url"].startswith("data:image/png;base64,")
    assert line["body"]["mask"]["image_url"].startswith("data:image/png;base64,")
    alpha = np.array(Image.open(io.BytesIO(fake.inputs[0].mask or b"")).getchannel("A"))
    assert (alpha == 0).sum() == 32 * 26  # the mask conversion holds in batch mode too
    assert sum(o.cost_usd for o in outs) == pytest.approx(fake.paid_usd("openai", "batch"))
    assert not any(r.path == "/v1/images/edits" for r in fake.log)  # nothing went the synchronous way


def test_openai_batch_edit_rows_a_json_line_cant_carry_are_errors(fake: FakeHosted, tmp_path: Any) -> None:
    [out] = batch_gen(fake, "openai", tmp_path)._generate([request("a", [image(RED)], size=(1024, 640))])
    assert "batch_mode: false" in out.error and not fake.batches


@pytest.mark.parametrize("mode", ["inline", "file"])
def test_gemini_batch_references_inline_and_file(fake: FakeHosted, tmp_path: Any, mode: str) -> None:
    rows = [request("a", [image(RED)], key="ka"), request("b", [image(GREEN), image(BLUE)], key="kb")]
    outs = batch_gen(fake, "gemini", tmp_path, batch_input=mode)._generate(rows)
    assert [colour_of(o) for o in outs] == [RED, mean_colour([image(GREEN), image(BLUE)])]
    assert [i.images for i in fake.inputs] == [[image(RED)], [image(GREEN), image(BLUE)]]
    assert sum(o.cost_usd for o in outs) == pytest.approx(fake.paid_usd("gemini", "batch"))
    assert any(r.path.startswith("/upload/") for r in fake.log) is (mode == "file")


# -- through the actor's __call__ (the columns the pipeline gives it) ------------------------------------------
def conditioned_batch(rows: list[tuple[str, list[str], str]], task: str) -> dict[str, np.ndarray]:
    """Rows (prompt, input image paths, mask path) as the input reader leaves them: URIs and content hashes."""
    def sha(path: str) -> str:
        return hashlib.sha256(open(path, "rb").read()).hexdigest() if path else ""

    n = len(rows)
    return {
        "prompt": np.array([p for p, _, _ in rows], dtype=object), "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.arange(n) + 1, "width": np.full(n, 1024), "height": np.full(n, 1024), "num_steps": np.ones(n, int),
        "guidance_scale": np.zeros(n), "status": np.array(["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object), "enqueued_at": np.zeros(n),
        "image_key": np.array([f"{i:040x}" for i in range(n)], dtype=object),
        "task": np.array([task] * n, dtype=object),
        "input_images": np.array([json.dumps(paths) for _, paths, _ in rows], dtype=object),
        "input_sha256": np.array([",".join(sha(p) for p in paths) for _, paths, _ in rows], dtype=object),
        "mask_uri": np.array([m for _, _, m in rows], dtype=object),
        "mask_sha256": np.array([sha(m) for _, _, m in rows], dtype=object),
    }


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_rows_from_the_pipeline_read_their_inputs_and_cost_what_was_billed(fake: FakeHosted, tmp_path: Any,
                                                                           backend: str) -> None:
    (tmp_path / "red.png").write_bytes(image(RED))
    (tmp_path / "blue.png").write_bytes(image(BLUE))
    (tmp_path / "mask.png").write_bytes(user_mask())
    red, blue, mask = (str(tmp_path / f) for f in ("red.png", "blue.png", "mask.png"))
    local = StoreSpec(kind="local")
    if backend == "openai":
        gen: Any = OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST),
                                        SecretStr(OPENAI_KEY), input_store=local)
        rows, task = [("a", [red], mask), ("b", [red, blue], "")], "inpaint"
    else:
        gen = GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, limits=FAST), SecretStr(GEMINI_KEY),
                                   input_store=local)
        rows, task = [("a", [red], ""), ("b", [red, blue], "")], "edit"
    out = gen(conditioned_batch(rows, task))
    if backend == "openai":  # inpaint needs its mask: the row without one is an error row, never sent
        assert list(out["status"]) == ["generated", "error"] and "needs a mask" in out["error"][1]
    else:
        assert list(out["status"]) == ["generated", "generated"]
        assert colour_of(Outcome(encoded=bytes(out["image"][1]))) == mean_colour([image(RED), image(BLUE)])
    assert colour_of(Outcome(encoded=bytes(out["image"][0]))) == RED
    assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd())  # the manifest's cost is the provider's bill
