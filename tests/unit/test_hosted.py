"""Hosted backends with the official SDKs against the strict loopback fake (no Ray): wire format, retries with
server hints, refusals, account-level failures, thought images, size mapping, bytes stored as sent, and billing:
every request the fake bills is in the outputs exactly once, at the price the fake charged."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from imagefleet.actors.gemini_generator import GeminiImageGenerator
from imagefleet.actors.hosted import (
    STOPPED,
    HostedFatal,
    LocalLimiter,
    RateLimiter,
    Verdict,
    call_with_retries,
    parse_duration,
)
from imagefleet.actors.image_writer import decode_rgb
from imagefleet.actors.layout import batches_dir
from imagefleet.actors.openai_generator import OpenAIImageGenerator
from imagefleet.configs import ConfigError
from imagefleet.configs.generator_base import RunBudget
from imagefleet.configs.hosted import GeminiImageConfig, OpenAIImagesConfig, RateLimits
from imagefleet.configs.loader import parse_config
from tests.helpers import sleep_job
from tests.support.fake_hosted import GEMINI_KEY, OPENAI_KEY, FakeHosted, png

FAST = RateLimits(requests_per_min=6000, images_per_min=6000, initial_backoff_s=0.01, max_backoff_s=0.2)


@pytest.fixture
def fake() -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    yield server
    server.stop()


def batch(prompts: list[str], sizes: list[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    n = len(prompts)
    sizes = sizes or [(1024, 1024)] * n
    return {
        "prompt": np.array(prompts, dtype=object), "negative_prompt": np.array([""] * n, dtype=object),
        "seed": np.arange(n) + 11, "width": np.array([w for w, _ in sizes]), "height": np.array([h for _, h in sizes]),
        "num_steps": np.ones(n, int), "guidance_scale": np.zeros(n), "status": np.array(["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object), "enqueued_at": np.full(n, time.time()),
        "image_key": np.array([f"{i:040x}" for i in range(n)], dtype=object),
    }


def decode_png(data: bytes) -> np.ndarray:
    return decode_rgb(data, "image/png", 0, 0)


def stored_is_served(fake: FakeHosted, out: dict[str, np.ndarray], i: int) -> bool:
    """Row i holds exactly the bytes the provider sent (content credentials, ICC, alpha kept)."""
    return hashlib.sha256(bytes(out["image"][i])).hexdigest() in fake.served


def openai_gen(fake: FakeHosted, **cfg: object) -> OpenAIImageGenerator:
    return OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST, **cfg),
                                SecretStr(OPENAI_KEY))


def gemini_gen(fake: FakeHosted, **cfg: object) -> GeminiImageGenerator:
    return GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, limits=FAST, **cfg), SecretStr(GEMINI_KEY))


def test_openai_ok_wire_format_bytes_and_cost(fake: FakeHosted) -> None:
    out = openai_gen(fake)(batch(["a cat"], [(1536, 1024)]))
    assert out["status"][0] == "generated" and out["image_mime"][0] == "image/png"
    assert stored_is_served(fake, out, 0)  # the provider's PNG (ICC profile, C2PA chunk), not a re-encode
    assert (int(out["width"][0]), int(out["height"][0])) == (1536, 1024) and out["requests"][0] == 1
    assert out["cost_usd"][0] == pytest.approx(fake.paid_usd("openai"))  # billed what the provider charged
    req = fake.log[-1]
    assert req.path == "/v1/images/generations" and req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert req.body["model"] == "gpt-image-2" and req.body["size"] == "1536x1024" and req.body["n"] == 1
    assert "response_format" not in req.body and req.headers.get("x-stainless-retry-count") == "0"


def test_openai_formats_and_transparency_stored_as_sent(fake: FakeHosted) -> None:
    from PIL import Image

    out = openai_gen(fake, model="gpt-image-2.6-sunburst", background="transparent", output_format="webp")(
        batch(["a sticker"]))
    assert out["image_mime"][0] == "image/webp" and stored_is_served(fake, out, 0)
    assert Image.open(io.BytesIO(bytes(out["image"][0]))).mode == "RGBA"  # alpha survives


def test_openai_429_retry_after_ms_then_ok_takes_a_slot_per_attempt(fake: FakeHosted) -> None:
    fake.knobs.rate_limit_n, fake.knobs.retry_after_ms = 2, 30
    gen = openai_gen(fake)
    turns: list[int] = []
    real = gen.limiter.wait_turn
    gen.limiter.wait_turn = lambda n: (turns.append(n), real(n))[1]  # type: ignore[method-assign]
    out = gen(batch(["x"]))
    assert out["status"][0] == "generated" and out["requests"][0] == 3
    assert len(turns) == 3  # every retry waits for its own limiter slot
    assert len(fake.log) == 3 and all(r.headers.get("x-stainless-retry-count") == "0" for r in fake.log)
    assert fake.paid_count("openai") == 1


def test_openai_5xx_retried(fake: FakeHosted) -> None:
    fake.knobs.server_error_n = 2
    assert openai_gen(fake)(batch(["x"]))["status"][0] == "generated"


def test_openai_refusal_is_a_row_not_retried(fake: FakeHosted) -> None:
    out = openai_gen(fake)(batch(["fine", "bad [refuse]"]))
    assert list(out["status"]) == ["generated", "refused"]
    assert "moderation_blocked" in out["error"][1]
    assert sum("[refuse]" in r.body["prompt"] for r in fake.log) == 1


@pytest.mark.parametrize(("knob", "match"), [("quota_exhausted", "insufficient_quota"),
                                             ("billing_hard_limit", "billing hard limit")])
def test_openai_account_limits_stop_the_run(fake: FakeHosted, knob: str, match: str) -> None:
    """The account's quota or spend cap: the row is skipped with the stop's reason (a rerun makes it), never
    retried, and the actor sends nothing more."""
    setattr(fake.knobs, knob, True)
    gen = openai_gen(fake)
    out = gen(batch(["x"]))
    assert list(out["status"]) == ["skipped"] and out["error"][0].startswith(STOPPED) and match in out["error"][0]
    assert len(fake.log) == 1  # never retried
    assert list(gen(batch(["y", "z"]))["status"]) == ["skipped", "skipped"] and len(fake.log) == 1


def test_openai_unknown_model_400_param_model_is_fatal(fake: FakeHosted) -> None:
    """The real API answers an unknown model with 400 and `param: "model"`, not only 404."""
    gen = openai_gen(fake, model="gpt-image-9", like="gpt-image-2", prices={"image_output": 30.0})
    with pytest.raises(HostedFatal, match="does not offer model 'gpt-image-9'"):
        gen(batch(["x", "y"]))
    fake.knobs.retired_model = True
    with pytest.raises(HostedFatal, match="unknown or retired"):
        openai_gen(fake)(batch(["x"]))


def test_openai_bad_size_is_error_row_without_a_call(fake: FakeHosted) -> None:
    out = openai_gen(fake)(batch(["x", "y"], [(512, 512), (1000, 1024)]))
    assert list(out["status"]) == ["error", "error"] and not fake.log
    assert "655,360" in out["error"][0] and "multiples of 16" in out["error"][1]


def test_gemini_ok_takes_last_non_thought_image(fake: FakeHosted) -> None:
    fake.knobs.thought_images = 2
    out = gemini_gen(fake)(batch(["a banana"], [(1264, 848)]))
    assert out["status"][0] == "generated" and stored_is_served(fake, out, 0)
    w, h = int(out["width"][0]), int(out["height"][0])  # Gemini picks the size from aspect + tier
    assert (w, h) == (1264, 848)
    assert (decode_png(bytes(out["image"][0])) == decode_png(png(w, h, "a banana"))).all()  # not a thought
    req = fake.log[-1]
    assert req.path == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert req.headers["x-goog-api-key"] == GEMINI_KEY
    gc = req.body["generationConfig"]
    assert gc["responseModalities"] == ["IMAGE"] and gc["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "1K"}
    assert gc["seed"] == 11
    # thinking and text tokens are billed at the text-output rate, not $0
    assert out["cost_usd"][0] == pytest.approx(fake.paid_usd("gemini")) and out["cost_usd"][0] > 1120 * 60 / 1e6


def test_gemini_tier_by_area(fake: FakeHosted) -> None:
    out = gemini_gen(fake)(batch(["wide"], [(1280, 720)]))
    assert fake.log[-1].body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "1K"}
    assert (int(out["width"][0]), int(out["height"][0])) == (1376, 768)


def test_gemini_429_retry_info_and_503(fake: FakeHosted) -> None:
    fake.knobs.rate_limit_n, fake.knobs.server_error_n = 1, 1
    assert gemini_gen(fake)(batch(["x"]))["status"][0] == "generated"
    assert len(fake.log) == 3


@pytest.mark.parametrize("kind", ["per_day", "limit_zero"])
def test_gemini_hard_quota_stops_the_run(fake: FakeHosted, kind: str) -> None:
    fake.knobs.gemini_quota = kind
    out = gemini_gen(fake)(batch(["x"]))
    assert list(out["status"]) == ["skipped"] and "quota exhausted" in out["error"][0]
    assert len(fake.log) == 1


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_an_account_stop_keeps_every_answer_already_delivered(fake: FakeHosted, backend: str) -> None:
    """The quota runs out after 2 paid images of 4 in one chunk: those 2 come back `generated` with their price
    (the writer stores them), the other 2 are skipped with the stop's reason, and nothing is paid for twice."""
    fake.knobs.quota_after_paid = 2
    gen = openai_gen(fake, pool={"batch_size": 1}) if backend == "openai" else gemini_gen(fake, pool={"batch_size": 1})
    out = gen(batch(["a", "b", "c", "d"]))
    assert list(out["status"]) == ["generated", "generated", "skipped", "skipped"]
    assert all(out["error"][i].startswith(STOPPED) for i in (2, 3))
    assert fake.paid_count(backend) == 2 and out["cost_usd"].sum() == pytest.approx(fake.paid_usd(backend))
    assert len(fake.log) == 3  # the third met the quota; the fourth was never sent


