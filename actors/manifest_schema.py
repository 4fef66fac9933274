"""The output manifest's columns, declared once: name, Arrow type, meaning, and which consumers use each."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from imagefleet.actors.manifest_types import CODECS, decode, encode
from imagefleet.actors.store_errors import is_transient, with_retries
from imagefleet.configs.request import BY_NAME, ROW_COLUMNS, SHAPE_SETTINGS

# Every list of manifest columns derives from COLUMNS: the Arrow schema (pipelines.schema.MANIFEST), what a
# resumed run carries over (CARRIED), the WebDataset sample JSON (SHARD_FIELDS) and the report's reads
# (REPORT_COLUMNS). README.md's "Manifest columns:" list names them in this order (tests/unit keep it so).


@dataclass(frozen=True)
class Column:
    """One manifest column."""

    name: str
    type: pa.DataType
    description: str
    carried: bool = False
    """A rerun that skips the image copies this from the earlier run's row (scores, routes, timings, cost)."""
    shard: bool = False
    """Part of a WebDataset sample's JSON: what the image is and how it was made (no run timings)."""
    report: bool = False
    """Read by the run report."""

    @property
    def flat(self) -> pa.DataType:
        """The type the pipeline carries the column as (float seconds, JSON or comma text for the typed ones)."""
        return CODECS[self.name].flat if self.name in CODECS else self.type


