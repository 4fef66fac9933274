"""The two external contracts as pyarrow schemas: the input prompt table and the output manifest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pyarrow as pa

from imagefleet.actors import manifest_schema
from imagefleet.configs.request import ROW_FIELDS
from imagefleet.configs.source import SourceConfig

# Optional per-row columns and the Arrow type families they may have (the per-row settings are declared once, in
# configs.request.ROW_FIELDS).
OPTIONAL_INPUT_COLUMNS: dict[str, str] = {"negative_prompt": "string", **ROW_FIELDS, "generator": "string"}
INPUT_FIELDS = ("image", "mask")
"""Per-row settings read only when rows carry input images (`source.task` other than text-to-image)."""

# The output manifest's Arrow schema, derived from the column table in actors/manifest_schema.py (the one
# declaration of each column: type, meaning, carried on resume, exported to shards, shown in the report).
MANIFEST: pa.Schema = manifest_schema.SCHEMA


def _duplicated(schema: pa.Schema, source: SourceConfig, also_read: Sequence[str]) -> list[str]:
    """Columns the run reads (or checks) that the data has more than once."""
    read = {source.prompt_column, source.id_column, source.negative_prompt_column, *also_read,
            *source.columns.by_field().values(), *OPTIONAL_INPUT_COLUMNS,
            *(source.template.columns() if source.template is not None else [])}
    counts = Counter(schema.names)
    return [f"column {name!r} appears {counts[name]} times in the data; give each column its own name (or drop the "
            f"copies)" for name in dict.fromkeys(schema.names) if counts[name] > 1 and name in read]


def _family(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_null(t):
        return "null"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _family(t.value_type) in ("string", "null"):
        return "list<string>"
    return str(t)


def _fits(got: str, family: str) -> bool:
    """Whether a column of type family `got` can hold a setting of `family`."""
    if got in (family, "null"):
        return True
    return (family == "number" and got == "integer") or (family == "uris" and got in ("string", "list<string>"))


def input_problems(schema: pa.Schema, source: SourceConfig, also_read: Sequence[str] = ()) -> list[str]:
    """Schema-level problems of a prompt table (each message says what to change); [] when usable.

    Args:
        schema: one file's schema.
        source: the source config (which columns hold what).
        also_read: further columns the run reads (e.g. the routing column).
    """
    duplicated = _duplicated(schema, source, also_read)
    if duplicated:  # pyarrow can't pick one of them by name: every other check would be about an ambiguous column
        return duplicated
    problems = []
    names = set(schema.names)
    if source.template is not None:
        missing = [c for c in source.template.columns() if c not in names]
        if missing:
            problems.append(f"source.template uses {', '.join(map(repr, missing))}, which is neither a column of "
                            f"the data ({sorted(names)}) nor in source.template.vars; add the column or the list")
    elif source.prompt_column not in names:
        problems.append(
            f"prompt column {source.prompt_column!r} is missing; the data has {sorted(names)} — "
            f"set source.prompt_column to the column holding the prompts"
        )
    elif _family(schema.field(source.prompt_column).type) not in ("string", "null"):
        problems.append(
            f"prompt column {source.prompt_column!r} has type {schema.field(source.prompt_column).type}, "
            f"expected string"
        )
    mapped = {"negative_prompt": source.negative_prompt_column, **source.columns.by_field()}
    if source.reads_inputs():
        image = mapped["image"]
        if image not in names:
            problems.append(f"source.task={source.task} reads input images from column {image!r}, which the data "
                            f"lacks ({sorted(names)}); set source.columns.image to the column of image URIs")
        if source.task == "inpaint" and mapped["mask"] not in names:
            problems.append(f"source.task=inpaint needs a mask per row: column {mapped['mask']!r} is missing; set "
                            f"source.columns.mask to the column of mask URIs")
    for col, family in OPTIONAL_INPUT_COLUMNS.items():
        name = mapped.get(col, col)
        if name not in names or (col in INPUT_FIELDS and not source.reads_inputs()):
            continue
        if not _fits(_family(schema.field(name).type), family):
            via = f" (source.columns.{col})" if name != col else ""
            expected = "string or list of strings" if family == "uris" else family
            problems.append(f"column {name!r}{via} has type {schema.field(name).type}, expected {expected}")
    if source.id_column in names and _family(schema.field(source.id_column).type) not in ("string", "integer"):
        problems.append(f"id column {source.id_column!r} must be string or integer")
    return problems