def test_gemini_per_minute_quota_is_retried(fake: FakeHosted) -> None:
    fake.knobs.rate_limit_n = 2
    out = gemini_gen(fake)(batch(["x"]))
    assert out["status"][0] == "generated" and out["requests"][0] == 3


def test_gemini_failed_precondition_is_fatal(fake: FakeHosted) -> None:
    fake.knobs.failed_precondition = True
    with pytest.raises(HostedFatal, match="FAILED_PRECONDITION"):
        gemini_gen(fake)(batch(["x", "y"]))


@pytest.mark.parametrize(("marker", "reason"), [("[refuse]", "blockReason=PROHIBITED_CONTENT"),
                                                ("[refuse:IMAGE_SAFETY]", "finishReason=IMAGE_SAFETY"),
                                                ("[refuse:NO_IMAGE]", "finishReason=NO_IMAGE"),
                                                ("[refuse:TEXT]", "text-only answer")])
def test_gemini_refusals_are_billed_rows(fake: FakeHosted, marker: str, reason: str) -> None:
    out = gemini_gen(fake)(batch([f"p {marker}"]))
    assert out["status"][0] == "refused" and reason in out["error"][0]
    assert len(fake.log) == 1
    assert out["cost_usd"][0] == pytest.approx(fake.paid_usd("gemini"))


