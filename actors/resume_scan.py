"""The resume scan: which manifest row settles each image key, decided column-wise over all parts at once, in
parallel, into a keys-only index; the rows themselves are read later, per part, by whoever needs them.

Three steps (`resume_index.load_index` runs them):
1. list the images: 16 listings at once, one per first hex digit of the keys (`images/<k[:2]>/<k>.<ext>`);
2. read each manifest part's deciding columns (`DECIDE`: key, status, route, the cascade's draft and heavy keys, the
   image's format, whether a provider was paid) into candidate rows — parts read by a thread pool, or, for many
   parts inside a Ray worker, by Ray tasks of `PARTS_PER_TASK` parts each (they fan out over the cluster);
3. pick every key's settling row (the first ok row whose image is stored in a format the run takes, else the last
   error row) with numpy: keys as fixed-width bytes, one sort that also orders the index, which `find` searches.

What the index keeps per key: the key (its bytes), where its row is (part number << 32 | row in the part) and
whether it is an ok row — about 50 bytes a key (40-character keys), against the ~1.2 KB a row of every column the
resume state needs. Those columns are read per part when a batch finds keys in it (`PartRows`, with a few parts
cached: a rerun's batches mostly find their rows in the same few parts). Step 3 runs in one process (the run
ledger): ~5 µs a row on a 2-core machine.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagefleet.actors.layout import EXTENSIONS, IMAGES_DIR, format_of_mime
from imagefleet.actors.manifest_schema import READ_AHEAD_PARTS, read_part
from imagefleet.actors.storage import ObjectStore, arrow_filesystem
from imagefleet.actors.store_errors import is_transient, with_retries
from imagefleet.configs.storage import StoreSpec

logger = logging.getLogger(__name__)

DECIDE = ("image_key", "status", "route", "draft_image_key", "mime", "requests", "heavy_image_key")
"""The manifest columns that decide which row settles a key (the rest is read only for keys a run finds)."""
PARTS_PER_TASK = 64
"""Parts one Ray scan task reads; a scan of fewer parts than two tasks' worth stays in the calling process."""
CACHED_PARTS = 32
"""Parts whose rows `PartRows` keeps (a batch of a rerun finds its rows in a few neighbouring parts)."""
EXTS = tuple(sorted(set(EXTENSIONS.values())))
"""Image file extensions, by code (a candidate's `ext`)."""
CANDIDATES = pa.schema([("key", pa.string()), ("ok", pa.bool_()), ("ext", pa.int8()), ("takes", pa.bool_()),
                        ("draft", pa.string()), ("heavy", pa.string()), ("loc", pa.int64())])
"""A candidate row (`_candidates`)."""
ROW_BITS = 32
"""A location is `part << ROW_BITS | row`."""
HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Listing:
    """The stored images, by extension (`EXTS` order): each one's key and size."""

    keys: tuple[pa.Array, ...]
    sizes: tuple[pa.Array, ...]

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys)


def list_images(store: ObjectStore, threads: int = 16, chunk: int = 65536) -> Listing:
    """Every image under `images/`, by extension: one listing per first hex digit of the keys, at once (an image's
    path is `images/<key[:2]>/<key>.<ext>` and keys are lowercase hex); names are turned into Arrow arrays every
    `chunk` objects, so a listing of millions never holds them all as Python strings."""

    def listing(digit: str) -> list[list[tuple[pa.Array, pa.Array]]]:
        by_ext: list[list[tuple[pa.Array, pa.Array]]] = [[] for _ in EXTS]  # (keys, sizes) chunks per extension
        keys: list[list[str]] = [[] for _ in EXTS]
        sizes: list[list[int]] = [[] for _ in EXTS]
        code = {ext: i for i, ext in enumerate(EXTS)}

        def flush(i: int) -> None:
            by_ext[i].append((pa.array(keys[i], pa.string()), pa.array(sizes[i], pa.int64())))
            keys[i], sizes[i] = [], []

        for rel, size in store.list(f"{IMAGES_DIR}/{digit}"):
            key, _, ext = rel.rpartition("/")[2].partition(".")
            i = code.get(ext)
            if i is not None:
                keys[i].append(key)
                sizes[i].append(size)
                if len(keys[i]) >= chunk:
                    flush(i)
        for i in range(len(EXTS)):
            flush(i)
        return by_ext

    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = list(pool.map(listing, HEX))
    return Listing(tuple(pa.concat_arrays([k for digit in found for k, _ in digit[i]]) for i in range(len(EXTS))),
                   tuple(pa.concat_arrays([z for digit in found for _, z in digit[i]]) for i in range(len(EXTS))))


