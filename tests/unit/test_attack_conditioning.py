"""Adversarial tests of #15 (image-conditioned rows, LoRA adapters, variants): each one shows a bug found in review.

Every test here fails on the code as reviewed and should pass once the bug it names is fixed."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from imagefleet.actors.input_reader import InputReader
from imagefleet.actors.inputs import resolve_uri
from imagefleet.configs.loader import ConfigError, parse_config
from imagefleet.configs.prep import InputReaderConfig
from imagefleet.configs.source import InputLimits
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.plan import Stores
from imagefleet.pipelines.slices import prep_config
from tests.helpers import sleep_job
from tests.unit.test_conditioning import prep

LOCAL = StoreSpec(kind="local")


def _reader(tmp_path: Path, task: str = "edit") -> InputReader:
    return InputReader(InputReaderConfig(task=task, image_column="image", mask_column="mask", base_uri=str(tmp_path),
                                         store=LOCAL, limits=InputLimits()))


def _png(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    Image.new("RGB", size, (200, 40, 10)).save(path)
    return path


def _invalid_utf8(values: list[bytes]) -> pa.Array:
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(values), raw.buffers())


# 1 the input reader must turn every bad cell into that row's error, never fail the stage (and the run) ------------

def test_attack_invalid_utf8_image_cell_is_an_error_row_not_a_crash(tmp_path: Path) -> None:
    """The README promises text that is not valid UTF-8 becomes error rows (the preprocessor handles it for
    prompts); the InputReader calls to_pylist() on the image column and raises UnicodeDecodeError for the block."""
    _png(tmp_path / "a.png")
    table = pa.table({"prompt": ["p", "q"], "image": _invalid_utf8([b"a.png", b"bad \xff.png"])})
    errors = _reader(tmp_path)(table).column("input_error").to_pylist()
    assert errors[0] == ""
    assert "not valid UTF-8" in errors[1]


def test_attack_invalid_utf8_mask_cell_is_an_error_row_not_a_crash(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    table = pa.table({"prompt": ["p"], "image": ["a.png"], "mask": _invalid_utf8([b"\xffmask.png"])})
    assert "not valid UTF-8" in _reader(tmp_path)(table).column("input_error").to_pylist()[0]


@pytest.mark.parametrize("cell", ["s3://", "s3:///x.png", "~nosuch-user-imagefleet/x.png"])
def test_attack_malformed_uri_in_image_cell_is_an_error_row_not_a_crash(tmp_path: Path, cell: str) -> None:
    """parse_location raises ValueError ('has no bucket') outside InputFiles.read's try, and Path.expanduser raises
    RuntimeError for an unknown ~user in resolve_uri: both escape _row (which only catches InputProblem)."""
    _png(tmp_path / "a.png")
    out = _reader(tmp_path)(pa.table({"prompt": ["p", "q"], "image": [cell, "a.png"]})).to_pylist()
    assert out[0]["input_error"] != "" and out[1]["input_error"] == ""


@pytest.mark.parametrize("cell", ["s3://", "~nosuch-user-imagefleet/m.png"])
def test_attack_malformed_uri_in_mask_cell_is_an_error_row_not_a_crash(tmp_path: Path, cell: str) -> None:
    _png(tmp_path / "a.png")
    out = _reader(tmp_path)(pa.table({"prompt": ["p"], "image": ["a.png"], "mask": [cell]})).to_pylist()
    assert out[0]["input_error"] != ""


# 2 relative paths under an s3:// table resolve to the file they name --------------------------------------------

@pytest.mark.parametrize(("cell", "expected"), [
    ("./.hidden.png", "s3://b/shots/.hidden.png"),  # lstrip('./') eats the dot of the file name: shots/hidden.png
    ("./../x.png", "s3://b/x.png"),  # becomes shots/x.png, while '../x.png' stays shots/../x.png
    ("../x.png", "s3://b/x.png"),  # a local table's '../x.png' is its parent's x.png; on S3 a literal '..' key
])
def test_attack_relative_paths_under_an_s3_table_name_the_same_file_as_locally(cell: str, expected: str) -> None:
    assert resolve_uri(cell, "s3://b/shots") == expected


# 3 serving: a bad data: URL is a 400, not an internal error ----------------------------------------------------

@pytest.mark.parametrize("images", ["data:image/png;base64", ["data:"]])
def test_attack_data_url_without_comma_is_a_400(images: Any) -> None:
    """`item.split(",", 1)[1]` raises IndexError (not ValueError): the gateway answers 500 'internal error'."""
    from imagefleet.pipelines.serve_protocol import RequestProblem, parse_generate_request

    body = json.dumps({"prompt": "p", "images": images}).encode()
    with pytest.raises(RequestProblem) as exc:
        parse_generate_request(body, "", default_format="png", default_response="json", max_request_bytes=10**7,
                               max_images=4)
    assert exc.value.status == 400


# 4 variants: one request's variants are different images, also after a cascade escalation ------------------------

def _cascade_with_variants() -> dict[str, Any]:
    raw = sleep_job("p.parquet", "out")
    raw["generators"]["sleepy"]["defaults"] = {"width": 512, "height": 512}
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model",
                                  "defaults": {"width": 1024, "height": 1024}}
    raw["source"]["variants"] = ["1:1", "9:16"]
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5}}
    raw["scorer"] = {"backend": "rule"}
    return raw


def test_attack_an_escalated_variant_keeps_its_aspect_ratio_and_key() -> None:
    """A ratio variant's size is not 'explicit', so the Escalator gives the heavy image the heavy generator's
    default size: the 9:16 variant escalates to 1024x1024 with the *same image key* as the escalated 1:1 variant
    (a duplicate key in one run, and the campaign's 9:16 image is square). Routed straight to the heavy generator,
    the 9:16 variant is 768x1360."""
    from imagefleet.actors.escalator import Escalator

    raw = _cascade_with_variants()
    drafts = prep(raw, {"prompt": ["a bottle"]})
    n = len(drafts)
    batch = {k: np.array([r[k] for r in drafts], dtype=object) for k in drafts[0]}
    batch.update(status=np.array(["generated"] * n, dtype=object), clip_score=np.zeros(n),
                 image=np.array([b"x"] * n, dtype=object))
    cfg = parse_config(raw)
    heavy = prep_config(cfg, Stores(source=LOCAL, output=LOCAL)).generators["heavy"]
    out = Escalator(cfg.routing.cascade, "heavy", heavy)(batch)  # type: ignore[arg-type]
    escalated = {str(out["variant"][i]): (int(out["width"][i]), int(out["height"][i]), str(out["image_key"][i]))
                 for i in range(n)}
    direct = dict(raw, routing={"mode": "single", "default": "heavy"})
    direct.pop("scorer")
    straight = {r["variant"]: (int(r["width"]), int(r["height"]), r["image_key"])
                for r in prep(direct, {"prompt": ["a bottle"]})}
    assert escalated["1:1"][2] != escalated["9:16"][2]
    assert escalated == straight


def test_attack_variants_that_are_the_same_shape_are_refused_at_load() -> None:
    """`1:1`, `2:2` and ` 1:1` are distinct strings (the duplicate check compares text), but one shape: every row
    makes the same image under three variant labels, with one image key three times in the run."""
    for variants in (["1:1", "2:2"], ["1:1", " 1:1"], ["2:3", "4:6"]):
        raw = sleep_job("p.parquet", "out")
        raw["source"]["variants"] = variants
        with pytest.raises(ConfigError):
            parse_config(raw)


# 5 adapters: the weight in the key is the weight applied, and a request is not silently rewritten ----------------

def _with_brand() -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    raw = sleep_job("p.parquet", "out")
    raw["generators"]["sleepy"]["loras"] = [{"name": "brand", "path": "/l1", "default": False}]
    return raw, {"sleepy": {"brand": "1" * 64}}


def test_attack_adapter_weight_applied_is_the_weight_keyed() -> None:
    """The key rounds a weight to 6 decimals (1.234568) but the `adapters` column - what generators apply
    (parse_adapter_list) and what the Escalator re-keys from - formats it with `:g`, 6 significant digits
    (1.23457). Two requests with weights 1.2345678 and 1.2345699 get two keys but the same applied weight."""
    from imagefleet.actors.backend_io import parse_adapter_list

    raw, hashes = _with_brand()
    rows = prep(raw, {"prompt": ["p", "p"], "id": ["a", "b"], "loras": ["brand:1.2345678", "brand:1.2345699"]},
                hashes)
    applied = [parse_adapter_list(r["adapters"]) for r in rows]
    assert rows[0]["image_key"] != rows[1]["image_key"]
    assert applied[0] != applied[1]
    assert applied[0] == (("brand", 1.234568),)


def test_attack_escalated_key_with_a_precise_adapter_weight_equals_the_direct_key() -> None:
    from imagefleet.actors.escalator import Escalator

    raw, hashes = _with_brand()
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "model": "heavy-model"}
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy", "threshold": 0.5}}
    raw["scorer"] = {"backend": "rule"}
    hashes = {"sleepy": hashes["sleepy"], "heavy": hashes["sleepy"]}
    table = {"prompt": ["p"], "loras": ["brand:1.2345678"]}
    drafts = prep(raw, table, hashes)
    batch = {k: np.array([r[k] for r in drafts], dtype=object) for k in drafts[0]}
    batch.update(status=np.array(["generated"], dtype=object), clip_score=np.zeros(1),
                 image=np.array([b"x"], dtype=object))
    cfg = parse_config(raw)
    heavy = prep_config(cfg, Stores(source=LOCAL, output=LOCAL, adapters=hashes)).generators["heavy"]
    out = Escalator(cfg.routing.cascade, "heavy", heavy)(batch)  # type: ignore[arg-type]
    direct = dict(raw, routing={"mode": "single", "default": "heavy"})
    direct.pop("scorer")
    assert out["route"][0] == "escalated"
    assert out["image_key"][0] == prep(direct, table, hashes)[0]["image_key"]


def test_attack_an_adapter_named_twice_is_an_error_row() -> None:
    """'brand:0.2,brand:0.9' silently becomes brand:0.9 (the row asked for two different weights)."""
    raw, hashes = _with_brand()
    row = prep(raw, {"prompt": ["p"], "loras": ["brand:0.2,brand:0.9"]}, hashes)[0]
    assert row["status"] == "error" and "brand" in row["error"]


# 6 a strength column only matters where the task takes a strength ------------------------------------------------

@pytest.mark.parametrize("task", ["text-to-image", "edit"])
def test_attack_nan_strength_does_not_fail_rows_whose_task_has_no_strength(task: str) -> None:
    """_expand converts every override column before looking at the task: a NaN in a strength column (polars and
    Spark write NaN, not null) makes text-to-image and edit rows error rows, though strength has no effect there
    (it is not in their key, and the plan says so)."""
    raw = sleep_job("p.parquet", "out")
    raw["source"]["task"] = task
    table: dict[str, list[Any]] = {"prompt": ["p"], "strength": [float("nan")]}
    if task != "text-to-image":
        table.update(input_images=['["/x.png"]'], input_sha256=["a" * 64], mask_uri=[""], mask_sha256=[""],
                     input_error=[""])
    row = prep(raw, table)[0]
    assert row["status"] == "pending", row["error"]


# 7 the diffusers generator redraws the image as viewers see it (EXIF orientation) --------------------------------

def test_attack_diffusers_decode_honours_exif_orientation() -> None:
    """Phone packshots are stored sideways with an EXIF Orientation tag; diffusers.utils.load_image applies
    exif_transpose, `_decode` does not, so image-to-image/inpaint redraw the photo rotated (and the input reader
    compares a mask drawn on the upright photo against the sideways size, refusing it)."""
    from PIL import ImageOps

    from imagefleet.actors.diffusers_generator import _decode

    upright = Image.new("RGB", (40, 64), (0, 0, 0))
    upright.paste((255, 255, 255), (0, 0, 40, 16))  # white band at the top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 64x40 pixels as a camera stores them
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        shown = ImageOps.exif_transpose(im)
        assert shown is not None
        shown_size = shown.size
    assert shown_size == (40, 64)
    decoded = _decode(buf.getvalue(), "RGB", 40, 64)
    top = np.asarray(decoded)[:8].mean()
    assert top > 200  # the white band is at the top of the image the viewer sees


# 8 serving checks a request's mask like the batch input reader checks a row's --------------------------------

def test_attack_serve_refuses_a_mask_over_max_image_bytes_like_a_batch_row() -> None:
    """The gateway applies source.inputs.max_image_bytes to `images` only; the batch input reader refuses a mask
    file over the limit (InputFiles.read), so the same mask is an error row in a batch run and accepted online."""
    import types

    from imagefleet.pipelines.serve_protocol import RequestProblem
    from imagefleet.pipelines.serving import Gateway

    def encoded(mode: str, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (64, 64), 255).save(buf, fmt)
        return buf.getvalue()

    image, mask = encoded("RGB", "PNG"), encoded("L", "TIFF")  # an uncompressed mask: 4 kB
    gateway = types.SimpleNamespace(task="inpaint", limits=InputLimits(max_image_bytes=len(image) + 10))
    assert len(mask) > gateway.limits.max_image_bytes
    with pytest.raises(RequestProblem):
        Gateway._inputs(gateway, types.SimpleNamespace(images=(image,), mask=mask))  # type: ignore[arg-type]