def test_gemini_retired_model_is_fatal(fake: FakeHosted) -> None:
    fake.knobs.retired_model = True
    with pytest.raises(HostedFatal, match="retired"):
        gemini_gen(fake)(batch(["x"]))


# -- billing: every paid request once -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_bad_answers_are_billed_once_and_never_retried(fake: FakeHosted, backend: str) -> None:
    """One undecodable payload and one missing image among 4 rows: 4 paid requests, 4 priced rows (before, the
    chunk was retried row by row: 8 paid requests, 4 recorded)."""
    fake.knobs.corrupt_image_n, fake.knobs.null_image_n = 1, 1
    gen = openai_gen(fake) if backend == "openai" else gemini_gen(fake)
    out = gen(batch(["a", "b", "c", "d"]))
    assert sorted(out["status"]) == ["error", "error", "generated", "generated"]
    assert fake.paid_count(backend) == 4
    assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd(backend))
    assert all(out["cost_usd"] > 0)


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_a_truncated_image_is_an_error_row_that_keeps_its_price(fake: FakeHosted, backend: str) -> None:
    """A file cut short (valid base64 of half a PNG: the header reads) is decoded fully before it counts: it is an
    error row, never `generated`, and still carries what the provider billed for it."""
    fake.knobs.truncated_image_n = 1
    gen = openai_gen(fake) if backend == "openai" else gemini_gen(fake)
    out = gen(batch(["a", "b"]))
    assert sorted(out["status"]) == ["error", "generated"]
    bad = list(out["status"]).index("error")
    assert "does not decode" in out["error"][bad] and "truncated" in out["error"][bad]
    assert len(out["image"][bad]) == 0
    assert fake.paid_count(backend) == 2 and out["cost_usd"].sum() == pytest.approx(fake.paid_usd(backend))
    assert out["cost_usd"][bad] > 0