@dataclass(frozen=True)
class Read:
    """What reading the manifest parts needs, picklable (it travels to Ray scan tasks)."""

    uri: str
    spec: StoreSpec
    root: str
    image_format: str
    keep_provider_bytes: bool
    retry_budget_s: float
    loose: frozenset[str] = field(default_factory=frozenset)
    """Parts no manifest index lists (interrupted runs'): one that can't be read is left out, with a warning."""


def candidates(read: Read, parts: Sequence[tuple[int, str]]) -> pa.Table:
    """The candidate rows of `parts` ((part number, relative path) pairs): every row with a key and an ok or error
    status, as `key, ok, ext, takes, draft, heavy, loc` (see `_candidates`), in part then row order."""
    fs, _ = arrow_filesystem(read.uri, read.spec)
    tables = [t for number, rel in parts if (t := _part_candidates(read, fs, number, rel)) is not None]
    return pa.concat_tables(tables) if tables else CANDIDATES.empty_table()


def _part_candidates(read: Read, fs: Any, number: int, rel: str) -> pa.Table | None:
    path = f"{read.root}/{rel}"
    try:
        table = with_retries(lambda: read_part(fs, path, list(DECIDE), flat=True), read.retry_budget_s,
                             f"read {path}")
    except Exception as exc:
        if is_transient(exc) or rel not in read.loose:
            raise
        logger.warning("left out %s: not a readable manifest part (%s: %s)", path, type(exc).__name__, exc)
        return None
    return _candidates(table, read, number, np.arange(table.num_rows, dtype=np.int64))


def _candidates(table: pa.Table, read: Read, number: int, rows: np.ndarray) -> pa.Table:
    """Per row that can settle a key: `key`; `ok`; `ext` (the code in EXTS of the extension its image is stored
    with, by its `mime`, or the run's format for rows from before that column); `takes` (whether this run counts an
    image in that format: its own, or a paid provider's file it keeps); `draft` (an escalated row's draft key, else
    null); `heavy` (the heavy image of a row that kept its draft, else null); `loc` (part << ROW_BITS | row)."""
    key, status = table.column("image_key"), table.column("status")
    keep = pc.and_(pc.and_(pc.is_valid(key), pc.not_equal(key, "")), pc.is_in(status, pa.array(["ok", "error"])))
    table = table.filter(keep)
    rows = rows[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)] if len(rows) else rows
    key, mime = table.column("image_key"), table.column("mime")
    known = pc.unique(mime).to_pylist()
    formats = [format_of_mime(m or "") or read.image_format for m in known]
    codes = pc.index_in(mime, pa.array(known, pa.string()))
    fmt = pc.take(pa.array(formats, pa.string()), codes)
    ext = pc.take(pa.array([EXTS.index(EXTENSIONS[f]) for f in formats], pa.int8()), codes)
    paid = pc.greater(pc.fill_null(table.column("requests"), 0), 0)
    takes = pc.or_(pc.equal(fmt, read.image_format), pc.and_(pa.scalar(read.keep_provider_bytes), paid))
    draft, heavy = table.column("draft_image_key"), table.column("heavy_image_key")
    escalated = pc.and_(pc.equal(table.column("route"), "escalated"), pc.not_equal(draft, ""))
    null = pa.scalar(None, pa.string())
    return pa.table({
        "key": key, "ok": pc.equal(table.column("status"), "ok"), "ext": ext,
        "takes": takes, "draft": pc.if_else(pc.fill_null(escalated, False), draft, null),
        "heavy": pc.if_else(pc.fill_null(pc.not_equal(heavy, ""), False), heavy, null),
        "loc": pa.array((np.int64(number) << ROW_BITS) | rows, pa.int64()),
    }).cast(CANDIDATES)


