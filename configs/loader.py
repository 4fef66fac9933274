"""load_config: YAML file + `--set key=value` overrides → a validated, frozen JobConfig."""

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from imagefleet.configs.job import JobConfig

# far more than any real config (a few hundred values); an alias bomb passes it within microseconds
MAX_CONFIG_VALUES = 100_000
# far deeper than any real config (about 5 levels); PyYAML, deepcopy and pydantic recurse once per level and end in
# a RecursionError a few hundred levels down
MAX_CONFIG_DEPTH = 32
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder; pass the YAML file, e.g. {path}/job.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return load_config_text(text, str(path), overrides)


def load_config_text(text: str, source: str, overrides: list[str] | None = None) -> JobConfig:
    """`load_config` for YAML text already read (`source` names it in messages, e.g. `env:VAR`)."""
    raw = parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a YAML mapping at the top level")
    for item in overrides or []:
        _apply_override(raw, item)
    return parse_config(raw, source=source)


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML is untyped
    """Safe YAML that refuses duplicate keys (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"line {line} has a mapping or list where a key belongs — an unquoted `{{{{ … }}}}` "
                                  f"(a template?) is YAML for a mapping: quote the value, e.g. \"{{{{ name }}}} ...\"")
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"duplicate key {key!r} at line {line}; keep one of them")
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def compose_node(self, parent: Any, index: Any) -> Any:
        """PyYAML composes nested collections recursively: refuse a nesting deeper than MAX_CONFIG_DEPTH before
        Python's recursion limit is reached (aliases are checked on the data, by `_check_shape`)."""
        event = self.peek_event()
        collection = isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
        self.depth = getattr(self, "depth", 0) + collection
        try:
            if self.depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"line {event.start_mark.line + 1} is nested more than {MAX_CONFIG_DEPTH} levels "
                                  f"deep; flatten it")
            return super().compose_node(parent, index)
        finally:
            self.depth -= collection


# YAML 1.1 reads `1:1` (an aspect ratio) as the base-60 integer 61, and `9:16` as 556; YAML 1.2 has no such
# numbers. Colon-separated digits are text here (checked before PyYAML's int/float resolvers).
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_StrictLoader.yaml_implicit_resolvers = {
    first: ([("tag:yaml.org,2002:str", _SEXAGESIMAL)] if first in "+-0123456789" else []) + list(resolvers)
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_yaml(text: str, source: str, under: tuple[str, ...] = ()) -> Any:
    """YAML text → plain data: safe tags only, no duplicate keys, and bounds on the expanded size (aliases can
    make a few lines expand to billions of values) and nesting (`under`: the keys the data will sit under)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {_first_line(exc)}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    _check_shape(data, source, under)
    return data


def _check_shape(data: Any, source: str, under: tuple[Any, ...] = ()) -> None:
    """Count the values of the expanded document (shared alias targets counted each time they are used) and
    bound its nesting (without recursion: the data may be far too deep for it). `under`: keys above `data`."""
    budget, stack = MAX_CONFIG_VALUES, [(data, under)]
    path: tuple[Any, ...]
    while stack:
        node, path = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"{source} expands to more than {MAX_CONFIG_VALUES:,} values (nested YAML aliases?); "
                              f"write the config out plainly")
        if not isinstance(node, dict | list):
            continue
        if len(path) >= MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: {_where(path)} is nested more than {MAX_CONFIG_DEPTH} levels deep; "
                              f"flatten it")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            stack.append((key, path))
            stack.append((value, (*path, key)))


def _where(path: tuple[Any, ...]) -> str:
    """A location in config data as written: `a.b[0].c` (shortened past 100 characters)."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top level)"
    return text if len(text) <= 100 else text[:97] + "..."


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def parse_config(raw: dict[str, Any], source: str = "<config>") -> JobConfig:
    """Validate a plain dict as a JobConfig, turning pydantic errors into readable ConfigErrors."""
    _check_shape(raw, source)  # a dict from Python (the API) is bounded like YAML
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {source}:\n" + _explain(exc, raw)) from exc


NAMED_MAPS = {"generators": "generator"}
"""Top-level maps of named entries: a --set into an entry that doesn't exist is a typo, not a new entry."""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of a config dict with `dotted.key=value` overrides applied (values parsed as YAML)."""
    import copy

    _check_shape(raw, "<config>")  # deepcopy recurses once per level
    out = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(out, item)
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    node = raw
    parts = key.strip().split(".")
    if len(parts) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"--set {_where(tuple(parts))}: the key is nested more than {MAX_CONFIG_DEPTH} levels "
                          f"deep; name a setting the config has")
    named = raw.get(parts[0]) if parts[0] in NAMED_MAPS else None
    if isinstance(named, dict) and len(parts) > 2 and parts[1] not in named and parts[2] != "backend":
        have = ", ".join(sorted(map(str, named))) or "none"
        raise ConfigError(f"--set {key}: no {NAMED_MAPS[parts[0]]} {parts[1]!r} in the config (it has: {have}); "
                          f"to add one, set its backend too")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = parse_yaml(value, f"--set {key}", tuple(parts)) if value.strip() else ""


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
