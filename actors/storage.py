"""Object-store access shared by the writer, the manifest commit and pre-flight checks.

Two implementations with one interface: a local folder and an S3 bucket (boto3, conditional writes).
Heavy clients are created lazily so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from configs.storage import S3Config, StoreSpec

if TYPE_CHECKING:
    import pyarrow.fs

logger = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(RuntimeError):
    """An object-store problem the user has to fix (credentials, bucket, endpoint)."""


@dataclass(frozen=True)
class Location:
    """A parsed output/input location."""

    kind: str  # "local" or "s3"
    bucket: str  # "" for local
    prefix: str  # folder path (local) or key prefix without trailing slash (s3)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") if self.kind == "s3" else self.prefix

    def join(self, *parts: str) -> str:
        """URI of a child path."""
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{self.uri}/{rel}" if rel else self.uri


def parse_location(uri: str) -> Location:
    """Split `s3://bucket/prefix` or a local path (optionally `file://`)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; expected s3://bucket/prefix")
        return Location("s3", bucket, prefix.strip("/"))
    path = uri[7:] if uri.startswith("file://") else uri
    return Location("local", "", str(Path(path).expanduser().absolute()))


def resolve_store_spec(uri: str, s3: S3Config, environ: dict[str, str] | None = None) -> StoreSpec:
    """Turn config + environment into the connection handed to actors (jobs call this)."""
    if not uri.startswith("s3://"):
        return StoreSpec(kind="local")
    env = dict(os.environ if environ is None else environ)
    access, secret = env.get(s3.access_key_env, ""), env.get(s3.secret_key_env, "")
    if s3.secret_file:
        try:
            pairs = dict(
                line.split("=", 1) for line in Path(s3.secret_file).read_text().splitlines() if "=" in line
            )
        except OSError as exc:
            raise StorageError(f"cannot read s3.secret_file {s3.secret_file}: {exc.strerror}") from None
        access, secret = pairs.get("access_key", "").strip(), pairs.get("secret_key", "").strip()
    if not access or not secret:
        raise StorageError(
            f"no S3 credentials for {uri}: set {s3.access_key_env} and {s3.secret_key_env} "
            f"(or s3.secret_file in the config)"
        )
    endpoint = s3.endpoint_url or env.get("AWS_ENDPOINT_URL_S3", "") or env.get("AWS_ENDPOINT_URL", "")
    return StoreSpec(
        kind="s3",
        endpoint_url=endpoint,
        region=s3.region,
        access_key=access,  # type: ignore[arg-type]  # pydantic coerces to SecretStr
        secret_key=secret,  # type: ignore[arg-type]
        max_attempts=s3.max_attempts,
        connect_timeout_s=s3.connect_timeout_s,
        retry_budget_s=s3.retry_budget_s,
    )


def s3_client(spec: StoreSpec) -> Any:
    """A boto3 S3 client with standard-mode retries (5xx, SlowDown, connection errors) and backoff."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": spec.max_attempts},
        connect_timeout=spec.connect_timeout_s,
        read_timeout=60,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        # sha256 (kept in metadata) is our integrity check; skipping the SDK's extra CRC saves CPU per PUT
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=spec.endpoint_url or None,
        region_name=spec.region,
        aws_access_key_id=spec.access_key.get_secret_value(),
        aws_secret_access_key=spec.secret_key.get_secret_value(),
        config=config,
    )


def arrow_filesystem(uri: str, spec: StoreSpec) -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow filesystem + path for Parquet I/O on `uri`."""
    import pyarrow.fs as pafs

    loc = parse_location(uri)
    if loc.kind == "local":
        return pafs.LocalFileSystem(), loc.prefix
    endpoint = spec.endpoint_url
    scheme = "https"
    if endpoint.startswith(("http://", "https://")):
        scheme, _, endpoint = endpoint.partition("://")
    fs = pafs.S3FileSystem(
        access_key=spec.access_key.get_secret_value(),
        secret_key=spec.secret_key.get_secret_value(),
        region=spec.region,
        endpoint_override=endpoint or None,
        scheme=scheme,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=spec.max_attempts),
        connect_timeout=spec.connect_timeout_s,
    )
    return fs, f"{loc.bucket}/{loc.prefix}".rstrip("/")