def read_candidates(read: Read, parts: list[str], on_ray: bool) -> pa.Table:
    """Every part's candidate rows, in part order: Ray tasks of PARTS_PER_TASK parts when `on_ray` and there are at
    least two tasks' worth, else READ_AHEAD_PARTS threads here (the reads and the column work free the GIL)."""
    numbered = list(enumerate(parts))
    groups = [numbered[i:i + PARTS_PER_TASK] for i in range(0, len(numbered), PARTS_PER_TASK)] or [[]]
    if on_ray and len(groups) > 1:
        tables = _on_ray(read, groups)
    else:
        small = [numbered[i:i + 8] for i in range(0, len(numbered), 8)] or [[]]
        with ThreadPoolExecutor(max_workers=READ_AHEAD_PARTS) as pool:
            tables = list(pool.map(lambda group: candidates(read, group), small))
    return pa.concat_tables(tables)


def _on_ray(read: Read, groups: list[list[tuple[int, str]]]) -> list[pa.Table]:
    """`candidates` of each group as Ray tasks spread over the cluster, at most one in flight per cluster CPU. They
    ask for no CPU: the scan runs as a run starts, when the pools may already hold every CPU, and a task waiting
    for one would stall the run ledger (whose constructor this is) and so every preprocessor."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=3, scheduling_strategy="SPREAD")(candidates)
    limit = max(2, int(ray.cluster_resources().get("CPU", 2)))
    refs: list[Any] = []
    running: list[Any] = []
    for group in groups:
        if len(running) >= limit:
            _done, running = ray.wait(running, num_returns=1)
        refs.append(task.remote(read, group))
        running.append(refs[-1])
    return list(ray.get(refs))


@dataclass(frozen=True)
class Scan:
    """What the scan decided: the sorted keys-only index, the escalated drafts that lead to their final images,
    and what the unlisted-image check needs."""

    keys: np.ndarray
    """Settled keys, sorted, as fixed-width bytes."""
    locs: np.ndarray
    """Where each key's settling row is (int64: part << ROW_BITS | row)."""
    ok: np.ndarray
    """Whether each key's row is an ok one (bool)."""
    drafts: np.ndarray
    """Escalated drafts' keys with no ok row of their own taken, sorted, fixed-width bytes."""
    draft_locs: np.ndarray
    """The row of each draft's final (heavy) image."""
    unlisted: dict[str, int]
    """`<key>.<ext>` → size of the stored images no ok row this run takes names (and not ruled out by one)."""


