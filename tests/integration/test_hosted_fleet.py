"""Hosted backends in real runs (real SDKs → the strict loopback fake, local Ray, SeaweedFS): a fleet mixing a local
tiny diffusers generator with both providers, billed exactly as the provider charged and stored as sent; a
quota-exhausted run that stops cleanly; the budget enforced on actual spend; batch mode at many pool-fulls; and the
run-owned limiter."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagefleet.jobs import generate
from tests.helpers import CLI, REPO, sleep_job, tiny_job, write_config, write_prompts
from tests.integration.test_pipeline import manifest, objects
from tests.support.fake_hosted import GEMINI_KEY, OPENAI_KEY, FakeHosted

pytestmark = pytest.mark.slow


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHosted]:
    server = FakeHosted().start()
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    yield server
    server.stop()


def hosted_job(src: Path, model: Path, out: str, fake: FakeHosted) -> dict[str, Any]:
    raw = tiny_job(src, model, out)
    raw["generators"]["tiny"]["pool"].update(min_size=1, max_size=1, initial_size=1)
    fast = {"requests_per_min": 6000, "images_per_min": 6000, "initial_backoff_s": 0.05}
    pool = {"min_size": 1, "max_size": 2, "initial_size": 1, "num_gpus": 0, "num_cpus": 0.25, "batch_size": 4}
    raw["generators"]["oa"] = {"backend": "openai", "base_url": fake.url + "/v1", "quality": "low", "limits": fast,
                               "pool": pool, "defaults": {"width": 1024, "height": 1024}}
    raw["generators"]["nb"] = {"backend": "gemini", "base_url": fake.url, "limits": fast, "pool": pool,
                               "defaults": {"width": 64, "height": 64}}
    raw["routing"] = {"mode": "fanout", "fanout": ["tiny", "oa", "nb"]}
    return raw


def test_fleet_mixing_local_and_hosted(
    tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str, ray_cluster: None, fake: FakeHosted, capsys: Any
) -> None:
    prompts = [f"prompt {i}" for i in range(6)] + ["blocked [refuse]"]
    src = write_prompts(tmp_path / "p.parquet", {"id": [f"r{i}" for i in range(7)], "prompt": prompts})
    fake.knobs.rate_limit_n = 2  # the first hosted calls meet 429s with retry hints
    assert generate.main([str(write_config(tmp_path / "job.yaml", hosted_job(src, tiny_model, f"s3://{bucket}/h",
                                                                            fake)))]) == 0
    rows = manifest(s3_env, bucket, "h")
    assert len(rows) == 21
    by = {(r["id"], r["generator"]): r for r in rows}
    for gen in ("tiny", "oa", "nb"):
        for i in range(6):
            assert by[(f"r{i}", gen)]["status"] == "ok", by[(f"r{i}", gen)]
    assert by[("r6", "tiny")]["status"] == "ok"  # the local model has no safety system here
    assert by[("r6", "oa")]["status"] == "refused" and "moderation_blocked" in by[("r6", "oa")]["error"]
    assert by[("r6", "nb")]["status"] == "refused" and "blockReason" in by[("r6", "nb")]["error"]
    assert by[("r0", "oa")]["cost_usd"] > 0 and by[("r0", "nb")]["cost_usd"] > 0
    assert by[("r0", "nb")]["width"] == 512  # Gemini's 512 tier for a 64 px request
    # every paid request is in the manifest once, at the provider's price; the bytes are the provider's
    for gen, provider in (("oa", "openai"), ("nb", "gemini")):
        mine = [r for r in rows if r["generator"] == gen]
        assert sum(r["cost_usd"] for r in mine) == pytest.approx(fake.paid_usd(provider))
        assert fake.paid_count(provider) == sum(r["status"] in ("ok", "refused") for r in mine) - (gen == "oa")
        assert all(r["sha256"] in fake.served and r["mime"] == "image/png" for r in mine if r["status"] == "ok")
        assert all(r["requests"] >= 1 for r in mine)
    assert len(objects(s3_env, bucket, "h/images/")) == 6 * 3 + 1
    out = capsys.readouterr()
    text = out.out + out.err
    for secret in (OPENAI_KEY, GEMINI_KEY):
        assert secret not in text
        assert all(secret not in str(r) for r in rows)


def test_quota_exhausted_stops_cleanly(tmp_path: Path, tiny_model: Path, s3_env: Any, bucket: str,
                                       fake: FakeHosted) -> None:
    """Through the CLI with a private Ray (a failed run's pools must not linger in the shared test Ray)."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(4)]})
    raw = hosted_job(src, tiny_model, f"s3://{bucket}/q", fake)
    raw["routing"] = {"mode": "single", "default": "oa"}
    del raw["generators"]["tiny"], raw["generators"]["nb"]
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/q{os.getpid()}"
    fake.knobs.quota_exhausted = True
    done = subprocess.run([*CLI, "run", str(write_config(tmp_path / "j.yaml", raw))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr[-2000:]
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("imagefleet: run ")]
    assert len(line) == 1 and "insufficient_quota" in line[0] and "0 image(s) stored" in line[0], done.stderr
    # the manifest says what happened: every row skipped with the provider's reason (a rerun makes them)
    rows = manifest(s3_env, bucket, "q")
    assert len(rows) == 4 and all(r["status"] == "skipped" and "insufficient_quota" in r["error"] for r in rows)
    assert OPENAI_KEY not in done.stderr and OPENAI_KEY not in done.stdout


def test_an_account_stop_mid_run_stores_what_was_paid_and_the_rerun_buys_only_the_rest(
        tmp_path: Path, s3_env: Any, bucket: str, fake: FakeHosted, capsys: Any) -> None:
    """Gemini's daily quota runs out after 3 paid images of 6: the 3 are stored and in the manifest at their
    price, the run ends with one line (exit 1), and a rerun once the quota is back pays for the other 3 only."""
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(6)]})
    raw = hosted_only(src, f"s3://{bucket}/stop", fake, "gemini")
    raw["cluster"]["executor"] = "in_process"
    cfg = write_config(tmp_path / "j.yaml", raw)
    fake.knobs.quota_after_paid = 3
    assert generate.main([str(cfg), "--progress", "off"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped by the provider" in err[0] and "3 image(s) stored" in err[0], err
    rows = manifest(s3_env, bucket, "stop")
    assert sorted(r["status"] for r in rows) == ["ok"] * 3 + ["skipped"] * 3
    assert len(objects(s3_env, bucket, "stop/images/")) == 3 == fake.paid_count()
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(fake.paid_usd())
    fake.knobs.quota_after_paid = -1  # the next day
    assert generate.main([str(cfg), "--progress", "off"]) == 0
    rows = manifest(s3_env, bucket, "stop")
    assert [r["status"] for r in rows] == ["ok"] * 6 and fake.paid_count() == 6  # nothing paid twice


def hosted_only(src: Path, out: str, fake: FakeHosted, backend: str, **gen: Any) -> dict[str, Any]:
    raw = sleep_job(src, out)
    fast = {"requests_per_min": 6000, "images_per_min": 6000, "initial_backoff_s": 0.05}
    common = {"limits": fast, "pool": {"min_size": 1, "max_size": 1, "initial_size": 1, "num_gpus": 0,
                                       "num_cpus": 0.25, "batch_size": 1}}
    if backend == "openai":
        raw["generators"] = {"h": {"backend": "openai", "base_url": fake.url + "/v1", "quality": "low", **common,
                                   **gen}}
    else:
        raw["generators"] = {"h": {"backend": "gemini", "base_url": fake.url, **common,
                                   "defaults": {"width": 512, "height": 512}, **gen}}
    return raw


def test_budget_stops_on_actual_spend(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None,
                                      fake: FakeHosted) -> None:
    """The answers cost far more than estimated (heavy thinking): the run's ledger stops paid requests once
    actual spend reaches the budget, though the estimate-based scheduling would have allowed all of them."""
    from imagefleet.configs.hosted import GeminiImageConfig

    fake.knobs.thinking_tokens = 100_000  # ~$0.30 of thinking per image on top of the ~$0.03 estimate
    est = GeminiImageConfig(defaults={"width": 512, "height": 512}).estimate_usd()
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(5)]})
    raw = hosted_only(src, f"s3://{bucket}/b", fake, "gemini")
    raw["limits"] = {"budget_usd": round(5.5 * est, 4)}
    assert generate.main([str(write_config(tmp_path / "j.yaml", raw))]) == 0
    rows = manifest(s3_env, bucket, "b")
    assert sorted(r["status"] for r in rows) == ["ok"] + ["skipped"] * 4
    assert fake.paid_count("gemini") == 1
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(fake.paid_usd("gemini"))
    assert all("reached by actual spend" in r["error"] for r in rows if r["status"] == "skipped")


