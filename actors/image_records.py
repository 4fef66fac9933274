"""An image's own record: what its manifest row says about how it was made, kept with the stored object by the
writer (`image_record`), so a rerun that lost the row adopts the image instead of paying for it again
(actors/resume_index.py `Unlisted`); a record read back is checked field by field before it is believed (`checked`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from imagefleet.actors.manifest_schema import CARRIED, COLUMNS
from imagefleet.actors.storage import RECORD_MAX_BYTES
from imagefleet.configs.request import BY_NAME, MAX_SIDE, RESUMED_SETTINGS

SETTINGS = RESUMED_SETTINGS
# An image's own record holds what its row would carry, except what isn't known before the upload (its time) and
# the negative prompt, which the rerun's row recomputes from the same input (it is part of the key) — unless the
# row was escalated and took the heavy generator's default (the writer adds it then: `record_values`).
RECORD_FIELDS = ("generator", "model", *(c for c in CARRIED if c not in ("upload_ms", "draft_image_uri")),
                 *(c for c in SETTINGS if c != "negative_prompt"))
ESCALATED_TO = "escalated_to"  # a kept cascade draft's record: the key of the heavy image its row ended as


def image_record(values: dict[str, Any]) -> str:
    """The record the writer keeps with a stored image: compact ASCII JSON of its RECORD_FIELDS in `values` (nulls
    and empty values left out); '' when it would pass RECORD_MAX_BYTES (a long `candidates` list): that image
    is regenerated rather than adopted if its row is lost.

    Args:
        values: the row's values (numpy scalars are fine); for a kept cascade draft, just {ESCALATED_TO: key}.
    """
    kept = {}
    for name, value in values.items():
        value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
        if isinstance(value, float) and not math.isfinite(value):
            continue  # NaN: not recorded (null in the manifest); ±inf has no JSON spelling
        if isinstance(value, (str, bool, int, float)) and (value != "" or name == "negative_prompt"):
            kept[name] = value  # an escalated row's negative prompt is recorded even when it is ''

    text = json.dumps(kept, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text if len(text) <= RECORD_MAX_BYTES else ""


RECORD_INPUTS = (*RECORD_FIELDS, "explicit", "negative_prompt")
"""The row's columns `record_values` reads (besides the writer's `mime` and `encode_ms`)."""


def record_values(row: dict[str, Any]) -> dict[str, Any]:
    """The values of one written row that go into its image's record (`image_record`).

    Args:
        row: the row's RECORD_INPUTS (those present) and the writer's `mime` and `encode_ms`.
    """
    values = {c: row[c] for c in (*RECORD_FIELDS, "mime", "encode_ms") if c in row}
    if row.get("route") == "escalated" and "negative_prompt" not in str(row.get("explicit", "")).split(","):
        values["negative_prompt"] = row.get("negative_prompt", "")  # the heavy generator's default
    return values


# what each record field must be (a record failing this is not adopted: the image is made again)
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    **{c.name: (int,) if pa.types.is_integer(c.flat) else (int, float) if pa.types.is_floating(c.flat)
       else (bool,) if pa.types.is_boolean(c.flat) else (str,) for c in COLUMNS}, ESCALATED_TO: (str,)}


_INT_BOUNDS = {c.name: (-(2 ** (c.flat.bit_width - 1)), 2 ** (c.flat.bit_width - 1) - 1)
               for c in COLUMNS if pa.types.is_integer(c.flat)}
RECORD_TEXT_MAX = 1024  # longest text field a record may hold (a prompt is not in it; names, keys, errors are short)
_POSITIVE = {"width", "height", "draft_width", "draft_height"}


def _in_range(name: str, value: Any) -> bool:
    """Whether a typed record value is one its manifest column could hold from a real run."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        low, high = _INT_BOUNDS.get(name, (-(2 ** 63), 2 ** 63 - 1))
        if name in _POSITIVE:
            low, high = 0 if name.startswith("draft_") else 1, MAX_SIDE
        return low <= value <= high and (value >= 0 or name == "seed")
    if isinstance(value, float):
        return math.isfinite(value) and (value >= 0 or not name.endswith(("_usd", "_ms", "_s")))
    return len(value) <= RECORD_TEXT_MAX


def checked(record: Any) -> dict[str, Any] | None:
    """`record` (parsed JSON) when every field it has is of its manifest column's type and within what a real run
    writes (sizes within the largest side, costs and timings finite and non-negative, short texts), else None:
    the image is made again rather than a forged or corrupted record entering the manifest. Fields it doesn't
    know (a newer version's) are left out."""
    if not isinstance(record, dict):
        return None
    known = {}
    for name, value in record.items():
        want = _RECORD_TYPES.get(name)
        if want is None:
            continue
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            return None
        if not _in_range(name, value):
            return None
        known[name] = value
    return known


def record_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings an adopted image reports from its record: none of the request's own (seed, size, steps,
    guidance make its key: the request's values are the truth), only what the request can't know — an escalated
    image's heavy settings and a hosted image's size as the API returned it."""
    escalated, hosted = record.get("route") == "escalated", (record.get("requests") or 0) > 0
    return {c: record[c] for c in SETTINGS if c in record
            and ((escalated and BY_NAME[c].heavy) or (hosted and c in ("width", "height")))}
