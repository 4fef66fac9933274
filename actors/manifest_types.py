"""The committed manifest's typed columns, and how they map to the pipeline's flat representation.

Inside the pipeline a row's values ride as flat numpy columns: times as float unix seconds, lists and maps as JSON or
comma-separated text (`''` = none). Engines that read the committed manifest (pyarrow, DuckDB, Polars, Spark,
`datasets`) should not need a recipe for that, so the manifest stores them as Arrow types:

- `generated_at`, `written_at`: `timestamp[us, tz=UTC]`;
- `template_vars`: `list<struct<key: string, value: string>>` in name order (a value that was not text is its
  JSON; the physical form of a map, as a list because Hugging Face `datasets` has no map type);
- `input_images`, `input_sha256`: `list<string>` (`[]` = none);
- `adapters`: `list<struct<name: string, weight: double>>` in the row's order (`[]` = none);
- `candidates`: `list<struct<seed: int64, score: double>>` (null: the row had one candidate);
- `facts`: `list<struct<fact: string, p_yes: double>>` (null: no facts were asked about the image).

`encode` turns a pipeline column into its manifest type when a manifest part is written; `decode` turns it back for
the product's own readers (resume carries `generated_at`, `candidates` and `facts` into a rerun's rows). Manifests
written before the types existed hold the flat form: `read_part` recognises it by its Arrow type and encodes it, so
old outputs read like new ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
TEXT_LIST = pa.list_(pa.string())
TEXT_MAP = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
ADAPTERS = pa.list_(pa.struct([("name", pa.string()), ("weight", pa.float64())]))
CANDIDATES = pa.list_(pa.struct([("seed", pa.int64()), ("score", pa.float64())]))
FACTS = pa.list_(pa.struct([("fact", pa.string()), ("p_yes", pa.float64())]))


@dataclass(frozen=True)
class Codec:
    """A typed manifest column: its Arrow type, the flat type the pipeline carries, and a value each way."""

    type: pa.DataType
    flat: pa.DataType
    to_typed: Callable[[Any], Any] | None = None
    """One flat value -> the typed value (None: converted in Arrow, as times are)."""
    to_flat: Callable[[Any], Any] | None = None


def _map_of(text: Any) -> Any:
    if not text:
        return None
    return [{"key": str(k), "value": v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)}
            for k, v in sorted(json.loads(text).items())]


def _text_of_map(pairs: Any) -> str:
    if pairs is None:
        return ""
    return json.dumps({p["key"]: p["value"] for p in pairs}, sort_keys=True, ensure_ascii=False)


def _comma_list(text: Any) -> list[str]:
    return [part for part in str(text or "").split(",") if part]


def _json_list(text: Any) -> list[str]:
    return [str(v) for v in json.loads(text)] if text else []


def _adapters(text: Any) -> list[dict[str, Any]]:
    out = []
    for part in _comma_list(text):
        name, _, weight = part.rpartition(":")
        out.append({"name": name, "weight": float(weight)} if name else {"name": part, "weight": 1.0})
    return out


def _adapters_text(items: Any) -> str:
    from imagefleet.actors.keys import weight_text

    return ",".join(f"{a['name']}:{weight_text(a['weight'])}" for a in items or ())


def _candidates(text: Any) -> Any:
    return [{"seed": int(c["seed"]), "score": c.get("score")} for c in json.loads(text)] if text else None


def _candidates_text(items: Any) -> str:
    return json.dumps([{"seed": c["seed"], "score": c["score"]} for c in items]) if items else ""


def _facts(text: Any) -> Any:
    return [{"fact": str(f["fact"]), "p_yes": f.get("p_yes")} for f in json.loads(text)] if text else None


def _facts_text(items: Any) -> str:
    return json.dumps([{"fact": f["fact"], "p_yes": f["p_yes"]} for f in items], ensure_ascii=False) if items else ""


CODECS: dict[str, Codec] = {
    "generated_at": Codec(TIMESTAMP, pa.float64()),
    "written_at": Codec(TIMESTAMP, pa.float64()),
    "template_vars": Codec(TEXT_MAP, pa.string(), _map_of, _text_of_map),
    "input_images": Codec(TEXT_LIST, pa.string(), _json_list, lambda items: json.dumps(items) if items else ""),
    "input_sha256": Codec(TEXT_LIST, pa.string(), _comma_list, lambda items: ",".join(items or ())),
    "adapters": Codec(ADAPTERS, pa.string(), _adapters, _adapters_text),
    "candidates": Codec(CANDIDATES, pa.string(), _candidates, _candidates_text),
    "facts": Codec(FACTS, pa.string(), _facts, _facts_text),
}
"""Manifest columns whose committed type differs from the pipeline's flat one, by name."""


def encode(name: str, column: Any) -> Any:
    """A pipeline column (flat: float seconds, JSON or comma text) as the manifest types column `name`; a column
    already typed passes through. Time columns are converted in Arrow; the others value by value."""
    import pyarrow.compute as pc

    codec = CODECS[name]
    if column.type.equals(codec.type):
        return column
    flat = column.cast(codec.flat)
    if codec.to_typed is None:  # unix seconds; 0 and NaN are "not recorded" in the pipeline
        valid = pc.and_kleene(pc.is_finite(flat), pc.greater(flat, 0.0))
        micros = pc.cast(pc.round(pc.multiply(pc.if_else(valid, flat, None), 1_000_000.0)), pa.int64())
        return micros.cast(TIMESTAMP)
    return pa.array([codec.to_typed(v) for v in flat.to_pylist()], codec.type)


def decode(name: str, column: Any) -> Any:
    """A manifest column `name` back in the pipeline's flat form (the reverse of `encode`); a flat column (an old
    manifest's) passes through."""
    import pyarrow.compute as pc

    codec = CODECS[name]
    if not column.type.equals(codec.type):
        return column.cast(codec.flat)
    if codec.to_flat is None:
        micros = pc.cast(column, pa.int64())
        return pc.fill_null(pc.divide(pc.cast(micros, pa.float64()), 1_000_000.0), math.nan)
    return pa.array([codec.to_flat(v) for v in column.to_pylist()], codec.flat)
