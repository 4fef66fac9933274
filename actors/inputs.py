"""Input images and masks that rows point at: resolving their URIs, reading them with a size cap, checking them."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from actors.storage import ObjectStore, open_store, parse_location
from configs.storage import StoreSpec

IMAGE_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "RGBX"}
"""Modes an input image may have: each converts to RGB without guessing (CMYK, 16-bit and float images don't)."""


class InputProblem(ValueError):
    """An input image or mask of one row can't be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class InputImage:
    """An input file as read: its URI, bytes, content hash and pixel size."""

    uri: str
    data: bytes
    sha256: str
    width: int
    height: int


def resolve_uri(value: str, base: str) -> str:
    """An input cell's absolute URI: s3:// and absolute paths as given (`file://` stripped, `~` expanded), a relative
    path under `base` (the prompt table's folder, local or s3://)."""
    value = value.strip()
    if value.startswith("s3://"):
        return value
    if value.startswith("file://"):
        value = value[7:]
    if value.startswith(("/", "~")):
        return str(Path(value).expanduser())
    if base.startswith("s3://"):
        return f"{base.rstrip('/')}/{value.lstrip('./')}" if value.startswith("./") else f"{base.rstrip('/')}/{value}"
    return os.path.normpath(os.path.join(base, value))


def uris_of(cell: object, base: str) -> list[str]:
    """The URIs of an image cell: a string, or a list of strings (reference images); [] for null or empty."""
    if cell is None:
        return []
    values = [cell] if isinstance(cell, str) else list(cell)  # type: ignore[call-overload]
    out = []
    for v in values:
        if not isinstance(v, str):
            raise InputProblem(f"image cell holds {type(v).__name__} {v!r}; expected URI strings")
        if v.strip():
            out.append(resolve_uri(v, base))
    return out


class InputFiles:
    """Reads input files from local folders and s3:// (one store per bucket, reused).

    Args:
        spec: connection for s3:// inputs (the prompt table's store).
        max_bytes: larger files are refused before they are read.
    """

    def __init__(self, spec: StoreSpec, max_bytes: int) -> None:
        self.spec = spec
        self.max_bytes = max_bytes
        self._stores: dict[str, ObjectStore] = {}

    def read(self, uri: str) -> bytes:
        """The file's bytes; InputProblem when it is missing, unreadable or too large."""
        loc = parse_location(uri)
        try:
            if loc.kind == "local":
                path = Path(loc.prefix)
                if not path.is_file():
                    raise InputProblem(f"{uri}: no such file")
                size = path.stat().st_size
                if size > self.max_bytes:
                    raise InputProblem(f"{uri}: {size:,} bytes; the limit is {self.max_bytes:,} "
                                       f"(source.inputs.max_image_bytes)")
                return path.read_bytes()
            if self.spec.kind != "s3":
                raise InputProblem(f"{uri}: no S3 connection for s3:// inputs; set AWS_ACCESS_KEY_ID, "
                                   f"AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (or source.s3)")
            store = self._stores.get(loc.bucket)
            if store is None:
                store = self._stores[loc.bucket] = open_store(f"s3://{loc.bucket}", self.spec)
            stored = store.size(loc.prefix)
            if stored is None:
                raise InputProblem(f"{uri}: no such object")
            if stored > self.max_bytes:
                raise InputProblem(f"{uri}: {stored:,} bytes; the limit is {self.max_bytes:,} "
                                   f"(source.inputs.max_image_bytes)")
            return store.get(loc.prefix)
        except InputProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - permissions, a folder, a store error: this row's input
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InputProblem(f"{uri}: can't be read ({reason})") from None


def check_image(uri: str, data: bytes, max_pixels: int, mask: bool = False) -> tuple[int, int]:
    """(width, height) of a decodable input image (or mask); InputProblem naming what is wrong otherwise."""
    from PIL import Image

    what = "mask" if mask else "image"
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputProblem(f"{what} {uri}: {width}x{height} pixels; the limit is {max_pixels:,} "
                                   f"(source.inputs.max_image_pixels)")
            if img.mode not in IMAGE_MODES:
                raise InputProblem(f"{what} {uri} has mode {img.mode}; save it as RGB"
                                   f"{' or grayscale (L, white = change)' if mask else ''}")
            img.load()  # a truncated or corrupt file fails here, not on the GPU
    except InputProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        raise InputProblem(f"{what} {uri} is not a readable image ({type(exc).__name__})") from None
    return int(width), int(height)


def sha256_of(data: bytes) -> str:
    """Hex content hash of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def load_inputs(files: InputFiles, uris_json: str, sha256s: str, mask_uri: str, mask_sha256: str
                ) -> tuple[tuple[bytes, ...], bytes]:
    """The input images and mask of one row, as read again by a generator; InputProblem when a file changed since
    its hash went into the image key (the key would name an image made from other inputs)."""
    uris = json.loads(uris_json) if uris_json else []
    hashes = sha256s.split(",") if sha256s else []
    images = []
    for uri, expected in zip(uris, hashes, strict=True):
        data = files.read(uri)
        if sha256_of(data) != expected:
            raise InputProblem(f"{uri} changed during the run (its content hash differs); rerun to use the new file")
        images.append(data)
    mask = b""
    if mask_uri:
        mask = files.read(mask_uri)
        if sha256_of(mask) != mask_sha256:
            raise InputProblem(f"{mask_uri} changed during the run (its content hash differs); rerun to use the new "
                               f"file")
    return tuple(images), mask