def decide(cands: pa.Table, listing: Listing) -> Scan:
    """Each key's settling row from the candidates (in part then row order) and the image listing: an ok row
    counts when its image is listed in a format the run takes (else its image is ruled out of adoption: an image in
    another format isn't this run's); the first such ok row settles its key, else the last error row does. Keys as
    fixed-width bytes, sorted by numpy (one sort picks the winners and orders the index): no hash tables, which cost
    ~60x more per row at a million keys than at 200k on this machine."""
    cands = cands.combine_chunks()
    n = cands.num_rows
    width = max(_width(cands.column("key")), _width(cands.column("draft")), _width(cands.column("heavy")),
                *(_width(k) for k in listing.keys))
    keys = fixed_width(cands.column("key"), width)
    ok = np.asarray(pc.fill_null(cands.column("ok"), False).to_numpy(zero_copy_only=False), dtype=bool)
    ext = cands.column("ext").to_numpy()
    takes = np.asarray(cands.column("takes").to_numpy(zero_copy_only=False), dtype=bool)
    listed = [np.sort(fixed_width(k, width)) for k in listing.keys]
    present = np.zeros(n, dtype=bool)
    for code, stored in enumerate(listed):
        at = np.flatnonzero(ok & (ext == code))
        present[at] = member(stored, keys[at])
    counts = takes & present
    # the winner of each key: ok rows that count by position (the first wins), then error rows, the last first
    eligible = np.flatnonzero((ok & counts) | ~ok)
    rank = np.where(ok[eligible], eligible, 2 * n - eligible)
    order = eligible[np.lexsort((rank, keys[eligible]))]
    won = order[_starts(keys[order])]  # candidate rows, in key order
    won_ok = ok[won]
    # escalated drafts → their final image's row (ok winners only; a draft named twice: the later row)
    draft_col = cands.column("draft")
    named = won[won_ok & np.asarray(pc.is_valid(draft_col).to_numpy(zero_copy_only=False), dtype=bool)[won]]
    drafts_all = fixed_width(draft_col.take(pa.array(named, pa.int64())), width)
    order_d = np.lexsort((-named, drafts_all))  # each draft's rows, the later first
    by_draft, drafts_sorted = named[order_d], drafts_all[order_d]
    last = _starts(drafts_sorted)
    locs = cands.column("loc").to_numpy()
    heavy = cands.column("heavy").take(pa.array(won[won_ok], pa.int64())).drop_null()
    settled = np.sort(np.concatenate([keys[won[won_ok]], drafts_sorted[last], fixed_width(heavy, width)]))
    ruled = [np.sort(keys[np.flatnonzero(ok & ~counts & (ext == code))]) for code in range(len(EXTS))]
    return Scan(keys[won], locs[won], won_ok, drafts_sorted[last], locs[by_draft[last]],
                _unlisted(listing, listed, settled, ruled))


def _starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of `sorted_keys` is the first of its run of equal keys."""
    starts = np.ones(len(sorted_keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return starts


def _width(column: pa.Array) -> int:
    """The longest string's length in bytes (1 for none)."""
    longest = pc.max(pc.binary_length(column)).as_py() if len(column) else None
    return max(int(longest or 1), 1)


