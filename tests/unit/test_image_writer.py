"""Encoding and write-once outputs (local folder) without Ray."""

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefleet.actors.image_writer import ImageWriter, encode_image
from imagefleet.actors.keys import image_key
from imagefleet.configs.storage import StoreSpec
from imagefleet.configs.writer import ImageWriterConfig


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_roundtrip_size(fmt: str, pil: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (40, 72, 3), dtype=np.uint8)
    data = encode_image(pixels, fmt, 90, 1)
    img = Image.open(io.BytesIO(data))
    assert img.format == pil and img.size == (72, 40)
    if fmt == "png":
        assert np.array_equal(np.asarray(img), pixels)


def writer(tmp_path: Path, fmt: str = "png") -> ImageWriter:
    return ImageWriter(ImageWriterConfig(uri=str(tmp_path), format=fmt, quality=90, png_compress_level=1,
                                         num_upload_threads=4, store=StoreSpec(kind="local")))


def rows(n: int, status: str = "generated") -> dict:
    keys = [image_key(model="m", revision="r", scheduler="", prompt=f"p{i}", negative_prompt="", seed=i, width=16,
                      height=8, num_steps=1, guidance_scale=0) for i in range(n)]
    return {
        "image": np.array([np.full((8, 16, 3), i, np.uint8).tobytes() for i in range(n)], dtype=object),
        "image_key": np.array(keys, dtype=object),
        "width": np.array([16] * n),
        "height": np.array([8] * n),
        "status": np.array([status] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "enqueued_at": np.array([time.time()] * n),
    }


def test_writes_once_and_reports_already_present(tmp_path: Path) -> None:
    w = writer(tmp_path)
    out = w(rows(3))
    assert "image" not in out
    assert list(out["status"]) == ["ok"] * 3 and not out["already_present"].any()
    for uri, sha in zip(out["image_uri"], out["sha256"], strict=True):
        assert hashlib.sha256(Path(uri).read_bytes()).hexdigest() == sha
    again = w(rows(3))
    assert again["already_present"].all() and list(again["sha256"]) == list(out["sha256"])
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 3 and not any(p.name.startswith(".tmp-") for p in files)


def test_error_rows_are_not_written(tmp_path: Path) -> None:
    out = writer(tmp_path)(rows(2, status="error"))
    assert list(out["status"]) == ["error", "error"] and list(out["image_uri"]) == ["", ""]
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_undecodable_pixels_become_error_row(tmp_path: Path) -> None:
    b = rows(1)
    b["image"] = np.array([b"short"], dtype=object)
    out = writer(tmp_path)(b)
    assert out["status"][0] == "error" and "encode failed" in out["error"][0]
