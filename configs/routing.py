"""How rows are assigned to generators."""

from typing import Literal

from pydantic import Field

from configs.base import StrictModel


class RoutingConfig(StrictModel):
    """Row → generator assignment.

    `single` sends every row to `default`; `column` reads the row's `generator` column (falling back to
    `default` when null).
    """

    mode: Literal["single", "column"] = "single"
    """Routing policy."""
    default: str = ""
    """Generator for rows without a choice; empty = the only generator configured."""
    column: str = "generator"
    """Column naming the generator in `column` mode."""
    max_images_per_row: int = Field(default=64, ge=1)
    """Rows asking for more images become error rows."""
