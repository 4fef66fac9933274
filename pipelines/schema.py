"""The two external contracts as pyarrow schemas: the input prompt table and the output manifest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from imagefleet.actors import manifest_schema
from imagefleet.actors.pass_through import carry_problem, manifest_name, stored_type
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


_MANIFEST_NAMES = frozenset(manifest_schema.NAMES)


def _recorded(source: SourceConfig, routing_column: str) -> set[str]:
    """Columns the manifest already records under their own name, as the run read them: `prompt` read as the
    prompt, `id` as the id, `seed` as the seed, `generator` as the routing column..."""
    read = {"prompt": source.prompt_column if source.template is None else "", "id": source.id_column,
            "negative_prompt": source.negative_prompt_column, "generator": routing_column,
            **source.columns.by_field()}
    return {column for setting, column in read.items() if column == setting and setting in _MANIFEST_NAMES}


def pass_through_columns(source: SourceConfig, routing_column: str, names: Sequence[str]) -> dict[str, str]:
    """The columns of `names` the manifest carries (`source.pass_through`), each → its manifest column name
    (`source_<name>` for one named like a manifest column), in the data's order for `all`, the list's otherwise.

    Args:
        source: the source config.
        routing_column: the column routing reads ('' = none).
        names: the data's columns (for `all`: those in every file; one it has twice is left out of `all`).
    """
    if source.pass_through == "none":
        return {}
    if source.pass_through == "all":
        recorded, counts = _recorded(source, routing_column), Counter(names)
        chosen = [n for n in dict.fromkeys(names) if n not in recorded and counts[n] == 1]
    else:
        chosen = [n for n in source.pass_through if n in names]
    return {n: manifest_name(n, _MANIFEST_NAMES) for n in chosen}


def pass_through_settings(source: SourceConfig, routing_column: str, names: Sequence[str]) -> dict[str, Any]:
    """The preprocessor's pass-through settings (`PrepConfig`) for a run reading the prompt-table columns `names`."""
    return {"pass_through": pass_through_columns(source, routing_column, names),
            "max_pass_through_bytes": source.max_pass_through_bytes}


def pass_through_schema(columns: dict[str, str], types: pa.Schema) -> pa.Schema:
    """The manifest's pass-through columns (after its own), each typed as the data's column (`types`: the types
    merged across the prompt table's files)."""
    return pa.schema([pa.field(out, stored_type(types.field(column).type)) for column, out in columns.items()])


def _pass_through_problems(schema: pa.Schema, source: SourceConfig, routing_column: str) -> list[str]:
    """What keeps the data's columns from being carried as `source.pass_through` says (each says what to change)."""
    names = set(schema.names)
    if isinstance(source.pass_through, list):
        missing = [c for c in source.pass_through if c not in names]
        if missing:
            return [f"source.pass_through names column {missing[0]!r}, which the data lacks ({sorted(names)}); "
                    f"add the column or leave it out of the list"]
    carried = pass_through_columns(source, routing_column, schema.names)
    for column in carried:
        problem = carry_problem(schema.field(column).type)
        if problem:
            return [f"column {column!r} {problem}; leave it out of the manifest (source.pass_through: a list of "
                    f"the columns to carry, or none)"]
    by_name: dict[str, str] = {}
    for column, out in carried.items():
        if out in by_name:
            first = by_name[out]
            return [f"columns {first!r} and {column!r} would both be the manifest's {out!r} (a column named like a "
                    f"manifest column is carried as {out!r}); rename one, or leave one out of source.pass_through"]
        by_name[out] = column
    return []


def _duplicated(schema: pa.Schema, source: SourceConfig, also_read: Sequence[str]) -> list[str]:
    """Columns the run reads (or checks, or was asked to carry to the manifest) that the data has more than once."""
    carried = source.pass_through if isinstance(source.pass_through, list) else []
    read = {source.prompt_column, source.id_column, source.negative_prompt_column, *also_read,
            *source.columns.by_field().values(), *OPTIONAL_INPUT_COLUMNS, *carried,
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


def input_problems(schema: pa.Schema, source: SourceConfig, also_read: Sequence[str] = (), routing_column: str = ""
                   ) -> list[str]:
    """Schema-level problems of a prompt table (each message says what to change); [] when usable.

    Args:
        schema: one file's schema.
        source: the source config (which columns hold what).
        also_read: further columns the run reads (e.g. the routing column).
        routing_column: the column routing reads ('' = none; the manifest records it as `generator`).
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
    return problems + _pass_through_problems(schema, source, routing_column)
