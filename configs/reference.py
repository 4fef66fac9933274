"""The config reference (docs/CONFIG.md), generated from the config classes and their field docstrings.

`python -m imagefleet.configs.reference > docs/CONFIG.md` rewrites it; tests/unit/test_config_reference.py keeps
it current.
Every section is one config class: its keys, types, defaults and the docstring under each field. Unions (generator
backends, routing modes, scorers) get one section per variant, named by their discriminator value.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from imagefleet.configs.job import JobConfig

HEADER = """# Configuration reference

Generated from the config classes (`python -m imagefleet.configs.reference > docs/CONFIG.md`; a test keeps it
current). A job is one YAML file whose top level is `JobConfig`; unknown keys are refused with the valid ones
listed. Sections below follow the config tree from the top; variants of a union are chosen by their tag
(`backend:` for generators and scorers, `mode:` for routing).
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Config classes inside a field's type (through Optional, unions, Annotated, dict values, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    if origin is Literal:
        return " \\| ".join(repr(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is dict:
        k, v = get_args(annotation)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
    if isinstance(value, BaseModel):
        changed = value.model_dump(exclude_defaults=True)
        return "see section" if not changed else f"`{changed}`"
    return "`null`" if value is None else f"`{value!r}`"


def _tag(model: type[BaseModel]) -> str:
    for name in ("backend", "mode"):
        field = model.model_fields.get(name)
        if field is not None and isinstance(field.default, str):
            return f" (`{name}: {field.default}`)"
    return ""


def render() -> str:
    """The whole reference as Markdown."""
    seen: list[type[BaseModel]] = []
    queue: list[type[BaseModel]] = [JobConfig]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            queue.extend(m for m in _models_in(field.annotation) if m not in seen)
    parts = [HEADER]
    for model in seen:
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        parts.append(f"\n## {model.__name__}{_tag(model)}\n\n{doc}\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            parts.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