_ARROW = {"int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "text": pa.string()}


def _setting(name: str, description: str = "", **flags: bool) -> Column:
    """The manifest column of a per-image setting: its type (and meaning) from the request table."""
    setting = BY_NAME[name]
    typed = CODECS[name].type if name in CODECS else _ARROW[setting.kind]
    return Column(name, typed, description or setting.description, **flags)


def _drafted(name: str, description: str) -> Column:
    """`draft_<name>`: a cascade's draft's value of a setting, typed as the setting."""
    return Column(f"draft_{name}", _ARROW[BY_NAME[name].kind], description, carried=True, report=True)


_LISTED: tuple[Column, ...] = (
    Column("id", pa.string(), "row id from the input (or derived from the prompt)", shard=True, report=True),
    Column("image_index", pa.int32(), "0..num_images-1 within the input row", shard=True),
    Column("image_key", pa.string(), "content hash naming the image object ('' for invalid rows)",
           shard=True, report=True),
    Column("prompt", pa.string(), "prompt text", shard=True, report=True),
    _setting("negative_prompt", shard=True),
    Column("template", pa.string(), "the prompt template the prompt was written from ('' when read from a column)"),
    Column("template_vars", CODECS["template_vars"].type, "the values the template was filled with: its "
           "lists' values and the row's columns, as key/value pairs (a value that isn't text as JSON; null without "
           "one)", shard=True),
    Column("generator", pa.string(), "name of the generator that made the image", shard=True, report=True),
    Column("model", pa.string(), "model id@revision of that generator", shard=True),
    Column("model_version", pa.string(), "what the model was when the image was made: the commit a hub revision "
           "resolved to, or a local folder's content digest ('' = not known: a hosted model, or no cache and no hub)",
           carried=True, shard=True),
    _setting("seed", shard=True),
    *(_setting(name, shard=True, report=True) for name in SHAPE_SETTINGS),
    Column("task", pa.string(), "text-to-image | image-to-image | inpaint | edit", shard=True, report=True),
    _setting("strength", shard=True),
    Column("input_images", CODECS["input_images"].type, "the input image URIs the image was made from ([] = none)",
           shard=True, report=True),
    Column("input_sha256", CODECS["input_sha256"].type, "content hashes of those input images (part of the key)",
           shard=True),
    Column("mask_uri", pa.string(), "the mask the image was made with ('' = none)", shard=True),
    Column("mask_sha256", pa.string(), "content hash of the mask (part of the key)", shard=True),
    _setting("adapters", "LoRA adapters applied, in the row's order: name and weight ([] = none)", shard=True),
    Column("variant", pa.string(), "the output variant (aspect ratio or size) of the row's request ('' = none)",
           shard=True, report=True),
    Column("status", pa.string(), "ok | error | refused | skipped", report=True),
    Column("error", pa.string(), "why the row has no image ('' when ok)", report=True),
    Column("image_uri", pa.string(), "where the image is stored ('' when none)", report=True),
    Column("mime", pa.string(), "content type of the stored image (a hosted provider's own format when kept)",
           carried=True),
    Column("sha256", pa.string(), "of the stored image bytes", shard=True),
    Column("bytes", pa.int64(), "stored image size", shard=True),
    Column("already_present", pa.bool_(), "the object existed before this run (resumed or raced)", report=True),
    Column("queue_ms", pa.float64(), "time waiting for a generator", carried=True, report=True),
    Column("generate_ms", pa.float64(), "model time per image", carried=True, report=True),
    Column("encode_ms", pa.float64(), "image encode time", carried=True, report=True),
    Column("upload_ms", pa.float64(), "image upload time", carried=True, report=True),
    Column("cost_usd", pa.float64(), "what making the image cost (draft + heavy for escalated rows)",
           carried=True, report=True),
    Column("requests", pa.int32(), "HTTP requests sent to a hosted API for this image, retries included (0 for local "
           "models)", carried=True),
    Column("maybe_billed_usd", pa.float64(), "estimated price of timed-out attempts the provider may have billed",
           carried=True),
    Column("clip_score", pa.float64(), "CLIP score of the final image (null without a scorer)",
           carried=True, shard=True, report=True),
    Column("facts", CODECS["facts"].type, "facts scorer: each fact of the prompt asked of the final image, with the "
           "probability the model answered yes (`clip_score` is their mean; null for a row without facts)",
           carried=True, shard=True),
    Column("candidates", CODECS["candidates"].type, "best-of-N and adaptive drafts: every candidate's seed and score "
           "(the kept image has the best score and its seed is `seed`; null with one candidate)", carried=True,
           shard=True, report=True),
    Column("draft_round", pa.int32(), "cascade with adaptive drafts: which draft (1 = the first) the row kept; "
           "`candidates` lists every draft's seed and score", carried=True, shard=True, report=True),
    Column("route", pa.string(), "cascade: draft | escalated | escalated_kept_draft (escalated, and the heavy image "
           "scored below the draft: keep_better kept the draft) | predicted_heavy (predictive routing: made by the "
           "heavy generator, no draft)", carried=True, shard=True, report=True),
    Column("draft_image_key", pa.string(), "cascade: key of the kept draft of an escalated row", carried=True,
           report=True),
    Column("draft_image_uri", pa.string(), "cascade: where the kept draft is stored", carried=True, report=True),
    Column("draft_score", pa.float64(), "cascade: the draft's score", carried=True, shard=True, report=True),
    Column("draft_generator", pa.string(), "cascade: generator that made the draft", carried=True, shard=True,
           report=True),
    _drafted("width", "cascade: the draft's width (the final image has the heavy generator's)"),
    *(_drafted(name, f"cascade: the draft's {name}") for name in SHAPE_SETTINGS[1:]),
    Column("heavy_image_key", pa.string(), "cascade: key of the heavy image of an escalated_kept_draft row (stored, "
           "not the row's image)", carried=True, report=True),
    Column("heavy_image_uri", pa.string(), "cascade: where that heavy image is stored", carried=True, report=True),
    Column("heavy_score", pa.float64(), "cascade: that heavy image's score (below the draft's)", carried=True,
           report=True),
    Column("generated_at", CODECS["generated_at"].type, "when the image was generated (UTC)", carried=True,
           report=True),
    Column("written_at", CODECS["written_at"].type, "when the row finished (UTC)"),
    Column("run_id", pa.string(), "the run that wrote this manifest"),
)
COLUMNS: tuple[Column, ...] = (
    *_LISTED,
    # a setting added to the request table after these were listed: its own column, at the end
    *(_setting(name, shard=True) for name in ROW_COLUMNS if name not in {c.name for c in _LISTED}),
)

NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
SCHEMA = pa.schema([(c.name, c.type) for c in COLUMNS])
FLAT_SCHEMA = pa.schema([(c.name, c.flat) for c in COLUMNS])
"""The manifest's columns as the pipeline carries them (and as manifests written before the typed columns hold them)."""
CARRIED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.carried)
SHARD_FIELDS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.shard)
REPORT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.report)
_BY_NAME = {c.name: c for c in COLUMNS}


PRIOR = "prior"
"""The pipeline column carrying what an earlier run recorded about a cached row's image: compact JSON of its
sha256, size and CARRIED values ('' for every other row). One column rides through the pools instead of one per
value; the writer and the manifest step read it (`prior_text`, `prior_values`)."""


