"""load_config: YAML file + `--set key=value` overrides → a validated, frozen JobConfig."""

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from configs.job import JobConfig

# fields whose Literal default tags a variant of a discriminated union (pydantic puts the tag in error locations)
TAG_FIELDS = ("backend", "mode")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to change."""


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Load a run config.

    Args:
        path: YAML file.
        overrides: `dotted.key=value` strings; values are parsed as YAML (`--set pool.max_size=4`).

    Returns:
        The validated JobConfig.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key or invalid value.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a YAML mapping at the top level")
    for item in overrides or []:
        _apply_override(raw, item)
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> JobConfig:
    """Validate a plain dict as a JobConfig, turning pydantic errors into readable ConfigErrors."""
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {source}:\n" + _explain(exc, raw)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""


def _explain(exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        model, shown = _walk(list(err["loc"]))
        where = ".".join(shown) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent, _ = _walk(list(err["loc"][:-1]))
            valid = sorted(parent.model_fields) if _is_model(parent) else []
            lines.append(f"  unknown key {where!r}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {where}: {err['msg']} (got {_short(err.get('input'))})")
    return "\n".join(lines)


def _walk(loc: list[Any]) -> tuple[Any, list[str]]:
    """Follow an error location through JobConfig: the model (or annotation) reached, and the location as the
    user wrote it (the union tags pydantic inserts, e.g. a generator's backend, left out)."""
    node: Any = JobConfig
    shown: list[str] = []
    for part in loc:
        if _is_model(node) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            variant = _variants(node).get(part) if isinstance(part, str) else None
            if variant is not None:
                node = variant
                continue  # a tag, not a key the user wrote
            node = _value_type(node)  # a dict key (generator name) or list index: the value type comes next
        shown.append(str(part))
    if not _is_model(node):
        members = list(_variants(node).values())
        node = members[0] if len(members) == 1 else node
    return node, shown


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The model classes inside an annotation (unions, Optional, Annotated, nested)."""
    if _is_model(annotation):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += _members(arg)
    return found


def _variants(annotation: Any) -> dict[str, type[BaseModel]]:
    """Tag → variant for a discriminated union annotation ({} for anything else)."""
    if _is_model(annotation) or get_origin(annotation) in (dict, list):
        return {}
    out = {}
    for model in _members(annotation):
        for name in TAG_FIELDS:
            field = model.model_fields.get(name)
            if field is not None and isinstance(field.default, str):
                out[field.default] = model
    return out


def _value_type(annotation: Any) -> Any:
    """dict[str, X] / list[X] → X; anything else unchanged."""
    if get_origin(annotation) in (dict, list):
        return get_args(annotation)[-1]
    return annotation


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
