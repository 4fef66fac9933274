"""The two external contracts as pyarrow schemas: the input prompt table and the output manifest."""

from __future__ import annotations

import pyarrow as pa

from configs.source import SourceConfig

# Optional per-row columns and the Arrow type families they may have.
OPTIONAL_INPUT_COLUMNS: dict[str, str] = {
    "negative_prompt": "string",
    "seed": "integer",
    "width": "integer",
    "height": "integer",
    "num_steps": "integer",
    "guidance_scale": "number",
    "num_images": "integer",
    "generator": "string",
}

MANIFEST = pa.schema(
    [
        ("id", pa.string()),
        ("image_index", pa.int32()),
        ("image_key", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("generator", pa.string()),
        ("model", pa.string()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_steps", pa.int32()),
        ("guidance_scale", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("image_uri", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("already_present", pa.bool_()),
        ("queue_ms", pa.float64()),
        ("generate_ms", pa.float64()),
        ("encode_ms", pa.float64()),
        ("upload_ms", pa.float64()),
        ("cost_usd", pa.float64()),
        ("clip_score", pa.float64()),
        ("route", pa.string()),
        ("draft_image_key", pa.string()),
        ("draft_image_uri", pa.string()),
        ("draft_score", pa.float64()),
        ("draft_generator", pa.string()),
        ("generated_at", pa.float64()),
        ("written_at", pa.float64()),
        ("run_id", pa.string()),
    ]
)


def _family(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def input_problems(schema: pa.Schema, source: SourceConfig) -> list[str]:
    """Schema-level problems of a prompt table (each message says what to change); [] when usable."""
    problems = []
    names = set(schema.names)
    if source.prompt_column not in names:
        problems.append(
            f"prompt column {source.prompt_column!r} is missing; the data has {sorted(names)} — "
            f"set source.prompt_column to the column holding the prompts"
        )
    elif _family(schema.field(source.prompt_column).type) not in ("string", "null"):
        problems.append(
            f"prompt column {source.prompt_column!r} has type {schema.field(source.prompt_column).type}, "
            f"expected string"
        )
    mapped = {"negative_prompt": source.negative_prompt_column}
    for col, family in OPTIONAL_INPUT_COLUMNS.items():
        name = mapped.get(col, col)
        if name not in names:
            continue
        got = _family(schema.field(name).type)
        ok = got == family or got == "null" or (family == "number" and got == "integer")
        if not ok:
            problems.append(f"column {name!r} has type {schema.field(name).type}, expected {family}")
    if source.id_column in names and _family(schema.field(source.id_column).type) not in ("string", "integer"):
        problems.append(f"id column {source.id_column!r} must be string or integer")
    return problems
