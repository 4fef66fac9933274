"""Typed, frozen run configuration for imagefleet (imports nothing from the project)."""

from configs.job import JobConfig
from configs.loader import ConfigError, load_config

__all__ = ["ConfigError", "JobConfig", "load_config"]
