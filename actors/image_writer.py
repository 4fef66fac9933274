"""ImageWriter (CPU): encodes generated pixels (or keeps a provider's file as sent), writes it write-once, and
drops the image."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from imagefleet.actors.image_records import ESCALATED_TO, RECORD_INPUTS, image_record, record_values
from imagefleet.actors.layout import CONTENT_TYPES, format_of_mime, image_rel
from imagefleet.actors.manifest_schema import PRIOR, prior_values
from imagefleet.actors.store_errors import explain_s3_error, is_transient
from imagefleet.actors.stores import open_store
from imagefleet.configs.writer import ImageWriterConfig

Batch = dict[str, np.ndarray]
logger = logging.getLogger(__name__)
ALSO_STORED = ("draft_", "heavy_")
"""Column prefixes of a cascade's other images a row may carry, stored under their own keys: the kept draft of a
row that ends as its heavy image, the heavy image of a row that kept its draft (`<prefix>image`, `_image_mime`,
`_image_key`, `_width`, `_height` in; `<prefix>image_uri` out)."""
__all__ = ["CONTENT_TYPES", "ImageWriter", "decode_rgb", "encode_image", "image_file", "reencode"]


def encode_image(pixels: np.ndarray, fmt: str, quality: int, png_compress_level: int) -> bytes:
    """Encode an HxWx3 (RGB) or HxWx4 (RGBA) uint8 array."""
    from PIL import Image

    return _save(Image.fromarray(pixels), fmt, quality, png_compress_level)


def reencode(data: bytes, fmt: str, quality: int, png_compress_level: int) -> bytes:
    """Decode an image file and encode it as `fmt`, keeping its ICC profile, and its alpha for PNG/WebP (a JPEG
    has none: transparent parts are laid on white, as viewers show them).

    Args:
        data: the image file (e.g. a hosted provider's PNG).
        fmt: png | jpeg | webp.
        quality: JPEG/WebP quality.
        png_compress_level: PNG zlib level.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        icc = img.info.get("icc_profile")
        has_alpha = "A" in img.getbands() or "transparency" in img.info
        if has_alpha and fmt != "jpeg":
            out = img.convert("RGBA")
        elif has_alpha:
            rgba = img.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
        else:
            out = img.convert("RGB")
    return _save(out, fmt, quality, png_compress_level, icc_profile=icc)


def image_file(image: bytes, mime: str, width: int, height: int, *, fmt: str, quality: int, png_compress_level: int,
               keep_provider_bytes: bool) -> tuple[bytes, str]:
    """The file to store (or serve) for one `image` cell, and its format.

    A provider's file (`mime` set) is kept byte for byte when `keep_provider_bytes` and its format is one images are
    stored in; otherwise it is decoded and encoded as `fmt` (`reencode`). Raw pixels are encoded as `fmt`.

    Args:
        image: the cell's bytes.
        mime: the row's `image_mime` ('' = raw RGB pixels of `height` x `width`).
        width: pixels (raw cells only).
        height: pixels (raw cells only).
        fmt: the output format (png | jpeg | webp).
        quality: JPEG/WebP quality.
        png_compress_level: PNG zlib level.
        keep_provider_bytes: store a provider's file as sent.

    Returns:
        (file bytes, their format).
    """
    if not mime:
        pixels = np.frombuffer(image, dtype=np.uint8).reshape(height, width, 3)
        return encode_image(pixels, fmt, quality, png_compress_level), fmt
    provider_fmt = format_of_mime(mime)
    if keep_provider_bytes and provider_fmt:
        return bytes(image), provider_fmt
    return reencode(image, fmt, quality, png_compress_level), fmt


def decode_rgb(data: bytes, mime: str, width: int, height: int) -> np.ndarray:
    """An `image` cell as HxWx3 uint8 pixels: raw pixels as they are, a provider's file decoded (for scoring).

    Args:
        data: the cell's bytes.
        mime: the row's `image_mime` ('' = raw RGB pixels of `height` x `width`).
        width: pixels (raw cells only).
        height: pixels (raw cells only).
    """
    if not mime:
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _save(img: Any, fmt: str, quality: int, png_compress_level: int, icc_profile: bytes | None = None) -> bytes:
    # Any: a PIL image (imported lazily)
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=png_compress_level, **extra)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, **extra)
    else:
        img.save(buf, format="WEBP", quality=quality, method=4, **extra)
    return buf.getvalue()


ABORT_MARKER = "imagefleet abort:"
OUTPUT_DTYPES: dict[str, Any] = {"image_uri": object, "mime": object, "sha256": object, "bytes": np.int64,
                                 "encode_ms": np.float64, "upload_ms": np.float64, "already_present": bool,
                                 "written_at": np.float64}


class RunAborted(RuntimeError):
    """Too many rows are failing: stop the run instead of burning GPU hours on errors."""


