"""Object stores (the ObjectStore interface, LocalStore, `open_store`) and the storage helpers every stage uses."""

from __future__ import annotations

import abc
import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr

from imagefleet.configs.storage import S3Config, StoreSpec

if TYPE_CHECKING:
    import pyarrow.fs

# S3Store (a bucket: boto3, conditional writes) lives in actors/s3_store.py; boto3 and pyarrow.fs are imported
# lazily so importing this module stays cheap.
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
            raise StorageError(f"cannot read s3.secret_file {s3.secret_file}: {exc.strerror}") from exc
        access, secret = pairs.get("access_key", "").strip(), pairs.get("secret_key", "").strip()
    profile = s3.profile or env.get("AWS_PROFILE", "")
    endpoint, region = _configured(env, profile, s3.endpoint_url,
                                   s3.region or env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", ""))
    _check_endpoint(endpoint, "s3.endpoint_url" if s3.endpoint_url else "AWS_ENDPOINT_URL")
    common: dict[str, Any] = dict(kind="s3", endpoint_url=endpoint, region=region, max_attempts=s3.max_attempts,
                                  connect_timeout_s=s3.connect_timeout_s, retry_budget_s=s3.retry_budget_s)
    if access and secret:  # static keys (with a session token when they are temporary)
        token = "" if s3.secret_file else env.get(s3.session_token_env, "")
        return StoreSpec(**common, access_key=SecretStr(access), secret_key=SecretStr(secret),
                         session_token=SecretStr(token))
    if access or secret:  # half a key pair is a mistake, not a request for the chain
        have = s3.access_key_env if access else s3.secret_key_env
        raise StorageError(f"no S3 credentials for {uri}: set {s3.access_key_env} and {s3.secret_key_env} (only "
                           f"{have} is set), or neither to use an AWS profile or role")
    # no keys: boto3's default chain — a profile (AWS_PROFILE or s3.profile), SSO, web identity, container or
    # instance roles; checked here so a run without any credentials stops before work
    if not _chain_has_credentials(profile):
        raise StorageError(
            f"no S3 credentials for {uri}: set {s3.access_key_env} and {s3.secret_key_env} (or s3.secret_file), "
            f"an AWS profile (AWS_PROFILE or s3.profile), or run where a role provides them"
        )
    return StoreSpec(**common, credentials="chain", profile=profile)


def _configured(env: dict[str, str], profile: str, endpoint: str, region: str) -> tuple[str, str]:
    """(endpoint, region): those given, else where the AWS tools look (the config files read once):
    AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the profile's `services`; the profile's `region`, else us-east-1."""
    from botocore.configprovider import ConfiguredEndpointProvider
    from botocore.exceptions import BotoCoreError

    if endpoint and region:
        return endpoint, region
    try:
        session = _chain_session(profile)._session
        scoped = session.get_scoped_config()
        found = ConfiguredEndpointProvider(session.full_config, scoped, "s3", env).provide()  # botocore's lookup
        return endpoint or found or "", region or scoped.get("region", "") or "us-east-1"
    except BotoCoreError:  # a missing profile (reported with the credentials)
        return endpoint or env.get("AWS_ENDPOINT_URL_S3", "") or env.get("AWS_ENDPOINT_URL", ""), region or "us-east-1"


def _chain_has_credentials(profile: str) -> bool:
    """Whether boto3's default credential chain finds credentials (StorageError naming a missing profile)."""
    import boto3
    import botocore.exceptions

    try:
        return boto3.Session(profile_name=profile or None).get_credentials() is not None
    except botocore.exceptions.ProfileNotFound:
        raise StorageError(f"AWS profile {profile!r} is not in the AWS config or credentials files") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"AWS credentials could not be resolved: {exc}") from exc


def _keys(spec: StoreSpec) -> tuple[str, str, str]:
    """(access key, secret key, session token) a store connection signs with: its own keys, or the chain's current
    ones (boto3 refreshes temporary credentials)."""
    if spec.credentials == "keys":
        return (spec.access_key.get_secret_value(), spec.secret_key.get_secret_value(),
                spec.session_token.get_secret_value())
    found = _chain_session(spec.profile).get_credentials()
    frozen = found.get_frozen_credentials() if found is not None else None
    return (frozen.access_key, frozen.secret_key, frozen.token or "") if frozen is not None else ("", "", "")


@functools.lru_cache(maxsize=8)
def _chain_session(profile: str) -> Any:
    """One boto3 session per profile for the process: a new session reloads botocore's service models (~130 ms a
    client here, against ~4 ms from a kept one) and resolves credentials again."""
    import boto3

    return boto3.Session(profile_name=profile or None)


