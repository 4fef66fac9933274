"""ResumeIndex: which image keys an output prefix already holds, from manifest parts + one prefix listing.

Linear in rows: one streamed LIST of `images/` and one columnar read of the manifest parts (committed and
staged by interrupted runs), part by part — never a HEAD per key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from actors.layout import IMAGES_DIR, MANIFEST_DIR, format_of_mime, image_ext
from actors.manifest_schema import CARRIED, iter_parts
from actors.storage import ObjectStore, arrow_filesystem

logger = logging.getLogger(__name__)

# CARRIED (declared in manifest_schema) is what a manifest row says about how its image was made; a cached row
# carries it forward so a resumed run's manifest still describes every image fully (scores, routes, timings,
# cost), not just the ones made this run.
# SETTINGS: what a stored image was made with; a resumed row reports these (an escalated row's are the heavy
# generator's, a hosted image's size the one the API returned).
SETTINGS = ("width", "height", "num_steps", "guidance_scale", "negative_prompt", "seed")
READ = ("image_key", "status", "sha256", "bytes", "error", "generator", "model", *CARRIED, *SETTINGS)


@dataclass(frozen=True)
class Prior:
    """What an earlier run recorded for one image key."""

    status: str
    sha256: str
    bytes: int
    error: str
    carried: dict[str, Any] = field(default_factory=dict)
    """CARRIED columns of the earlier row (ok rows)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """What the stored image was made with (size as returned, steps, guidance, negative prompt): ok rows."""
    final_key: str = ""
    """Cascade: the heavy image this draft key was escalated to ('' = the key itself is final)."""
    final_generator: str = ""
    """Cascade: generator that made the final image."""
    final_model: str = ""
    """Cascade: its model@revision."""


class ResumeIndex:
    """Image key → the best earlier outcome, held columnar (about the size of the manifest columns it keeps)
    and turned into a Prior only when a key is looked up.

    An escalated cascade row is also found under its draft key, pointing at the final (heavy) image: a rerun
    then skips the draft, the scoring and the heavy generation instead of redoing them.
    """

    def __init__(self, table: Any = None, positions: dict[str, int] | None = None,
                 redirects: dict[str, int] | None = None) -> None:
        self.table = table
        self.positions = positions or {}
        self.redirects = redirects or {}

    def __len__(self) -> int:
        return len(self.positions) + len(self.redirects)

    def get(self, key: str) -> Prior | None:
        pos, redirected = self.positions.get(key), False
        if key in self.redirects and (pos is None or self.table.column("status")[pos].as_py() != "ok"):
            pos, redirected = self.redirects[key], True
        if pos is None:
            return None
        row = {name: self.table.column(name)[pos].as_py() for name in self.table.column_names}
        ok = row["status"] == "ok"
        return Prior(
            status=row["status"], sha256=row["sha256"] or "", bytes=int(row["bytes"] or 0), error=row["error"] or "",
            carried={c: row.get(c) for c in CARRIED} if ok else {},
            settings={c: row[c] for c in SETTINGS if row.get(c) is not None} if ok else {},
            final_key=row["image_key"] if redirected else "",
            final_generator=(row.get("generator") or "") if redirected else "",
            final_model=(row.get("model") or "") if redirected else "",
        )


def load_index(store: ObjectStore, image_format: str, keep_provider_bytes: bool = True) -> ResumeIndex:
    """What the output already holds: `ok` rows whose object exists beat `error` rows; skipped rows don't count.

    An ok row's object is the one in the format its row records (`mime`; `image_format` for rows from before that
    column). It counts only in the format this run would store it in: `image_format` (an image stored as PNG is not
    "present" for a run that writes JPEG), or, when the run keeps providers' files (`keep_provider_bytes`), a
    hosted image's own format (a row that sent requests): a Gemini PNG is found while `output.format` is webp.

    Args:
        store: the output.
        image_format: the run's `output.format`.
        keep_provider_bytes: the run's `output.keep_provider_bytes`.
    """
    import pyarrow as pa

    # 1 every image object present (one streamed listing), as `<key>.<ext>`
    present = {rel.rsplit("/", 1)[-1] for rel, _ in store.list(f"{IMAGES_DIR}/")}
    run_ext = image_ext(image_format)

    def stored_in_run_format(key: str, mime: str | None, requests: int | None) -> bool:
        fmt = format_of_mime(mime or "")
        ext = image_ext(fmt) if fmt else run_ext
        provider_file = keep_provider_bytes and (requests or 0) > 0
        return (ext == run_ext or provider_file) and f"{key}.{ext}" in present
    # 2 manifest rows from committed parts and from runs that were interrupted before committing
    parts = [rel for rel, _ in store.list(f"{MANIFEST_DIR}/") if rel.endswith(".parquet")]
    if not parts:
        return ResumeIndex()
    fs, root = arrow_filesystem(store.location.uri, store.spec)
    # 3 keep the rows that decide each key (columnar), remember where they are; parts are read one by one (a part
    # written by an older version reads a column it lacks as null)
    kept, positions, redirects, ok_keys = [], {}, {}, set()
    offset = 0
    for batch in iter_parts(fs, [f"{root}/{p}" for p in parts], list(READ)):
        cols = {c: batch.column(c).to_pylist() for c in ("image_key", "status", "route", "draft_image_key", "mime",
                                                          "requests")}
        routes, drafts, mimes, sent = cols["route"], cols["draft_image_key"], cols["mime"], cols["requests"]
        take: list[int] = []
        for j, (key, status) in enumerate(zip(cols["image_key"], cols["status"], strict=True)):
            if not key or status not in ("ok", "error") or key in ok_keys:
                continue  # no key / never attempted (skipped) / already settled by an ok row
            if status == "ok" and not stored_in_run_format(key, mimes[j], sent[j]):
                continue  # manifest says ok but the object is gone (or in another format): redo it
            positions[key] = offset + len(take)
            if status == "ok":
                ok_keys.add(key)
                if routes[j] == "escalated" and drafts[j] and drafts[j] not in ok_keys:
                    redirects[drafts[j]] = positions[key]
            take.append(j)
        if take:
            kept.append(batch.take(take))
            offset += len(take)
    table = pa.concat_tables(kept).combine_chunks() if kept else None
    logger.info("resume index: %d objects, %d manifest keys, %d escalated drafts", len(present), len(positions),
                len(redirects))
    return ResumeIndex(table, positions, redirects)