def test_a_gemini_answer_the_sdk_cant_parse_is_priced_as_billed(fake: FakeHosted) -> None:
    """inlineData that isn't base64: the SDK raises while parsing a 200 answer the provider billed. The row is an
    error row carrying the request's estimate as maybe-billed (its usage went with the answer), not $0, and it is
    not sent again."""
    fake.knobs.bad_base64_n = 1
    gen = gemini_gen(fake)
    out = gen(batch(["a"]))
    assert list(out["status"]) == ["error"] and "could not be read (billed)" in out["error"][0]
    assert fake.paid_count("gemini") == 1 and out["requests"][0] == 1
    estimate = gen.cfg.estimate_image_usd(int(out["width"][0]), int(out["height"][0]), 1)
    assert out["maybe_billed_usd"][0] == pytest.approx(estimate) and estimate > 0


def test_one_rows_exception_keeps_its_siblings(fake: FakeHosted) -> None:
    """A row whose request raises something unexpected (a limiter RPC failure, a bug) is that row's error."""
    gen = openai_gen(fake)
    real = gen._call

    def flaky(r: Any) -> Any:
        if r.prompt == "b":
            raise RuntimeError("limiter RPC failed")
        return real(r)

    gen._call = flaky  # type: ignore[method-assign]
    out = gen(batch(["a", "b", "c"]))
    assert list(out["status"]) == ["generated", "error", "generated"] and "limiter RPC failed" in out["error"][1]
    assert fake.paid_count("openai") == 2 and len(fake.log) == 2


@pytest.mark.parametrize("retry", [True, False])
def test_timeouts_may_pay_twice_and_say_so(fake: FakeHosted, retry: bool) -> None:
    """The provider finished (and billed) a request the client gave up on: the row says what it may have cost."""
    fake.knobs.slow_n, fake.knobs.slow_ms = 1, 1500
    limits = FAST.model_copy(update={"timeout_s": 0.5, "retry_timeouts": retry})
    out = OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=limits),
                               SecretStr(OPENAI_KEY))(batch(["x"]))
    est = OpenAIImagesConfig(quality="low").estimate_image_usd(1024, 1024, 1)
    assert out["maybe_billed_usd"][0] == pytest.approx(est, rel=0.5)
    if retry:
        assert out["status"][0] == "generated" and out["requests"][0] == 2
        assert fake.paid_count("openai") == 2  # paid twice; the manifest says so
    else:
        assert out["status"][0] == "error" and "Timeout" in out["error"][0] and fake.paid_count("openai") == 1


def test_budget_stops_paid_requests_on_actual_spend(fake: FakeHosted) -> None:
    """Each request reserves its estimate and settles at the billed price: with room for one billed image plus
    one estimate, the second request goes and the third doesn't."""
    est = OpenAIImagesConfig(quality="low").estimate_image_usd(1024, 1024, 1)
    openai_gen(fake)(batch(["z"]))
    billed = fake.paid_usd("openai")
    fake.paid.clear()
    gen = OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST,
                                                  pool={"batch_size": 1, "num_gpus": 0}),
                               SecretStr(OPENAI_KEY), budget=RunBudget(usd=billed + est + 1e-6, ledger="t"))
    out = gen(batch(["a", "b", "c", "d"]))
    assert list(out["status"]) == ["generated", "generated", "skipped", "skipped"]
    assert "budget_usd" in out["error"][2] and fake.paid_count("openai") == 2


