"""`imagefleet init TABLE`: a starter config from a prompt table's columns (Parquet, CSV or JSON Lines), checked by
the real loader."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from imagefleet.configs.request import ROW_FIELDS
from imagefleet.pipelines.table_formats import table_stem

PROMPT_NAMES = ("prompt", "prompts", "text", "caption", "description", "query")
ID_NAMES = ("id", "row_id", "uid", "key")
ID_WORDS = ("id", "uid", "uuid", "guid", "key", "sku", "code", "ref", "slug")
"""Words of a column name (split at `_`, `-`, spaces, dots) that say it names rows (`sku`, `product_id`)."""
NEGATIVE_NAMES = ("negative_prompt", "negative", "neg_prompt")
# other names data tools give the per-row settings (diffusers' own argument names first); every setting of
# configs.request.ROW_FIELDS is looked for under its own name too
ALIASES = {
    "seed": ("random_seed",),
    "num_steps": ("num_inference_steps", "steps"),
    "guidance_scale": ("guidance", "cfg_scale", "cfg"),
    "num_images": ("num_images_per_prompt",),
    "strength": ("denoising_strength",),
    "image": ("input_image", "init_image", "image_uri", "image_url", "image_path", "reference_image", "reference"),
    "mask": ("mask_image", "mask_uri", "mask_url", "mask_path"),
    "loras": ("lora", "adapters"),
}
ROW_COLUMNS = {field: (field, *ALIASES.get(field, ())) for field in ROW_FIELDS}

BACKENDS = {
    "diffusers": """    backend: diffusers
    model: {model}                  # a hub id, a local folder or an s3:// folder
    pool: {{min_size: 1, max_size: 4, num_gpus: 1, num_cpus: 2, batch_size: 8}}
    defaults: {{width: 512, height: 512, num_steps: 4, guidance_scale: 0.0}}
    cost: {{usd_per_gpu_hour: 2.5, est_seconds_per_image: 0.5}}   # for --dry-run estimates and limits.budget_usd""",
    "openai": """    backend: openai                 # key from OPENAI_API_KEY
    model: {model}
    quality: medium
    pool: {{min_size: 1, max_size: 4, num_gpus: 0, num_cpus: 0.25, batch_size: 8}}
    defaults: {{width: 1024, height: 1024}}
    limits: {{requests_per_min: 50, images_per_min: 50}}        # your project's limits""",
    "gemini": """    backend: gemini                 # key from GEMINI_API_KEY
    model: {model}
    pool: {{min_size: 1, max_size: 4, num_gpus: 0, num_cpus: 0.25, batch_size: 8}}
    defaults: {{width: 1024, height: 1024}}
    limits: {{requests_per_min: 60, images_per_min: 60}}        # your project's limits""",
}
DEFAULT_MODEL = {"diffusers": "stabilityai/sd-turbo", "openai": "gpt-image-2", "gemini": "gemini-3.1-flash-image"}


class InitError(ValueError):
    """Why no config was written (one line)."""


def _pick(names: list[str], preferred: tuple[str, ...]) -> str:
    lowered = {n.lower(): n for n in names}
    return next((lowered[p] for p in preferred if p in lowered), "")


def _scalar(text: str) -> str:
    """`text` as a YAML string: as it is when YAML reads it back as that string, else quoted (a table named
    `null.parquet`, a column named `yes` or `a: b`)."""
    import json

    import yaml

    try:
        plain = yaml.safe_load(text) == text and "#" not in text and "{" not in text
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text, ensure_ascii=False)


def _id_rank(name: str) -> int:
    """How much a column's name says it is a row id: 0 (`id`, `uid`, ...), 1 (one of its words is in ID_WORDS:
    `sku`, `product_id`, `ProductID`, `item-key`), 2 (nothing)."""
    if name.lower() in ID_NAMES:
        return 0
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return 1 if any(w.lower() in ID_WORDS for w in words) else 2


def _unique_columns(table: str, schema: Any, skip: set[str]) -> list[str]:
    """The text and integer columns (other than `skip`) whose values are all set and all different: the ones
    that can key rows (an id shared by two rows would give them one seed, and one image when their prompts
    match)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    from imagefleet.pipelines.table_formats import read_file

    names = [f.name for f in schema if f.name not in skip and schema.names.count(f.name) == 1 and (
        pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_integer(f.type))]
    if not names:
        return []
    data = read_file(pafs.LocalFileSystem(), str(Path(table).resolve()), names, schema)
    return [n for n in names if data.column(n).null_count == 0
            and pc.count_distinct(data.column(n)).as_py() == data.num_rows]


def _id_lines(table: str, schema: Any, skip: set[str]) -> tuple[str, list[str]]:
    """The id column to propose ('' = none) and the config lines saying so: the unique column whose name says
    most that it names rows; a column that isn't unique is never proposed."""
    unique = _unique_columns(table, schema, skip)
    named = sorted((c for c in unique if _id_rank(c) < 2), key=_id_rank)
    if named:
        return named[0], [f"  id_column: {_scalar(named[0])}                # unique in every row"]
    lines = []
    shared = _pick([n for n in schema.names if n not in unique], ID_NAMES)
    if shared:  # the default id_column reads it: say what that means
        lines.append(f"  # column {shared} is not unique: rows sharing an id and a prompt share one image; set "
                     f"id_column to a unique column")
    elif unique:
        lines.append(f"  # no id column found: row ids are derived from the prompt text (unique columns that could "
                     f"be the id: {', '.join(unique[:5])})")
    else:
        lines.append("  # no id column found: row ids are derived from the prompt text")
    return "", lines