def member(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Whether each of `query` (fixed-width bytes, the same width) is in `sorted_keys`."""
    return find(sorted_keys, query) >= 0


def find(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Where each of `query` (fixed-width bytes, the same width) is in `sorted_keys` (-1: not there). Searched by
    the keys' first 8 bytes as integers (a byte string's order is its big-endian integer's), checked on the whole
    key; a query whose 8 bytes some other key shares is searched again on whole keys (never with hash-like keys)."""
    out = np.full(len(query), -1, dtype=np.int64)
    if not len(sorted_keys) or not len(query):
        return out
    head = _head(sorted_keys)
    at = np.minimum(np.searchsorted(head, _head(query)), len(sorted_keys) - 1)
    hit = _same(sorted_keys[at], query)
    out[hit] = at[hit]
    shared = np.flatnonzero(~hit & (head[at] == _head(query)))  # its first 8 bytes start a run: search it whole
    if len(shared):
        again = np.minimum(np.searchsorted(sorted_keys, query[shared]), len(sorted_keys) - 1)
        found = _same(sorted_keys[again], query[shared])
        out[shared[found]] = again[found]
    return out


def _head(fixed: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each fixed-width byte string as a big-endian unsigned integer (zero-padded)."""
    width = fixed.dtype.itemsize
    raw = fixed.view(np.uint8).reshape(len(fixed), width)
    head = np.zeros((len(fixed), 8), dtype=np.uint8)
    head[:, :min(8, width)] = raw[:, :8]
    return head.view(">u8").ravel()


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality of two fixed-width byte arrays of one width, as bytes."""
    width = a.dtype.itemsize
    return np.asarray((a.view(np.uint8).reshape(len(a), width) == b.view(np.uint8).reshape(len(b), width)).all(axis=1),
                      dtype=bool)


def _unlisted(listing: Listing, listed: list[np.ndarray], settled: np.ndarray, ruled: list[np.ndarray]
              ) -> dict[str, int]:
    """`<key>.<ext>` → size of the listed images whose key nothing settled and which no ok row rules out."""
    out: dict[str, int] = {}
    for code, (keys, sizes) in enumerate(zip(listing.keys, listing.sizes, strict=True)):
        fixed = fixed_width(keys, settled.dtype.itemsize)
        free = np.flatnonzero(~(member(settled, fixed) | member(ruled[code], fixed)))
        if len(free):
            names = keys.take(pa.array(free, pa.int64())).to_pylist()
            out.update((f"{k}.{EXTS[code]}", v) for k, v in zip(names, sizes.take(pa.array(free)).to_pylist(),
                                                               strict=True))
    return out


def fixed_width(column: pa.ChunkedArray | pa.Array, width: int = 0) -> np.ndarray:
    """Strings as a numpy fixed-width byte array (`S<width>`, at least the longest; no copy through Python objects
    when every string has the same length, as image keys do). Nulls are empty."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    arr = arr.cast(pa.string())
    longest = _width(arr)
    width = max(width, longest)
    if len(arr) == 0:
        return np.zeros(0, dtype=f"S{width}")
    if arr.null_count == 0 and pc.min(pc.binary_length(arr)).as_py() == longest:
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
        fixed = np.frombuffer(arr.buffers()[2], dtype=f"S{longest}", count=len(arr), offset=int(offsets[0]))
        out = np.zeros(len(arr), dtype=f"S{width}")  # a copy, padded to `width` (as bytes: numpy's astype is slow)
        out.view(np.uint8).reshape(len(arr), width)[:, :longest] = fixed.view(np.uint8).reshape(len(arr), longest)
        return out
    return np.array([(s or "").encode() for s in arr.to_pylist()], dtype=f"S{width}")


def positions(sorted_keys: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """Where each of `keys` is in `sorted_keys` (-1 for a key not there)."""
    if not len(sorted_keys) or not keys:
        return np.full(len(keys), -1, dtype=np.int64)
    width = sorted_keys.dtype.itemsize
    raw = [k.encode() for k in keys]
    fits = np.array([0 < len(b) <= width for b in raw], dtype=bool)  # a longer key would compare truncated
    query = np.array([b if f else b"" for b, f in zip(raw, fits, strict=True)], dtype=f"S{width}")
    return np.where(fits, find(sorted_keys, query), -1)


class PartRows:
    """Rows of an output's manifest parts by location, a part read whole when a location names it; the last
    CACHED_PARTS parts kept.

    Args:
        uri, spec: the output.
        columns: the columns to read (the resume index's READ).
        retry_budget_s: how long a read rides out a store outage.
    """

    def __init__(self, uri: str, spec: StoreSpec, columns: Sequence[str], retry_budget_s: float) -> None:
        self.uri, self.spec, self.columns, self.budget_s = uri, spec, list(columns), retry_budget_s
        self.fs: Any = None
        self.root = ""
        self.cache: OrderedDict[str, pa.Table] = OrderedDict()
        self.reads = 0

    def take(self, locs: Sequence[int], parts: dict[int, str]) -> list[dict[str, Any]]:
        """The rows at `locs` (part numbers resolved through `parts`: part number → relative path), in order."""
        if self.fs is None:
            self.fs, self.root = arrow_filesystem(self.uri, self.spec)
        out: list[dict[str, Any]] = [{}] * len(locs)
        by_part: dict[int, list[int]] = {}
        for i, loc in enumerate(locs):
            by_part.setdefault(int(loc) >> ROW_BITS, []).append(i)
        for number, at in by_part.items():
            table = self._part(parts[number])
            rows = table.take(pa.array([int(locs[i]) & ((1 << ROW_BITS) - 1) for i in at], pa.int64())).to_pylist()
            for i, row in zip(at, rows, strict=True):
                out[i] = row
        return out

    def _part(self, rel: str) -> pa.Table:
        if rel in self.cache:
            self.cache.move_to_end(rel)
            return self.cache[rel]
        path = f"{self.root}/{rel}"
        table = with_retries(lambda: read_part(self.fs, path, self.columns, flat=True), self.budget_s,
                             f"read {path}")
        self.reads += 1
        self.cache[rel] = table
        if len(self.cache) > CACHED_PARTS:
            self.cache.popitem(last=False)
        return table


ReadRows = Callable[[Sequence[int], dict[int, str]], list[dict[str, Any]]]
"""`PartRows.take`'s shape: rows by location."""
