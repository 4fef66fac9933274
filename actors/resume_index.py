"""ResumeIndex: which image keys an output prefix already holds, from manifest parts + one prefix listing.

Linear in rows: one streamed LIST of `images/` and one columnar read of the manifest parts (committed and
staged by interrupted runs) — never a HEAD per key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from actors.storage import ObjectStore, arrow_filesystem

logger = logging.getLogger(__name__)

MANIFEST_PREFIX = "manifest/"


@dataclass(frozen=True)
class Prior:
    """What an earlier run recorded for one image key."""

    status: str
    sha256: str
    bytes: int
    error: str


def load_index(store: ObjectStore) -> dict[str, Prior]:
    """Map image key → the best earlier outcome: `ok` (and the object exists) beats `error`."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    # 1 every image object present (one streamed listing)
    present = set()
    for rel, _ in store.list("images/"):
        name = rel.rsplit("/", 1)[-1]
        present.add(name.split(".", 1)[0])
    # 2 manifest rows from committed parts and from runs that were interrupted before committing
    parts = [rel for rel, _ in store.list(MANIFEST_PREFIX) if rel.endswith(".parquet")]
    index: dict[str, Prior] = {}
    if not parts:
        return index
    fs, root = arrow_filesystem(store.location.uri, store.spec)
    dataset = pads.dataset([f"{root}/{p}" for p in parts], filesystem=fs, format="parquet")
    for batch in dataset.to_batches(columns=["image_key", "status", "sha256", "bytes", "error"], batch_size=65536):
        batch = batch.filter(pc.not_equal(batch.column("image_key"), ""))
        for key, status, sha, size, error in zip(*(batch.column(i).to_pylist() for i in range(5)), strict=True):
            if status not in ("ok", "error"):
                continue  # skipped (budget) rows were never attempted
            if status == "ok" and key not in present:
                continue  # manifest says ok but the object is gone: redo it
            if key in index and index[key].status == "ok":
                continue
            index[key] = Prior(status=status, sha256=sha or "", bytes=int(size or 0), error=error or "")
    logger.info("resume index: %d objects, %d manifest keys", len(present), len(index))
    return index