def test_a_hosted_job_in_process_paces_bills_and_keeps_the_budget_without_ray(
        tmp_path: Path, s3_env: Any, bucket: str, fake: FakeHosted, capsys: Any) -> None:
    """`cluster.executor: in_process` with both providers (the one actor keeps the rate limits and the ledger
    itself): 429s are retried, a refusal is a row, each image is billed at the provider's price, and actual
    spend stops paid requests at the budget as on Ray; no key reaches the output or the terminal."""
    from imagefleet.configs.hosted import GeminiImageConfig

    src = write_prompts(tmp_path / "p.parquet", {"prompt": ["a cat", "blocked [refuse]"]})
    raw = hosted_only(src, f"s3://{bucket}/ip", fake, "openai")
    raw["generators"]["h"]["pool"]["batch_size"] = 4
    raw["cluster"]["executor"] = "in_process"
    fake.knobs.rate_limit_n = 1
    assert generate.main([str(write_config(tmp_path / "j.yaml", raw)), "--progress", "off"]) == 0
    rows = {r["prompt"]: r for r in manifest(s3_env, bucket, "ip")}
    assert rows["a cat"]["status"] == "ok" and rows["blocked [refuse]"]["status"] == "refused"
    assert sum(r["requests"] for r in rows.values()) == 3  # one of the two met the 429 and was retried
    assert sum(r["cost_usd"] for r in rows.values()) == pytest.approx(fake.paid_usd("openai"))
    # the budget on actual spend, the ledger kept by the one actor
    fake.knobs.thinking_tokens = 100_000
    est = GeminiImageConfig(defaults={"width": 512, "height": 512}).estimate_usd()
    src = write_prompts(tmp_path / "q.parquet", {"prompt": [f"p{i}" for i in range(5)]})
    raw = hosted_only(src, f"s3://{bucket}/ipb", fake, "gemini")
    raw["limits"] = {"budget_usd": round(5.5 * est, 4)}
    raw["cluster"]["executor"] = "in_process"
    assert generate.main([str(write_config(tmp_path / "k.yaml", raw)), "--progress", "off"]) == 0
    budget = manifest(s3_env, bucket, "ipb")
    assert sorted(r["status"] for r in budget) == ["ok"] + ["skipped"] * 4
    assert sum(r["cost_usd"] for r in budget) == pytest.approx(fake.paid_usd("gemini"))
    out = capsys.readouterr()
    assert "runs   : in this process" in out.out
    for secret in (OPENAI_KEY, GEMINI_KEY):
        assert secret not in out.out + out.err and all(secret not in str(r) for r in [*rows.values(), *budget])