def starter_config(table: str, output_uri: str, backend: str, model: str) -> str:
    """The YAML text of a starter config for `table` (raises InitError with one line)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from imagefleet.pipelines.table_formats import TableError, describe_file

    try:  # a CSV's id-like columns are read as text, as a run reads them
        schema, _ = describe_file(pafs.LocalFileSystem(), str(Path(table).resolve()), ID_NAMES, lambda _: table)
    except TableError as exc:
        raise InitError(f"can't read the table: {exc}") from exc
    text_columns = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if not text_columns:
        raise InitError(f"{table} has no text column to use as prompts (columns: {', '.join(schema.names)})")
    prompt = _pick(text_columns, PROMPT_NAMES) or text_columns[0]
    negative = _pick(text_columns, NEGATIVE_NAMES)
    free = [n for n in schema.names if n not in {prompt, negative}]
    found = {field: _pick(free, names) for field, names in ROW_COLUMNS.items()}
    row_id, id_lines = _id_lines(table, schema, {prompt, negative, *found.values()})  # a setting is never the id
    per_row = [field for field, column in found.items() if column]
    renamed = {field: column for field, column in found.items() if column and column != field}
    lines = [
        f"# Starter config written by `imagefleet init {table}`. Check it with `imagefleet run <this file> --dry-run`;",
        "# every key is described in docs/CONFIG.md.",
        f"name: {_scalar(table_stem(table))}",
        "seed: 0",
        "source:",
        f"  uri: {_scalar(table)}",
        f"  prompt_column: {_scalar(prompt)}",
    ]
    lines += id_lines
    if negative:
        lines.append(f"  negative_prompt_column: {_scalar(negative)}")
    if per_row:
        lines.append(f"  # per-row columns found (they override the generator's defaults): "
                     f"{', '.join(found[f] for f in per_row)}")
    if renamed:
        lines.append("  columns: {" + ", ".join(f"{f}: {_scalar(c)}" for f, c in renamed.items()) + "}")
    if found.get("image"):
        task = "inpaint" if found.get("mask") and backend != "gemini" else (
            "image-to-image" if backend == "diffusers" else "edit")
        lines.append(f"  task: {task}                 # rows carry input images (column {found['image']}); "
                     f"see README 'Image-conditioned generation'")
        if found.get("mask") and backend == "gemini":
            lines.append(f"  # Gemini takes no mask: rows with a {found['mask']} value become error rows (use openai)")
    if found.get("loras"):
        lines.append(f"  # column {found['loras']} picks LoRA adapters per row: list them under generators.main.loras "
                     f"(diffusers)")
    lines += ["generators:", "  main:", BACKENDS[backend].format(model=model or DEFAULT_MODEL[backend]),
              "output:", f"  uri: {_scalar(output_uri)}", "  format: png",
              "cluster:", "  address: local                   # a private Ray here (on a cluster: auto)", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="imagefleet init", description="Write a starter config for a prompt table "
                                "(prompt/id/negative-prompt columns picked from its schema).")
    p.add_argument("table", help="a local Parquet, CSV (.csv) or JSON Lines (.jsonl, .ndjson) file")
    p.add_argument("-o", "--output", default="imagefleet.yaml", help="config file to write (never overwritten)")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="diffusers", help="the generator to start with")
    p.add_argument("--model", default="", help="model id (default: a sensible one for the backend)")
    p.add_argument("--output-uri", default="", help="where images and the manifest go (default ./outputs/<name>)")
    args = p.parse_args(argv)
    from imagefleet.configs import ConfigError
    from imagefleet.configs.loader import load_config

    target = Path(args.output)
    if target.exists():
        print(f"imagefleet: {target} exists; pass -o NEW_FILE (init never overwrites)", file=sys.stderr)
        return 2
    try:
        text = starter_config(args.table, args.output_uri or f"outputs/{table_stem(args.table)}", args.backend,
                              args.model)
    except InitError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    target.write_text(text)
    try:
        load_config(target)  # what init writes always loads
    except ConfigError as exc:
        target.unlink()
        print(f"imagefleet: the starter config did not load ({str(exc).splitlines()[-1].strip()}); "
              f"nothing written", file=sys.stderr)
        return 2
    print(f"wrote {target}: check it with `imagefleet run {target} --dry-run`")
    return 0
