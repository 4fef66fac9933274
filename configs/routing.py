"""Routing modes: how rows are assigned to generators, and the stage topology each mode needs.

Each mode is one variant of the `RoutingConfig` union. A variant answers three questions: which generators a
row goes to (`choose`), which steps the run needs after preprocessing (`steps`), and what a run costs at most
and at least (`cost_range`). Adding a mode is one class here (or in its own module) plus one entry in
`ROUTING_MODES` and the union at the bottom; the pipeline turns steps into stages without knowing the mode.
"""

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from imagefleet.configs.base import StrictModel

RULE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">=": operator.ge, ">": operator.gt,
}
RowFacts = Callable[[], dict[str, float]]
"""Lazily computed facts of a row for rules: width, height, num_steps, guidance_scale, num_images, prompt_chars,
pixels (with the default generator's defaults filled in)."""


@dataclass(frozen=True)
class Step:
    """One step of a run's topology after preprocessing; the pipeline maps each to a stage."""

    kind: Literal["generate", "score", "escalate", "redraw", "keep_better"]
    """generate: a generator's pool (rows routed elsewhere pass through); score: the scorer pool; escalate: the
    cascade's decision (one actor); redraw: a round of adaptive drafts (keep the better draft, draw again below
    the stop score); keep_better: an escalated row keeps its draft when the heavy image scored lower."""
    generator: str = ""
    """The generator of a `generate` step."""
    round: int = 0
    """A redraw step's round: 1 decides the second draft, ...; the last one (= max_drafts) only keeps the best."""


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


class PredictConfig(StrictModel):
    """Predictive routing: rows whose prompt a gain model predicts to gain most from the heavy generator skip their
    drafts and go straight to it (route `predicted_heavy`)."""

    model: str
    """A gain model folder `imagefleet train-router` wrote (local; the driver reads it once, before any work, and
    hands its weights to the preprocessors, so a cluster's nodes needn't see it)."""
    heavy_above: float
    """Rows whose predicted gain (heavy score - draft score, the scorer's units) is above this go straight to the
    heavy generator; the folder's router.json lists, in `heavy_above_for_share`, the value that sends each share of
    its training prompts there."""


class CascadeConfig(StrictModel):
    """Draft every row with a fast generator, score it, re-generate low scorers with a heavy one."""

    draft: str
    """Fast generator every row goes to first."""
    escalate: str
    """Heavy generator for rows whose draft scored below the threshold."""
    threshold: float | None = None
    """Absolute: drafts scoring below this are escalated (in the scorer's units: CLIP 0..100, VQA 0..1). Set exactly
    one of threshold, escalate_fraction, escalate_budget_usd."""
    escalate_fraction: float | None = Field(default=None, gt=0, le=1)
    """Relative: escalate the worst this share of the run's scored drafts (0.2 = the lowest-scoring 20%,
    ceil(0.2 x scored drafts), ties broken by image key). Decided over the whole run: the escalate stage waits
    until every draft is scored (Ray holds the drafts meanwhile, spilling to disk); an absolute threshold streams."""
    escalate_budget_usd: float | None = Field(default=None, gt=0)
    """From a budget: spend at most this on heavy images — as many escalations as it buys at the heavy
    generator's estimated price, given to the run's worst drafts like `escalate_fraction`."""
    max_drafts: int = Field(default=1, ge=1, le=8)
    """Adaptive drafts: draw up to this many drafts of a row (each a round: draft, score), the next one only while
    the best so far scores below `redraw_below`, and keep the best (1 = one draft). The rows' image keys name the
    rule (max_drafts, redraw_below, scorer), so reruns find the kept draft."""
    redraw_below: float | None = None
    """Adaptive drafts: draw another draft while the best so far scores below this (the scorer's units); needed
    when max_drafts > 1."""
    max_escalations: int = Field(default=0, ge=0)
    """Budget cap: at most this many escalations per run (0 = no cap), the run's lowest-scoring drafts (decided once
    every draft is scored, as a relative policy is)."""
    keep_draft: bool = True
    """Store the draft image of escalated rows that end as their heavy image too (manifest `draft_image_uri`)."""
    predict: PredictConfig | None = None
    """Predictive routing (None = off): rows whose predicted gain is above `heavy_above` are made by the heavy
    generator only, keyed as their escalation would be (the same image), priced at its price in estimates and the
    budget. They are outside the draft population: no drafts, not ranked by escalate_fraction, not counted by
    max_escalations or escalate_budget_usd, and keep_better has no draft to compare."""
    keep_better: bool = True
    """Once an escalated row's heavy image is scored, keep the better of it and the draft: a heavy image scoring
    below its draft leaves the row with the draft (route `escalated_kept_draft`; image key, pixels, settings and
    score the draft's) and is stored as well (`heavy_image_key`, `heavy_image_uri`, `heavy_score`); cost counts
    both. Ties and unscored or failed heavy images keep the heavy outcome. The drafts' pixels ride along until
    then whatever `keep_draft` says. Keys are the same either way: an output that already holds a row keeps the
    outcome it recorded."""

    @model_validator(mode="after")
    def _different(self) -> "CascadeConfig":
        if self.draft == self.escalate:
            raise ValueError("routing.cascade.draft and .escalate must be different generators")
        policies = [n for n in ("threshold", "escalate_fraction", "escalate_budget_usd")
                    if getattr(self, n) is not None]
        if self.max_drafts > 1 and self.redraw_below is None:
            raise ValueError(f"routing.cascade.max_drafts={self.max_drafts} needs redraw_below: the score below which "
                             "a row is drafted again")
        if self.max_drafts == 1 and self.redraw_below is not None:
            raise ValueError("routing.cascade.redraw_below needs max_drafts > 1 (drafts a row may get)")
        if len(policies) != 1:
            raise ValueError("routing.cascade: set exactly one of threshold (absolute score), escalate_fraction (the "
                             f"worst share of drafts) or escalate_budget_usd (what escalations may cost); got "
                             f"{policies or 'none'}")
        return self


