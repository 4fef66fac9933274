"""S3Store: the ObjectStore on an S3 bucket (boto3, conditional writes, store outages ridden out with retries)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from imagefleet.actors.storage import ObjectStore, s3_client
from imagefleet.actors.store_errors import explain_s3_error, with_retries
from imagefleet.configs.storage import StoreSpec

T = TypeVar("T")
RECORD_META = "imagefleet-record"  # x-amz-meta-imagefleet-record: ObjectStore.put_if_absent's `record`


class S3Store(ObjectStore):
    """Objects under `s3://bucket/prefix`: write-once by `If-None-Match: *`, every call retried through
    transient errors (5xx, SlowDown, connection) for up to `spec.retry_budget_s`.

    Args:
        uri: `s3://bucket/prefix`.
        spec: resolved connection (credentials, endpoint, retries).
    """

    def __init__(self, uri: str, spec: StoreSpec) -> None:
        super().__init__(uri, spec)
        if self.location.kind != "s3":
            raise ValueError(f"{uri} is not an s3:// URI; open_store picks the store for a URI")
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The boto3 client, created on first use (actors build stores before they need them)."""
        if self._client is None:
            self._client = s3_client(self.spec)
        return self._client

    def _s3(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, self.spec.retry_budget_s, what)

    def _key(self, rel: str) -> str:
        return f"{self.location.prefix}/{rel}".lstrip("/")

    # -- writes -------------------------------------------------------------------------------------
    def put_if_absent(self, rel: str, data: bytes, content_type: str, sha256: str,
                      record: str = "") -> tuple[bool, str]:
        from botocore.exceptions import ClientError

        metadata = {"sha256": sha256, **({RECORD_META: record} if record else {})}
        try:
            self._s3(
                lambda: self.client.put_object(
                    Bucket=self.location.bucket,
                    Key=self._key(rel),
                    Body=data,
                    ContentType=content_type,
                    IfNoneMatch="*",
                    Metadata=metadata,
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

    def put(self, rel: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._s3(
            lambda: self.client.put_object(
                Bucket=self.location.bucket, Key=self._key(rel), Body=data, ContentType=content_type
            ),
            f"put {rel}",
        )

    def put_file(self, rel: str, path: str, content_type: str = "application/octet-stream") -> None:
        # upload_file goes multipart for large files
        self._s3(lambda: self.client.upload_file(path, self.location.bucket, self._key(rel),
                                                 ExtraArgs={"ContentType": content_type}), f"upload {rel}")

    # -- reads --------------------------------------------------------------------------------------
    def get(self, rel: str) -> bytes:
        return self._s3(
            lambda: bytes(self.client.get_object(Bucket=self.location.bucket, Key=self._key(rel))["Body"].read()),
            f"get {rel}",
        )

    def stored_sha256(self, rel: str) -> str:
        """Streamed in 8 MiB chunks: a model's weights file can be larger than memory."""
        def digest() -> str:
            body = self.client.get_object(Bucket=self.location.bucket, Key=self._key(rel))["Body"]
            hasher = hashlib.sha256()
            for chunk in body.iter_chunks(8 << 20):
                hasher.update(chunk)
            return hasher.hexdigest()

        return self._s3(digest, f"get {rel}")

    def record_of(self, rel: str) -> tuple[str, str]:
        meta = self._s3(lambda: self.client.head_object(Bucket=self.location.bucket, Key=self._key(rel)),
                        f"head {rel}").get("Metadata", {})
        return str(meta.get(RECORD_META, "")), str(meta.get("sha256", ""))

    def size(self, rel: str) -> int | None:
        from botocore.exceptions import ClientError

        def head() -> int | None:
            try:
                return int(self.client.head_object(Bucket=self.location.bucket, Key=self._key(rel))["ContentLength"])
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise

        return self._s3(head, f"head {rel}")

    def exists(self, rel: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.location.bucket, Key=self._key(rel))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return self._s3(head, f"head {rel}")

    def list(self, rel_prefix: str) -> Iterator[tuple[str, int]]:
        for rel, size, _ in self.listing(rel_prefix):
            yield rel, size

    def listing(self, rel_prefix: str) -> Iterator[tuple[str, int, str]]:
        """(relative name, size, ETag) of every object under `rel_prefix`: the ETag changes whenever the object is
        written again, so (name, size, ETag) tells a cached digest of an object's bytes still holds."""
        strip = len(self.location.prefix) + 1 if self.location.prefix else 0
        for page in self._pages(self._key(rel_prefix)):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # directory markers some writers leave behind
                    yield obj["Key"][strip:], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')

    def _pages(self, prefix: str) -> Iterator[dict[str, Any]]:
        """LIST pages under a key prefix, each page's request within the retry budget (a listing of a large
        output rides out an outage in the middle instead of failing the run)."""
        token: dict[str, str] = {}
        while True:
            page: dict[str, Any] = self._s3(lambda token=token: self.client.list_objects_v2(  # type: ignore[misc]
                Bucket=self.location.bucket, Prefix=prefix, **token), f"list {prefix}")
            yield page
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    # -- deletes and copies -------------------------------------------------------------------------
    def delete_prefix(self, rel_prefix: str) -> None:
        prefix = self._key(rel_prefix.rstrip("/") + "/")
        for page in self._pages(prefix):
            self._delete_keys([o["Key"] for o in page.get("Contents", [])], f"delete {rel_prefix}")
        self._s3(lambda: self.client.delete_object(Bucket=self.location.bucket, Key=prefix), f"delete {rel_prefix}")

    def delete(self, rel: str) -> None:
        self._s3(lambda: self.client.delete_object(Bucket=self.location.bucket, Key=self._key(rel)), f"delete {rel}")

    def delete_many(self, rels: Sequence[str]) -> Sequence[str]:
        """DeleteObjects, 1,000 keys a request (its limit); a key the response lists under Errors is returned."""
        return self._delete_keys([self._key(rel) for rel in rels], "delete manifest parts")

    def _delete_keys(self, keys: Sequence[str], what: str) -> Sequence[str]:
        """Delete bucket keys with DeleteObjects, 1,000 a request; `<key>: <code> <message>` of each it refused."""
        failed: list[str] = []
        for at in range(0, len(keys), 1000):
            batch: list[dict[str, Any]] = [{"Key": key} for key in keys[at:at + 1000]]
            answer = self._s3(lambda batch=batch: self.client.delete_objects(  # type: ignore[misc]
                Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}), what)
            failed += [f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}".rstrip()
                       for e in (answer or {}).get("Errors", [])]
        return failed

    def copy(self, src_rel: str, dst_rel: str) -> None:
        self._s3(
            lambda: self.client.copy_object(
                Bucket=self.location.bucket,
                Key=self._key(dst_rel),
                CopySource={"Bucket": self.location.bucket, "Key": self._key(src_rel)},
            ),
            f"copy {src_rel}",
        )

    # -- checks -------------------------------------------------------------------------------------
    def _preflight_view(self) -> S3Store:
        view = S3Store(self.location.uri, self.spec.model_copy(update={"retry_budget_s": 0.0}))
        view._client = s3_client(self.spec, preflight=True)
        return view

    def _explain(self, exc: BaseException) -> str:
        return explain_s3_error(exc, self.location.uri)
