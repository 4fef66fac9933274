"""Where images and the manifest go, and how images are encoded."""

from typing import Literal

from pydantic import Field, model_validator

from imagefleet.configs.base import StrictModel
from imagefleet.configs.storage import S3Config, StoreSpec


class WriterPoolConfig(StrictModel):
    """CPU actor pool that encodes and uploads images (kept out of the GPU actors)."""

    min_size: int = Field(default=1, ge=1)
    """Actors kept alive."""
    max_size: int = Field(default=2, ge=1)
    """Upper bound for the autoscaler."""
    num_cpus: float = Field(default=0.5, gt=0)
    """CPUs reserved per writer actor (encoding is CPU-bound)."""
    batch_size: int = Field(default=16, ge=1)
    """Images per writer call."""
    num_upload_threads: int = Field(default=8, ge=1, le=64)
    """Concurrent uploads inside one writer actor (uploads are I/O-bound)."""

    @model_validator(mode="after")
    def _sizes(self) -> "WriterPoolConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"writer pool min_size {self.min_size} > max_size {self.max_size}")
        return self


class WebDatasetConfig(StrictModel):
    """Optional WebDataset tar shards (`<key>.<ext>` + `<key>.json` + `<key>.txt` caption per sample) for
    training-data users."""

    enabled: bool = False
    """Write `<uri>/webdataset/<run_id>/shard-NNNNNN.tar` + `webdataset/index.json` after the manifest commit."""
    samples_per_shard: int = Field(default=1000, ge=1, le=1_000_000)
    """Samples per shard, a cap: shards hold runs of this many samples in image-key order (the last one the
    rest)."""
    num_cpus: float = Field(default=0.5, gt=0)
    """CPUs per shard-writing task."""


class OutputConfig(StrictModel):
    """Output location and image encoding."""

    uri: str
    """Local folder or `s3://bucket/prefix`; images go to `<uri>/images/`, the manifest to `<uri>/manifest/`."""
    format: Literal["png", "jpeg", "webp"] = "png"
    """Image encoding."""
    quality: int = Field(default=90, ge=1, le=100)
    """JPEG/WebP quality (ignored for PNG)."""
    png_compress_level: int = Field(default=1, ge=0, le=9)
    """PNG zlib level; 1 is ~5x faster than 6 for ~10% more bytes."""
    keep_provider_bytes: bool = True
    """Store a hosted provider's PNG/JPEG/WebP byte for byte, in its own format (content credentials, alpha and ICC
    profile kept; no second lossy pass). False: decode it and encode it as `format` (alpha kept for PNG/WebP)."""
    image_records: bool = True
    """Keep each image's record with it (what its manifest row says of how it was made: generator, model,
    settings, cost, timings, scores; S3 user metadata or a local file's extended attribute), so a rerun adopts
    images whose rows a dead run never wrote instead of buying them again. False: only the sha256 rides with the
    object (e.g. images served publicly, whose metadata every reader sees)."""
    s3: S3Config = S3Config()
    """Connection for s3:// outputs."""
    pool: WriterPoolConfig = WriterPoolConfig()
    """Encode/upload actor pool."""
    skip_existing: bool = True
    """Resume: rows whose image is already complete (manifest + object) are not generated again."""
    retry_failed: bool = False
    """Resume: also redo rows that failed in an earlier run (otherwise their error is carried over)."""
    lease_ttl_s: float = Field(default=300.0, ge=10, le=7 * 24 * 3600)
    """A run holds the output (`manifest/_lease.json`, renewed every third of this) so a second run on it is
    refused; a crashed run's lease expires after this long (at once when its driver died on the same host)."""
    webdataset: WebDatasetConfig = WebDatasetConfig()
    """Optional WebDataset shards of every `ok` image, rebuilt from the manifest after each run."""

    @model_validator(mode="after")
    def _uri(self) -> "OutputConfig":
        if not self.uri.strip():
            raise ValueError("output.uri is empty; set a local folder or s3://bucket/prefix")
        if self.uri.startswith("s3://") and len(self.uri[5:].strip("/")) == 0:
            raise ValueError("output.uri must name a bucket, e.g. s3://my-bucket/run1")
        if "://" in self.uri and not self.uri.startswith(("s3://", "file://")):
            raise ValueError(f"output.uri must be a local folder or s3://bucket/prefix, got {self.uri!r}")
        if ".." in self.uri.replace("\\", "/").split("/"):
            raise ValueError(f"output.uri must not contain '..' segments, got {self.uri!r}")
        return self


class ImageWriterConfig(StrictModel):
    """ImageWriter's slice: where and how to write, with resolved credentials."""

    uri: str
    """Output root."""
    format: Literal["png", "jpeg", "webp"]
    """Image encoding."""
    quality: int
    """JPEG/WebP quality."""
    png_compress_level: int
    """PNG zlib level."""
    keep_provider_bytes: bool = True
    """Store a hosted provider's file as sent (its own format) instead of encoding it as `format`."""
    image_records: bool = True
    """Keep each image's record with the object (actors.image_records.image_record)."""
    num_upload_threads: int
    """Concurrent encode+upload workers per actor."""
    store: StoreSpec
    """Resolved connection (secrets excluded from dumps)."""
    abort_error_fraction: float = 1.0
    """Abort the run once more than this fraction of the rows this actor saw failed (1.0 = never)."""
    abort_min_rows: int = 50
    """Rows an actor must have seen before the abort rule applies."""


class ShardWriterConfig(StrictModel):
    """ShardWriter's slice: where shards go and how many there are."""

    uri: str
    """Output root (shards under `<uri>/webdataset/`)."""
    store: StoreSpec
    """Resolved connection (secrets excluded from dumps)."""
    num_shards: int = Field(ge=1)
    """Total shards of this export (part of each shard's name)."""
    run_id: str
    """Export id; shards are staged under it and renamed when complete."""