class RoutingBase(StrictModel):
    """What every routing mode shares."""

    default: str = ""
    """Generator for rows without a choice; empty = the only generator configured."""
    max_images_per_row: int = Field(default=64, ge=1)
    """Rows asking for more images become error rows."""

    needs_default: ClassVar[bool] = True
    """Several generators need `default` set (modes that can leave a row undecided)."""
    needs_scorer: ClassVar[bool] = False
    """The mode scores drafts itself (a `scorer` must be configured)."""

    @property
    def column_read(self) -> str:
        """An extra input column the mode reads ('' = none)."""
        return ""

    def targets(self) -> list[str]:
        """Every generator name the mode refers to (checked against the configured ones)."""
        return [self.default] if self.default else []

    def default_generator(self, names: list[str]) -> str:
        """The generator rows go to when nothing else decides."""
        return self.default or names[0]

    def choose(self, column_value: Any, facts: RowFacts) -> list[str]:
        """Generators one row goes to, in order ('' = the default generator)."""
        return [""]

    def requests_per_image(self) -> int:
        """Manifest rows per requested image (fan-out makes one per listed generator)."""
        return 1

    def candidates_per_image(self) -> int:
        """Images generated per requested image before the best is kept (best-of-N); 1 = no selection."""
        return 1

    def used(self, names: list[str]) -> list[str]:
        """Generators that can receive rows, in stage order."""
        return [self.default_generator(names)]

    def steps(self, names: list[str], scored: bool) -> list[Step]:
        """The topology after preprocessing: one pool per used generator (each passes other rows through),
        then the scorer when one is configured."""
        return [Step("generate", n) for n in self.used(names)] + ([Step("score")] if scored else [])

    def cost_range(self, per_image: dict[str, float], images: int) -> tuple[float, float]:
        """Lowest and highest expected spend for `images` requested images."""
        prices = [per_image[n] for n in self.used(list(per_image))]
        return images * min(prices), images * max(prices)


class SingleRouting(RoutingBase):
    """Every row goes to `default` (or the only generator)."""

    mode: Literal["single"] = "single"
    """Routing policy."""


class ColumnRouting(RoutingBase):
    """The row's `column` names its generator; null → `default`, unknown → an error row."""

    mode: Literal["column"] = "column"
    """Routing policy."""
    column: str = "generator"
    """Column naming the generator."""

    @property
    def column_read(self) -> str:
        """The generator column."""
        return self.column

    def choose(self, column_value: Any, facts: RowFacts) -> list[str]:
        """The column's value (null → default)."""
        return [str(column_value) if column_value not in (None, "") else ""]

    def used(self, names: list[str]) -> list[str]:
        """Any configured generator can be named."""
        return list(names)


