"""Hosted backends with the official SDKs against the loopback fake (no Ray): wire format, retries with server
hints, refusals, quota, retired models, thought images, size mapping, cost from usage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from actors.gemini_generator import GeminiImageGenerator, gemini_image_config
from actors.hosted import HostedFatal, QuotaExhausted, RateLimiter, Verdict, call_with_retries, parse_duration
from actors.layout import batches_dir
from actors.openai_generator import OpenAIImageGenerator, openai_size_problem
from configs import ConfigError
from configs.hosted import GeminiImageConfig, OpenAIImagesConfig, RateLimits
from configs.loader import parse_config
from tests.conftest import sleep_job
from tests.support.fake_hosted import GEMINI_KEY, OPENAI_KEY, FakeHosted, png

FAST = RateLimits(requests_per_min=6000, images_per_min=6000, initial_backoff_s=0.01, max_backoff_s=0.2)


@pytest.fixture
def fake() -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    yield server
    server.stop()


def batch(prompts: list[str], sizes: list[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    n = len(prompts)
    sizes = sizes or [(64, 64)] * n
    return {
        "prompt": np.array(prompts, dtype=object), "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.arange(n) + 11, "width": np.array([w for w, _ in sizes]), "height": np.array([h for _, h in sizes]),
        "num_steps": np.ones(n, int), "guidance_scale": np.zeros(n), "status": np.array(["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object), "enqueued_at": np.full(n, time.time()),
    }


def openai_gen(fake: FakeHosted, **cfg: object) -> OpenAIImageGenerator:
    return OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST, **cfg),
                                SecretStr(OPENAI_KEY))


def gemini_gen(fake: FakeHosted, **cfg: object) -> GeminiImageGenerator:
    return GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, limits=FAST, **cfg), SecretStr(GEMINI_KEY))


def test_openai_ok_wire_format_and_cost(fake: FakeHosted) -> None:
    out = openai_gen(fake)(batch(["a cat"], [(96, 64)]))
    assert out["status"][0] == "generated"
    assert len(out["image"][0]) == 96 * 64 * 3
    assert out["cost_usd"][0] == pytest.approx((50 * 5.0 + 272 * 30.0) / 1e6)
    req = fake.log[-1]
    assert req.path == "/v1/images/generations" and req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert req.body["model"] == "gpt-image-2" and req.body["size"] == "96x64" and req.body["n"] == 1
    assert "response_format" not in req.body and req.headers.get("x-stainless-retry-count") == "0"


def test_openai_429_retry_after_ms_then_ok(fake: FakeHosted) -> None:
    fake.knobs.rate_limit_n, fake.knobs.retry_after_ms = 2, 30
    out = openai_gen(fake)(batch(["x"]))
    assert out["status"][0] == "generated"
    assert len(fake.log) == 3 and all(r.headers.get("x-stainless-retry-count") == "0" for r in fake.log)


def test_openai_5xx_retried(fake: FakeHosted) -> None:
    fake.knobs.server_error_n = 2
    assert openai_gen(fake)(batch(["x"]))["status"][0] == "generated"


def test_openai_refusal_is_a_row_not_retried(fake: FakeHosted) -> None:
    out = openai_gen(fake)(batch(["fine", "bad [refuse]"]))
    assert list(out["status"]) == ["generated", "refused"]
    assert "moderation_blocked" in out["error"][1]
    assert sum("[refuse]" in r.body["prompt"] for r in fake.log) == 1


def test_openai_quota_stops_the_run(fake: FakeHosted) -> None:
    fake.knobs.quota_exhausted = True
    with pytest.raises(QuotaExhausted, match="insufficient_quota"):
        openai_gen(fake)(batch(["x"]))
    assert len(fake.log) == 1  # never retried


def test_openai_retired_model_is_fatal(fake: FakeHosted) -> None:
    with pytest.raises(HostedFatal, match="unknown or retired"):
        openai_gen(fake, model="gpt-image-2-retired")(batch(["x"]))


def test_openai_size_rules() -> None:
    assert openai_size_problem("gpt-image-2", 1024, 1024) == ""
    assert "multiples of 16" in openai_size_problem("gpt-image-2", 1000, 1024)
    assert "1:3" in openai_size_problem("gpt-image-2", 4000, 512)
    assert "only makes" in openai_size_problem("gpt-image-1-mini", 512, 512)


def test_openai_bad_size_is_error_row_without_a_call(fake: FakeHosted) -> None:
    out = openai_gen(fake)(batch(["x"], [(72, 64)]))
    assert out["status"][0] == "error" and "multiples of 16" in out["error"][0] and not fake.log


def test_openai_transparent_background_rejected_for_gpt_image_2() -> None:
    with pytest.raises(ValueError, match="transparent"):
        OpenAIImagesConfig(background="transparent")


def test_gemini_ok_takes_last_non_thought_image(fake: FakeHosted) -> None:
    fake.knobs.thought_images = 2
    out = gemini_gen(fake)(batch(["a banana"], [(96, 64)]))
    assert out["status"][0] == "generated"
    w, h = int(out["width"][0]), int(out["height"][0])  # Gemini picks the size from aspect + tier
    assert (w, h) == (512, 336)
    pixels = np.frombuffer(out["image"][0], np.uint8).reshape(h, w, 3)
    from actors.hosted import decode_image

    assert (pixels == decode_image(png(w, h, "a banana"))).all()  # the final render, not a thought image
    req = fake.log[-1]
    assert req.path == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert req.headers["x-goog-api-key"] == GEMINI_KEY
    gc = req.body["generationConfig"]
    assert gc["responseModalities"] == ["IMAGE"] and gc["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "512"}
    assert gc["seed"] == 11
    assert out["cost_usd"][0] == pytest.approx((7 * 0.5 + 747 * 60.0) / 1e6)


def test_gemini_429_retry_info_and_503(fake: FakeHosted) -> None:
    fake.knobs.rate_limit_n, fake.knobs.server_error_n = 1, 1
    assert gemini_gen(fake)(batch(["x"]))["status"][0] == "generated"
    assert len(fake.log) == 3


@pytest.mark.parametrize(("marker", "reason"), [("[refuse]", "blockReason=PROHIBITED_CONTENT"),
                                                ("[refuse:IMAGE_SAFETY]", "finishReason=IMAGE_SAFETY"),
                                                ("[refuse:NO_IMAGE]", "finishReason=NO_IMAGE"),
                                                ("[refuse:TEXT]", "text-only answer")])
def test_gemini_refusals(fake: FakeHosted, marker: str, reason: str) -> None:
    out = gemini_gen(fake)(batch([f"p {marker}"]))
    assert out["status"][0] == "refused" and reason in out["error"][0]
    assert len(fake.log) == 1


def test_gemini_retired_model_is_fatal(fake: FakeHosted) -> None:
    with pytest.raises(HostedFatal, match="retired"):
        gemini_gen(fake, model="gemini-2.5-flash-image")(batch(["x"]))


def test_gemini_size_mapping() -> None:
    assert gemini_image_config("gemini-3.1-flash-image", 1024, 1024) == ("1:1", "1K")
    assert gemini_image_config("gemini-3.1-flash-image", 1920, 1080) == ("16:9", "2K")
    assert gemini_image_config("gemini-3-pro-image", 512, 512) == ("1:1", "1K")  # 512 tier: 3.1 Flash only
    assert gemini_image_config("gemini-3.1-flash-image", 2048, 256) == ("8:1", "2K")


def test_retry_policy_gives_up_and_honours_hints() -> None:
    waits: list[float] = []
    paused: list[float] = []

    def always() -> None:
        raise RuntimeError("503")

    result, verdict, attempts = call_with_retries(always, lambda e: Verdict("retry", "busy", 0.5),
                                                  RateLimits(max_attempts=3), paused.append, waits.append)
    assert result is None and verdict is not None and verdict.kind == "row_error" and attempts == 3
    assert waits == [0.5, 0.5] and paused == [0.5, 0.5]


def test_rate_limiter_spaces_requests_and_images() -> None:
    lim = RateLimiter(requests_per_min=600, images_per_min=60)  # 0.1 s per request, 1 s per image
    assert lim.acquire(1) == pytest.approx(0, abs=0.01)
    assert lim.acquire(1) == pytest.approx(1.0, abs=0.05)
    lim.pause(5)
    assert lim.acquire(1) == pytest.approx(5.0, abs=0.05)


def test_parse_duration() -> None:
    assert parse_duration("33s") == 33 and parse_duration("0.050s") == 0.05 and parse_duration("x") is None


def test_hosted_generator_config_via_yaml_dict() -> None:
    raw = sleep_job("p", "out")
    raw["generators"] = {"oa": {"backend": "openai", "model": "gpt-image-2", "quality": "high"},
                         "nb": {"backend": "gemini"}}
    raw["routing"] = {"mode": "fanout", "fanout": ["oa", "nb"]}
    cfg = parse_config(raw)
    assert cfg.generators["nb"].model == "gemini-3.1-flash-image" and cfg.generators["oa"].pool.num_gpus == 0
    raw["generators"]["oa"]["api_key"] = "sk-inline"
    with pytest.raises(ConfigError, match="unknown key 'generators.oa.api_key'"):
        parse_config(raw)


# -- Batch API mode ---------------------------------------------------------------------------------------

def keyed(prompts: list[str]) -> dict[str, np.ndarray]:
    b = batch(prompts)
    b["image_key"] = np.array([f"{i:040x}" for i in range(len(prompts))], dtype=object)
    return b


def test_openai_batch_mode_persists_polls_and_collects(fake: FakeHosted, tmp_path: Any) -> None:
    gen = OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST,
                                                  batch_mode=True, batch_poll_s=0.01), SecretStr(OPENAI_KEY),
                               state_uri=str(tmp_path))
    out = gen(keyed(["a", "b", "c [refuse]"]))
    assert list(out["status"]) == ["generated", "generated", "refused"]
    assert out["cost_usd"][0] == pytest.approx((50 * 5.0 + 272 * 30.0) / 1e6 * 0.5)  # batch discount
    assert len(fake.batches) == 1 and not any(r.path.endswith("/images/generations") for r in fake.log)
    records = list((tmp_path / batches_dir("openai")).glob("*.json"))
    assert len(records) == 1 and OPENAI_KEY not in records[0].read_text()


def test_gemini_batch_mode(fake: FakeHosted, tmp_path: Any) -> None:
    gen = GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, limits=FAST, batch_mode=True,
                                                 batch_poll_s=0.01), SecretStr(GEMINI_KEY), state_uri=str(tmp_path))
    out = gen(keyed(["a banana", "x [refuse:IMAGE_SAFETY]"]))
    assert list(out["status"]) == ["generated", "refused"] and "IMAGE_SAFETY" in out["error"][1]
    assert out["cost_usd"][0] == pytest.approx((7 * 0.5 + 747 * 60.0) / 1e6 * 0.5)
    assert len(fake.batches) == 1


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_batch_resumes_after_restart_without_resubmitting(fake: FakeHosted, tmp_path: Any, backend: str) -> None:
    from unittest import mock

    def make() -> Any:
        if backend == "openai":
            return OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST,
                                                           batch_mode=True, batch_poll_s=0.01),
                                        SecretStr(OPENAI_KEY), state_uri=str(tmp_path))
        return GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, limits=FAST, batch_mode=True,
                                                      batch_poll_s=0.01), SecretStr(GEMINI_KEY),
                                    state_uri=str(tmp_path))

    class Crash(BaseException):  # like a killed process: nothing catches it
        pass

    fake.batch_ticks = 3
    # the job dies while the batch is in flight (fault injected into polling)
    target = "actors.openai_generator.poll" if backend == "openai" else "actors.gemini_generator.poll"
    with mock.patch(target, side_effect=Crash("driver killed")), pytest.raises(Crash):
        make()(keyed(["a", "b"]))
    assert len(fake.batches) == 1
    # a fresh actor (restarted job) finds the recorded batch and collects it instead of paying twice
    out = make()(keyed(["a", "b"]))
    assert list(out["status"]) == ["generated", "generated"]
    assert len(fake.batches) == 1
