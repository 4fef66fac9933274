"""load_config: YAML file + `--set key=value` overrides → a validated, frozen JobConfig."""

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from configs.job import JobConfig

# discriminator values pydantic inserts into error locations
BACKEND_TAGS = ("diffusers", "sleep", "openai", "gemini", "clip", "rule")


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
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in BACKEND_TAGS)]
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(list(err["loc"][:-1]), raw)
            lines.append(f"  unknown key {where!r}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {where}: {err['msg']} (got {_short(err.get('input'))})")
    return "\n".join(lines)


def _valid_keys(loc: list[Any], raw: dict[str, Any]) -> list[str]:
    """Walk the JobConfig model along `loc` and list the field names accepted there."""
    from configs.generator import DiffusersConfig, SleepConfig
    from configs.hosted import GeminiImageConfig, OpenAIImagesConfig

    model: Any = JobConfig
    node: Any = raw
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else None
        if isinstance(part, str) and part in BACKEND_TAGS:
            model = {"diffusers": DiffusersConfig, "sleep": SleepConfig, "openai": OpenAIImagesConfig,
                     "gemini": GeminiImageConfig}.get(part, model)
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            continue  # a dict key (generator name): the value model comes next
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", ())
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(args):  # dict[str, X] → X
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