class Killed(BaseException):
    """The driver dying at this point: nothing catches it, nothing after it runs."""


def test_a_rerun_after_a_crash_pays_nothing_again_for_images_it_stored(
        tmp_path: Path, s3_env: Any, bucket: str, fake: FakeHosted, capsys: Any) -> None:
    """The driver dies after the provider billed and the images were stored, before any manifest part held their
    rows. The rerun adopts each stored image from the record it carries (what it cost, its requests, its settings)
    instead of buying it again, and commits a manifest that bills each image once."""
    import imagefleet.pipelines.manifest

    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"a cat {i}" for i in range(3)]})
    raw = hosted_only(src, f"s3://{bucket}/crash", fake, "openai")
    raw["generators"]["h"]["pool"]["batch_size"] = 4
    raw["cluster"]["executor"] = "in_process"
    cfg = str(write_config(tmp_path / "j.yaml", raw))

    def die(tables: Any, *_: Any) -> None:
        for _table in tables:  # every image generated, billed and stored ...
            pass
        raise Killed  # ... and not one manifest part written

    real = imagefleet.pipelines.manifest.write_manifest_tables
    imagefleet.pipelines.manifest.write_manifest_tables = die  # type: ignore[assignment]
    try:
        with pytest.raises(Killed):
            generate.main([cfg, "--progress", "off"])
    finally:
        imagefleet.pipelines.manifest.write_manifest_tables = real
    paid, usd = fake.paid_count("openai"), fake.paid_usd("openai")
    assert paid == 3 and len(objects(s3_env, bucket, "crash/images/")) == 3
    assert not [k for k in objects(s3_env, bucket, "crash/manifest/") if "/part-" in k]
    assert generate.main([cfg, "--progress", "off"]) == 0
    assert fake.paid_count("openai") == paid  # nothing bought twice
    rows = manifest(s3_env, bucket, "crash")
    assert [r["status"] for r in rows] == ["ok"] * 3 and all(r["already_present"] for r in rows)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(usd) and sum(r["requests"] for r in rows) == 3
    assert (rows[0]["width"], rows[0]["height"], rows[0]["mime"]) == (1024, 1024, "image/png")
    assert "0 written, 3 already present" in capsys.readouterr().out


