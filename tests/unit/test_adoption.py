"""Images stored by a run that died before their manifest rows were written are adopted by the rerun from the
record each image carries (actors.resume_index.Unlisted), not generated and paid for again: the hosted image in
its own format, its cost and settings; an escalated cascade row through its kept draft; never an image without a
record, in another format, or one its run would re-encode."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagefleet.actors.backend_io import Outcome
from imagefleet.actors.escalator import Escalator
from imagefleet.actors.generation import run_generation
from imagefleet.actors.image_records import ESCALATED_TO, image_record
from imagefleet.actors.layout import MANIFEST_DIR, image_rel, manifest_part
from imagefleet.actors.local_store import RECORD_XATTR, LocalStore
from imagefleet.actors.resume_index import load_index
from imagefleet.actors.storage import RECORD_MAX_BYTES
from imagefleet.configs.storage import StoreSpec
from tests.unit.test_provider_bytes import generate, pending, provider_png, provider_webp, writer


def _xattrs_work() -> bool:
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as fh:
        try:
            os.setxattr(fh.fileno(), "user.imagefleet.probe", b"1")
            return True
        except (AttributeError, OSError):
            return False


# a local folder keeps records as extended attributes (S3 as metadata: tests/unit/test_storage.py)
pytestmark = pytest.mark.skipif(not _xattrs_work(), reason="no user extended attributes on this file system")


class CountingStore(LocalStore):
    """A real local store that counts record reads (a HEAD each on S3; read from several threads)."""

    reads = 0
    lock = threading.Lock()

    def record_of(self, rel: str) -> tuple[str, str]:
        with self.lock:
            type(self).reads += 1
        return super().record_of(rel)


def store_of(tmp: Path) -> LocalStore:
    return LocalStore(str(tmp), StoreSpec(kind="local"))


def manifest_rows(tmp: Path, rows: list[dict[str, Any]]) -> None:
    (tmp / MANIFEST_DIR).mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp / manifest_part("r1", 0))


def test_a_hosted_image_whose_row_was_lost_is_adopted_with_what_it_cost(tmp_path: Path) -> None:
    out = generate([Outcome(encoded=provider_png(), mime="image/png", cost_usd=0.19, requests=2)], pending(),
                   usd_per_image=0.19)
    out.update(generator=np.array(["gpt"], dtype=object), model=np.array(["gpt-image-2@api"], dtype=object))
    written = writer(tmp_path, fmt="webp")[0](out)  # the row never reaches a manifest: the driver died here
    key = str(out["image_key"][0])
    prior = load_index(store_of(tmp_path), "webp").get(key)
    assert prior is not None and prior.status == "ok"
    assert prior.sha256 == written["sha256"][0] and prior.bytes == written["bytes"][0]
    assert prior.carried["cost_usd"] == 0.19 and prior.carried["requests"] == 2 and prior.carried["mime"] == "image/png"
    assert prior.carried["generated_at"] == out["generated_at"][0] and prior.carried["encode_ms"] >= 0
    # the size the API returned; the request's own settings (seed, steps, guidance) are the request's, never a record's
    assert prior.settings == {"width": 48, "height": 32}
    # a run that re-encodes providers' files wants a .webp: this .png is not what it would store
    assert load_index(store_of(tmp_path), "webp", keep_provider_bytes=False).get(key) is None
    # an earlier error row for the key doesn't hide the image (a --retry-failed run made it, then died)
    manifest_rows(tmp_path, [{"image_key": key, "status": "error", "sha256": "", "bytes": 0, "error": "timed out",
                              "generator": "gpt", "model": "gpt-image-2@api"}])
    again = load_index(store_of(tmp_path), "webp").get(key)
    assert again is not None and again.status == "ok" and again.carried["cost_usd"] == 0.19


def test_an_image_without_a_record_or_in_another_format_is_redone(tmp_path: Path) -> None:
    out = generate([Outcome(encoded=provider_webp(), mime="image/webp", requests=1)], pending(2))
    keys = [str(k) for k in out["image_key"]]
    store = store_of(tmp_path)
    store.put_if_absent(image_rel(keys[0], "webp"), b"old bytes", "image/webp", "abc")  # an older version: no record
    writer(tmp_path, fmt="webp")[0]({k: v[1:] for k, v in out.items()})
    assert load_index(store, "webp").get(keys[0]) is None
    assert load_index(store, "webp").get(keys[1]) is not None
    # a local model's image stored as webp is not present for a run that writes png
    local = dict(out, requests=np.zeros(2, np.int32))
    (tmp_path / "b").mkdir()
    writer(tmp_path / "b", fmt="webp")[0]({k: v[1:] for k, v in local.items()})
    assert load_index(store_of(tmp_path / "b"), "png").get(keys[1]) is None
    assert load_index(store_of(tmp_path / "b"), "webp").get(keys[1]) is not None


@pytest.mark.parametrize(("draft_negative", "heavy_negative"), [("", "blurry"), ("blurry, lowres", "")])
def test_an_escalated_row_is_adopted_through_its_kept_draft(tmp_path: Path, draft_negative: str,
                                                            heavy_negative: str) -> None:
    from imagefleet.configs.prep import GeneratorIdentity
    from imagefleet.configs.request import GenerationDefaults
    from imagefleet.configs.routing import CascadeConfig

    out = generate([Outcome(encoded=provider_webp(), mime="image/webp", requests=1, cost_usd=0.04)],
                   pending(negative_prompt=np.array([draft_negative], dtype=object)), usd_per_image=0.04)
    out.update(clip_score=np.array([0.1]), generator=np.array(["nano"], dtype=object),
               model=np.array(["gemini@api"], dtype=object), explicit=np.array([""], dtype=object))
    draft_key = str(out["image_key"][0])
    heavy = GeneratorIdentity(model="sdxl", revision="main", scheduler="",
                              defaults=GenerationDefaults(width=64, height=64, num_steps=2, guidance_scale=5.0,
                                                          negative_prompt=heavy_negative))
    esc = Escalator(CascadeConfig(draft="nano", escalate="sdxl", threshold=0.5), "sdxl", heavy)(out)
    final = run_generation(esc, batch_size=4, generate=lambda reqs: [np.zeros((64, 64, 3), np.uint8)] * len(reqs),
                           is_fatal=lambda e: False, usd_per_second=0.0, usd_per_image=0.0)
    rows = writer(tmp_path, fmt="png")[0](final)
    prior = load_index(store_of(tmp_path), "png").get(draft_key)  # the key a rerun computes for the row
    assert prior is not None and prior.final_key == final["image_key"][0] != draft_key
    assert prior.final_generator == final["generator"][0] and prior.final_model == final["model"][0]
    assert prior.carried["route"] == "escalated" and prior.carried["draft_image_key"] == draft_key
    assert prior.carried["draft_image_uri"] == rows["draft_image_uri"][0]
    assert prior.carried["cost_usd"] == final["cost_usd"][0] and prior.settings["width"] == 64
    # the heavy generator's negative prompt, '' too, as the manifest path reports it (the row's own is the draft's)
    assert prior.settings["negative_prompt"] == heavy_negative == final["negative_prompt"][0]
    # a heavy image whose record names another draft is not this one's (the draft generator's config changed)
    heavy_rel = image_rel(str(final["image_key"][0]), "png")
    os.setxattr(tmp_path / heavy_rel, RECORD_XATTR, store_of(tmp_path).record_of(heavy_rel)[0].replace(
        draft_key, "f" * 40).encode())
    assert load_index(store_of(tmp_path), "png").get(draft_key) is None
    # the writer stores the draft first; dying before the heavy image leaves a draft pointing at nothing: redone
    Path(rows["image_uri"][0]).unlink()
    assert load_index(store_of(tmp_path), "png").get(draft_key) is None


def test_keys_an_ok_row_names_cost_no_record_reads_even_after_a_format_switch(tmp_path: Path) -> None:
    """A committed output of local PNGs, rerun as webp: the manifest already rules every PNG out, so not one
    record is read (on S3 each would be a HEAD, one by one, in the run's one preprocessor)."""
    n = 20
    local = run_generation(pending(n, width=np.full(n, 8), height=np.full(n, 8)), batch_size=32,
                           generate=lambda reqs: [np.zeros((8, 8, 3), np.uint8)] * len(reqs),
                           is_fatal=lambda e: False, usd_per_second=0.0, usd_per_image=0.0)
    rows = writer(tmp_path, fmt="png")[0](local)
    manifest_rows(tmp_path, [{c: rows[c][i].item() if hasattr(rows[c][i], "item") else rows[c][i]
                              for c in ("image_key", "status", "sha256", "bytes", "error", "mime", "requests")}
                             for i in range(n)])
    index = load_index(CountingStore(str(tmp_path), StoreSpec(kind="local")), "webp")
    assert all(index.get(str(k)) is None for k in local["image_key"]) and CountingStore.reads == 0
    assert load_index(store_of(tmp_path), "png").get(str(local["image_key"][0])) is not None
    # a webp run made one of them and died before its manifest: that .webp is adopted, its .png still isn't read
    w, _ = writer(tmp_path, fmt="webp")
    w({k: v[:1] for k, v in local.items()})
    index = load_index(CountingStore(str(tmp_path), StoreSpec(kind="local")), "webp")
    assert index.get(str(local["image_key"][0])) is not None and CountingStore.reads == 1


def test_a_malformed_record_is_redone_and_an_unreachable_store_fails_the_run(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    keys = [c * 40 for c in "abcdef"]
    for key, record in zip(keys, ['{"requests":"two"}', '{"width":"x"}', '{"seed":true}', "[1]", "{not json",
                                  '{"cost_usd":"free","newer":1}'], strict=True):
        store.put_if_absent(image_rel(key, "png"), b"x", "image/png", "s", record)
    index = load_index(store, "png")
    assert [index.get(k) for k in keys] == [None] * len(keys)

    class ConnectionClosedError(Exception):  # botocore's name: the store dropped the connection
        pass

    class Down(LocalStore):
        def record_of(self, rel: str) -> tuple[str, str]:
            raise ConnectionClosedError("store down past its retry budget")

    with pytest.raises(ConnectionClosedError):  # not "redone": that would buy the image again
        load_index(Down(str(tmp_path), StoreSpec(kind="local")), "png").get(keys[0])


def test_records_can_be_turned_off(tmp_path: Path) -> None:
    out = generate([Outcome(encoded=provider_png(), mime="image/png", requests=1)], pending())
    w, _ = writer(tmp_path, fmt="png")
    w.cfg = w.cfg.model_copy(update={"image_records": False})
    w(out)
    assert store_of(tmp_path).record_of(image_rel(str(out["image_key"][0]), "png"))[0] == ""
    assert load_index(store_of(tmp_path), "png").get(str(out["image_key"][0])) is None


def test_a_record_leaves_out_empty_values_and_is_dropped_when_over_the_metadata_limit() -> None:
    text = image_record({"cost_usd": np.float64(0.5), "clip_score": float("nan"), "route": "", "requests":
                         np.int32(3), "seed": np.int64(7), ESCALATED_TO: None, "maybe_billed_usd": float("inf"),
                         "pixels": np.zeros(3)})
    assert json.loads(text) == {"cost_usd": 0.5, "requests": 3, "seed": 7} and text.isascii()
    assert image_record({"candidates": "x" * RECORD_MAX_BYTES}) == ""
    assert image_record({"route": "é"}).isascii()
    # best-of-16 from a hosted model still fits (31 candidates do)
    best = json.dumps([{"seed": 1_000_000_000 + k, "score": 31.234567} for k in range(16)])
    assert image_record({"generator": "openai-hd", "model": "gpt-image-2@api", "mime": "image/png",
                         "queue_ms": 12345.678, "generate_ms": 23456.789, "cost_usd": 0.167, "requests": 16,
                         "clip_score": 31.234567, "generated_at": 1764638205.123456, "width": 1024,
                         "height": 1024, "num_steps": 1, "guidance_scale": 0.0, "seed": 1234567890,
                         "candidates": best})


def test_records_are_read_up_front_in_parallel_unless_there_are_too_many(tmp_path: Path) -> None:
    """What a dead run leaves (a few manifest parts' worth) is read while the preprocessor starts, so the rows
    that ask for it don't wait on a HEAD each; an output full of another config's images is read on demand."""
    out = generate([Outcome(encoded=provider_png(), mime="image/png", requests=1)] * 5, pending(5))
    writer(tmp_path, fmt="png")[0](out)
    keys = [str(k) for k in out["image_key"]]

    class Counting(CountingStore):
        reads = 0

    index = load_index(Counting(str(tmp_path), StoreSpec(kind="local")), "png")
    assert Counting.reads == 5
    assert all(index.get(k) is not None for k in keys) and Counting.reads == 5  # nothing read twice
    lazy = index.unlisted
    assert lazy is not None
    lazy.answers.clear()
    Counting.reads = 0
    assert lazy.prefetch(max_keys=4) == 0 and Counting.reads == 0  # too many: on demand
    assert lazy.adopt(keys[0]) is not None and Counting.reads == 1
    assert lazy.prefetch(max_keys=5) == 5
