"""A hosted provider's image file is stored exactly as sent (C2PA chunk, alpha, ICC profile), end to end: generation
→ writer → resume, shards, scoring, serving; plus the two billing columns (`requests`, `maybe_billed_usd`)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import tarfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms

from imagefleet.actors import manifest_schema as ms
from imagefleet.actors.backend_io import Outcome, Request, sniff_mime
from imagefleet.actors.escalator import Escalator
from imagefleet.actors.generation import run_generation
from imagefleet.actors.image_writer import ImageWriter, image_file
from imagefleet.actors.keys import image_key
from imagefleet.actors.layout import MANIFEST_DIR, image_rel, manifest_part
from imagefleet.actors.local_store import RECORD_XATTR, LocalStore
from imagefleet.actors.resume_index import load_index
from imagefleet.actors.shard_writer import ShardWriter
from imagefleet.configs.storage import StoreSpec
from imagefleet.configs.writer import ImageWriterConfig, ShardWriterConfig

CABX = b"jumb-c2pa-manifest-store-stand-in"
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def rgba(w: int = 48, h: int = 32) -> Image.Image:
    """Left half opaque red, right half fully transparent (what a `background: transparent` image looks like)."""
    px = np.zeros((h, w, 4), np.uint8)
    px[:, : w // 2] = (220, 30, 30, 255)
    px[:, w // 2 :] = (0, 0, 0, 0)
    return Image.fromarray(px)


def with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """`png` with an ancillary chunk inserted before IEND (how C2PA embeds its JUMBF store: `caBX`)."""
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def provider_png() -> bytes:
    buf = io.BytesIO()
    rgba().save(buf, format="PNG", icc_profile=SRGB)
    return with_chunk(buf.getvalue(), b"caBX", CABX)


def provider_jpeg() -> bytes:
    buf = io.BytesIO()
    rgba().convert("RGB").save(buf, format="JPEG", quality=70, icc_profile=SRGB)
    return buf.getvalue()


def provider_webp() -> bytes:
    buf = io.BytesIO()
    rgba().save(buf, format="WEBP", quality=60)
    return buf.getvalue()


FILES = {"png": provider_png, "jpeg": provider_jpeg, "webp": provider_webp}
EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class RecordingStore(LocalStore):
    """A real local store that also remembers the content type each object was written with."""

    content_types: dict[str, str]

    def put_if_absent(self, rel: str, data: bytes, content_type: str, sha256: str,
                      record: str = "") -> tuple[bool, str]:
        self.content_types[rel] = content_type
        return super().put_if_absent(rel, data, content_type, sha256, record)


def pending(n: int = 1, **extra: Any) -> dict[str, np.ndarray]:
    keys = [image_key(model="gpt-image-2", revision="api", scheduler="", prompt=f"p{i}", negative_prompt="", seed=i,
                      width=1024, height=1024, num_steps=1, guidance_scale=0) for i in range(n)]
    batch = {
        "prompt": np.array([f"p{i}" for i in range(n)], dtype=object),
        "negative_prompt": np.array([""] * n, dtype=object), "seed": np.arange(n),
        "width": np.full(n, 1024), "height": np.full(n, 1024), "num_steps": np.ones(n, np.int32),
        "guidance_scale": np.zeros(n), "image_key": np.array(keys, dtype=object),
        "status": np.array(["pending"] * n, dtype=object), "error": np.array([""] * n, dtype=object),
        "enqueued_at": np.full(n, time.time()),
    }
    batch.update(extra)
    return batch


def generate(outcomes: list[Outcome], batch: dict[str, np.ndarray], usd_per_image: float = 0.5) -> dict[str, Any]:
    def fake(reqs: Sequence[Request]) -> list[Outcome]:
        return outcomes[: len(reqs)]

    return run_generation(batch, batch_size=8, generate=fake, is_fatal=lambda e: False, usd_per_second=0.0,
                          usd_per_image=usd_per_image)


def writer(tmp: Path, fmt: str = "webp", keep: bool = True) -> tuple[ImageWriter, RecordingStore]:
    w = ImageWriter(ImageWriterConfig(uri=str(tmp), format=fmt, quality=90, png_compress_level=1,
                                      keep_provider_bytes=keep, num_upload_threads=2, store=StoreSpec(kind="local")))
    store = RecordingStore(str(tmp), StoreSpec(kind="local"))
    store.content_types = {}
    w.store = store
    return w, store


def test_sniff_mime() -> None:
    assert [sniff_mime(FILES[f]()) for f in ("png", "jpeg", "webp")] == ["image/png", "image/jpeg", "image/webp"]
    assert sniff_mime(b"GIF89a...") == sniff_mime(b"") == sniff_mime(b"RIFF\0\0\0\0WAVE") == ""


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_provider_file_is_stored_byte_for_byte(tmp_path: Path, fmt: str) -> None:
    data = FILES[fmt]()
    out = generate([Outcome(encoded=data, mime=f"image/{fmt}", cost_usd=0.04, requests=2)], pending())
    # generation keeps the file, reads its size from the header, and records the type
    assert out["status"][0] == "generated" and out["image"][0] == data and out["image_mime"][0] == f"image/{fmt}"
    assert (out["width"][0], out["height"][0]) == (48, 32) and out["requests"][0] == 2 and out["cost_usd"][0] == 0.04
    # the writer (output.format webp) stores it as sent, in its own format
    w, store = writer(tmp_path, fmt="webp")
    written = w(out)
    rel = image_rel(str(out["image_key"][0]), fmt)
    assert written["status"][0] == "ok" and written["image_uri"][0].endswith(f".{EXT[fmt]}")
    stored = (tmp_path / rel).read_bytes()
    assert stored == data and written["sha256"][0] == hashlib.sha256(stored).hexdigest()
    assert written["bytes"][0] == len(data) and written["mime"][0] == store.content_types[rel] == f"image/{fmt}"
    assert "image" not in written and "image_mime" not in written
    if fmt == "png":
        assert CABX in stored and Image.open(io.BytesIO(stored)).info["icc_profile"] == SRGB
        assert Image.open(io.BytesIO(stored)).mode == "RGBA"


def test_missing_or_wrong_declared_mime_follows_the_bytes(tmp_path: Path) -> None:
    jpeg = provider_jpeg()
    out = generate([Outcome(encoded=jpeg), Outcome(encoded=jpeg, mime="image/png")], pending(2))
    assert list(out["image_mime"]) == ["image/jpeg", "image/jpeg"]
    assert list(out["requests"]) == [1, 1]  # a delivered file came from a request, whatever the backend counted
    written, _ = writer(tmp_path)
    assert all(uri.endswith(".jpg") for uri in written(out)["image_uri"])


def test_a_provider_file_in_another_format_is_encoded_as_the_output_format(tmp_path: Path) -> None:
    buf = io.BytesIO()
    rgba().save(buf, format="GIF")
    out = generate([Outcome(encoded=buf.getvalue(), mime="image/gif")], pending())
    assert out["status"][0] == "generated" and out["image_mime"][0] == "image/gif"
    written = writer(tmp_path, fmt="png")[0](out)
    assert written["image_uri"][0].endswith(".png") and written["mime"][0] == "image/png"
    assert Image.open(written["image_uri"][0]).format == "PNG"


@pytest.mark.parametrize(("fmt", "alpha"), [("png", True), ("webp", True), ("jpeg", False)])
def test_not_keeping_provider_bytes_reencodes_and_keeps_alpha(tmp_path: Path, fmt: str, alpha: bool) -> None:
    out = generate([Outcome(encoded=provider_png(), mime="image/png")], pending())
    w, store = writer(tmp_path, fmt=fmt, keep=False)
    written = w(out)
    rel = image_rel(str(out["image_key"][0]), fmt)
    assert written["image_uri"][0].endswith(f".{EXT[fmt]}") and store.content_types[rel] == f"image/{fmt}"
    img = Image.open(tmp_path / rel)
    assert img.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt] and img.size == (48, 32)
    assert img.info.get("icc_profile") == SRGB  # colour management survives the re-encode
    px = np.asarray(img)
    if alpha:
        assert img.mode == "RGBA" and px[0, 0, 3] == 255 and px[0, -1, 3] == 0
    else:  # JPEG has no alpha: the transparent half is laid on white
        assert img.mode == "RGB" and (px[0, -1] > 240).all() and px[0, 0, 0] > 180
    if fmt == "png":
        assert np.array_equal(px, np.asarray(rgba()))


def test_undecodable_bytes_are_an_error_row_that_keeps_its_cost() -> None:
    out = generate([Outcome(encoded=b"\x89PNG\r\n\x1a\n truncated", mime="image/png", requests=1),
                    Outcome(encoded=b"<html>503</html>", mime="image/png", cost_usd=0.07, requests=3,
                            maybe_billed_usd=0.02)], pending(2), usd_per_image=0.25)
    assert list(out["status"]) == ["error", "error"]
    assert set(out["error"]) == {"provider returned undecodable image bytes"}
    assert list(out["cost_usd"]) == [0.25, 0.07]  # the provider billed a delivered image: flat price, or measured
    assert list(out["requests"]) == [1, 3] and list(out["maybe_billed_usd"]) == [0.0, 0.02]
    assert list(out["image"]) == [b"", b""]


def test_billing_columns_accumulate_and_reach_the_manifest(tmp_path: Path) -> None:
    from imagefleet.pipelines.manifest import _to_manifest_rows

    # a cascade row on its second generator already paid for a draft; a refusal and an error still sent requests
    b = pending(3, requests=np.array([2, 0, 0], np.int32), maybe_billed_usd=np.array([0.01, 0.0, 0.0]),
                cost_usd=np.array([0.03, 0.0, 0.0]))
    out = generate([Outcome(encoded=provider_webp(), mime="image/webp", cost_usd=0.04, requests=3,
                            maybe_billed_usd=0.04),
                    Outcome(refusal="moderation_blocked", requests=1),
                    Outcome(error="timed out 3 times", requests=3, maybe_billed_usd=0.12)], b)
    assert list(out["requests"]) == [5, 1, 3] and out["requests"].dtype == np.int32
    assert np.allclose(out["maybe_billed_usd"], [0.05, 0.0, 0.12]) and np.allclose(out["cost_usd"], [0.07, 0.0, 0.0])
    written, _ = writer(tmp_path)
    rows = written(out)
    table = pa.table({k: list(v) for k, v in rows.items() if k in ms.NAMES})
    manifest = _to_manifest_rows(table, run_id="r1").to_pylist()
    assert [r["requests"] for r in manifest] == [5, 1, 3]
    assert [r["maybe_billed_usd"] for r in manifest] == pytest.approx([0.05, 0.0, 0.12])
    assert manifest[0]["mime"] == "image/webp" and manifest[1]["mime"] == ""


def test_a_provider_format_image_counts_as_present_on_a_rerun(tmp_path: Path) -> None:
    out = generate([Outcome(encoded=provider_png(), mime="image/png", requests=1)], pending())
    w, _ = writer(tmp_path, fmt="webp")
    written = w(out)
    key = str(out["image_key"][0])
    manifest_row = {c: written[c][0].item() if hasattr(written[c][0], "item") else written[c][0]
                    for c in ("image_key", "status", "sha256", "bytes", "error", "mime", "requests")}
    (tmp_path / MANIFEST_DIR).mkdir()
    pq.write_table(pa.Table.from_pylist([{**manifest_row, "generator": "gpt", "model": "gpt-image-2@api"}]),
                   tmp_path / manifest_part("r1", 0))
    store = LocalStore(str(tmp_path), StoreSpec(kind="local"))
    # output.format webp, the object is the provider's .png: found (no second payment for the same image)
    prior = load_index(store, "webp").get(key)
    assert prior is not None and prior.status == "ok" and prior.carried["mime"] == "image/png"
    assert load_index(store, "png").get(key) is not None
    # a run that re-encodes providers' files wants it as webp; a local model's png is not a webp either
    assert load_index(store, "webp", keep_provider_bytes=False).get(key) is None
    pq.write_table(pa.Table.from_pylist([{**manifest_row, "requests": 0, "generator": "sd", "model": "sd@main"}]),
                   tmp_path / manifest_part("r1", 0))
    with contextlib.suppress(AttributeError, OSError):  # nor may its own record say otherwise
        os.removexattr(tmp_path / image_rel(key, "png"), RECORD_XATTR)
    assert load_index(store, "webp").get(key) is None and load_index(store, "png").get(key) is not None
    # the cached row the writer reports points at the stored .png
    from imagefleet.actors.manifest_schema import prior_text

    cached = pending(1, status=np.array(["cached"], dtype=object),
                     prior=np.array([prior_text(prior.sha256, prior.bytes, {"mime": "image/png"})], dtype=object),
                     image=np.array([b""], dtype=object))
    again = w(cached)
    assert again["image_uri"][0] == written["image_uri"][0] and again["already_present"][0]
    assert again["mime"][0] == "image/png"


def test_shard_members_take_the_stored_format(tmp_path: Path) -> None:
    files = [provider_png(), provider_jpeg(), provider_webp()]
    out = generate([Outcome(encoded=d, mime="") for d in files], pending(3))
    written, _ = writer(tmp_path, fmt="png")
    rows = written(out)
    group = pa.Table.from_pylist([{"shard": 0, "image_key": rows["image_key"][i], "image_uri": rows["image_uri"][i],
                                   "status": "ok"} for i in range(3)])
    result = ShardWriter(ShardWriterConfig(uri=str(tmp_path), store=StoreSpec(kind="local"), num_shards=1,
                                           run_id="e1"))(group).to_pylist()[0]
    by_key = {rows["image_key"][i]: files[i] for i in range(3)}
    with tarfile.open(tmp_path / result["path"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    images = {n: d for n, d in members.items() if not n.endswith((".json", ".txt"))}
    assert sorted(n.rsplit(".", 1)[1] for n in images) == ["jpg", "png", "webp"]
    for name, data in images.items():
        assert data == by_key[name.split(".")[0]]
        assert json.loads(members[name.split(".")[0] + ".json"])["image_key"] == name.split(".")[0]


def test_cascade_draft_from_a_provider_is_stored_in_its_format(tmp_path: Path) -> None:
    from imagefleet.configs.prep import GeneratorIdentity
    from imagefleet.configs.request import GenerationDefaults
    from imagefleet.configs.routing import CascadeConfig

    out = generate([Outcome(encoded=provider_webp(), mime="image/webp", requests=1)], pending())
    out.update(clip_score=np.array([0.1]), generator=np.array(["nano"], dtype=object),
               model=np.array(["gemini@api"], dtype=object), explicit=np.array([""], dtype=object))
    heavy = GeneratorIdentity(model="sdxl", revision="main", scheduler="",
                              defaults=GenerationDefaults(width=64, height=64, num_steps=2, guidance_scale=5.0))
    esc = Escalator(CascadeConfig(draft="nano", escalate="sdxl", threshold=0.5), "sdxl", heavy)(out)
    assert esc["status"][0] == "pending" and esc["image"][0] == b"" and esc["image_mime"][0] == ""
    assert esc["draft_image_mime"][0] == "image/webp" and (esc["draft_width"][0], esc["draft_height"][0]) == (48, 32)
    # the heavy (local) generator renders raw pixels: the row's mime goes back to ''
    heavy_out = run_generation(esc, batch_size=4, generate=lambda reqs: [np.zeros((64, 64, 3), np.uint8)] * len(reqs),
                               is_fatal=lambda e: False, usd_per_second=0.0, usd_per_image=0.0)
    assert heavy_out["image_mime"][0] == "" and heavy_out["requests"][0] == 1
    rows = writer(tmp_path, fmt="png")[0](heavy_out)
    assert rows["image_uri"][0].endswith(".png") and rows["draft_image_uri"][0].endswith(".webp")
    assert Path(rows["draft_image_uri"][0]).read_bytes() == provider_webp()


def test_serving_answers_with_the_provider_file() -> None:
    from imagefleet.pipelines.serve_protocol import image_entry

    data = provider_png()
    kept = image_file(data, "image/png", 0, 0, fmt="jpeg", quality=90, png_compress_level=1, keep_provider_bytes=True)
    assert kept == (data, "png")
    redone, fmt = image_file(data, "image/png", 0, 0, fmt="jpeg", quality=90, png_compress_level=1,
                             keep_provider_bytes=False)
    assert fmt == "jpeg" and Image.open(io.BytesIO(redone)).format == "JPEG"
    entry = image_entry({"image_key": "k", "seed": 1, "width": 48, "height": 32, "encoded": data, "format": "png",
                         "generate_ms": 1.0, "cost_usd": 0.04, "batch_size": 1})
    assert entry["format"] == "png" and entry["content_type"] == "image/png"


def test_scorer_scores_a_provider_file_like_its_pixels(tmp_path_factory: pytest.TempPathFactory) -> None:
    from imagefleet.actors.clip_scorer import ClipScorer
    from imagefleet.configs.scorer import ClipScorerConfig
    from imagefleet.jobs.tiny_models import build_tiny_clip

    scorer = ClipScorer(ClipScorerConfig(model=str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))))
    pixels = np.asarray(rgba().convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    batch = {"prompt": np.array(["a red square"] * 3, dtype=object),
             "status": np.array(["generated"] * 3, dtype=object),
             "width": np.array([48, 48, 48]), "height": np.array([32, 32, 32]),
             "image": np.array([pixels.tobytes(), buf.getvalue(), b"\x89PNG\r\n\x1a\n cut"], dtype=object),
             "image_mime": np.array(["", "image/png", "image/png"], dtype=object)}
    scores = scorer(batch)["clip_score"]
    # the same pixels score the same (up to float noise of the batched model call); an undecodable file: unscored
    assert np.isfinite(scores[0]) and scores[1] == pytest.approx(scores[0], rel=1e-4) and np.isnan(scores[2])
