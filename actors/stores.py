"""`open_store`: the object store for a URI (S3Store for `s3://`, LocalStore for a folder)."""

from __future__ import annotations

from imagefleet.actors.local_store import LocalStore
from imagefleet.actors.s3_store import S3Store
from imagefleet.actors.storage import ObjectStore, parse_location
from imagefleet.configs.storage import StoreSpec


def open_store(uri: str, spec: StoreSpec) -> ObjectStore:
    """The store for a URI: an S3Store for `s3://bucket/prefix`, else a LocalStore for the folder.

    Args:
        uri: where the objects live.
        spec: resolved connection (`resolve_store_spec`).

    Returns:
        An ObjectStore rooted at `uri`.
    """
    if parse_location(uri).kind == "local":
        return LocalStore(uri, spec)
    return S3Store(uri, spec)
