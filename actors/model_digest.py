"""A local model folder's identity by content: the sha256 of its files (weights, configs, tokenizers), so the same
weights at another path keep their image keys and retrained weights in place get new ones. Computed once per
file version and cached (`~/.cache/imagefleet/model-digests.json`, keyed by path, size and mtime)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from imagefleet.actors.storage import file_sha256

SKIPPED_SUFFIXES = (".md", ".lock", ".metadata")
"""Files that don't change what a model makes (model cards, download bookkeeping)."""


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagefleet" / "model-digests.json"


def model_files(folder: Path) -> list[Path]:
    """The files that make the model: every regular file below `folder` (symlinks followed, as loaders follow
    them) but hidden ones (`.git`, `.cache`) and SKIPPED_SUFFIXES, in a fixed order."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, f) for f in sorted(files) if not f.startswith(".") and not f.endswith(SKIPPED_SUFFIXES)]
    return found


def folder_digest(folder: str | Path) -> str:
    """`sha256:<hex>` over each file's relative path and content hash; a file whose size and mtime are as cached
    is not read again."""
    root = Path(folder).expanduser().resolve()
    cache_path = cache_file()
    try:
        cache: dict[str, list[object]] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    outer, changed = hashlib.sha256(), False
    for path in model_files(root):
        stat = path.stat()
        key = str(path.resolve())
        entry = cache.get(key)
        if not (isinstance(entry, list) and entry[:2] == [stat.st_size, stat.st_mtime_ns]):
            entry, changed = [stat.st_size, stat.st_mtime_ns, file_sha256(path)], True
            cache[key] = entry
        outer.update(f"{path.relative_to(root).as_posix()}\0{entry[2]}\n".encode())
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_path)
        except OSError:
            pass  # a read-only home: computed again next time
    return f"sha256:{outer.hexdigest()}"