def test_batch_mode_keeps_many_batches_in_flight(tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None,
                                                 fake: FakeHosted) -> None:
    """One actor, 2 requests per batch, a provider turnaround of T: all 20 pool-fulls are in flight at once, so
    they finish in about T, not 20T (before, an actor held one batch at a time). Every image is collected once,
    at the batch price."""
    import time

    turnaround = 4.0
    fake.knobs.batch_turnaround_s, fake.batch_ticks = turnaround, 1
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}" for i in range(40)]})
    raw = hosted_only(src, f"s3://{bucket}/bm", fake, "openai", batch_mode=True, batch_poll_s=0.25,
                      batch_in_flight=32)
    raw["generators"]["h"]["pool"]["batch_size"] = 2
    started = time.monotonic()
    assert generate.main([str(write_config(tmp_path / "j.yaml", raw))]) == 0
    elapsed = time.monotonic() - started
    rows = manifest(s3_env, bucket, "bm")
    assert len(rows) == 40 and all(r["status"] == "ok" for r in rows)
    assert len(fake.batches) == 20 and fake.paid_count("openai", "batch") == 40
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(fake.paid_usd("openai"))
    spans = [(b["created_at"], b["completed_at"]) for b in fake.batches.values()]
    overlap = max(sum(c <= t < d for c, d in spans) for t in range(min(c for c, _ in spans), max(d for _, d in spans)))
    print(f"batch mode: 20 batches of turnaround {turnaround}s in {elapsed:.1f}s, {overlap} in flight at most")
    # structural, not timed (timings live in benchmarks): the old design had at most 1 batch in flight per actor,
    # so 20 pool-fulls took >= 20 turnarounds; measured on an idle 2-core machine: ~40 s incl. Ray Data start-up
    assert overlap >= 10, spans


def test_limiter_belongs_to_the_run_and_takes_the_newest_limits(ray_cluster: None) -> None:
    """Before: a detached limiter kept the first run's limits forever. Now each run's driver applies its own."""
    import ray

    from imagefleet.actors.hosted import start_limiter
    from imagefleet.configs.hosted import RateLimits

    first = start_limiter("imagefleet-limiter-test", RateLimits(requests_per_min=10, images_per_min=10))
    assert ray.get(first.limits.remote()) == (10, 10)
    second = start_limiter("imagefleet-limiter-test", RateLimits(requests_per_min=600, images_per_min=300))
    assert ray.get(second.limits.remote()) == pytest.approx((600, 300))
    assert ray._private.state.actors(first._actor_id.hex())["IsDetached"] is False  # it ends with the run


