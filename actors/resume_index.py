"""ResumeIndex: which image keys an output prefix already holds, from manifest parts + one prefix listing.

Linear in rows: one streamed LIST of `images/` and one columnar read of the manifest parts (committed and
staged by interrupted runs), part by part — no HEAD per key, except for the few images no manifest row accounts for.

Those are images a run stored and then lost the rows of (its driver died between an upload and the manifest part
holding the row: up to a part's worth, per part in flight). Each image carries its own record (`image_record`:
what its manifest row says about how it was made, kept with the object by the writer), so a rerun that asks for
one of them reads the record (one HEAD) and adopts the image instead of paying for it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from imagefleet.actors.image_records import ESCALATED_TO, checked, record_settings
from imagefleet.actors.layout import (
    EXTENSIONS,
    IMAGES_DIR,
    MANIFEST_DIR,
    format_of_mime,
    image_ext,
    image_rel,
)
from imagefleet.actors.manifest_index import current_parts
from imagefleet.actors.manifest_schema import CARRIED, iter_parts
from imagefleet.actors.storage import RECORD_MAX_BYTES, ObjectStore, arrow_filesystem
from imagefleet.actors.store_errors import is_transient
from imagefleet.configs.request import RESUMED_SETTINGS

logger = logging.getLogger(__name__)

# CARRIED (declared in manifest_schema) is what a manifest row says about how its image was made; a cached row
# carries it forward so a resumed run's manifest still describes every image fully (scores, routes, timings,
# cost), not just the ones made this run.
# SETTINGS (configs.request.RESUMED_SETTINGS): what a stored image was made with; a resumed row reports these (an
# escalated row's are the heavy generator's, a hosted image's size the one the API returned).
SETTINGS = RESUMED_SETTINGS
READ = ("image_key", "status", "sha256", "bytes", "error", "generator", "model", *CARRIED, *SETTINGS)
PREFETCH_MAX_KEYS = 4096
"""Unlisted images whose records are read up front, in parallel (`Unlisted.prefetch`); beyond this, on demand."""


def _takes(fmt: str, requests: Any, run_format: str, keep_provider_bytes: bool) -> bool:
    """Whether a run storing `run_format` counts an image stored as `fmt` as present: its own format, or, when it
    keeps providers' files, a hosted image's own format (a row that sent requests)."""
    return fmt == run_format or (keep_provider_bytes and (requests or 0) > 0)


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
                 redirects: dict[str, int] | None = None, unlisted: Unlisted | None = None) -> None:
        self.table = table
        self.positions = positions or {}
        self.redirects = redirects or {}
        self.unlisted = unlisted
        # whether each row is an ok one: a byte a row, read once rather than per lookup
        self.ok = bytearray(table.column("status").to_numpy(zero_copy_only=False) == "ok") if table else bytearray()

    def __len__(self) -> int:
        return len(self.positions) + len(self.redirects)

    def get(self, key: str) -> Prior | None:
        """What an earlier run settled for `key`: its manifest row, else the record of a stored image no manifest
        row names (adopted), else None. An image found that way also beats an earlier error row for its key (a
        later run made it and died before its row was written)."""
        pos, redirected, adopted = self.find(key)
        if adopted is not None or pos is None:
            return adopted
        return prior_of_row({name: self.table.column(name)[pos].as_py() for name in self.table.column_names},
                            redirected)

    def find(self, key: str) -> tuple[int | None, bool, Prior | None]:
        """Where `get` finds `key`: (its row in `table`, found through its escalated draft, None), or (None, False,
        the adopted Prior of a stored image no ok row names), or (None, False, None)."""
        pos, redirected = self.positions.get(key), False
        if key in self.redirects and (pos is None or not self.ok[pos]):
            pos, redirected = self.redirects[key], True  # the row of its final image (always an ok row)
        if (pos is None or not self.ok[pos]) and self.unlisted:  # (an empty Unlisted is falsy: no lookups)
            adopted = self.unlisted.adopt(key)
            if adopted is not None:
                return None, False, adopted
        return pos, redirected, None


def prior_of_row(row: dict[str, Any], redirected: bool = False) -> Prior:
    """The Prior of one resume-index row (the READ columns); `redirected`: found under the key of its escalated
    draft, so the row's own key is the final image's."""
    ok = row["status"] == "ok"
    return Prior(
        status=row["status"], sha256=row["sha256"] or "", bytes=int(row["bytes"] or 0), error=row["error"] or "",
        carried={c: row.get(c) for c in CARRIED} if ok else {},
        settings={c: row[c] for c in SETTINGS if row.get(c) is not None} if ok else {},
        final_key=row["image_key"] if redirected else "",
        final_generator=(row.get("generator") or "") if redirected else "",
        final_model=(row.get("model") or "") if redirected else "",
    )


class Unlisted:
    """Stored images no ok manifest row accounts for, by key, and their records read on demand (one HEAD each, once).

    Args:
        store: the output.
        objects: `<key>.<ext>` → size of those images (as the listing names them).
        run_format: the format this run stores images in (`output.format`).
        keep_provider_bytes: a hosted provider's file in its own format counts too (as for manifest rows).
    """

    def __init__(self, store: ObjectStore, objects: dict[str, int], run_format: str, keep_provider_bytes: bool
                 ) -> None:
        self.store, self.objects, self.run_format = store, objects, run_format
        self.formats = sorted(EXTENSIONS, key=lambda f: f != run_format)  # the run's own format first
        self.keep_provider_bytes = keep_provider_bytes
        self.answers: dict[str, Prior | None] = {}  # keys looked up so far (a table may ask for one twice)
        self.unreadable = 0  # records the store would not give (logged once, then counted)

    def __len__(self) -> int:
        return len(self.objects)

    def prefetch(self, max_keys: int = PREFETCH_MAX_KEYS, threads: int = 16) -> int:
        """Read the records of every unlisted image now, `threads` at a time, when there are at most `max_keys`
        of them (what a dead run leaves: a few manifest parts' worth); more (an output holding another config's
        images) are read one by one as the run asks for them. The preprocessor does this while it starts, beside
        the generators loading their models. Returns how many images were adopted.

        Raises:
            The store's error when it is down past its retry budget (the run fails; nothing is bought again).
        """
        keys = list(dict.fromkeys(name.partition(".")[0] for name in self.objects))
        if not keys or len(keys) > max_keys:
            return 0
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            self.answers.update(zip(keys, pool.map(self._adopt, keys), strict=True))
        adopted = sum(prior is not None for prior in self.answers.values())
        logger.info("adopted %d of %d stored images no manifest row names (their records read in advance%s)",
                    adopted, len(keys), f"; {self.unreadable} unreadable" if self.unreadable else "")
        return adopted

    def adopt(self, key: str) -> Prior | None:
        """The Prior of an unlisted image stored under `key` in a format this run accepts, from its record; for a
        kept cascade draft, the Prior of the heavy image its row ended as. None when there is none, or its record
        is missing or unreadable (written by an older version, or a store that keeps none): it is redone."""
        if key not in self.answers and any(f"{key}.{image_ext(f)}" in self.objects for f in self.formats):
            self.answers[key] = self._adopt(key)
        return self.answers.get(key)

    def _adopt(self, key: str) -> Prior | None:
        found = self._read(key)
        if found is None:
            return None
        fmt, record, sha256 = found
        final = record.get(ESCALATED_TO)
        if not final:
            prior = self._prior(key, fmt, record, sha256)
        else:
            heavy = self._read(str(final))
            if (heavy is None or ESCALATED_TO in heavy[1] or heavy[1].get("route") != "escalated"
                    or heavy[1].get("draft_image_key") != key):
                return None  # not (or no longer) this draft's final image
            made = self._prior(str(final), *heavy)
            prior = replace(made, carried={**made.carried, "draft_image_uri": self.store.uri_of(image_rel(key, fmt))},
                            final_key=str(final), final_generator=str(heavy[1].get("generator", "")),
                            final_model=str(heavy[1].get("model", "")))
        logger.debug("adopted %s: stored by an earlier run whose manifest row was lost", key)
        return prior

    def _read(self, key: str) -> tuple[str, dict[str, Any], str] | None:
        """(format, record, sha256) of the unlisted image under `key` that this run accepts, or None: one in
        the run's format, a provider's file it keeps, or a kept cascade draft in any format (its row's image is
        the heavy one)."""
        for fmt in self.formats:
            if f"{key}.{image_ext(fmt)}" not in self.objects:
                continue
            try:
                text, _kept_sha256 = self.store.record_of(image_rel(key, fmt))
                record = checked(json.loads(text)) if text and len(text) <= RECORD_MAX_BYTES else None
                # the digest is computed, not read from metadata anyone with write access could set
                sha256 = hashlib.sha256(self.store.get(image_rel(key, fmt))).hexdigest() if record else ""
            except Exception as exc:
                if is_transient(exc):  # the store is down past its retry budget: the run fails, nothing is bought
                    raise
                self.unreadable += 1
                log = logger.warning if self.unreadable == 1 else logger.debug
                log("can't read the record of %s (%s): it is generated again (further ones are counted)", key, exc)
                continue
            if record is None or not sha256:
                continue  # no record (an older version, a store that keeps none) or a malformed one: redone
            named = format_of_mime(record.get("mime", "")) or self.run_format  # as a manifest row's `mime` does
            if ESCALATED_TO in record or (named == fmt and _takes(fmt, record.get("requests"), self.run_format,
                                                                   self.keep_provider_bytes)):
                return fmt, record, sha256
        return None

    def _prior(self, key: str, fmt: str, record: dict[str, Any], sha256: str) -> Prior:
        return Prior(status="ok", sha256=sha256, bytes=self.objects[f"{key}.{image_ext(fmt)}"], error="",
                     carried={c: record.get(c) for c in CARRIED}, settings=record_settings(record))


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

    # 1 every image object present (one streamed listing), as `<key>.<ext>` → size
    present = {rel.rsplit("/", 1)[-1]: size for rel, size in store.list(f"{IMAGES_DIR}/")}

    def stored_as(key: str, mime: str | None) -> tuple[str, str]:
        """(format, `<key>.<ext>`) of the image an ok row names: its `mime`'s, or `image_format` for old rows."""
        fmt = format_of_mime(mime or "") or image_format
        return fmt, f"{key}.{image_ext(fmt)}"
    # 2 manifest rows from committed parts and from runs that were interrupted before committing
    parts = [rel for rel, _ in store.list(f"{MANIFEST_DIR}/") if rel.endswith(".parquet")]
    fs, root = arrow_filesystem(store.location.uri, store.spec) if parts else (None, "")
    committed = set(current_parts(store)) if parts else set()
    loose = {f"{root}/{p}" for p in parts if p not in committed}  # no index lists them: interrupted runs' parts
    # 3 keep the rows that decide each key (columnar), remember where they are; parts are read one by one (a part
    # written by an older version reads a column it lacks as null)
    kept, positions, redirects, ok_keys, heavy = [], {}, {}, set(), set()  # heavy: images of rows that kept drafts
    ok_elsewhere: set[str] = set()  # `<key>.<ext>` of ok rows whose image is not in a format this run takes
    offset = 0
    # an interrupted run's part that can't be read (torn by a kill) is left out; a committed one fails the run
    for batch in iter_parts(fs, [f"{root}/{p}" for p in parts], list(READ), store.spec.retry_budget_s,
                            loose.__contains__, flat=True):
        cols = {c: batch.column(c).to_pylist() for c in ("image_key", "status", "route", "draft_image_key", "mime",
                                                          "requests", "heavy_image_key")}
        routes, drafts, mimes, sent = cols["route"], cols["draft_image_key"], cols["mime"], cols["requests"]
        take: list[int] = []
        for j, (key, status) in enumerate(zip(cols["image_key"], cols["status"], strict=True)):
            if not key or status not in ("ok", "error") or key in ok_keys:
                continue  # no key / never attempted (skipped) / already settled by an ok row
            if status == "ok":
                fmt, name = stored_as(key, mimes[j])
                if not (_takes(fmt, sent[j], image_format, keep_provider_bytes) and name in present):
                    ok_elsewhere.add(name)
                    continue  # manifest says ok but the object is gone (or in another format): redo it
            positions[key] = offset + len(take)
            if status == "ok":
                ok_keys.add(key)
                if routes[j] == "escalated" and drafts[j] and drafts[j] not in ok_keys:
                    redirects[drafts[j]] = positions[key]
                elif cols["heavy_image_key"][j]:  # a row that kept its draft: its heavy image is accounted for
                    heavy.add(cols["heavy_image_key"][j])
            take.append(j)
        if take:
            kept.append(batch.take(take))
            offset += len(take)
    table = pa.concat_tables(kept).combine_chunks() if kept else None
    unlisted = _unlisted(store, present, (ok_keys, redirects, heavy), ok_elsewhere, image_format, keep_provider_bytes)
    unlisted.prefetch()
    logger.info("resume index: %d objects, %d manifest keys, %d escalated drafts, %d images no ok row names",
                len(present), len(positions), len(redirects), len(unlisted))
    return ResumeIndex(table, positions, redirects, unlisted)


def _unlisted(store: ObjectStore, present: dict[str, int], settled: tuple[Any, ...], ruled_out: set[str],
              image_format: str, keep_provider_bytes: bool) -> Unlisted:
    """The images no ok manifest row names (no row, or only error rows: a later run made the image and died
    before its row was written).

    Args:
        settled: collections of keys (sets, dicts) an ok row accepted by this run names.
        ruled_out: `<key>.<ext>` of the images ok rows name that this run doesn't take (another format): a run
            after a format switch reads no records for them, but does for the same key in another format (a
            run in the new format that died before its manifest).
    """
    objects = {name: size for name, size in present.items()
               if name not in ruled_out and not any(name.partition(".")[0] in keys for keys in settled)}
    return Unlisted(store, objects, image_format, keep_provider_bytes)