def test_retry_policy_gives_up_and_honours_hints() -> None:
    waits: list[float] = []
    paused: list[float] = []

    def always() -> None:
        raise RuntimeError("503")

    class Limiter(LocalLimiter):
        def pause_all(self, seconds: float) -> None:
            paused.append(seconds)

    got = call_with_retries(always, lambda e: Verdict("retry", "busy", 0.5), RateLimits(max_attempts=3),
                            Limiter(FAST), sleep=waits.append)
    assert got.result is None and got.verdict is not None and got.verdict.kind == "row_error"
    assert got.requests == 3 and waits == [0.5, 0.5] and paused == [0.5, 0.5]


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

def batch_gen(fake: FakeHosted, backend: str, state: Any, **cfg: object) -> Any:
    common: dict[str, Any] = {"limits": FAST, "batch_mode": True, "batch_poll_s": 0.01, **cfg}
    if backend == "openai":
        return OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", **common),
                                    SecretStr(OPENAI_KEY), state_uri=str(state))
    return GeminiImageGenerator(GeminiImageConfig(base_url=fake.url, **common), SecretStr(GEMINI_KEY),
                                state_uri=str(state))


def matches_prompt(out: dict[str, np.ndarray], i: int, seed_text: str) -> bool:
    w, h = int(out["width"][i]), int(out["height"][i])
    return bool((decode_png(bytes(out["image"][i])) == decode_png(png(w, h, seed_text))).all())


def test_openai_batch_mode_matches_shuffled_results_and_cleans_up(fake: FakeHosted, tmp_path: Any) -> None:
    out = batch_gen(fake, "openai", tmp_path)(batch(["a", "b", "c", "d [refuse]"]))
    assert list(out["status"]) == ["generated"] * 3 + ["refused"]
    assert all(matches_prompt(out, i, f"{p}/0") for i, p in enumerate("abc"))  # by custom_id, not line order
    assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd("openai", "batch"))  # batch price, billed once
    assert len(fake.batches) == 1 and not any(r.path.endswith("/images/generations") for r in fake.log)
    created = [r for r in fake.log if r.path == "/v1/batches" and r.method == "POST"][0]
    assert created.body["output_expires_after"]["seconds"] > 0  # results expire on their own
    assert created.body["input_file_id"] in fake.deleted_files  # the input file is deleted once the batch ends
    records = list((tmp_path / batches_dir("openai")).glob("*.json"))
    assert len(records) == 1 and OPENAI_KEY not in records[0].read_text()
    assert '"final": "completed"' in records[0].read_text()


def test_gemini_batch_mode_inline(fake: FakeHosted, tmp_path: Any) -> None:
    out = batch_gen(fake, "gemini", tmp_path)(batch(["a banana", "x [refuse:IMAGE_SAFETY]"]))
    assert list(out["status"]) == ["generated", "refused"] and "IMAGE_SAFETY" in out["error"][1]
    assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd("gemini", "batch"))
    assert len(fake.batches) == 1


def test_gemini_batch_file_mode(fake: FakeHosted, tmp_path: Any) -> None:
    """Large jobs go as an uploaded JSONL file; each result line carries its key (robust to any order)."""
    fake.knobs.gemini_batch_reorder = True
    prompts = ["p0", "p1", "p2"]
    out = batch_gen(fake, "gemini", tmp_path, batch_input="file")(batch(prompts))
    assert list(out["status"]) == ["generated"] * 3
    assert all(matches_prompt(out, i, p) for i, p in enumerate(prompts))
    assert any(r.path.startswith("/upload/") for r in fake.log)
    assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd("gemini", "batch"))


