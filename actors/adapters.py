"""LoRA adapter files: finding the weights file of an adapter (local, s3:// or hub) and its content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imagefleet.actors.storage import parse_location
from imagefleet.actors.stores import open_store
from imagefleet.configs.generator_base import LoraConfig
from imagefleet.configs.storage import StoreSpec


class AdapterError(ValueError):
    """An adapter can't be found or read; the message names it and what to change."""


def is_hub_id(path: str) -> bool:
    """A hub repository id (`org/name`: one slash, no file extension) rather than a local or s3:// path."""
    if path.startswith(("s3://", "/", "./", "../", "~", "file://")) or Path(path).exists():
        return False
    return path.count("/") == 1 and not path.endswith((".safetensors", ".bin", ".pt"))


def weights_file(folder: Path, adapter: LoraConfig) -> Path:
    """The adapter's weights file in a local folder: `weight_name`, else the folder's only `.safetensors` file."""
    if adapter.weight_name:
        path = folder / adapter.weight_name
        if not path.is_file():
            raise AdapterError(f"LoRA {adapter.name!r}: {path} does not exist")
        return path
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise AdapterError(f"LoRA {adapter.name!r}: {folder} holds {len(found)} .safetensors files; set weight_name "
                           f"to the one to load")
    return found[0]


def local_weights(adapter: LoraConfig, store: StoreSpec, cache_dir: str) -> Path | None:
    """A local weights file for the adapter: the file itself, the file in its folder, or an s3:// object copied once
    into `cache_dir`; None for a hub id (diffusers downloads those)."""
    if is_hub_id(adapter.path):
        return None
    if not adapter.path.startswith("s3://"):
        path = Path(adapter.path.removeprefix("file://")).expanduser()
        if path.is_dir():
            return weights_file(path, adapter)
        if not path.is_file():
            raise AdapterError(f"LoRA {adapter.name!r}: {adapter.path} does not exist")
        return path
    loc = parse_location(adapter.path)
    bucket = open_store(f"s3://{loc.bucket}", store)
    key = loc.prefix
    if bucket.size(key) is None:  # a folder: its weights file
        names = [rel for rel, _ in bucket.list(key) if rel.endswith(".safetensors")]
        wanted = [n for n in names if not adapter.weight_name or n.endswith("/" + adapter.weight_name)]
        if len(wanted) != 1:
            raise AdapterError(f"LoRA {adapter.name!r}: {adapter.path} holds {len(wanted)} matching .safetensors "
                               f"files; set weight_name")
        key = wanted[0]
    target = Path(cache_dir, "loras", hashlib.sha256(f"s3://{loc.bucket}/{key}".encode()).hexdigest()[:16],
                  Path(key).name)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".partial-{id(bucket)}")
        partial.write_bytes(bucket.get(key))
        partial.rename(target)
    return target


def adapter_sha256(adapter: LoraConfig, store: StoreSpec, cache_dir: str) -> str:
    """What identifies the adapter's weights in image keys: the sha256 of its file, or `hub:<id>/<file>` for a hub
    id (like a model id, trusted to name fixed weights)."""
    path = local_weights(adapter, store, cache_dir)
    if path is None:
        return f"hub:{adapter.path}/{adapter.weight_name}"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
