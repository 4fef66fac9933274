"""LocalStore: an object store in a local folder (write-once by an atomic hard link; image records as extended
attributes)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from imagefleet.actors.storage import PROBE_DIR, ObjectStore
from imagefleet.configs.storage import StoreSpec

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
        _replace_atomically(final, lambda tmp: tmp.write_bytes(data))

    def put_file(self, rel: str, path: str, content_type: str = "application/octet-stream") -> None:
        final = self._path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        _replace_atomically(final, lambda tmp: shutil.copyfile(path, tmp))

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
        tops = [base] if base.exists() else []
        if rel_prefix and not rel_prefix.endswith("/") and not base.is_dir() and base.parent.is_dir():
            # a key prefix that ends mid-name (`manifest/part-<attempt>-`) lists as on S3: what its folder holds
            # under names that start with it
            tops = [base.parent / n for n in sorted(os.listdir(base.parent)) if n.startswith(base.name)]
        for top in tops:
            walk = os.walk(top) if top.is_dir() else [(str(top.parent), [], [top.name])]
            for dirpath, _, files in walk:
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
        _replace_atomically(dst, lambda tmp: shutil.copyfile(src, tmp))

    def _forget_probe_dir(self) -> None:
        with contextlib.suppress(OSError):
            self._path(PROBE_DIR).rmdir()  # only when empty: a racing run's probe stays

    def _explain(self, exc: BaseException) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"cannot write to {self.location.uri}: {reason}"


def _replace_atomically(final: Path, write: Callable[[Path], object]) -> None:
    """Write `final` under a temporary name and rename it into place: a reader (or a rerun) sees the old object
    or the whole new one, never a part. A write that fails (disk full, kill) leaves no object: its temporary
    file is removed here, or, after a kill, skipped by `list` (`.tmp-` names)."""
    tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