def explain_s3_error(exc: BaseException, where: str) -> str:
    """One line telling the user what went wrong with S3 and what to change."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    name = type(exc).__name__
    if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
        return f"S3 rejected the credentials for {where} ({code}): check the access key / secret key"
    if code in ("AccessDenied", "403", "Forbidden"):
        return f"the credentials may not write to {where} ({code}): use keys with write permission on the bucket"
    if code in ("NoSuchBucket", "404"):
        return f"bucket for {where} does not exist ({code}): create it or fix the URI"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"cannot reach the S3 endpoint for {where}: {exc} — check s3.endpoint_url and that the server runs"
    return f"S3 error for {where}: {code or name}: {exc}"


RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "503", "500", "502", "504"}


def is_transient(exc: BaseException) -> bool:
    """Outage-like S3 failures worth riding out: connection problems, 5xx, throttling."""
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                "ProxyConnectionError", "ConnectionError"):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in RETRYABLE_CODES or status >= 500
    return False


def with_retries(fn: Callable[[], T], budget_s: float, what: str) -> T:
    """Call `fn`, retrying transient store errors with capped exponential backoff for up to `budget_s`."""
    deadline = time.monotonic() + budget_s
    delay = 0.25
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: transient store error (%s), retrying in %.1fs", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class ObjectStore:
    """Write-once object access under one prefix (local folder or S3). S3 calls ride out outages."""

    def __init__(self, uri: str, spec: StoreSpec) -> None:
        self.location = parse_location(uri)
        self.spec = spec
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.spec)
        return self._client

    def _s3(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, self.spec.retry_budget_s, what)

    def uri_of(self, rel: str) -> str:
        return self.location.join(rel)

    def rel_of(self, uri: str) -> str:
        """The relative path of a URI under this store (inverse of uri_of); ValueError when it is elsewhere."""
        root = self.location.uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise ValueError(f"{uri} is not under {root}")
        return uri[len(root):]

    def _key(self, rel: str) -> str:
        return f"{self.location.prefix}/{rel}".lstrip("/")

    # -- writes -------------------------------------------------------------------------------------
    def put_if_absent(self, rel: str, data: bytes, content_type: str, sha256: str) -> tuple[bool, str]:
        """Write `data` unless the object exists. Returns (written, sha256 of the stored object)."""
        if self.location.kind == "local":
            return self._local_put_if_absent(rel, data, sha256)
        from botocore.exceptions import ClientError

        try:
            self._s3(
                lambda: self.client.put_object(
                    Bucket=self.location.bucket,
                    Key=self._key(rel),
                    Body=data,
                    ContentType=content_type,
                    IfNoneMatch="*",
                    Metadata={"sha256": sha256},
                ),
                f"put {rel}",
            )
            return True, sha256
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 412:
                raise
        # A previous attempt (or a racing writer) stored it first: the stored object wins.
        return False, self.stored_sha256(rel)

    def _local_put_if_absent(self, rel: str, data: bytes, sha256: str) -> tuple[bool, str]:
        final = Path(self.location.prefix, rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.link(tmp, final)  # atomic, fails if the name exists: write-once
            return True, sha256
        except FileExistsError:
            return False, self.stored_sha256(rel)
        finally:
            os.unlink(tmp)

    def put(self, rel: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Overwrite-allowed write (run.json, reports)."""
        if self.location.kind == "local":
            final = Path(self.location.prefix, rel)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
            tmp.write_bytes(data)
            tmp.replace(final)
            return
        self._s3(
            lambda: self.client.put_object(
                Bucket=self.location.bucket, Key=self._key(rel), Body=data, ContentType=content_type
            ),
            f"put {rel}",
        )

    def put_file(self, rel: str, path: str, content_type: str = "application/octet-stream") -> None:
        """Overwrite-allowed upload of a local file (multipart on S3: shards can be GBs)."""
        if self.location.kind == "local":
            final = Path(self.location.prefix, rel)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, final)
            return
        self._s3(lambda: self.client.upload_file(path, self.location.bucket, self._key(rel),
                                                 ExtraArgs={"ContentType": content_type}), f"upload {rel}")

    # -- reads --------------------------------------------------------------------------------------
    def get(self, rel: str) -> bytes:
        if self.location.kind == "local":
            return Path(self.location.prefix, rel).read_bytes()
        return self._s3(
            lambda: bytes(self.client.get_object(Bucket=self.location.bucket, Key=self._key(rel))["Body"].read()),
            f"get {rel}",
        )

    def stored_sha256(self, rel: str) -> str:
        """sha256 of a stored object: from its metadata when we wrote it, else by reading it."""
        if self.location.kind == "s3":
            head = self._s3(lambda: self.client.head_object(Bucket=self.location.bucket, Key=self._key(rel)), rel)
            if head.get("Metadata", {}).get("sha256"):
                return str(head["Metadata"]["sha256"])
        return hashlib.sha256(self.get(rel)).hexdigest()

    def exists(self, rel: str) -> bool:
        if self.location.kind == "local":
            return Path(self.location.prefix, rel).exists()
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.location.bucket, Key=self._key(rel))
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise

    def list(self, rel_prefix: str) -> Iterator[tuple[str, int]]:
        """(relative name, size) of every object under `rel_prefix`, streamed page by page."""
        if self.location.kind == "local":
            root = Path(self.location.prefix)
            base = root / rel_prefix
            if not base.exists():
                return
            for dirpath, _, files in os.walk(base):
                for name in files:
                    if name.startswith(".tmp-"):
                        continue
                    full = Path(dirpath, name)
                    yield str(full.relative_to(root)), full.stat().st_size
            return
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.location.prefix) + 1 if self.location.prefix else 0
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self._key(rel_prefix)):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # directory markers some writers leave behind
                    yield obj["Key"][strip:], int(obj["Size"])

    def delete_prefix(self, rel_prefix: str) -> None:
        """Remove everything under `rel_prefix/` (directory markers included)."""
        if self.location.kind == "local":
            shutil.rmtree(Path(self.location.prefix, rel_prefix), ignore_errors=True)
            return
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._key(rel_prefix.rstrip("/") + "/")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                batch: list[dict[str, Any]] = keys
                self._s3(lambda batch=batch: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}), f"delete {rel_prefix}")
        self._s3(lambda: self.client.delete_object(Bucket=self.location.bucket, Key=prefix), f"delete {rel_prefix}")

    def delete(self, rel: str) -> None:
        if self.location.kind == "local":
            Path(self.location.prefix, rel).unlink(missing_ok=True)
            return
        self._s3(lambda: self.client.delete_object(Bucket=self.location.bucket, Key=self._key(rel)), f"delete {rel}")

    def copy(self, src_rel: str, dst_rel: str) -> None:
        if self.location.kind == "local":
            src, dst = Path(self.location.prefix, src_rel), Path(self.location.prefix, dst_rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".tmp-{uuid.uuid4().hex}")
            tmp.write_bytes(src.read_bytes())
            tmp.replace(dst)
            return
        self._s3(
            lambda: self.client.copy_object(
                Bucket=self.location.bucket,
                Key=self._key(dst_rel),
                CopySource={"Bucket": self.location.bucket, "Key": self._key(src_rel)},
            ),
            f"copy {src_rel}",
        )

    # -- checks -------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail fast with a clear message if the location can't be written (pre-flight, dry-run)."""
        probe = f"_probe/{uuid.uuid4().hex}"
        if self.location.kind == "local":
            try:
                self.put(probe, b"ok")
                self.delete(probe)
            except OSError as exc:
                raise StorageError(f"cannot write to {self.location.uri}: {exc.strerror}") from None
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # direct calls: a pre-flight check should fail fast, not ride out an outage
            self.client.list_objects_v2(Bucket=self.location.bucket, MaxKeys=1)  # errors carry a code (HEAD has none)
            self.client.put_object(Bucket=self.location.bucket, Key=self._key(probe), Body=b"ok")
            self.client.delete_object(Bucket=self.location.bucket, Key=self._key(probe))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(explain_s3_error(exc, self.location.uri)) from None