def prior_text(sha256: str, size: int, carried: dict[str, Any]) -> str:
    """A cached row's PRIOR value: `sha256`, `size` and the CARRIED values that hold something (no null, NaN, ''
    or 0: those stand for "nothing recorded", and the row's own value is kept)."""
    kept: dict[str, Any] = {"sha256": sha256, "bytes": int(size)}
    for name, value in carried.items():
        value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
        if isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)) or (
                isinstance(value, (int, str)) and not isinstance(value, float) and value not in (0, "")):
            kept[name] = value
    return json.dumps(kept, separators=(",", ":"), allow_nan=False)


def prior_values(text: str) -> dict[str, Any]:
    """The values a PRIOR cell holds ({} for a row without an earlier result)."""
    return dict(json.loads(text)) if text else {}


def empty_value(name: str) -> Any:
    """The "nothing recorded" value of a column in pipeline batches: '' for strings, NaN for floats (null in
    the manifest), 0 for integers, False for booleans.

    Args:
        name: a manifest column name.

    Returns:
        The typed empty value.
    """
    t = _BY_NAME[name].flat
    if pa.types.is_string(t):
        return ""
    if pa.types.is_floating(t):
        return math.nan
    if pa.types.is_boolean(t):
        return False
    if pa.types.is_integer(t):
        return 0
    raise TypeError(f"manifest column {name!r} has type {t}; no empty value is defined for it")


logger = logging.getLogger(__name__)
READ_AHEAD_PARTS = 8
"""Manifest parts read concurrently ahead of the one being consumed (object stores answer each read slowly)."""


def typed(table: pa.Table) -> pa.Table:
    """`table` (manifest columns, flat as the pipeline carries them) with its typed columns in their manifest types."""
    for name in CODECS:
        if name in table.column_names:
            i = table.column_names.index(name)
            column = encode(name, table.column(i).combine_chunks())
            table = table.set_column(i, pa.field(name, CODECS[name].type), column)
    return table


def read_part(fs: Any, path: str, columns: list[str], flat: bool = False) -> pa.Table:
    """One manifest part's `columns`, typed as SCHEMA: a column an older part lacks is null, a narrower type is cast,
    a typed column an older part holds flat is typed (a pass-through column, not in SCHEMA, as the part holds it;
    null when it holds none).

    Args:
        fs: a pyarrow filesystem.
        path: the part's path on it.
        columns: manifest column names.
        flat: the typed columns as the pipeline carries them (`actors.manifest_types`), for the product's readers.
    """
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        found = parquet.schema_arrow
        names = found.names
        table = parquet.read(columns=[c for c in columns if c in names] or names[:1])
    schema = pa.schema([pa.field(c, _BY_NAME[c].flat if flat else _BY_NAME[c].type) if c in _BY_NAME
                        else found.field(c) if c in names else pa.field(c, pa.null()) for c in columns])
    arrays = []
    for c, f in zip(columns, schema, strict=True):
        if c not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
        elif c in CODECS:
            arrays.append((decode if flat else encode)(c, table.column(c).combine_chunks()))
        else:
            arrays.append(table.column(c).cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def iter_parts(fs: Any, paths: list[str], columns: list[str], budget_s: float = 0.0,
               skippable: Callable[[str], bool] = lambda _path: False, flat: bool = False) -> Iterator[pa.Table]:
    """`read_part` of each path in order, READ_AHEAD_PARTS read ahead. Memory: a few parts, never all of them (a
    `pyarrow.dataset` over every part keeps each part's footer until its scan ends: ~150 MB at 1,000 parts).

    Args:
        budget_s: how long each read rides out a store outage (`s3.retry_budget_s`).
        flat: the typed columns as the pipeline carries them (see `read_part`).
        skippable: paths whose part may be left out, with a warning, when it can't be read (not an outage: a torn
            or foreign file): resume's staged parts of interrupted runs; every other unreadable part raises.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    def read(path: str) -> pa.Table | None:
        try:
            return with_retries(lambda: read_part(fs, path, columns, flat), budget_s, f"read {path}")
        except Exception as exc:
            if is_transient(exc) or not skippable(path):
                raise
            logger.warning("left out %s: not a readable manifest part (%s: %s)", path, type(exc).__name__, exc)
            return None

    with ThreadPoolExecutor(max_workers=READ_AHEAD_PARTS) as pool:
        pending: deque[Future[pa.Table | None]] = deque()
        for path in paths:
            pending.append(pool.submit(read, path))
            if len(pending) > READ_AHEAD_PARTS:
                table = pending.popleft().result()
                if table is not None:
                    yield table
        while pending:
            table = pending.popleft().result()
            if table is not None:
                yield table