def test_edits_on_both_providers_through_a_run_and_resume(
    tmp_path: Path, s3_env: Any, bucket: str, ray_cluster: None, fake: FakeHosted
) -> None:
    """`imagefleet run` with source.task=edit fanned out to GPT Image and Nano Banana: each row's reference images
    reach the provider (the fake answers in their mean colour), the manifest records them and costs what was
    billed (input image tokens included); a rerun bills nothing and redoes nothing."""
    import io

    from PIL import Image

    from tests.support.fake_hosted import mean_colour

    refs = tmp_path / "refs"
    refs.mkdir()
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("white", (250, 250, 250))):
        Image.new("RGB", (64, 48), colour).save(refs / f"{name}.png")
    src = write_prompts(tmp_path / "p.parquet", {
        "id": ["one", "two", "bad"],
        "prompt": ["the mug on a beach", "the mug and the vase together", "the lamp"],
        "image": [["refs/red.png"], ["refs/red.png", "refs/blue.png"], ["refs/nope.png"]],
    })
    raw = hosted_job(src, Path("unused"), f"s3://{bucket}/edits", fake)
    del raw["generators"]["tiny"]
    raw["routing"] = {"mode": "fanout", "fanout": ["oa", "nb"]}
    raw["source"]["task"] = "edit"
    job = write_config(tmp_path / "job.yaml", raw)
    assert generate.main([str(job), "--progress=off"]) == 0
    rows = manifest(s3_env, bucket, "edits")
    by = {(r["id"], r["generator"]): r for r in rows}
    assert len(rows) == 6
    for gen in ("oa", "nb"):
        bad = by[("bad", gen)]
        assert bad["status"] == "error" and "nope.png: not found, not allowed or not an image" in bad["error"]
        for rid, names in (("one", ["red"]), ("two", ["red", "blue"])):
            row = by[(rid, gen)]
            assert row["status"] == "ok" and row["task"] == "edit", row
            assert [Path(u).name for u in row["input_images"]] == [f"{n}.png" for n in names]
            body = s3_env.client().get_object(Bucket=bucket, Key=row["image_uri"].split("/", 3)[3])["Body"].read()
            with Image.open(io.BytesIO(body)) as img:
                got = img.convert("RGB").getpixel((0, 0))
            assert got == mean_colour([(refs / f"{n}.png").read_bytes() for n in names])
    assert {len(i.images) for i in fake.inputs} == {1, 2} and len(fake.inputs) == 4
    for gen, provider in (("oa", "openai"), ("nb", "gemini")):
        assert sum(r["cost_usd"] for r in rows if r["generator"] == gen) == pytest.approx(fake.paid_usd(provider))
    paid = fake.paid_count()
    assert generate.main([str(job), "--progress=off", "--set", "cluster.executor=in_process"]) == 0  # same either way
    assert fake.paid_count() == paid
    again = manifest(s3_env, bucket, "edits")
    assert all(r["already_present"] for r in again if r["status"] == "ok")


def test_quality_auto_is_budgeted_as_the_high_image_it_may_bill(tmp_path: Path, s3_env: Any, bucket: str,
                                                                  fake: FakeHosted) -> None:
    """gpt-image-2 at the default `quality: auto` renders and bills up to high (the strict fake bills the price
    calculator's 1024x1024 high: 7,024 tokens, $0.21). A $0.30 budget buys one such image, not three: the estimate
    prices auto as high, so the spend stays within the budget plus one in-flight request's formula cost (it
    bought two, $0.42, when auto was estimated as medium)."""
    from imagefleet.configs.hosted import OpenAIImagesConfig

    per_image = OpenAIImagesConfig(defaults={"width": 1024, "height": 1024}).estimate_usd()
    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"a product shot {i}" for i in range(4)]})
    raw = hosted_only(src, f"s3://{bucket}/auto", fake, "openai", quality="auto",
                      defaults={"width": 1024, "height": 1024})
    raw["limits"] = {"budget_usd": 0.30}
    raw["cluster"]["executor"] = "in_process"
    assert generate.main([str(write_config(tmp_path / "j.yaml", raw)), "--progress", "off"]) == 0
    rows = manifest(s3_env, bucket, "auto")
    assert sorted(r["status"] for r in rows) == ["ok"] + ["skipped"] * 3
    assert fake.paid_usd("openai") <= 0.30 + per_image
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(fake.paid_usd("openai"))
    assert fake.paid_count() == 1


