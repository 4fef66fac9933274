"""LocalStore: an object store in a local folder (write-once by an atomic hard link; image records as extended
attributes)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from actors.storage import ObjectStore, StorageError
from configs.storage import StoreSpec

logger = logging.getLogger(__name__)

RECORD_XATTR, SHA256_XATTR = "user.imagefleet.record", "user.imagefleet.sha256"


def _set_xattrs(fd: int, values: dict[str, str]) -> None:
    """Keep `values` as extended attributes of an open file, where the OS and file system can (Linux, most file
    systems); elsewhere nothing is kept and a rerun regenerates what it can't adopt."""
    try:
        for name, value in values.items():
            os.setxattr(fd, name, value.encode("ascii"))
    except (AttributeError, OSError) as exc:
        logger.debug("no extended attributes here (%s): image records not kept", exc)


def _get_xattr(path: str, name: str) -> str:
    try:
        return os.getxattr(path, name).decode("ascii", "replace")
    except (AttributeError, OSError):
        return ""



class LocalStore(ObjectStore):
    """A local folder: write-once by an atomic hard link, overwrites by an atomic rename.

    Args:
        uri: the folder (optionally `file://`).
        spec: resolved connection (unused by local folders; kept so callers needn't care).
    """

    def __init__(self, uri: str, spec: StoreSpec) -> None:
        super().__init__(uri, spec)
        if self.location.kind != "local":
            raise ValueError(f"{uri} is not a local folder; open_store picks the store for a URI")

    def _path(self, rel: str) -> Path:
        return Path(self.location.prefix, rel)

    def put_if_absent(self, rel: str, data: bytes, content_type: str, sha256: str,
                      record: str = "") -> tuple[bool, str]:
        final = self._path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if record:
                    _set_xattrs(fh.fileno(), {RECORD_XATTR: record, SHA256_XATTR: sha256})
            os.link(tmp, final)  # atomic, fails if the name exists: write-once
            return True, sha256
        except FileExistsError:
            return False, self.stored_sha256(rel)
        finally:
            os.unlink(tmp)

    def put(self, rel: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        final = self._path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        tmp.replace(final)

    def put_file(self, rel: str, path: str, content_type: str = "application/octet-stream") -> None:
        final = self._path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, final)

    def get(self, rel: str) -> bytes:
        return self._path(rel).read_bytes()

    def record_of(self, rel: str) -> tuple[str, str]:
        path = str(self._path(rel))
        return _get_xattr(path, RECORD_XATTR), _get_xattr(path, SHA256_XATTR)

    def exists(self, rel: str) -> bool:
        return self._path(rel).exists()

    def size(self, rel: str) -> int | None:
        path = self._path(rel)
        return path.stat().st_size if path.is_file() else None

    def list(self, rel_prefix: str) -> Iterator[tuple[str, int]]:
        root = Path(self.location.prefix)
        base = root / rel_prefix
        if not base.exists():
            return
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):  # a write in progress (or one that died): not an object
                    continue
                full = Path(dirpath, name)
                yield str(full.relative_to(root)), full.stat().st_size

    def delete_prefix(self, rel_prefix: str) -> None:
        shutil.rmtree(self._path(rel_prefix), ignore_errors=True)

    def delete(self, rel: str) -> None:
        self._path(rel).unlink(missing_ok=True)

    def copy(self, src_rel: str, dst_rel: str) -> None:
        src, dst = self._path(src_rel), self._path(dst_rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(src.read_bytes())
        tmp.replace(dst)

    def check_writable(self) -> None:
        probe = self._probe_rel()
        try:
            self.put(probe, b"ok")
            self.delete(probe)
        except OSError as exc:
            raise StorageError(f"cannot write to {self.location.uri}: {exc.strerror}") from None