@pytest.mark.parametrize("reorder", [False, True])
def test_gemini_inline_results_without_keys_are_never_matched_by_position(fake: FakeHosted, tmp_path: Any,
                                                                           reorder: bool) -> None:
    """Inline responses without their metadata (python-genai #2008/#1886), also reversed (#1909): matching by
    position would store images (and prices) under the wrong prompts, marked ok. No row gets another's image:
    every unmatched request is an error row that says why, carrying its estimate as maybe billed, and the run
    goes on; --retry-failed sends them again, once."""
    fake.knobs.gemini_batch_omit_metadata, fake.knobs.gemini_batch_reorder = True, reorder
    prompts = ["q0", "q1", "q2"]
    out = batch_gen(fake, "gemini", tmp_path, batch_input="inline")(batch(prompts))
    assert list(out["status"]) == ["error"] * 3 and all("without their request's key" in e for e in out["error"])
    assert fake.paid_count("gemini") == 3 and len(fake.batches) == 1  # billed; not sent again in this run
    assert all(out["maybe_billed_usd"] > 0)
    fake.knobs.gemini_batch_omit_metadata = False
    again = batch_gen(fake, "gemini", tmp_path, batch_input="inline")(batch(prompts))  # a --retry-failed run
    assert list(again["status"]) == ["generated"] * 3 and all(matches_prompt(again, i, p) for i, p in
                                                               enumerate(prompts))
    assert len(fake.batches) == 2


@pytest.mark.parametrize("omit", [False, True])
def test_a_batch_missing_some_results_keeps_its_paid_lines(fake: FakeHosted, tmp_path: Any, omit: bool) -> None:
    """A Gemini batch that SUCCEEDED without a result for one request: the other results are kept (with keys:
    matched; without: none can be), the missing one is an error row naming the batch, and the run goes on."""
    fake.knobs.gemini_batch_drop_n, fake.knobs.gemini_batch_omit_metadata = 1, omit
    out = batch_gen(fake, "gemini", tmp_path, batch_input="inline")(batch(["a", "b", "c"]))
    errors = [e for e in out["error"] if e]
    assert sorted(out["status"]) == (["error"] * 3 if omit else ["error", "generated", "generated"])
    assert all("gemini batch batches/" in e for e in errors) and len(fake.batches) == 1


def test_an_openai_batch_missing_a_line_keeps_the_rest(fake: FakeHosted, tmp_path: Any) -> None:
    """A completed OpenAI batch whose output file lacks a line (it ran and was billed): its other lines are
    images, that request is an error row naming the batch, and nothing is sent again in this run."""
    fake.knobs.batch_drop_lines = 1
    out = batch_gen(fake, "openai", tmp_path)(batch(["a", "b", "c"]))
    assert sorted(out["status"]) == ["error", "generated", "generated"]
    bad = list(out["status"]).index("error")
    assert "completed without a result for this request" in out["error"][bad] and out["maybe_billed_usd"][bad] > 0
    assert fake.paid_count("openai") == 3 and len(fake.batches) == 1
    records = list((tmp_path / batches_dir("openai")).glob("*.json"))
    assert '"final": "completed"' in records[0].read_text()


