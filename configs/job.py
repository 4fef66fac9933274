"""JobConfig: the root config of one run, composing every slice."""

from pydantic import Field, model_validator

from imagefleet.configs.base import StrictModel
from imagefleet.configs.cluster import ClusterConfig
from imagefleet.configs.generator import GeneratorConfig
from imagefleet.configs.routing import RoutingConfig, SingleRouting
from imagefleet.configs.scorer import ScorerConfig
from imagefleet.configs.serve import ServeConfig
from imagefleet.configs.source import SourceConfig
from imagefleet.configs.writer import OutputConfig


class LimitsConfig(StrictModel):
    """Run-level safety limits."""

    budget_usd: float = Field(default=0.0, ge=0)
    """Stop scheduling new images once their estimated cost reaches this (0 = no budget); hosted generators also
    stop paid requests once the run's actual spend reaches it. Rows past it become `status=skipped` rows; rerun
    with a bigger budget to continue (resume skips finished work)."""
    max_error_fraction: float = Field(default=1.0, ge=0, le=1)
    """Fail the run when more than this fraction of images failed (1.0 = never): mid-run once a writer has
    seen `abort_min_rows` rows (no manifest is committed then), and on the final count."""
    abort_min_rows: int = Field(default=50, ge=1)
    """Rows a writer must have seen before a mid-run abort can trigger."""


class JobConfig(StrictModel):
    """One YAML file fully describes a run."""

    name: str = "imagefleet"
    """Run name, recorded in run.json."""
    seed: int = Field(default=0, ge=0)
    """Job seed; per-image seeds derive from (row id, image index, job seed)."""
    source: SourceConfig
    """Prompt table."""
    generators: dict[str, GeneratorConfig]
    """Named generators, each with its own backend and actor pool."""
    routing: RoutingConfig = SingleRouting()
    """Row → generator assignment."""
    output: OutputConfig
    """Images + manifest destination."""
    cluster: ClusterConfig = ClusterConfig()
    """Ray connection."""
    limits: LimitsConfig = LimitsConfig()
    """Safety limits."""
    scorer: ScorerConfig | None = None
    """Prompt-image alignment scoring (`clip_score` in the manifest); required by cascade routing."""
    serve: ServeConfig = ServeConfig()
    """Online serving of the same generators (`imagefleet serve`); unused by batch runs."""

    @model_validator(mode="after")
    def _routing_targets_exist(self) -> "JobConfig":
        if not self.generators:
            raise ValueError("generators: configure at least one generator")
        names = sorted(self.generators)
        for name in names:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"generator name {name!r} may only use letters, digits, '-' and '_'")
        if self.routing.default and self.routing.default not in self.generators:
            raise ValueError(
                f"routing.default is {self.routing.default!r}, which is not a configured generator; "
                f"choose one of {names}"
            )
        for target in self.routing.targets():
            if target not in self.generators:
                raise ValueError(
                    f"routing refers to generator {target!r}, which is not configured; choose from {names}"
                )
        if self.routing.needs_default and not self.routing.default and len(names) > 1:
            raise ValueError(f"several generators configured ({names}): set routing.default to one of them")
        if self.limits.budget_usd > 0:
            for name in self.routing.used(list(self.generators)):
                if self.generators[name].estimate_usd() <= 0:
                    raise ValueError(
                        f"limits.budget_usd={self.limits.budget_usd:g} can't be enforced: generator {name!r} has no "
                        f"cost estimate; set generators.{name}.cost.usd_per_image, or cost.est_seconds_per_image "
                        f"with cost.usd_per_gpu_hour")
        task = self.source.task
        for name in self.routing.used(list(self.generators)):
            can = self.generators[name].tasks()
            if task not in can:
                raise ValueError(f"source.task={task} but generator {name!r} ({self.generators[name].backend}) can "
                                 f"only do {', '.join(can)}; pick another task or route these rows elsewhere")
        cascade = getattr(self.routing, "cascade", None)
        if cascade is not None and cascade.escalate_budget_usd is not None and \
                self.generators[cascade.escalate].estimate_usd() <= 0:
            raise ValueError(f"routing.cascade.escalate_budget_usd needs a price for {cascade.escalate!r}: set its "
                             f"cost.usd_per_image, or cost.est_seconds_per_image with cost.usd_per_gpu_hour")
        if self.routing.needs_scorer and self.scorer is None:
            raise ValueError(f"routing.mode={self.routing.mode} scores drafts: configure a `scorer`")
        return self

    @property
    def default_generator(self) -> str:
        """The generator rows go to when nothing else decides."""
        return self.routing.default_generator(list(self.generators))