@pytest.mark.parametrize(("backend", "batch_mode", "event"), [
    ("openai", False, "truncated_image_n"),  # a file cut short: its header reads, its pixels don't
    ("gemini", False, "bad_base64_n"),  # an answer the SDK can't parse
    ("openai", True, "batch_drop_lines"),  # a completed batch missing a line
    ("openai", True, "batch_results_expired"),  # its results file expired (404)
    ("gemini", True, "batch_results_expired"),
    ("openai", True, "batch_vanish"),  # the batch itself is gone (404) once it ran
    ("gemini", True, "gemini_batch_omit_metadata"),  # inline results without keys, reversed
])
def test_a_provider_event_loses_no_paid_image_and_the_rerun_pays_once(
        tmp_path: Path, s3_env: Any, bucket: str, fake: FakeHosted, backend: str, batch_mode: bool,
        event: str) -> None:
    """Through `imagefleet run` (in process): the run ends by itself (exit 0); every answer the provider billed is
    either stored once and `ok`, or an error row carrying its price (cost or maybe-billed: the manifest accounts
    for the fake's whole ledger); no image lands under another row's prompt; `--retry-failed` then pays only for
    the rows that failed, once."""
    prompts = [f"a product shot {i}" for i in range(4)]
    src = write_prompts(tmp_path / "p.parquet", {"id": [f"r{i}" for i in range(4)], "prompt": prompts})
    extra: dict[str, Any] = {"batch_mode": True, "batch_poll_s": 0.01} if batch_mode else {}
    if backend == "gemini" and batch_mode:
        extra["batch_input"] = "file" if event == "batch_results_expired" else "inline"
    raw = hosted_only(src, f"s3://{bucket}/ev", fake, backend, **extra)
    raw["generators"]["h"]["pool"]["batch_size"] = 4
    raw["cluster"]["executor"] = "in_process"
    cfg = write_config(tmp_path / "j.yaml", raw)
    if event == "gemini_batch_omit_metadata":
        fake.knobs.gemini_batch_omit_metadata = fake.knobs.gemini_batch_reorder = True
    else:
        setattr(fake.knobs, event, 1 if event.endswith("_n") or event == "batch_drop_lines" else True)
    assert generate.main([str(cfg), "--progress", "off"]) == 0
    rows = manifest(s3_env, bucket, "ev")
    failed = [r for r in rows if r["status"] != "ok"]
    assert failed and all(r["status"] == "error" for r in failed)
    paid = fake.paid_usd(backend)
    recorded = sum(r["cost_usd"] + (r["maybe_billed_usd"] or 0.0) for r in rows)
    assert recorded == pytest.approx(paid, rel=0.35), (recorded, paid)  # estimates stand in for lost usage
    assert all(r["cost_usd"] > 0 or r["maybe_billed_usd"] > 0 for r in failed)  # none recorded at $0
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(objects(s3_env, bucket, "ev/images/")) == len(ok)
    if backend == "gemini":  # each stored image is its own prompt's (the fake renders the prompt into it)
        stored = {r["image_key"] for r in ok}
        assert len(stored) == len(ok)
    # the rerun: the failed rows once, nothing else
    for name in ("truncated_image_n", "bad_base64_n", "batch_drop_lines"):
        setattr(fake.knobs, name, 0)
    fake.knobs.batch_results_expired = fake.knobs.gemini_batch_omit_metadata = fake.knobs.batch_vanish = False
    before = fake.paid_count(backend)
    assert generate.main([str(cfg), "--retry-failed", "--progress", "off"]) == 0
    assert [r["status"] for r in manifest(s3_env, bucket, "ev")] == ["ok"] * 4
    assert fake.paid_count(backend) - before == len(failed)
