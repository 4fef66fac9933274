"""Input images and masks that rows point at: resolving their URIs, reading them with a size cap, checking them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagefleet.actors.cells import Undecodable
from imagefleet.actors.storage import ObjectStore, parse_location
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec

IMAGE_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "RGBX"}
"""Modes an input image may have: each converts to RGB without guessing (CMYK, 16-bit and float images don't)."""
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP"]
"""File formats inputs may have (what every backend takes; PIL is never asked to parse others, e.g. EPS, which it
hands to Ghostscript)."""


def open_image(data: bytes) -> Any:
    """A PIL image of an input file in one of IMAGE_FORMATS, turned upright by its EXIF orientation (as viewers and
    diffusers' load_image show it). Raises what PIL raises for anything else."""
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    upright = ImageOps.exif_transpose(img)
    return upright if upright is not None else img


class InputProblem(ValueError):
    """An input image or mask of one row can't be used; the message names the file and what is wrong."""


UNUSABLE = ("not found, not allowed or not an image (inputs are PNG, JPEG or WebP files in the prompt table's folder "
            "or under source.allowed_roots)")
"""One message for a file outside the allowed folders, a missing one and one that is no image: which files exist
outside them is not told."""


def unusable(uri: str) -> InputProblem:
    """The row's problem with an input that is outside the allowed folders, missing, or no image."""
    return InputProblem(f"{uri}: {UNUSABLE}")


class Roots:
    """Where input files may come from: local folders (compared after resolving symlinks) and s3:// prefixes.

    Args:
        roots: the prompt table's folder and `source.allowed_roots` (absolute paths or s3://bucket[/prefix]).
    """

    def __init__(self, roots: list[str]) -> None:
        self.folders = [os.path.realpath(r.removeprefix("file://")) for r in roots if not r.startswith("s3://")]
        self.prefixes = [(loc.bucket, loc.prefix) for loc in map(parse_location, roots) if loc.kind == "s3"]

    def locate(self, uri: str) -> str:
        """What to read for a resolved input URI: a local file's real path (symlinks resolved, so a link can't lead
        out), an s3:// URI as given; `unusable` when it is under no root."""
        loc = parse_location(uri)
        if loc.kind == "local":
            real = os.path.realpath(loc.prefix)
            if any(real == f or real.startswith(f.rstrip("/") + "/") for f in self.folders):
                return real
        elif any(loc.bucket == b and (not p or loc.prefix.startswith(p + "/")) for b, p in self.prefixes):
            return uri
        raise unusable(uri)


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
    path under `base` (the prompt table's folder, local or s3://, `.` and `..` resolved as on a disk); InputProblem
    for a URI that names nothing (`s3://` without a bucket or key, `~user` unknown, `..` above a bucket)."""
    value = value.strip()
    if value.startswith("file://"):
        value = value[7:]
    if value.startswith("s3://") or (base.startswith("s3://") and not value.startswith(("/", "~"))):
        if value.startswith("s3://"):
            bucket, _, key = value[5:].partition("/")
        else:
            bucket, _, prefix = base[5:].partition("/")
            key = posixpath.join(prefix, value)
        key = posixpath.normpath(key) if key else ""
        if not bucket or not key or key in (".", "..") or key.startswith("../") or key.startswith("/"):
            raise InputProblem(f"{value!r} names no object (expected s3://bucket/key, or a path under the table's "
                               f"folder)")
        return f"s3://{bucket}/{key}"
    if value.startswith(("/", "~")):
        try:
            return os.path.normpath(str(Path(value).expanduser()))
        except RuntimeError:  # ~user of an unknown user
            raise InputProblem(f"{value!r}: no such user's home folder") from None
    return os.path.normpath(os.path.join(base, value))


def uris_of(cell: object, base: str) -> list[str]:
    """The URIs of an image cell: a string, or a list of strings (reference images); [] for null or empty."""
    if cell is None:
        return []
    if isinstance(cell, Undecodable):
        raise InputProblem(f"image cell is not valid UTF-8 text ({cell})")
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
        roots: where files may come from; None: anywhere (a generator re-reading the files the input reader
            checked, by content hash).
    """

    def __init__(self, spec: StoreSpec, max_bytes: int, roots: Roots | None = None) -> None:
        self.spec = spec
        self.max_bytes = max_bytes
        self.roots = roots
        self._stores: dict[str, ObjectStore] = {}

    def read(self, uri: str) -> bytes:
        """The file's bytes; InputProblem when it is outside the roots, missing, unreadable or too large."""
        try:
            target = self.roots.locate(uri) if self.roots is not None else uri
            loc = parse_location(target)
            if loc.kind == "local":
                path = Path(loc.prefix)
                if not path.is_file():
                    raise unusable(uri)
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
                raise unusable(uri)
            if stored > self.max_bytes:
                raise InputProblem(f"{uri}: {stored:,} bytes; the limit is {self.max_bytes:,} "
                                   f"(source.inputs.max_image_bytes)")
            return store.get(loc.prefix)
        except InputProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - permissions, a folder, a store error: this row's input
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InputProblem(f"{uri}: can't be read ({reason})") from exc


def check_image(uri: str, data: bytes, max_pixels: int, mask: bool = False, file: bool = True) -> tuple[int, int]:
    """(width, height) of a decodable input image (or mask); InputProblem naming what is wrong otherwise (`file`:
    `uri` names a file, whose problems share one message; else bytes sent in a request)."""
    from PIL import Image, UnidentifiedImageError

    what = "mask" if mask else "image"
    try:
        with Image.open(io.BytesIO(data)) as header:  # the size from the header, before anything is decoded
            kind = header.format or "?"
            width, height = header.size
            if header.getexif().get(0x0112) in (5, 6, 7, 8):  # shown rotated by 90 degrees
                width, height = height, width
            if width * height > max_pixels:
                raise InputProblem(f"{what} {uri}: {width}x{height} pixels; the limit is {max_pixels:,} "
                                   f"(source.inputs.max_image_pixels)")
            if kind not in IMAGE_FORMATS:
                raise InputProblem(f"{what} {uri} is {kind}; convert it to PNG, JPEG or WebP")
            if header.mode not in IMAGE_MODES:
                raise InputProblem(f"{what} {uri} has mode {header.mode}; save it as RGB"
                                   f"{' or grayscale (L, white = change)' if mask else ''}")
        open_image(data).load()  # a truncated or corrupt file fails here, not on the GPU
    except InputProblem:
        raise
    except UnidentifiedImageError:
        if file:  # a path: the one message that tells nothing about which files exist
            raise unusable(uri) from None
        raise InputProblem(f"{what} {uri} is not a readable image (PNG, JPEG or WebP)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        raise InputProblem(f"{what} {uri} is not a readable image ({type(exc).__name__})") from exc
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
