"""How rows are assigned to generators: single, by column, by rules, fan-out, or the draft → escalate cascade."""

from typing import Literal

from pydantic import Field, model_validator

from configs.base import StrictModel


class RouteRule(StrictModel):
    """`<field> <op> <value>` → generator; the first matching rule wins."""

    field: Literal["width", "height", "num_steps", "guidance_scale", "num_images", "prompt_chars", "pixels"]
    """Row field to test (`prompt_chars` = prompt length, `pixels` = width x height)."""
    op: Literal["<", "<=", "==", "!=", ">=", ">"]
    """Comparison."""
    value: float
    """Right-hand side."""
    generator: str
    """Generator for matching rows."""


class CascadeConfig(StrictModel):
    """Draft every row with a fast generator, score it, re-generate low scorers with a heavy one."""

    draft: str
    """Fast generator every row goes to first."""
    escalate: str
    """Heavy generator for rows whose draft scored below the threshold."""
    threshold: float
    """Drafts scoring below this are escalated."""
    max_escalations: int = Field(default=0, ge=0)
    """Budget cap: at most this many escalations per run (0 = no cap)."""
    keep_draft: bool = True
    """Store the draft image of escalated rows too (manifest `draft_image_uri`)."""

    @model_validator(mode="after")
    def _different(self) -> "CascadeConfig":
        if self.draft == self.escalate:
            raise ValueError("routing.cascade.draft and .escalate must be different generators")
        return self


class RoutingConfig(StrictModel):
    """Row → generator assignment.

    `single`: every row to `default`. `column`: the row's `generator` column (null → `default`). `rules`:
    first matching rule, else `default`. `fanout`: every row to every generator in `fanout` (A/B comparisons).
    `cascade`: draft → score → escalate (needs a `scorer`).
    """

    mode: Literal["single", "column", "rules", "fanout", "cascade"] = "single"
    """Routing policy."""
    default: str = ""
    """Generator for rows without a choice; empty = the only generator configured."""
    column: str = "generator"
    """Column naming the generator in `column` mode."""
    rules: list[RouteRule] = []
    """Rules for `rules` mode, tried in order."""
    fanout: list[str] = []
    """Generators every row goes to in `fanout` mode."""
    cascade: CascadeConfig | None = None
    """Settings for `cascade` mode."""
    max_images_per_row: int = Field(default=64, ge=1)
    """Rows asking for more images become error rows."""

    @model_validator(mode="after")
    def _mode_settings(self) -> "RoutingConfig":
        if self.mode == "rules" and not self.rules:
            raise ValueError("routing.mode=rules needs routing.rules")
        if self.mode == "fanout" and len(self.fanout) < 2:
            raise ValueError("routing.mode=fanout needs routing.fanout with at least two generators")
        if self.mode == "cascade" and self.cascade is None:
            raise ValueError("routing.mode=cascade needs routing.cascade (draft, escalate, threshold)")
        return self

    def targets(self) -> list[str]:
        """Every generator name the routing refers to."""
        names = [self.default] if self.default else []
        names += [r.generator for r in self.rules] + list(self.fanout)
        if self.cascade:
            names += [self.cascade.draft, self.cascade.escalate]
        return names
