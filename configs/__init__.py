"""Typed, frozen run configuration for imagefleet (imports nothing from the project).

The package's names load on first use: an actor process unpickling its config slice (`configs.generator`,
`configs.writer`, ...) doesn't pay for the whole job config and its loader (0.06–0.15 s of imports per
process, measured).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagefleet.configs.job import JobConfig
    from imagefleet.configs.loader import ConfigError, load_config

__all__ = ["ConfigError", "JobConfig", "load_config"]

_HOMES = {"JobConfig": "imagefleet.configs.job", "ConfigError": "imagefleet.configs.loader",
          "load_config": "imagefleet.configs.loader"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'configs' has no attribute {name!r}")