def _check_endpoint(endpoint: str, where: str) -> None:
    """An endpoint must be an http(s) URL with a host; botocore otherwise fails deep inside with a traceback."""
    if not endpoint:
        return
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or " " in endpoint:
        raise StorageError(f"the S3 endpoint {endpoint!r} (from {where}) is not a URL; use one like "
                           f"http://127.0.0.1:9000 or https://s3.example.com")


def s3_client(spec: StoreSpec, preflight: bool = False) -> Any:
    """A boto3 S3 client with standard-mode retries (5xx, SlowDown, connection errors) and backoff.

    `preflight`: checks before a run fail fast instead (two attempts, and a read timeout of a few connect
    timeouts: an endpoint that accepts connections but never answers once stalled the start for 9 minutes).
    """
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 2 if preflight else spec.max_attempts},
        connect_timeout=spec.connect_timeout_s,
        read_timeout=preflight_read_timeout(spec) if preflight else 60,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        # one client serves a stage's threads (the writer's num_upload_threads ≤ 64, the resume index's record
        # readers): botocore's default pool of 10 would drop and reopen connections past 10
        max_pool_connections=64,
        # sha256 (kept in metadata) is our integrity check; skipping the SDK's extra CRC saves CPU per PUT
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    where = dict(endpoint_url=spec.endpoint_url or None, region_name=spec.region, config=config)
    if spec.credentials == "chain":
        return _chain_session(spec.profile).client("s3", **where)
    import boto3  # the default session: its loaded service models serve every client

    access, secret, token = _keys(spec)
    return boto3.client("s3", aws_access_key_id=access, aws_secret_access_key=secret,
                        aws_session_token=token or None, **where)


