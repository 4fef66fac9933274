"""Which manifest parts are the current manifest: what `manifest/_manifest.json` lists (the commit point
pipelines/commit.py writes last). Every reader follows it; resume also reads the parts it doesn't list."""

from __future__ import annotations

import json

from imagefleet.actors.layout import MANIFEST_DIR, MANIFEST_INDEX, is_manifest_part, run_part_rows
from imagefleet.actors.storage import ObjectStore


def current_parts(store: ObjectStore) -> list[str]:
    """The parts of the current manifest (relative paths): those `_manifest.json` lists.

    An output written before the index existed has none: there every part in `manifest/` is the manifest, except
    the parts runs of this version write in place (`run_part` names), which no index listing them means no run
    committed yet.
    """
    if store.exists(MANIFEST_INDEX):
        index = json.loads(store.get(MANIFEST_INDEX))
        return [str(p) for p in index["parts"]]
    return sorted(rel for rel, _ in store.list(f"{MANIFEST_DIR}/")
                  if is_manifest_part(rel) and run_part_rows(rel) is None)