class RulesRouting(RoutingBase):
    """The first matching rule decides, else `default`."""

    mode: Literal["rules"] = "rules"
    """Routing policy."""
    rules: list[RouteRule] = []
    """Tried in order (`{field: pixels, op: ">=", value: 1048576, generator: sdxl}`)."""

    @model_validator(mode="after")
    def _some_rules(self) -> "RulesRouting":
        if not self.rules:
            raise ValueError("routing.mode=rules needs routing.rules")
        return self

    def targets(self) -> list[str]:
        """The default and every rule's generator."""
        return super().targets() + [r.generator for r in self.rules]

    def choose(self, column_value: Any, facts: RowFacts) -> list[str]:
        """The first matching rule's generator; invalid rows and no match go to the default."""
        try:
            values = facts()
        except ValueError:
            return [""]  # the row is invalid anyway; preprocessing reports it
        for rule in self.rules:
            if RULE_OPS[rule.op](values[rule.field], rule.value):
                return [rule.generator]
        return [""]

    def used(self, names: list[str]) -> list[str]:
        """The default and the rules' generators, in configuration order."""
        wanted = {self.default_generator(names), *(r.generator for r in self.rules)}
        return [n for n in names if n in wanted]


class FanoutRouting(RoutingBase):
    """Every row goes to every listed generator with the same seed (A/B comparisons)."""

    mode: Literal["fanout"] = "fanout"
    """Routing policy."""
    fanout: list[str] = []
    """Generators every row goes to."""

    @model_validator(mode="after")
    def _two_or_more(self) -> "FanoutRouting":
        if len(set(self.fanout)) < 2:
            raise ValueError("routing.mode=fanout needs routing.fanout with at least two generators")
        if len(set(self.fanout)) != len(self.fanout):
            raise ValueError(f"routing.fanout lists a generator twice: {self.fanout}")
        return self

    needs_default: ClassVar[bool] = False

    def targets(self) -> list[str]:
        """The listed generators."""
        return super().targets() + list(self.fanout)

    def default_generator(self, names: list[str]) -> str:
        """The first listed generator."""
        return self.fanout[0]

    def choose(self, column_value: Any, facts: RowFacts) -> list[str]:
        """All listed generators."""
        return list(self.fanout)

    def requests_per_image(self) -> int:
        """One row per listed generator."""
        return len(self.fanout)

    def used(self, names: list[str]) -> list[str]:
        """The listed generators."""
        return list(dict.fromkeys(self.fanout))

    def cost_range(self, per_image: dict[str, float], images: int) -> tuple[float, float]:
        """Every image is made once per listed generator."""
        total = images * sum(per_image[n] for n in self.used(list(per_image)))
        return total, total