@pytest.mark.parametrize("backend", ["openai", "gemini"])
@pytest.mark.parametrize("event", ["batch_vanish", "batch_results_expired"])
def test_a_batch_or_its_results_gone_are_error_rows_not_an_unknown_model(fake: FakeHosted, tmp_path: Any,
                                                                        backend: str, event: str) -> None:
    """A 404 on a batch (it disappeared) or on its results file (expired: OpenAI's output_expires_after, Gemini's
    48 h files) is that batch's fact, not "model unknown": its rows are error rows that say so, the batch record
    is finalized, the run goes on, and a --retry-failed run sends them once more."""
    setattr(fake.knobs, event, True)
    extra = {"batch_input": "file"} if backend == "gemini" else {}
    out = batch_gen(fake, backend, tmp_path, **extra)(batch(["a", "b"]))
    assert list(out["status"]) == ["error", "error"], out["error"]
    assert all("is gone" in e and "unknown" not in e for e in out["error"])
    assert len(fake.batches) == 1
    records = list((tmp_path / batches_dir(backend)).glob("*.json"))
    assert len(records) == 1 and '"final": ""' not in records[0].read_text()
    setattr(fake.knobs, event, False)
    again = batch_gen(fake, backend, tmp_path, **extra)(batch(["a", "b"]))
    assert list(again["status"]) == ["generated", "generated"] and len(fake.batches) == 2


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_failed_batch_is_resubmitted_then_reported(fake: FakeHosted, tmp_path: Any, backend: str) -> None:
    """A failed batch (OpenAI: enqueued-token limit) ran nothing: its rows are submitted again, and when every
    attempt fails they become error rows naming the batch's error; a later run submits them again."""
    fake.knobs.batch_outcome = "failed"
    out = batch_gen(fake, backend, tmp_path)(batch(["a", "b"]))
    assert list(out["status"]) == ["error", "error"] and "without running it" in out["error"][0]
    # the batch's own reason reaches the row (and so the manifest)
    assert ("token_limit_exceeded" if backend == "openai" else "enqueued token limit") in out["error"][0]
    assert len(fake.batches) == 3 and fake.paid_count() == 0
    fake.knobs.batch_outcome = "completed"
    again = batch_gen(fake, backend, tmp_path)(batch(["a", "b"]))  # a new run (e.g. --retry-failed)
    assert list(again["status"]) == ["generated", "generated"] and len(fake.batches) == 4


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_a_batch_cancelled_at_the_provider_is_not_resubmitted(fake: FakeHosted, tmp_path: Any, backend: str) -> None:
    """An operator cancelled the batch in the provider's console to stop its spend: its rows are error rows that
    say so, nothing is submitted again in this run (was: twice more); --retry-failed makes them later."""
    fake.knobs.batch_outcome = "cancelled"
    out = batch_gen(fake, backend, tmp_path)(batch(["a", "b"]))
    assert list(out["status"]) == ["error", "error"]
    assert all("cancelled at the provider, not by this run" in e for e in out["error"])
    assert len(fake.batches) == 1 and fake.paid_count() == 0 and out["maybe_billed_usd"].sum() == 0


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_expired_batch_keeps_partial_results_and_resubmits_the_rest(fake: FakeHosted, tmp_path: Any,
                                                                    backend: str) -> None:
    fake.knobs.batch_outcome = "expired"  # each batch runs the first half of its requests
    out = batch_gen(fake, backend, tmp_path)(batch(["a", "b", "c", "d"]))
    # 4 → 2 ran; 2 resubmitted → 1 ran; 1 resubmitted → 0 ran: 3 images, 1 error row, each paid request once
    assert sorted(out["status"]) == ["error", "generated", "generated", "generated"]
    assert fake.paid_count(backend) == 3
    assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd(backend))


def test_batches_are_cancelled_when_the_run_aborts(fake: FakeHosted, tmp_path: Any) -> None:
    from imagefleet.actors.backend_io import Request

    gen = batch_gen(fake, "openai", tmp_path)
    reqs = [Request("a", "", 1, 1024, 1024, 1, 0.0, key="k" * 40)]
    gen.batch._record_new(gen._submit(reqs), reqs)
    gen.batch.cancel_open()
    assert len(fake.cancelled_batches) == 1


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_batch_resumes_after_restart_without_resubmitting(fake: FakeHosted, tmp_path: Any, backend: str) -> None:
    from unittest import mock

    class Crash(BaseException):  # like a killed process: nothing catches it
        pass

    fake.batch_ticks = 3
    # the job dies while the batch is in flight (fault injected into polling)
    target = f"imagefleet.actors.{backend}_generator.poll"
    with mock.patch(target, side_effect=Crash("driver killed")), pytest.raises(Crash):
        batch_gen(fake, backend, tmp_path)(batch(["a", "b"]))
    assert len(fake.batches) == 1
    # a fresh actor (restarted job) finds the recorded batch and collects it instead of paying twice
    out = batch_gen(fake, backend, tmp_path)(batch(["a", "b"]))
    assert list(out["status"]) == ["generated", "generated"]
    assert len(fake.batches) == 1 and fake.paid_count(backend) == 2