def preflight_read_timeout(spec: StoreSpec) -> float:
    """How long a check before the run waits for an answer."""
    return 4 * spec.connect_timeout_s


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
    access, secret, token = _keys(spec)
    fs = pafs.S3FileSystem(
        access_key=access or None,
        secret_key=secret or None,
        session_token=token or None,
        region=spec.region,
        endpoint_override=endpoint or None,
        scheme=scheme,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=spec.max_attempts),
        connect_timeout=spec.connect_timeout_s,
        request_timeout=60,  # an endpoint that never answers fails the listing instead of hanging it
    )
    return fs, f"{loc.bucket}/{loc.prefix}".rstrip("/")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks (weights and shards can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RECORD_MAX_BYTES = 1800
"""Longest `record` kept with an object: S3 allows 2 KB of user metadata per object (names and values), and the
sha256 takes ~70 bytes of it."""
PROBE_DIR = "_probe"  # check_writable's throwaway object, removed right after


class ObjectStore(abc.ABC):
    """Object access under one prefix; `open_store` picks the implementation (LocalStore or S3Store).

    Paths are relative to the prefix (`uri_of`/`rel_of` convert). Images go through `put_if_absent`, which
    never overwrites (write-once); records and reports go through `put`, which may.

    Args:
        uri: the prefix (`s3://bucket/prefix`, a local folder, or `file://folder`).
        spec: resolved connection (credentials, endpoint, retry budget; `kind="local"` for folders).
    """

    def __init__(self, uri: str, spec: StoreSpec) -> None:
        self.location = parse_location(uri)
        self.spec = spec
        self._arrow: tuple[pyarrow.fs.FileSystem, str] | None = None

    def arrow(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """(pyarrow filesystem, root path) for this store's Parquet reads, made once per store."""
        if self._arrow is None:
            self._arrow = arrow_filesystem(self.location.uri, self.spec)
        return self._arrow

    def uri_of(self, rel: str) -> str:
        """The URI of a relative path under this store."""
        return self.location.join(rel)

    def rel_of(self, uri: str) -> str:
        """The relative path of a URI under this store (inverse of uri_of); ValueError when it is elsewhere."""
        root = self.location.uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise ValueError(f"{uri} is not under {root}")
        return uri[len(root):]

    # -- writes -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_if_absent(self, rel: str, data: bytes, content_type: str, sha256: str,
                      record: str = "") -> tuple[bool, str]:
        """Write `data` unless the object exists (write-once, also against racing writers).

        Args:
            rel: relative path.
            data: the bytes.
            content_type: MIME type recorded with the object (where the store keeps one).
            sha256: hex digest of `data`, kept with the object so a later check needn't read it.
            record: a short ASCII text kept with the object where the store can (S3 user metadata, a local
                file's extended attribute), read back by `record_of`: an image's provenance, so a rerun can adopt
                an image whose manifest row was lost (actors.resume_index). At most RECORD_MAX_BYTES; '' = none.

        Returns:
            (written, sha256 of the stored object): the stored object wins when it already existed.
        """

    @abc.abstractmethod
    def put(self, rel: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Overwrite-allowed write (run.json, reports, batch records)."""

    @abc.abstractmethod
    def put_file(self, rel: str, path: str, content_type: str = "application/octet-stream") -> None:
        """Overwrite-allowed upload of a local file (shards can be GBs: never read into memory)."""

    # -- reads --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, rel: str) -> bytes:
        """The bytes of a stored object."""

    def stored_sha256(self, rel: str) -> str:
        """sha256 of a stored object, computed from its bytes: the digest kept with it is metadata anyone with
        write access could set (only write-once conflicts ask: a rerun after lost rows, racing writers)."""
        return hashlib.sha256(self.get(rel)).hexdigest()

    @abc.abstractmethod
    def record_of(self, rel: str) -> tuple[str, str]:
        """(record, sha256) kept with the object by `put_if_absent` ('' for what it doesn't have, or when the
        store can't keep them); without reading the object."""

    @abc.abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether an object exists at `rel`."""

    @abc.abstractmethod
    def size(self, rel: str) -> int | None:
        """The size in bytes of the object at `rel` (None when there is none), without reading it."""

    @abc.abstractmethod
    def list(self, rel_prefix: str) -> Iterator[tuple[str, int]]:
        """(relative name, size) of every object under `rel_prefix`, streamed page by page."""

    # -- deletes and copies -------------------------------------------------------------------------
    @abc.abstractmethod
    def delete_prefix(self, rel_prefix: str) -> None:
        """Remove everything under `rel_prefix/` (directory markers included)."""

    @abc.abstractmethod
    def delete(self, rel: str) -> None:
        """Remove one object (no error when it is absent)."""

    def delete_many(self, rels: Sequence[str]) -> Sequence[str]:
        """Remove objects (absent ones are no error); returns `<rel>: <why>` for each that could not be removed.
        One request per object here; a store with a batch delete overrides it (S3: 1,000 keys a request)."""
        failed: list[str] = []
        for rel in rels:
            try:
                self.delete(rel)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, which decides
                failed.append(f"{rel}: {exc}")
        return failed

    @abc.abstractmethod
    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Copy an object within the store, replacing `dst_rel` atomically."""

    # -- checks -------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail fast with a StorageError saying what to fix unless the location keeps what it is given
        (pre-flight): a probe object is written, read back and compared, found by a listing, and a conditional
        write of it refused (write-once is what makes reruns and racing writers safe). A store that accepts
        writes and keeps nothing fails here, before any image is made or paid for."""
        probe, data = self._probe_rel(), f"imagefleet probe {uuid.uuid4().hex}".encode()
        checker = self._preflight_view()
        try:
            next(iter(checker.list(f"{PROBE_DIR}/")), None)  # a missing bucket is named (some servers make one on PUT)
            checker.put(probe, data, "text/plain")
            try:
                _expect(checker.size(probe) is not None, "does not keep a written object")
                _expect(checker.get(probe) == data, "returned other bytes than were written")
                _expect(any(rel == probe for rel, _ in checker.list(f"{PROBE_DIR}/")),
                        "does not list a written object")
                second = b"second"
                written, _ = checker.put_if_absent(probe, second, "text/plain", hashlib.sha256(second).hexdigest())
                _expect(not written, "accepted a conditional write over an existing object (reruns and racing "
                                     "writers need write-once: S3 If-None-Match)")
            finally:
                checker.delete(probe)
                checker._forget_probe_dir()
        except StorageError as exc:
            raise StorageError(f"{self.location.uri}: the store {exc}; use one that keeps what it is given") from exc
        except Exception as exc:
            raise StorageError(self._explain(exc)) from exc

    def _preflight_view(self) -> ObjectStore:
        """This store for `check_writable`'s calls (S3: short timeouts, no retries: fail fast, don't ride out)."""
        return self

    def _forget_probe_dir(self) -> None:  # noqa: B027 (a hook: most stores leave nothing behind)
        """Remove what the probe leaves besides its object (a local folder)."""

    def _explain(self, exc: BaseException) -> str:
        """One line for a store error met by `check_writable`."""
        return f"cannot write to {self.location.uri}: {exc}"

    @staticmethod
    def _probe_rel() -> str:
        return f"{PROBE_DIR}/{uuid.uuid4().hex}"


def _expect(ok: bool, problem: str) -> None:
    if not ok:
        raise StorageError(problem)