class CascadeRouting(RoutingBase):
    """Draft → score → escalate low scorers to a heavy generator (needs a `scorer`)."""

    mode: Literal["cascade"] = "cascade"
    """Routing policy."""
    cascade: CascadeConfig
    """Draft and escalate generators, threshold and cap."""

    needs_default: ClassVar[bool] = False
    needs_scorer: ClassVar[bool] = True

    def targets(self) -> list[str]:
        """Draft and escalate generators."""
        return super().targets() + [self.cascade.draft, self.cascade.escalate]

    def default_generator(self, names: list[str]) -> str:
        """Every row starts at the draft generator."""
        return self.cascade.draft

    def used(self, names: list[str]) -> list[str]:
        """Draft, then heavy."""
        return [self.cascade.draft, self.cascade.escalate]

    def steps(self, names: list[str], scored: bool) -> list[Step]:
        """Draft, score, (redraw, draft, score) for each further round of adaptive drafts and a last redraw that
        keeps the best, escalate (one actor: an exact cap), heavy, score again, and (keep_better) the better of
        each escalated row's draft and heavy image."""
        c = self.cascade
        rounds = [step for k in range(1, c.max_drafts) for step in
                  (Step("redraw", round=k), Step("generate", c.draft), Step("score"))]
        settle = [Step("redraw", round=c.max_drafts)] if c.max_drafts > 1 else []
        better = [Step("keep_better")] if c.keep_better else []
        return [Step("generate", c.draft), Step("score"), *rounds, *settle, Step("escalate"),
                Step("generate", c.escalate), Step("score"), *better]

    def cost_range(self, per_image: dict[str, float], images: int) -> tuple[float, float]:
        """Every image is drafted; at most `max_escalations` (else all), the policy's share, or what its budget buys
        are redone by the heavy generator. With `predict`, any number of rows may go straight to the heavy generator
        instead (at its price, without drafts): the range spans every split, none to all of them."""
        c = self.cascade
        if c.predict is None:
            return self._split_cost(per_image, images, 0)
        caps = [cap for cap in (c.max_escalations, self._budget_count(per_image)) if cap]  # 0 / None: no cap
        if c.escalate_fraction is not None:  # where a cap starts to bind as the drafted rows grow
            caps += [math.ceil(cap / c.escalate_fraction) for cap in caps]
        splits = {0, images, *(images - min(cap, images) for cap in caps)}  # the cost is linear between these
        ranges = [self._split_cost(per_image, images, k) for k in splits]
        return min(low for low, _ in ranges), max(high for _, high in ranges)

    def _budget_count(self, per_image: dict[str, float]) -> int | None:
        """How many escalations escalate_budget_usd buys (None = no such budget, or a free heavy generator)."""
        usd, price = self.cascade.escalate_budget_usd, per_image[self.cascade.escalate]
        return math.floor(usd / price + 1e-9) if usd is not None and price > 0 else None

    def _split_cost(self, per_image: dict[str, float], images: int, predicted: int) -> tuple[float, float]:
        """(lowest, highest) spend when `predicted` of `images` rows go straight to the heavy generator."""
        c = self.cascade
        drafted = images - predicted
        extra = drafted if not c.max_escalations else min(drafted, c.max_escalations)
        if c.escalate_fraction is not None:
            extra = min(extra, math.ceil(c.escalate_fraction * drafted))
        bought = self._budget_count(per_image)
        extra = extra if bought is None else min(extra, bought)
        low, heavy = drafted * per_image[c.draft], predicted * per_image[c.escalate]
        return low + heavy, low * c.max_drafts + extra * per_image[c.escalate] + heavy


class BestOfRouting(RoutingBase):
    """Best-of-N: every request is generated `candidates` times with derived seeds by one generator, each
    candidate is scored, and the best is kept (needs a `scorer`). The manifest records every candidate's seed
    and score and which won."""

    mode: Literal["best_of"] = "best_of"
    """Routing policy."""
    candidates: int = Field(default=4, ge=2, le=16)
    """Candidates per requested image (N)."""

    needs_scorer: ClassVar[bool] = True

    def candidates_per_image(self) -> int:
        """N."""
        return self.candidates

    def cost_range(self, per_image: dict[str, float], images: int) -> tuple[float, float]:
        """Every candidate is paid for."""
        low, high = super().cost_range(per_image, images)
        return low * self.candidates, high * self.candidates


ROUTING_MODES: tuple[type[RoutingBase], ...] = (SingleRouting, ColumnRouting, RulesRouting, FanoutRouting,
                                                CascadeRouting, BestOfRouting)
"""Every routing mode (the union below lists the same classes)."""


def _mode_of(value: Any) -> str:
    """The union's tag: `mode`, defaulting to single when a YAML `routing:` block leaves it out."""
    mode = value.get("mode", "single") if isinstance(value, dict) else getattr(value, "mode", "single")
    return str(mode)


RoutingConfig = Annotated[
    Annotated[SingleRouting, Tag("single")]
    | Annotated[ColumnRouting, Tag("column")]
    | Annotated[RulesRouting, Tag("rules")]
    | Annotated[FanoutRouting, Tag("fanout")]
    | Annotated[CascadeRouting, Tag("cascade")]
    | Annotated[BestOfRouting, Tag("best_of")],
    Discriminator(_mode_of, custom_error_type="routing_mode",
                  custom_error_message="routing.mode must be one of single, column, rules, fanout, cascade, best_of"),
]
"""Row → generator assignment: `single`, `column`, `rules`, `fanout`, `cascade` or `best_of` (`mode` picks the
variant)."""
