"""ResumeIndex: which image keys an output prefix already holds, from manifest parts + one prefix listing.

Linear in rows and parallel: a listing of `images/` (16 at once) and a read of the deciding columns of the manifest
parts (committed and written by interrupted runs), in parallel (`resume_scan`) — no HEAD per key, except for the few
images no manifest row accounts for. The index keeps ~50 bytes a key; a found key's row is read from its part.

Those are images a run stored and then lost the rows of (its driver died between an upload and the manifest part
holding the row: up to a part's worth, per part in flight). Each image carries its own record (`image_record`:
what its manifest row says about how it was made, kept with the object by the writer), so a rerun that asks for
one of them reads the record (one HEAD) and adopts the image instead of paying for it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from imagefleet.actors.image_records import ESCALATED_TO, checked, record_settings
from imagefleet.actors.layout import (
    EXTENSIONS,
    MANIFEST_DIR,
    format_of_mime,
    image_ext,
    image_rel,
)
from imagefleet.actors.manifest_index import current_parts
from imagefleet.actors.manifest_schema import CARRIED
from imagefleet.actors.resume_scan import (
    ROW_BITS,
    PartRows,
    Read,
    Scan,
    decide,
    list_images,
    positions,
    read_candidates,
)
from imagefleet.actors.storage import RECORD_MAX_BYTES, ObjectStore, arrow_filesystem
from imagefleet.actors.store_errors import is_transient
from imagefleet.configs.request import RESUMED_SETTINGS
from imagefleet.configs.storage import StoreSpec

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


class Found(NamedTuple):
    """What `ResumeIndex.find` answers for one key."""

    loc: int = -1
    """Where the row that settles it is (`resume_scan.ROW_BITS`), -1 for none."""
    ok: bool = False
    """Whether that row is an ok one (else an earlier error)."""
    redirected: bool = False
    """Found through its escalated draft: the row is its final (heavy) image's."""
    adopted: Prior | None = None
    """The record of a stored image no ok row names (loc -1)."""


class ResumeIndex:
    """Image key → where the row that settles it is (`resume_scan.Scan`: sorted keys, a location and an ok flag each,
    ~50 bytes a key), the row itself read from its manifest part only when a key is looked up (`rows`).

    An escalated cascade row is also found under its draft key, pointing at the final (heavy) image: a rerun
    then skips the draft, the scoring and the heavy generation instead of redoing them.
    """

    def __init__(self, scan: Scan | None = None, parts: Sequence[str] = (), unlisted: Unlisted | None = None,
                 rows: PartRows | None = None) -> None:
        empty = np.zeros(0, dtype="S1")
        self.keys, self.locs, self.ok = (scan.keys, scan.locs, scan.ok) if scan else (empty, empty, empty)
        self.drafts, self.draft_locs = (scan.drafts, scan.draft_locs) if scan else (empty, empty)
        self.parts = list(parts)
        """Relative paths of the manifest parts, by part number (a location's high bits)."""
        self.unlisted = unlisted
        self.rows = rows

    def __len__(self) -> int:
        return len(self.keys) + len(self.drafts)

    def __contains__(self, key: str) -> bool:
        return bool(positions(self.keys, [key])[0] >= 0 or positions(self.drafts, [key])[0] >= 0)

    def get(self, key: str) -> Prior | None:
        """What an earlier run settled for `key`: its manifest row, else the record of a stored image no manifest
        row names (adopted), else None. An image found that way also beats an earlier error row for its key (a
        later run made it and died before its row was written)."""
        found = self.find([key])[0]
        if found.adopted is not None or found.loc < 0 or self.rows is None:
            return found.adopted
        return prior_of_row(self.rows.take([found.loc], self.parts_of([found.loc]))[0], found.redirected)

    def find(self, keys: Sequence[str]) -> list[Found]:
        """Where `get` finds each of `keys`: its own ok row; else the ok row of the final image of the escalated
        draft it is; else a stored image no ok row names (adopted); else its earlier error row; else nothing."""
        own, via = positions(self.keys, keys), positions(self.drafts, keys)
        out: list[Found] = []
        for key, at, draft in zip(keys, own.tolist(), via.tolist(), strict=True):
            if at >= 0 and self.ok[at]:
                out.append(Found(int(self.locs[at]), ok=True))
            elif draft >= 0:  # the row of its final image (always an ok row)
                out.append(Found(int(self.draft_locs[draft]), ok=True, redirected=True))
            elif self.unlisted and (adopted := self.unlisted.adopt(key)) is not None:  # an empty Unlisted is falsy
                out.append(Found(adopted=adopted))
            else:
                out.append(Found(int(self.locs[at]) if at >= 0 else -1))
        return out

    def parts_of(self, locs: Sequence[int]) -> dict[int, str]:
        """Part number → relative path of the parts `locs` name."""
        return {n: self.parts[n] for n in {int(loc) >> ROW_BITS for loc in locs}}


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

    The parts are read in parallel (`resume_scan.read_candidates`: Ray tasks inside a Ray worker, else threads),
    only the columns that decide; a found key's row is read from its part when it is looked up.

    Args:
        store: the output.
        image_format: the run's `output.format`.
        keep_provider_bytes: the run's `output.keep_provider_bytes`.
    """
    import sys

    # 1 every image object present (16 listings at once), by extension
    listing = list_images(store)
    # 2 manifest rows from committed parts and from runs that were interrupted before committing
    parts = sorted(rel for rel, _ in store.list(f"{MANIFEST_DIR}/") if rel.endswith(".parquet"))  # in name order
    committed = set(current_parts(store)) if parts else set()
    _, root = arrow_filesystem(store.location.uri, store.spec)
    read = Read(store.location.uri, store.spec, root, image_format, keep_provider_bytes, store.spec.retry_budget_s,
                frozenset(p for p in parts if p not in committed))  # loose: no index lists them
    on_ray = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    # 3 the row that decides each key, by Arrow's hash aggregation over every part's deciding columns
    scan = decide(read_candidates(read, parts, on_ray), listing)
    unlisted = Unlisted(store, scan.unlisted, image_format, keep_provider_bytes)
    unlisted.prefetch()
    logger.info("resume index: %d objects, %d manifest keys, %d escalated drafts, %d images no ok row names",
                len(listing), len(scan.keys), len(scan.drafts), len(unlisted))
    return ResumeIndex(scan, parts, unlisted, part_rows(store.location.uri, store.spec))


def part_rows(uri: str, spec: StoreSpec) -> PartRows:
    """What reads the resume index's rows (READ) from the manifest parts of the output at `uri`."""
    return PartRows(uri, spec, READ, spec.retry_budget_s)


