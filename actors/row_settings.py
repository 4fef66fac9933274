"""A prompt row's own settings as the preprocessor reads them: each cell as its setting's Python value (`convert`)
and the row's LoRA adapters (`parse_adapters`); ValueError with a message naming the setting makes an error row."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from imagefleet.configs.request import BY_NAME


def convert(name: str, value: Any) -> Any:
    """A row's cell of setting `name` as its kind's Python value (ValueError naming the setting)."""
    kind = BY_NAME[name].kind
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} is not text")
        return value
    if isinstance(value, Decimal):  # Parquet decimal columns (e.g. guidance 7.50 from a SQL export)
        value = float(value) if value.is_finite() else math.nan
    if kind in ("int32", "int64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not a whole number")
        if float(value) != int(value):
            raise ValueError(f"{name}={value!r} is not a whole number")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not a finite number")
    return float(value)


def parse_adapters(cell: Any, known: dict[str, str], default: list[tuple[str, float]], generator: str
                   ) -> list[tuple[str, float]]:
    """A row's LoRA adapters: null = the generator's default set, '' = none, else `name` or `name:weight` separated
    by commas (weight 1 when omitted); ValueError naming an adapter the generator doesn't have or a bad weight."""
    if cell is None:
        return list(default)
    if not isinstance(cell, str):
        raise ValueError(f"loras={cell!r} is not text like 'name:0.8,other'")
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in cell.split(","))):
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in known:
            have = ", ".join(sorted(known)) or "none"
            raise ValueError(f"LoRA adapter {name!r} is not configured for generator {generator!r} (it has: {have})")
        if name in out:
            raise ValueError(f"LoRA adapter {name!r} is named twice in loras={cell!r}; give it once")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"LoRA adapter {name!r}: weight {weight!r} is not a number") from None
        if not math.isfinite(value) or not -10 <= value <= 10:
            raise ValueError(f"LoRA adapter {name!r}: weight {weight!r} must be between -10 and 10")
        out[name] = value
    return list(out.items())
