"""Reading prompt-table cells as Python values without letting one bad cell fail a whole block."""

from __future__ import annotations

import re
from typing import Any

# C0 control characters but tab, line feed and carriage return: a NUL cuts a prompt short in C code (tokenizers,
# provider APIs), the others are invisible in the manifest and the report
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


ERROR_TEXT_CHARS = 1_000
"""An error row keeps this much of an over-long prompt (or value, or message), plus its length: enough to find the
row, where a 30 MB cell kept whole would be 30 MB in the manifest."""
MAX_ID_CHARS = 4_096
"""A row id's longest: room for URLs and paths as ids; a longer one makes the row an error row (its id clipped)."""


def clipped(text: Any, limit: int) -> Any:
    """Text over `limit` characters as its first `ERROR_TEXT_CHARS` (at most `limit`) and its length, e.g.
    `'aaa… (30,000,000 characters)'`; shorter text and other values as they are."""
    if not isinstance(text, str) or len(text) <= limit:
        return text
    return f"{text[:min(ERROR_TEXT_CHARS, limit)]}… ({len(text):,} characters)"


class Undecodable(str):
    """A text cell whose bytes are not UTF-8: the row becomes an error row (shown as its first bytes, escaped)."""


def column_values(column: Any) -> list[Any]:
    """A column as Python values; undecodable text cells become `Undecodable` markers instead of failing the
    whole block (Parquet string columns can hold any bytes)."""
    try:
        return list(column.to_pylist())
    except UnicodeDecodeError:
        import pyarrow as pa

        listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        raw = column.cast(pa.list_(pa.binary()) if listed else pa.binary()).to_pylist()
        return [_decoded(value) for value in raw]


def _decoded(value: Any) -> Any:
    """Bytes (or a list of them) as text; an Undecodable marker when any of it is not UTF-8."""
    if value is None:
        return None
    if isinstance(value, list):
        items = [_decoded(v) for v in value]
        bad = next((v for v in items if isinstance(v, Undecodable)), None)
        return bad if bad is not None else items
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return Undecodable(repr(value[:40]))


def control_problem(text: str, what: str) -> str:
    """What is wrong with text holding a control character ('' when it has none)."""
    found = CONTROL.search(text)
    if found is None:
        return ""
    return (f"{what} contains control character U+{ord(found.group()):04X} at position {found.start()}; remove it "
            f"(tabs and line breaks are fine)")
