"""A model folder's identity by content: the sha256 of its files (weights, configs, tokenizers), so the same
weights at another path — another local folder or an `s3://` copy — keep their image keys and retrained weights in
place get new ones. Computed once per file version and cached (`~/.cache/imagefleet/model-digests.json`, keyed by
path, size and mtime for a local file; by URI, size and ETag for an S3 object)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from imagefleet.actors.storage import file_sha256

if TYPE_CHECKING:
    from imagefleet.actors.s3_store import S3Store

SKIPPED_SUFFIXES = (".md", ".lock", ".metadata")
"""Files that don't change what a model makes (model cards, download bookkeeping)."""


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagefleet" / "model-digests.json"


def counts(rel: str) -> bool:
    """Whether a file at `rel` (relative to the model folder) is part of the model: not hidden (`.git`, `.cache`,
    at any depth) and not one of SKIPPED_SUFFIXES."""
    return not any(part.startswith(".") for part in rel.split("/")) and not rel.endswith(SKIPPED_SUFFIXES)


def model_files(folder: Path) -> list[Path]:
    """The files that make the model: every regular file below `folder` (symlinks followed, as loaders follow
    them) that `counts`, in a fixed order."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, f) for f in sorted(files) if counts(f)]
    return found


def folder_digest(folder: str | Path) -> str:
    """`sha256:<hex>` over each file's relative path and content hash; a file whose size and mtime are as cached
    is not read again."""
    root = Path(folder).expanduser().resolve()

    def files() -> Iterable[tuple[str, str, list[object], Callable[[], str]]]:
        for path in model_files(root):
            stat = path.stat()
            yield (path.relative_to(root).as_posix(), str(path.resolve()), [stat.st_size, stat.st_mtime_ns],
                   partial(file_sha256, path))

    return _digest(files())


def store_folder_digest(store: S3Store) -> str:
    """The same digest for an `s3://` model folder (the same files give the same value as a local copy): each
    object read once, streamed; an object whose size and ETag are as cached is not read again."""
    def files() -> Iterable[tuple[str, str, list[object], Callable[[], str]]]:
        for rel, size, etag in sorted(store.listing("")):
            if counts(rel):
                yield rel, store.uri_of(rel), [size, etag], partial(store.stored_sha256, rel)

    return _digest(files())


def _digest(files: Iterable[tuple[str, str, list[object], Callable[[], str]]]) -> str:
    """`sha256:<hex>` over (relative name, sha256) of each file in order; `files` yields (relative name, cache key,
    version stamp, how to hash it) and the cache keeps each key's [*stamp, sha256]."""
    cache_path = cache_file()
    try:
        cache: dict[str, list[object]] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    outer, changed, count = hashlib.sha256(), False, 0
    for rel, key, stamp, sha256 in files:
        entry = cache.get(key)
        if not (isinstance(entry, list) and entry[:-1] == stamp and len(entry) == len(stamp) + 1):
            entry, changed = [*stamp, sha256()], True
            cache[key] = entry
        outer.update(f"{rel}\0{entry[-1]}\n".encode())
        count += 1
    if count == 0:
        raise FileNotFoundError("no model files")
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_path)
        except OSError:
            pass  # a read-only home: computed again next time
    return f"sha256:{outer.hexdigest()}"
