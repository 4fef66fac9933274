"""Image-conditioned rows, LoRA adapters and output variants, stage by stage without Ray: the input reader, the
preprocessor's keys and error rows, and the generators (sleep stand-in and the tiny diffusers pipeline)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagefleet.actors.input_reader import InputReader
from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.actors.sleep_generator import SleepGenerator
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.prep import InputReaderConfig
from imagefleet.configs.source import InputLimits, variant_size
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.plan import Stores, make_plan
from imagefleet.pipelines.slices import input_base, prep_config
from imagefleet.pipelines.text_to_image import InputError, expected_rows, inspect_source
from tests.helpers import sleep_job, tiny_job

LOCAL = StoreSpec(kind="local")
STORES = Stores(source=LOCAL, output=LOCAL)


def png(path: Path, size: tuple[int, int] = (32, 24), colour: Any = (200, 40, 10), mode: str = "RGB",
        fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


def read_inputs(tmp_path: Path, images: list[Any], masks: list[Any] | None = None, task: str = "image-to-image",
                **limits: Any) -> list[dict[str, str]]:
    cfg = InputReaderConfig(task=task, image_column="image", mask_column="mask", base_uri=str(tmp_path),
                            store=LOCAL, limits=InputLimits(**limits))
    columns: dict[str, Any] = {"prompt": ["p"] * len(images), "image": images}
    if masks is not None:
        columns["mask"] = masks
    out = InputReader(cfg)(pa.table(columns)).to_pylist()
    return [{k: r[k] for k in ("input_images", "input_sha256", "mask_uri", "mask_sha256", "input_error")}
            for r in out]


def test_the_reader_resolves_hashes_and_refuses_bad_inputs_per_row(tmp_path: Path) -> None:
    good = png(tmp_path / "shots" / "a.png")
    png(tmp_path / "mask.png", (32, 24), 255, mode="L")
    png(tmp_path / "small_mask.png", (8, 8), 255, mode="L")
    png(tmp_path / "cmyk.jpg", mode="CMYK", colour=(0, 0, 0, 0), fmt="JPEG")
    png(tmp_path / "big.png", (300, 300))
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    rows = read_inputs(tmp_path, ["shots/a.png", str(good), None, "missing.png", "text.png", "cut.png", "cmyk.jpg",
                                  "big.png", "shots/a.png", "shots/a.png"],
                       [None, "mask.png", None, None, None, None, None, None, "small_mask.png", None],
                       task="edit", max_image_pixels=200 * 200)
    # a relative path is under the table's folder; the same file by two paths has one hash
    assert json.loads(rows[0]["input_images"]) == [str(good)] and rows[0]["input_error"] == ""
    assert rows[0]["input_sha256"] == rows[1]["input_sha256"] and len(rows[0]["input_sha256"]) == 64
    assert rows[1]["mask_uri"] == str(tmp_path / "mask.png") and rows[1]["mask_sha256"]
    errors = [r["input_error"] for r in rows[2:9]]
    assert "no input image" in errors[0]
    assert "missing.png: not found, not allowed or not an image" in errors[1]
    assert "text.png: not found, not allowed or not an image" in errors[2]
    assert "cut.png is not a readable image" in errors[3]
    assert "mode CMYK" in errors[4]
    assert "300x300 pixels; the limit is 40,000" in errors[5]
    assert "mask" in errors[6] and "8x8" in errors[6] and "32x24" in errors[6]
    assert all(r["input_sha256"] == "" for r in rows[2:9])
    too_big = read_inputs(tmp_path, ["shots/a.png"], max_image_bytes=10)[0]["input_error"]
    assert "bytes; the limit is 10 (source.inputs.max_image_bytes)" in too_big


def test_reference_lists_and_inpaint_masks(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png", colour=(0, 0, 255))
    rows = read_inputs(tmp_path, [["a.png", "b.png"], []], task="edit")
    assert len(rows[0]["input_sha256"].split(",")) == 2 and rows[0]["input_error"] == ""
    assert "no input image" in rows[1]["input_error"]
    assert "no mask" in read_inputs(tmp_path, ["a.png"], task="inpaint")[0]["input_error"]
    png(tmp_path / "m.png", (8, 8), 255, mode="L")  # image-to-image takes no mask: the column is not read
    assert read_inputs(tmp_path, ["a.png"], ["m.png"])[0] == {**read_inputs(tmp_path, ["a.png"])[0]}


def test_input_base_is_the_tables_folder() -> None:
    assert input_base("/data/shots/products.parquet") == "/data/shots"
    assert input_base("/data/shots/") == "/data/shots"
    assert input_base("s3://b/shots/*.parquet") == "s3://b/shots"
    assert input_base("s3://b/shots/p.parquet") == "s3://b/shots"


def job(task: str = "image-to-image", **source: Any) -> dict[str, Any]:
    raw = sleep_job("p.parquet", "out")
    raw["source"].update(task=task, **source)
    return raw


def prep(raw: dict[str, Any], columns: dict[str, list[Any]], adapters: dict[str, dict[str, str]] | None = None
         ) -> list[dict[str, Any]]:
    cfg = parse_config(raw)
    stores = Stores(source=LOCAL, output=LOCAL, adapters=adapters or {})
    out = PromptPreprocessor(prep_config(cfg, stores))(pa.table(columns))
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def conditioned(prompt: str = "p", sha: str = "a" * 64, error: str = "", mask: str = "") -> dict[str, list[Any]]:
    return {"prompt": [prompt], "input_images": ['["/x.png"]' if sha else ""], "input_sha256": [sha],
            "mask_uri": ["/m.png" if mask else ""], "mask_sha256": [mask], "input_error": [error]}


def test_keys_follow_input_content_task_and_strength() -> None:
    base = prep(job(), conditioned())[0]
    assert base["status"] == "pending" and base["task"] == "image-to-image" and base["strength"] == 0.8
    other_content = prep(job(), conditioned(sha="b" * 64))[0]
    as_edit = prep(job("edit"), conditioned())[0]
    stronger = prep(job(), {**conditioned(), "strength": [0.5]})[0]
    plain = prep(sleep_job("p.parquet", "out"), {"prompt": ["p"]})[0]
    keys = {base["image_key"], other_content["image_key"], as_edit["image_key"], stronger["image_key"],
            plain["image_key"]}
    assert len(keys) == 5
    assert stronger["strength"] == 0.5 and "strength" in stronger["explicit"]
    assert np.isnan(as_edit["strength"]) and np.isnan(plain["strength"]) and plain["task"] == "text-to-image"


def test_input_problems_become_error_rows() -> None:
    bad = prep(job(), {**conditioned(sha="", error="image /x.png is not a readable image"), "num_images": [2]})
    assert [r["status"] for r in bad] == ["error", "error"] and "not a readable image" in bad[0]["error"]
    too_many = prep(job("edit"), {**conditioned(sha="a" * 64 + ",b" + "b" * 63), "prompt": ["p"]})[0]
    assert too_many["status"] == "pending"  # the stand-in takes 16
    raw = tiny_job("p.parquet", "/m", "out")
    raw["source"]["task"] = "image-to-image"
    two = prep(raw, conditioned(sha="a" * 64 + "," + "b" * 64))[0]
    assert two["status"] == "error" and "2 input images, but generator 'tiny' takes at most 1" in two["error"]
    masked = prep(raw, conditioned(mask="c" * 64))[0]
    assert masked["status"] == "error" and "takes no mask for image-to-image" in masked["error"]
    weak = prep(raw, {**conditioned(), "strength": [0.0]})[0]
    assert weak["status"] == "error" and "strength=0.0" in weak["error"]


def test_a_task_a_generator_cant_do_is_refused_at_load() -> None:
    raw = tiny_job("p.parquet", "/m", "out")
    raw["source"]["task"] = "edit"
    with pytest.raises(ConfigError, match="source.task=edit but generator 'tiny' \\(diffusers\\) can only do"):
        parse_config(raw)


def test_the_schema_check_wants_the_image_and_mask_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"prompt": ["a"], "photo": ["a.png"]}), tmp_path / "p.parquet")
    raw = job("inpaint")
    raw["source"]["uri"] = str(tmp_path / "p.parquet")
    raw["output"]["uri"] = str(tmp_path / "out")
    with pytest.raises(InputError, match="reads input images from column 'image'.*source.columns.image"):
        inspect_source(parse_config(raw), STORES)
    raw["source"]["columns"] = {"image": "photo"}
    with pytest.raises(InputError, match="source.task=inpaint needs a mask per row: column 'mask' is missing"):
        inspect_source(parse_config(raw), STORES)
    pq.write_table(pa.table({"prompt": ["a"], "photo": [1], "mask": ["m.png"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match="'photo' \\(source.columns.image\\) has type int64, expected string or list"):
        inspect_source(parse_config(raw), STORES)


def with_variants(uri: str, out: str, variants: list[str]) -> dict[str, Any]:
    raw = sleep_job(uri, out)
    raw["source"]["variants"] = variants
    return raw


def test_variants_are_separate_images_of_one_request(tmp_path: Path) -> None:
    assert variant_size("1:1", 512, 512) == (512, 512)
    assert variant_size("9:16", 512, 512) == (384, 688)
    assert variant_size("16:9", 1024, 1024) == (1360, 768)
    assert variant_size("768x1344", 512, 512) == (768, 1344)
    rows = prep(with_variants("p.parquet", "out", ["1:1", "4:5", "64x32"]),
                {"prompt": ["a", "b"], "num_images": [2, 1]})
    assert len(rows) == 9
    a = [r for r in rows if r["prompt"] == "a"]
    assert {(r["variant"], r["width"], r["height"]) for r in a} == {("1:1", 16, 16), ("4:5", 16, 16),
                                                                    ("64x32", 64, 32)}
    assert len({r["image_key"] for r in a if r["variant"] == "64x32"}) == 2  # image_index 0 and 1
    assert {r["seed"] for r in a if r["image_index"] == 0} == {a[0]["seed"] if a[0]["image_index"] == 0
                                                               else a[1]["seed"]}  # one request, one seed
    with pytest.raises(ConfigError, match="variant '3:0' is neither"):
        parse_config(with_variants("p", "out", ["3:0"]))
    # the driver counts the variants: the commit wants one manifest row per image
    pq.write_table(pa.table({"prompt": ["a", None], "num_images": [2, 3]}), tmp_path / "p.parquet")
    raw = with_variants(str(tmp_path / "p.parquet"), str(tmp_path / "out"), ["1:1", "4:5"])
    cfg = parse_config(raw)
    made = prep(raw, {"prompt": ["a", None], "num_images": [2, 3]})
    assert expected_rows(cfg, inspect_source(cfg, STORES)) == len(made) == 10


def test_adapters_select_and_key() -> None:
    raw = sleep_job("p.parquet", "out")
    raw["generators"]["sleepy"]["loras"] = [{"name": "brand", "path": "/l1"}, {"name": "film", "path": "/l2",
                                                                                "weight": 0.5, "default": False}]
    hashes = {"sleepy": {"brand": "1" * 64, "film": "2" * 64}}
    rows = prep(raw, {"prompt": ["p"] * 6, "id": list("abcdef"),
                      "loras": [None, "", "film:0.7", "film:0.7, brand", "nope", "brand:x"]}, hashes)
    by = {r["id"]: r for r in rows}
    assert by["a"]["adapters"] == "brand:1" and by["b"]["adapters"] == "" and by["c"]["adapters"] == "film:0.7"
    assert by["d"]["adapters"] == "film:0.7,brand:1"
    assert len({by[k]["image_key"] for k in "abcd"}) == 4
    assert "LoRA adapter 'nope' is not configured for generator 'sleepy' (it has: brand, film)" in by["e"]["error"]
    assert "weight 'x' is not a number" in by["f"]["error"]
    other_file = prep(raw, {"prompt": ["p"], "id": ["a"]}, {"sleepy": {"brand": "3" * 64, "film": "2" * 64}})
    assert other_file[0]["image_key"] != by["a"]["image_key"]  # new weights under the same name: a new image


def sleep_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_the_generator_reads_inputs_again_and_refuses_changed_files(tmp_path: Path) -> None:
    red, blue = png(tmp_path / "red.png", colour=(200, 0, 0)), png(tmp_path / "blue.png", colour=(0, 0, 200))
    raw = job()
    raw["source"]["uri"] = str(tmp_path / "p.parquet")
    rows = read_inputs(tmp_path, ["red.png", "blue.png"])
    table = {"prompt": ["r", "b"], **{k: [r[k] for r in rows] for k in rows[0]}}
    pre = prep(raw, table)
    gen = SleepGenerator(parse_config(raw).generators["sleepy"], input_store=LOCAL)
    out = gen(sleep_batch(pre))
    pixels = [np.frombuffer(b, np.uint8).reshape(16, 16, 3)[0, 0].tolist() for b in out["image"]]
    assert sorted(pixels) == sorted([[200, 0, 0], [0, 0, 200]]) and set(out["status"]) == {"generated"}
    png(red, colour=(1, 2, 3))  # the file changes between hashing and generation
    again = gen(sleep_batch(pre))
    by = dict(zip(again["prompt"], zip(again["status"], again["error"], strict=True), strict=True))
    assert by["r"][0] == "error" and "changed during the run" in by["r"][1]
    assert by["b"] == ("generated", "")
    assert blue.exists()


def test_make_plan_reads_inputs_first_only_when_rows_have_them() -> None:
    plain = make_plan(parse_config(sleep_job("p.parquet", "out")), STORES, ["prompt"], 8)
    plain.check()
    assert [s.name for s in plain.stages][0] == "preprocess"
    plan = make_plan(parse_config(job()), STORES, ["prompt", "image"], 8)
    plan.check()
    assert [s.name for s in plan.stages][:2] == ["inputs", "preprocess"]
    assert plan.generator_stages()[0].kwargs["input_store"] == LOCAL
    assert plan.stages[0].pool.max_size == 2  # the input readers grow to source.inputs.max_readers
    raw = job()
    raw["source"]["inputs"] = {"max_readers": 16}
    wide = make_plan(parse_config(raw), STORES, ["prompt", "image"], 8)
    assert (wide.stages[0].pool.min_size, wide.stages[0].pool.max_size) == (1, 16)


def encoded(arr: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_diffusers_image_to_image_inpaint_and_lora(tiny_model: Path, tmp_path: Path) -> None:
    import dataclasses

    from imagefleet.actors.backend_io import Request
    from imagefleet.actors.diffusers_generator import DiffusersGenerator
    from imagefleet.configs.generator import DiffusersConfig
    from imagefleet.jobs.tiny_models import build_tiny_lora

    lora = build_tiny_lora(tiny_model, tmp_path / "lora")
    cfg = DiffusersConfig(model=str(tiny_model), dtype="float32",
                          loras=[{"name": "brand", "path": str(lora), "default": False}])
    gen = DiffusersGenerator(cfg)
    req = Request(prompt="a red bottle", negative_prompt="", seed=3, width=64, height=64, num_steps=4,
                  guidance_scale=0.0)
    plain = gen._generate([req])[0]
    styled = gen._generate([dataclasses.replace(req, adapters=(("brand", 1.0),))])[0]
    assert np.abs(plain.astype(int) - styled).mean() > 1  # the adapter changes the image...
    assert np.array_equal(gen._generate([req])[0], plain)  # ...and is switched off again for rows without it
    source = encoded(Image.new("RGB", (96, 80), (250, 250, 250)))  # resized to the requested 64x64
    i2i = dataclasses.replace(req, task="image-to-image", images=(source,), strength=0.5)
    first, second = gen._generate([i2i, dataclasses.replace(i2i, seed=4)])
    assert first.shape == (64, 64, 3) and np.array_equal(gen._generate([i2i])[0], first)
    assert not np.array_equal(first, plain)
    left, right = Image.new("L", (96, 80), 0), Image.new("L", (96, 80), 0)
    left.paste(255, (0, 0, 48, 80))
    right.paste(255, (48, 0, 96, 80))
    inpaint = dataclasses.replace(i2i, task="inpaint", mask=encoded(left), strength=1.0)
    a = gen._generate([inpaint])[0]
    b = gen._generate([dataclasses.replace(inpaint, mask=encoded(right))])[0]
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)  # the mask decides what is redrawn
    assert set(gen.task_pipes) == {"text-to-image", "image-to-image", "inpaint"}
    assert gen.task_pipes["inpaint"].unet is gen.pipe.unet  # one copy of the weights


def test_an_escalated_image_conditioned_row_is_keyed_as_the_heavy_generator_renders_it() -> None:
    """The cascade's heavy image of an edit/img2img row is made from the same inputs, with the heavy generator's
    strength and adapters: its key must equal the key of the same row routed straight to the heavy generator."""
    from imagefleet.actors.escalator import Escalator

    raw = job("image-to-image")
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model",
                                  "defaults": {"width": 32, "height": 32, "strength": 0.4},
                                  "loras": [{"name": "brand", "path": "/l"}]}
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5}}
    raw["scorer"] = {"backend": "rule"}
    adapters = {"heavy": {"brand": "9" * 64}}
    drafts = prep(raw, conditioned(), adapters)
    assert drafts[0]["generator"] == "sleepy" and drafts[0]["adapters"] == ""
    batch = {k: np.array([r[k] for r in drafts], dtype=object) for k in drafts[0]}
    batch.update(status=np.array(["generated"], dtype=object), clip_score=np.zeros(1),
                 image=np.array([b"x"], dtype=object))
    cfg = parse_config(raw)
    heavy = prep_config(cfg, Stores(source=LOCAL, output=LOCAL, adapters=adapters)).generators["heavy"]
    out = Escalator(cfg.routing.cascade, "heavy", heavy)(batch)  # type: ignore[arg-type]
    direct = dict(raw, routing={"mode": "single", "default": "heavy"})
    direct.pop("scorer")
    straight = prep(direct, conditioned(), adapters)[0]
    assert out["route"][0] == "escalated" and out["strength"][0] == 0.4 and out["adapters"][0] == "brand:1"
    assert out["image_key"][0] == straight["image_key"]
    masked_heavy = heavy.model_copy(update={"max_input_images": 0})
    stays = Escalator(cfg.routing.cascade, "heavy", masked_heavy)(batch)  # type: ignore[arg-type]
    assert stays["route"][0] == "draft"  # a heavy generator that can't take the input keeps the draft


def test_the_plan_says_what_rows_are_made_from_and_what_has_no_effect() -> None:
    from imagefleet.jobs.run_text import input_lines

    raw = job("inpaint", variants=["1:1", "9:16"])
    raw["generators"]["oa"] = {"backend": "openai", "defaults": {"width": 1024, "height": 1024}}
    raw["routing"] = {"mode": "fanout", "fanout": ["sleepy", "oa"]}
    lines = input_lines(parse_config(raw))
    assert lines[0] == "  inputs : inpaint: input images from column 'image', masks from column 'mask'"
    assert lines[1] == "  note   : strength has no effect on oa (the API has no such setting)"
    assert lines[2].startswith("  variants: 1:1, 9:16")
    assert input_lines(parse_config(sleep_job("p", "out"))) == []


def test_best_of_n_keeps_the_best_candidate_and_records_them_all() -> None:
    """routing.mode=best_of: N candidates with derived seeds in one generator pass, each scored, the best kept;
    the key names the selection (N and the scorer), every candidate is paid for."""
    from imagefleet.actors.clip_scorer import RuleScorer
    from imagefleet.configs.scorer import RuleScorerConfig

    raw = sleep_job("p.parquet", "out")
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    raw["routing"] = {"mode": "best_of", "candidates": 4}
    raw["scorer"] = {"backend": "rule", "by": "brightness"}
    rows = prep(raw, {"prompt": ["a", "b"]})
    assert {r["num_candidates"] for r in rows} == {4}
    plain = prep(sleep_job("p.parquet", "out"), {"prompt": ["a", "b"]})
    assert {r["image_key"] for r in rows}.isdisjoint(r["image_key"] for r in plain)
    assert rows[0]["seed"] == plain[0]["seed"]
    cfg = parse_config(raw)
    generated = SleepGenerator(cfg.generators["sleepy"])(sleep_batch(rows))
    assert list(generated["status"]) == ["generated"] * 2 and len(generated["candidate_images"][0]) == 4
    assert generated["cost_usd"][0] == pytest.approx(0.04)
    scored = RuleScorer(RuleScorerConfig(by="brightness"))(generated)
    for i in range(2):
        cands = json.loads(scored["candidates"][i])
        assert len(cands) == 4 and cands[0]["seed"] == rows[i]["seed"]
        best = max(cands, key=lambda c: c["score"])
        assert scored["seed"][i] == best["seed"] and scored["clip_score"][i] == pytest.approx(best["score"])
        pixels = np.frombuffer(scored["image"][i], np.uint8)
        assert pixels.mean() / 255 == pytest.approx(best["score"])
        assert list(scored["candidate_images"][i]) == []  # the other candidates' pixels are dropped
    with pytest.raises(ConfigError, match="scores drafts|configure a `scorer`"):
        parse_config({**raw, "scorer": None})
