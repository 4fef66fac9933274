"""ImageWriter (CPU): encodes generated pixels, writes them write-once, and drops the pixels."""

from __future__ import annotations

import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from actors.layout import image_rel
from actors.storage import explain_s3_error, open_store
from configs.writer import ImageWriterConfig

Batch = dict[str, np.ndarray]

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(pixels: np.ndarray, fmt: str, quality: int, png_compress_level: int) -> bytes:
    """Encode an HxWx3 uint8 array."""
    from PIL import Image

    img = Image.fromarray(pixels, mode="RGB") if pixels.ndim == 3 else Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=png_compress_level)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


ABORT_MARKER = "imagefleet abort:"
OUTPUT_DTYPES: dict[str, Any] = {"image_uri": object, "sha256": object, "bytes": np.int64, "encode_ms": np.float64,
                                 "upload_ms": np.float64, "already_present": bool, "written_at": np.float64}


class RunAborted(RuntimeError):
    """Too many rows are failing: stop the run instead of burning GPU hours on errors."""


class ImageWriter:
    """Encodes and uploads `generated` rows; every other row passes through.

    Objects are named by image key (`images/ab/abcd….png`) and written with a conditional put, so a rerun
    or a retried task never duplicates or overwrites an image.

    Args:
        cfg: this stage's slice (output root, encoding, resolved store connection).
    """

    INPUT_COLUMNS = {
        "image": "raw RGB pixels",
        "image_key": "content hash",
        "width": "pixels",
        "height": "pixels",
        "status": "only `generated` rows are written; `cached` rows become ok without a write",
        "prior_sha256": "for cached rows",
        "prior_bytes": "for cached rows",
        "error": "passed through",
    }
    OUTPUT_COLUMNS = {
        "image_uri": "where the image lives",
        "sha256": "of the stored bytes",
        "bytes": "stored size",
        "encode_ms": "encode time",
        "upload_ms": "upload time",
        "already_present": "the object existed before this run wrote it",
        "written_at": "unix time the row finished",
        "status": "ok | error | (passed through)",
    }

    def __init__(self, cfg: ImageWriterConfig) -> None:
        self.cfg = cfg
        self.store = open_store(cfg.uri, cfg.store)
        self.pool = ThreadPoolExecutor(max_workers=cfg.num_upload_threads)
        self.seen = 0
        self.failed = 0

    def __call__(self, batch: Batch) -> Batch:
        # 1 outputs default to "nothing written"
        n = len(batch["status"])
        out: dict[str, Any] = {k: v for k, v in batch.items() if k not in ("image", "draft_image")}
        cols: dict[str, list[Any]] = {
            "image_uri": [""] * n,
            "sha256": [""] * n,
            "bytes": [0] * n,
            "encode_ms": [0.0] * n,
            "upload_ms": [0.0] * n,
            "already_present": [False] * n,
            "written_at": [time.time()] * n,
        }
        status = np.array(batch["status"], dtype=object)
        error = np.array(batch["error"], dtype=object)
        # 2 encode + upload generated rows concurrently (PIL and boto3 release the GIL)
        todo = [i for i in range(n) if status[i] == "generated"]
        for i, result in zip(todo, self.pool.map(lambda i: self._write_one(batch, i), todo), strict=True):
            if isinstance(result, str):
                status[i], error[i] = "error", result
                continue
            status[i] = "ok"
            for name, value in result.items():
                cols[name][i] = value
        # 3 cascade drafts that were escalated: stored too (write-once, their own key)
        if "draft_image" in batch:
            draft_uri = [""] * n
            todo_drafts = [i for i in range(n) if len(batch["draft_image"][i]) > 0]
            for i, result in zip(todo_drafts, self.pool.map(lambda i: self._write_one(batch, i, draft=True),
                                                             todo_drafts), strict=True):
                draft_uri[i] = result["image_uri"] if isinstance(result, dict) else ""  # a lost draft is no error
            out["draft_image_uri"] = np.asarray(draft_uri, dtype=object)
        # 4 rows an earlier run completed: reported, not rewritten
        for i in range(n):
            if status[i] == "cached":
                status[i] = "ok"
                cols["image_uri"][i] = self.store.uri_of(image_rel(str(batch["image_key"][i]), self.cfg.format))
                cols["sha256"][i] = str(batch["prior_sha256"][i])
                cols["bytes"][i] = int(batch["prior_bytes"][i])
                cols["already_present"][i] = True
        # 5 the pixels are dropped here: only metadata flows on to the manifest
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
        return out

    def _write_one(self, batch: Batch, i: int, draft: bool = False) -> dict[str, Any] | str:
        # a kept cascade draft has its own size (the row's size is now the heavy generator's)
        prefix = "draft_" if draft else ""
        h, w = int(batch[f"{prefix}height"][i]), int(batch[f"{prefix}width"][i])
        pixels_col, key_col = f"{prefix}image", f"{prefix}image_key"
        try:
            t0 = time.perf_counter()
            pixels = np.frombuffer(batch[pixels_col][i], dtype=np.uint8).reshape(h, w, 3)
            data = encode_image(pixels, self.cfg.format, self.cfg.quality, self.cfg.png_compress_level)
            digest = hashlib.sha256(data).hexdigest()
            t1 = time.perf_counter()
        except (ValueError, OSError) as exc:
            return f"encode failed: {type(exc).__name__}: {exc}"
        rel = image_rel(str(batch[key_col][i]), self.cfg.format)
        try:
            written, stored_sha = self.store.put_if_absent(rel, data, CONTENT_TYPES[self.cfg.format], digest)
        except Exception as exc:  # noqa: BLE001 - after the client's own retries, a failed upload is the row's
            return "upload failed: " + explain_s3_error(exc, self.store.uri_of(rel))
        t2 = time.perf_counter()
        return {
            "image_uri": self.store.uri_of(rel),
            "sha256": stored_sha,
            "bytes": len(data),
            "encode_ms": (t1 - t0) * 1000,
            "upload_ms": (t2 - t1) * 1000,
            "already_present": not written,
            "written_at": time.time(),
        }