class StoreUnavailable(RunAborted):
    """The output store stayed unreachable (or full) past the retry budget: that is no property of a row, so the
    run stops (nothing is committed) instead of writing paid images off as error rows; a rerun adopts what was
    stored and makes the rest."""


_STORE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def store_is_down(exc: BaseException) -> bool:
    """Whether an upload failure is the store's, not the image's: an outage that outlasted the retry budget, or a
    local disk that is full, read-only or failing."""
    return is_transient(exc) or (isinstance(exc, OSError) and exc.errno in _STORE_ERRNOS)


class ImageWriter:
    """Encodes and uploads `generated` rows; every other row passes through.

    Objects are named by image key (`images/ab/abcd….png`) and written with a conditional put, so a rerun
    or a retried task never duplicates or overwrites an image. A hosted provider's file (`image_mime` set) is
    stored byte for byte in its own format (`keep_provider_bytes`), or decoded and encoded as `format`.

    Args:
        cfg: this stage's slice (output root, encoding, resolved store connection).
        on_batch: called with every finished batch (the output, pixels dropped), e.g. to post live progress; it
            must not raise.
    """

    INPUT_COLUMNS = {
        "image": "raw RGB pixels, or a provider's file",
        "image_mime": "content type of a provider's file ('' = raw pixels)",
        "image_key": "content hash",
        "width": "pixels",
        "height": "pixels",
        "status": "only `generated` rows are written; `cached` rows become ok without a write",
        PRIOR: "for cached rows: what the earlier run recorded (its sha256, size and content type)",
        "error": "passed through",
    }
    OUTPUT_COLUMNS = {
        "image_uri": "where the image lives",
        "mime": "content type of the stored image",
        "sha256": "of the stored bytes",
        "bytes": "stored size",
        "encode_ms": "encode time",
        "upload_ms": "upload time",
        "already_present": "the object existed before this run wrote it",
        "written_at": "unix time the row finished",
        "status": "ok | error | (passed through)",
        "draft_image_uri": "cascade: where an escalated row's kept draft is stored",
        "heavy_image_uri": "cascade: where the heavy image of a row that kept its draft is stored",
    }
    OPTIONAL_COLUMNS = (*(f"{p}{c}" for p in ALSO_STORED for c in ("image", "image_mime", "image_key", "width",
                                                                       "height")), *RECORD_INPUTS)
    """Read when present: a cascade's other images (stored too), and what the image's record keeps."""

    def __init__(self, cfg: ImageWriterConfig, on_batch: Callable[[Batch], None] | None = None) -> None:
        self.cfg = cfg
        self.on_batch = on_batch
        self.store = open_store(cfg.uri, cfg.store)
        self.pool = ThreadPoolExecutor(max_workers=cfg.num_upload_threads)
        self.seen = 0
        self.failed = 0

    def close(self) -> None:
        """Stop the upload threads (a run without Ray calls this when it ends; a Ray actor just exits)."""
        self.pool.shutdown(wait=True)

    def __call__(self, batch: Batch) -> Batch:
        # 1 outputs default to "nothing written"
        n = len(batch["status"])
        out: dict[str, Any] = {k: v for k, v in batch.items() if k not in
                               ("image", "image_mime", *(f"{p}image{c}" for p in ALSO_STORED for c in ("", "_mime")))}
        cols: dict[str, list[Any]] = {
            "image_uri": [""] * n,
            "mime": [""] * n,
            "sha256": [""] * n,
            "bytes": [0] * n,
            "encode_ms": [0.0] * n,
            "upload_ms": [0.0] * n,
            "already_present": [False] * n,
            "written_at": [time.time()] * n,
        }
        status = np.array(batch["status"], dtype=object)
        error = np.array(batch["error"], dtype=object)
        # 2 a cascade's other images (kept drafts of escalated rows, heavy images of rows that kept their draft):
        #   stored too (write-once, their own key), before their rows' final images, so a rerun after a death
        #   between the two finds the final image through the draft
        for prefix in (p for p in ALSO_STORED if f"{p}image" in batch):
            uris = [""] * n
            todo_also = [i for i in range(n) if len(batch[f"{prefix}image"][i]) > 0]
            for i, result in zip(todo_also, self.pool.map(lambda i, p=prefix: self._write_one(batch, i, also=p),
                                                           todo_also), strict=True):
                uris[i] = result["image_uri"] if isinstance(result, dict) else ""  # a lost one is no error
            out[f"{prefix}image_uri"] = np.asarray(uris, dtype=object)
        if "heavy_image_uri" in out:  # the final image's record says where its row's heavy image is
            batch = {**batch, "heavy_image_uri": out["heavy_image_uri"]}
        # 3 encode + upload generated rows concurrently (PIL and boto3 release the GIL)
        todo = [i for i in range(n) if status[i] == "generated"]
        for i, result in zip(todo, self.pool.map(lambda i: self._write_one(batch, i), todo), strict=True):
            if isinstance(result, str):
                status[i], error[i] = "error", result
                continue
            status[i] = "ok"
            for name, value in result.items():
                cols[name][i] = value
        # 4 rows an earlier run completed: reported, not rewritten
        for i in range(n):
            if status[i] == "cached":
                status[i] = "ok"
                prior = prior_values(str(batch[PRIOR][i]))
                # the resume index found the object in the format its row recorded (a provider's own format)
                fmt = format_of_mime(str(prior.get("mime", ""))) or self.cfg.format
                cols["image_uri"][i] = self.store.uri_of(image_rel(str(batch["image_key"][i]), fmt))
                cols["mime"][i] = CONTENT_TYPES[fmt]
                cols["sha256"][i] = str(prior["sha256"])
                cols["bytes"][i] = int(prior["bytes"])
                cols["already_present"][i] = True
        # 5 the images are dropped here: only metadata flows on to the manifest
        out.update({name: np.asarray(values, dtype=OUTPUT_DTYPES[name]) for name, values in cols.items()})
        out["status"], out["error"] = status, error
        # 6 a run failing wholesale stops here (raising fails the Ray job; nothing is committed)
        self.seen += n
        self.failed += int(sum(1 for s in status if s == "error"))
        if self.seen >= self.cfg.abort_min_rows and self.failed / self.seen > self.cfg.abort_error_fraction:
            raise RunAborted(
                f"{ABORT_MARKER} {self.failed} of {self.seen} images failed "
                f"(limit {self.cfg.abort_error_fraction:.0%}); e.g. {next(e for e in error if e)[:200]}"
            )
        if self.on_batch is not None:
            self.on_batch(out)
        return out

    def _record(self, batch: Batch, i: int, also: str, fmt: str, encode_s: float) -> str:
        """The image's own record (actors.resume_index): lets a rerun adopt the image if its row never reaches a
        manifest. A kept draft's names the heavy image its row ended as; a heavy image its row did not keep has
        none (only the row's key, its draft's, is looked up). '' when records are off or can't be made (the image
        is then made again in that case)."""
        if not self.cfg.image_records or also == "heavy_":
            return ""
        try:
            if also:
                return image_record({ESCALATED_TO: batch["image_key"][i]})
            row = {c: batch[c][i] for c in RECORD_INPUTS if c in batch}
            return image_record(record_values({**row, "mime": CONTENT_TYPES[fmt], "encode_ms": encode_s * 1000}))
        except Exception:  # noqa: BLE001 - a value JSON can't hold: no record, the image itself is fine
            logger.warning("image %s: no record kept", batch["image_key"][i], exc_info=True)
            return ""

    def _store_down(self, exc: BaseException, rel: str) -> str:
        if isinstance(exc, OSError) and not is_transient(exc):
            return f"the output {self.store.location.uri} can't be written: {exc.strerror or exc}"
        return (f"the output store failed past its retry budget (s3.retry_budget_s = {self.store.spec.retry_budget_s:g}"
                f"s): {explain_s3_error(exc, self.store.uri_of(rel))}")

    def _write_one(self, batch: Batch, i: int, also: str = "") -> dict[str, Any] | str:
        # a cascade's other image (`also`: its ALSO_STORED prefix) has its own size
        prefix = also
        h, w = int(batch[f"{prefix}height"][i]), int(batch[f"{prefix}width"][i])
        mime_col = f"{prefix}image_mime"
        mime = str(batch[mime_col][i]) if mime_col in batch else ""
        try:
            t0 = time.perf_counter()
            cfg = self.cfg
            data, fmt = image_file(batch[f"{prefix}image"][i], mime, w, h, fmt=cfg.format, quality=cfg.quality,
                                   png_compress_level=cfg.png_compress_level,
                                   keep_provider_bytes=cfg.keep_provider_bytes)
            digest = hashlib.sha256(data).hexdigest()
            t1 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes; they are the row's
            return f"encode failed: {type(exc).__name__}: {exc}"
        rel = image_rel(str(batch[f"{prefix}image_key"][i]), fmt)
        try:
            written, stored_sha = self.store.put_if_absent(rel, data, CONTENT_TYPES[fmt], digest,
                                                           self._record(batch, i, also, fmt, t1 - t0))
        except Exception as exc:  # noqa: BLE001 - after the client's own retries, a failed upload is the row's
            if store_is_down(exc) and not also:
                raise StoreUnavailable(f"{ABORT_MARKER} {self._store_down(exc, rel)}; nothing was committed: rerun "
                                       "when it is back (images already stored are adopted, not made again)") from exc
            return "upload failed: " + explain_s3_error(exc, self.store.uri_of(rel))
        t2 = time.perf_counter()
        return {
            "image_uri": self.store.uri_of(rel),
            "mime": CONTENT_TYPES[fmt],
            "sha256": stored_sha,
            "bytes": len(data),
            "encode_ms": (t1 - t0) * 1000,
            "upload_ms": (t2 - t1) * 1000,
            "already_present": not written,
            "written_at": time.time(),
        }