def test_limiter_is_keyed_by_provider_scope_and_model_not_by_key() -> None:
    from imagefleet.actors.hosted import limiter_name

    a = OpenAIImagesConfig(project="proj_1")
    assert limiter_name(a, "sk-one") == limiter_name(a, "sk-two")  # two keys of one project share its limits
    assert limiter_name(a, "sk-one") != limiter_name(a.model_copy(update={"model": "gpt-image-2.6-flare"}), "sk-one")
    assert limiter_name(OpenAIImagesConfig(), "sk-one") != limiter_name(OpenAIImagesConfig(), "sk-two")
    scoped = GeminiImageConfig(limits={"scope": "my-gcp-project"})
    assert limiter_name(scoped, "k1") == limiter_name(scoped, "k2") and "k1" not in limiter_name(scoped, "k1")


# -- review findings: each a way to pay twice, or to lose a paid result -------------------------------------

@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_rows_sharing_an_image_key_are_one_request(fake: FakeHosted, tmp_path: Any, backend: str) -> None:
    """Two rows with one key (same prompt and seed): one paid request, priced once, both rows get the image."""
    for mode in ("sync", "batch"):
        b = batch(["same", "same", "other"])
        b["image_key"] = np.array(["k" * 40, "k" * 40, "o" * 40], dtype=object)
        gen = (batch_gen(fake, backend, tmp_path / mode) if mode == "batch"
               else openai_gen(fake) if backend == "openai" else gemini_gen(fake))
        out = gen(b)
        assert list(out["status"]) == ["generated"] * 3, (mode, list(out["error"]))
        assert fake.paid_count(backend, mode) == 2 and out["cost_usd"][1] == 0
        assert out["cost_usd"].sum() == pytest.approx(fake.paid_usd(backend, mode))


def test_a_failing_batch_record_write_cancels_the_batch_and_never_resubmits(fake: FakeHosted, tmp_path: Any) -> None:
    from unittest import mock

    gen = batch_gen(fake, "openai", tmp_path)
    with mock.patch.object(gen.batch.store, "put", side_effect=OSError("store unavailable")):
        out = gen(batch(["a", "b", "c"]))
    assert list(out["status"]) == ["error"] * 3 and "batch call failed" in out["error"][0]
    assert len(fake.batches) == 1 and len(fake.cancelled_batches) == 1  # not 1 + 3 row-by-row batches


def test_batch_mode_settles_the_budget_at_billed_prices(fake: FakeHosted, tmp_path: Any) -> None:
    fake.knobs.batch_outcome = "expired"  # half of each batch runs; the rest is resubmitted
    gen = OpenAIImageGenerator(OpenAIImagesConfig(base_url=fake.url + "/v1", quality="low", limits=FAST,
                                                  batch_mode=True, batch_poll_s=0.01), SecretStr(OPENAI_KEY),
                               state_uri=str(tmp_path), budget=RunBudget(usd=100.0, ledger="t"))
    gen(batch(["a", "b", "c", "d"]))
    spent, reserved = gen.ledger.local.totals()
    assert reserved == pytest.approx(0.0)  # nothing left reserved (never-ran requests are released)
    assert spent == pytest.approx(fake.paid_usd("openai"))


def test_a_timed_out_batch_create_is_not_sent_twice(fake: FakeHosted, tmp_path: Any) -> None:
    gen = batch_gen(fake, "openai", tmp_path)
    real = gen.client.batches.create
    calls: list[int] = []

    def slow_create(**kwargs: Any) -> Any:
        calls.append(1)
        real(**kwargs)  # the provider created (and will bill) it ...
        raise gen.openai.APITimeoutError(request=None)  # ... but the answer never arrived

    gen.client.batches.create = slow_create  # type: ignore[method-assign]
    with pytest.raises(HostedFatal, match="may exist and be billed"):
        gen(batch(["a"]))
    assert len(calls) == 1 and len(fake.batches) == 1


def test_polls_ride_out_minutes_of_server_errors(fake: FakeHosted, tmp_path: Any) -> None:
    gen = batch_gen(fake, "openai", tmp_path)
    real = gen.client.batches.retrieve
    failures = iter(range(10))

    def flaky(batch_id: str) -> Any:
        if next(failures, None) is not None:
            raise gen.openai.APIConnectionError(request=None)  # type: ignore[arg-type]
        return real(batch_id)

    gen.client.batches.retrieve = flaky  # type: ignore[method-assign]
    assert list(gen(batch(["a"]))["status"]) == ["generated"]  # 10 failed polls > max_attempts (6): still fine
