"""The run plan as a value: the ordered stages that build, dry-run, cost, CPU accounting and serving all read.

    read_parquet(source columns)
      → preprocess (PromptPreprocessor: validate, route, expand, key)      [CPU pool + one run ledger]
      → the routing mode's steps: generate <name> | score | escalate | redraw | keep better   [one pool each]
      → write (ImageWriter: encode + upload, drops pixels)                 [CPU pool]
      → manifest (pipelines.manifest)

Each stage is a value: the actor class, its constructor arguments (its config slice plus resolved secrets), its
pool, and the columns it reads and writes (the actor's declared `INPUT_COLUMNS` / `OUTPUT_COLUMNS`), which
`Plan.check` follows from the source columns to the manifest before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from imagefleet.actors import (
    GENERATORS,
    SCORERS,
    BetterKeeper,
    Escalator,
    ImageWriter,
    InputReader,
    PromptPreprocessor,
    Redrawer,
    StageActor,
)
from imagefleet.actors.gain_model import GainModelError, GainRouter
from imagefleet.actors.gain_model import load as load_gain_model
from imagefleet.actors.input_reader import INPUT_OUTPUT_COLUMNS
from imagefleet.actors.run_ledger import RunLedger, start_kwargs
from imagefleet.configs.generator_base import GeneratorBase, RunBudget
from imagefleet.configs.prep import InputReaderConfig
from imagefleet.configs.routing import Step
from imagefleet.pipelines.pools import (
    CPUS_PER_GROWING_ACTOR,
    DECISION_POOL,
    INPUT_READER_POOL,
    PREPROCESS_POOL,
    Pool,
    generator_pool,
    reserved_cpus,
    scorer_pool,
    writer_pool,
)
from imagefleet.pipelines.schema import pass_through_columns
from imagefleet.pipelines.slices import Stores as Stores  # where most callers look for it
from imagefleet.pipelines.slices import input_base, prep_config, writer_config

if TYPE_CHECKING:
    from imagefleet.configs.job import JobConfig

# what the manifest step needs from the last stage (everything else it fills with nulls when absent)
MANIFEST_READS = ("id", "image_index", "image_key", "prompt", "generator", "model", "seed", "status", "error",
                  "image_uri", "sha256", "bytes", "already_present")


class PlanError(ValueError):
    """The stages don't fit together (a column read before any stage writes it, an actor its arguments can't
    build)."""


def decide_over_run(stage: Stage, view: Any) -> dict[str, Any]:
    """A stage with `run_columns`: what its actor's `over_run(view, **kwargs)` makes of those columns of every row
    (`view`: an Arrow table or a dict of columns), added to its constructor arguments."""
    decide = getattr(stage.actor, "over_run", None)
    if decide is None:
        raise PlanError(f"stage {stage.name!r} ({stage.actor.__name__}) reads the whole run but has no over_run")
    return dict(decide(view, **stage.kwargs))


def declared_stage(name: str, actor: type[StageActor], kwargs: dict[str, Any], pool: Pool, **more: Any) -> Stage:
    """A stage whose columns are its actor's declarations: `INPUT_COLUMNS` read, `OUTPUT_COLUMNS` written,
    `OPTIONAL_COLUMNS` read when present (`more` overrides any of them, or sets the other `Stage` fields)."""
    declared = {"reads": tuple(actor.INPUT_COLUMNS), "writes": tuple(actor.OUTPUT_COLUMNS),
                "optional_reads": tuple(getattr(actor, "OPTIONAL_COLUMNS", ()))}
    return Stage(name, actor, kwargs, pool, **{**declared, **more})


def constructor_problem(actor: type, kwargs: dict[str, Any]) -> str:
    """Why `actor(**kwargs)` would fail before its body runs ('' = it binds): an unknown or missing argument, or a
    config slice of another class than the constructor's annotation names."""
    import inspect
    import typing

    try:
        inspect.signature(actor).bind(**kwargs)
    except TypeError as exc:
        return f"{exc} (arguments given: {', '.join(sorted(kwargs)) or 'none'})"
    try:
        hints = typing.get_type_hints(actor.__init__)  # type: ignore[misc]
    except Exception:  # noqa: BLE001 - an annotation only a type checker can resolve: names were checked above
        return ""
    for name, value in kwargs.items():
        want = hints.get(name)
        if isinstance(want, type) and issubclass(want, BaseModel) and not isinstance(value, want):
            return f"argument {name!r} is a {type(value).__name__}, not a {want.__name__}"
    return ""


@dataclass(frozen=True)
class Stage:
    """One `map_batches` step of the run."""

    name: str
    """Shown in the plan and in errors: preprocess, generate:<name>, score, escalate, write."""
    actor: type[StageActor]
    """The actor class (knows nothing of Ray)."""
    kwargs: dict[str, Any]
    """Its constructor arguments: its config slice, plus resolved secrets/stores where its config needs them."""
    pool: Pool
    """Its actor pool."""
    reads: tuple[str, ...]
    """Columns it needs from earlier stages."""
    writes: tuple[str, ...]
    """Columns it adds or rewrites."""
    optional_reads: tuple[str, ...] = ()
    """Columns it reads when an earlier stage wrote them (the actor's `OPTIONAL_COLUMNS`)."""
    batch_format: str = "numpy"
    """Ray Data batch format of its `__call__`."""
    rows_per_block: int = 0
    """Repartition into blocks of this many rows before this stage (0 = keep blocks)."""
    generator: str = ""
    """The generator's name for generate stages."""
    call_rows: int = 0
    """Rows per `__call__` (0 = the pool's batch size). A generator takes a whole block of a few GPU batches per
    call and batches it itself (`run_generation`), so Ray Data's per-call costs — converting the batch, assembling
    the output block from one piece per call, serializing it — are paid once per block instead of once per GPU
    batch."""
    run_columns: tuple[str, ...] = ()
    """A decision over the whole run (a cascade's relative policy): every earlier stage finishes first, and these
    columns of every row go to the actor's `over_run`, whose result joins its constructor arguments."""
    shared: dict[str, tuple[type, dict[str, Any]]] = field(default_factory=dict)
    """Constructor arguments that are one actor every actor of the pool shares: argument name → (its class, its
    constructor arguments). On Ray the run starts each once (`pools.start_shared`) and passes its handle; in
    process they are left out and the stage's one actor makes its own (the preprocessor's `RunLedger`)."""


@dataclass(frozen=True)
class Plan:
    """A run: the prompt-table columns it reads and its stages in order."""

    source_columns: tuple[str, ...]
    stages: tuple[Stage, ...]
    pools: dict[str, Pool] = field(default_factory=dict)

    def generator_stages(self) -> list[Stage]:
        """The generate stages, in order."""
        return [s for s in self.stages if s.generator]

    def actor_cpus(self) -> float:
        """CPUs all pools hold at their maximum size."""
        return reserved_cpus(self.pools)

    def check(self) -> None:
        """What can be checked before anything starts, stage by stage; raise PlanError with one line naming the
        first stage that is wrong:

        1. its actor can be built from its constructor arguments (names, required ones, config slice types);
        2. every column it reads, an earlier stage (or the source) writes;
        3. no column it reads when present (and doesn't make itself when absent) is written only by a later stage:
           it would never see it.
        """
        for stage in self.stages:
            problem = constructor_problem(stage.actor, stage.kwargs)
            if problem:
                raise PlanError(f"stage {stage.name!r} ({stage.actor.__name__}) can't be built: {problem}")
        available = set(self.source_columns)
        readers = [(s.name, s.actor.__name__, s.reads, s.writes) for s in self.stages]
        for k, (name, actor, reads, writes) in enumerate([*readers, ("manifest", "write_manifest", MANIFEST_READS,
                                                                        ())]):
            missing = [c for c in reads if c not in available]
            if missing:
                raise PlanError(f"stage {name!r} ({actor}) reads column(s) {', '.join(missing)} that no earlier "
                                f"stage writes (available: {', '.join(sorted(available))})")
            later = {c for s in self.stages[k + 1:] for c in s.writes}
            unseen = [c for c in (self.stages[k].optional_reads if k < len(self.stages) else ())
                      if c not in available and c in later and c not in writes]
            if unseen:
                raise PlanError(f"stage {name!r} ({actor}) reads column(s) {', '.join(unseen)} when present, but "
                                f"only a later stage writes them")
            available |= set(writes)

    def describe(self) -> list[str]:
        """One line per stage, for --dry-run."""
        lines = []
        for s in self.stages:
            p = s.pool
            size = f"{p.min_size}" if p.min_size == p.max_size else f"{p.min_size}..{p.max_size}"
            gpus = f", {p.num_gpus:g} GPU" if p.num_gpus else ""
            accel = f" ({p.accelerator_type})" if p.accelerator_type else ""
            calls = f" ({s.call_rows} rows a call)" if s.call_rows else ""
            calls += ", after every earlier row (decides over the run)" if s.run_columns else ""
            calls += "".join(f", one shared {actor.__name__}" for actor, _ in s.shared.values())
            lines.append(f"  {s.name:<20} {s.actor.__name__:<22} actors {size}{gpus}{accel}, "
                         f"{p.num_cpus:g} CPU, batch {p.batch_size}{calls}")
        return lines


def preprocess_pool(cfg: JobConfig) -> Pool:
    """The preprocessor's pool: up to `cluster.max_preprocessors` actors (`growing`); a batch makes about
    PREPROCESS_POOL.batch_size output rows however many prompts a template writes per row (its output is held in
    memory until the batch is done)."""
    pool = growing(cfg, replace(PREPROCESS_POOL, max_size=cfg.cluster.max_preprocessors))
    per_row = cfg.source.expansion() * cfg.routing.requests_per_image()
    return replace(pool, batch_size=max(1, pool.batch_size // per_row))


def growing(cfg: JobConfig, pool: Pool) -> Pool:
    """`pool` as it may grow on this run's cluster: on a local Ray one actor per CPUS_PER_GROWING_ACTOR of its CPUs
    at most (at least one), so a machine of a few cores keeps the CPU Ray Data's own tasks need."""
    import os

    if cfg.cluster.address != "local":
        return pool
    cpus = cfg.cluster.num_cpus or os.cpu_count() or 1
    return replace(pool, max_size=max(pool.min_size, min(pool.max_size, cpus // CPUS_PER_GROWING_ACTOR)))


def prompt_columns(cfg: JobConfig) -> tuple[str, ...]:
    """The columns prompts are made from: the prompt column, or the columns a prompt template names."""
    t = cfg.source.template
    columns = tuple(t.columns()) if t is not None else (cfg.source.prompt_column,)
    return columns + (tuple(INPUT_OUTPUT_COLUMNS) if cfg.source.reads_inputs() else ())


def make_plan(cfg: JobConfig, stores: Stores, source_columns: list[str], num_rows: int) -> Plan:
    """The stages of one run, in order (checked with `Plan.check` by the caller).

    Args:
        cfg: the job config.
        stores: resolved store connections and API keys.
        source_columns: the prompt-table columns that exist (and are read).
        num_rows: rows in the prompt table (sizes the blocks fed to the generator pools).
    """
    stages: list[Stage] = []
    # 0 input images: read, check and hash each row's files once, in a CPU pool (the key needs their hashes)
    if cfg.source.reads_inputs():
        cols = cfg.source.columns
        stages.append(declared_stage("inputs", InputReader, {"cfg": InputReaderConfig(
            task=cfg.source.task, image_column=cols.of("image"), mask_column=cols.of("mask"),
            base_uri=input_base(cfg.source.uri), allowed_roots=cfg.source.allowed_roots,
            store=stores.inputs or stores.source, limits=cfg.source.inputs)},
            replace(INPUT_READER_POOL, max_size=cfg.source.inputs.max_readers),
            reads=(cols.of("image"),), batch_format="pyarrow"))
    # 1 preprocess: validate, route, expand num_images, derive seeds and keys
    prep = prep_config(cfg, stores, source_columns)  # a pool sharing one ledger (budget, resume index) on Ray
    ledger = start_kwargs(prep)
    router = gain_router(cfg)  # predictive routing: the gain model read once, here, its weights in the kwargs
    stages += [declared_stage("preprocess", PromptPreprocessor, {"cfg": prep, **({"router": router} if router else {})},
                              preprocess_pool(cfg), reads=prompt_columns(cfg), batch_format="pyarrow",
                              shared={"ledger": (RunLedger, ledger)} if ledger is not None else {},
                              **({"writes": (*PromptPreprocessor.OUTPUT_COLUMNS, "route")} if router else {}))]
    # 2 the routing mode's topology; the first pool gets blocks of a few GPU batches so every actor has work
    block_rows = first_block_rows = rows_per_block(cfg, num_rows)
    for step in cfg.routing.steps(list(cfg.generators), cfg.scorer is not None):
        stage = _step_stage(cfg, stores, step)
        if step.kind == "generate":
            stage = replace(stage, call_rows=call_rows(cfg.generators[step.generator], first_block_rows))
            if block_rows:
                stage, block_rows = replace(stage, rows_per_block=block_rows), 0
        stages.append(stage)
    problem = scorer_source_problem(cfg, source_columns)
    if problem:
        raise PlanError(problem)
    # 3 encode + write in a separate CPU pool, overlapped with generation; pixels are dropped here
    stages.append(declared_stage("write", ImageWriter, {"cfg": writer_config(cfg, stores)},
                                 writer_pool(cfg.output.pool)))
    return Plan(source_columns=tuple(source_columns), stages=tuple(stages), pools=_pools_by_stage(stages))


def gain_router(cfg: JobConfig) -> GainRouter | None:
    """A cascade's predictive routing (`routing.cascade.predict`) with its gain model loaded, or None; PlanError
    (one line, before any work) when the model folder can't be used."""
    cascade = getattr(cfg.routing, "cascade", None)
    if cascade is None or cascade.predict is None:
        return None
    try:
        model = load_gain_model(cascade.predict.model)
    except GainModelError as exc:
        raise PlanError(f"routing.cascade.predict.model: {exc}") from exc
    return GainRouter(model=model, heavy_above=cascade.predict.heavy_above, heavy=cascade.escalate)


def consumed_again(plan: Plan) -> Plan:
    """`plan` for a lazy Dataset that may be consumed more than once (`imagefleet.processor`): a stage sharing
    actors (the preprocessors' run ledger, made once when the graph is built, with what the output held then) runs
    as one actor keeping its own instead, made anew by every consumption, so a second one finds what the first made
    (and its budget counts that consumption's images)."""
    stages = [replace(s, shared={}, pool=replace(s.pool, min_size=1, max_size=1, initial_size=1)) if s.shared else s
              for s in plan.stages]
    return replace(plan, stages=tuple(stages), pools=_pools_by_stage(stages))


def _pools_by_stage(stages: list[Stage]) -> dict[str, Pool]:
    """Every stage's pool under a unique name (a cascade scores twice: `score` and `score#2` are two pools)."""
    pools: dict[str, Pool] = {}
    for stage in stages:
        key, n = stage.name, 2
        while key in pools:
            key, n = f"{stage.name}#{n}", n + 1
        pools[key] = stage.pool
    return pools


def _step_stage(cfg: JobConfig, stores: Stores, step: Step) -> Stage:
    if step.kind == "generate":
        return generator_stage(cfg, stores, step.generator)
    if step.kind == "score":
        if cfg.scorer is None:
            raise PlanError("routing needs a scorer stage but no `scorer` is configured")
        scorer = SCORERS[cfg.scorer.backend]
        return declared_stage("score", scorer, {"cfg": cfg.scorer}, scorer_pool(cfg.scorer.pool))
    cascade = getattr(cfg.routing, "cascade", None)
    if cascade is None:
        raise PlanError(f"routing.mode={cfg.routing.mode} has a {step.kind} step but no cascade settings")
    if step.kind == "redraw":
        return declared_stage("redraw" if step.round < cascade.max_drafts else "keep best draft", Redrawer,
                              {"cfg": cascade, "round": step.round}, growing(cfg, DECISION_POOL))
    if step.kind == "keep_better":  # after the heavy images' scores: the better of each escalated row's two images
        return declared_stage("keep better", BetterKeeper, {"cfg": cascade}, growing(cfg, DECISION_POOL))
    prep = prep_config(cfg, stores)  # with the adapters' file hashes: the heavy image's key includes them
    return declared_stage("escalate", Escalator,
                          {"cfg": cascade, "heavy_name": cascade.escalate, "heavy": prep.generators[cascade.escalate]},
                          growing(cfg, DECISION_POOL),
                          run_columns=Escalator.RUN_COLUMNS if Escalator.decides_over_run(cascade) else ())


def generator_stage(cfg: JobConfig, stores: Stores, name: str, online: bool = False) -> Stage:
    """Generator `name`'s stage: its actor class from the registry, its config slice, and what its config says
    it needs at run time (API key, model store, state store). `online` (Ray Serve) answers requests directly."""
    gen: GeneratorBase = cfg.generators[name]
    if online:
        gen = gen.online()
    needs = gen.needs()
    kwargs: dict[str, Any] = {"cfg": gen, "name": name}
    if needs.model_uri or needs.s3_adapters:
        kwargs["model_store"] = stores.models[name]
    if needs.api_key:
        kwargs["api_key"] = stores.api_keys[name]
    if needs.state_store:  # e.g. hosted batch ids, persisted next to the outputs (resumable)
        kwargs.update(state_uri=cfg.output.uri, state_store=stores.output)
    if cfg.source.reads_inputs() and not online:  # rows carry input images: the generator reads them again
        kwargs["input_store"] = stores.inputs or stores.source
    if needs.spend and cfg.limits.budget_usd > 0 and not online:  # actual spend, checked before each paid call
        kwargs["budget"] = RunBudget(usd=cfg.limits.budget_usd, ledger=cfg.output.uri)
    actor = GENERATORS[gen.backend]
    pool = generator_pool(gen.pool, gen.concurrent_calls())
    return declared_stage(f"generate:{name}", actor, kwargs, pool, generator=name)


def rows_per_block(cfg: JobConfig, num_rows: int) -> int:
    """Block size before the generator pools, a whole number of GPU batches.

    Small Parquet files are a single block, so without this one actor would do all the work. Blocks of
    several batches amortize Ray's per-task overhead (measured: 0.82 → 0.94 of ideal throughput going from
    1 to 4 batches per block; with whole-block calls (`call_rows`) 0.94 → 0.97 going from 4 to 8, bench/); but
    there must still be a few blocks per actor so all of them work.
    """
    if cfg.source.num_rows_per_block:
        return cfg.source.num_rows_per_block
    batch = min(g.pool.batch_size for g in cfg.generators.values())
    if any(g.concurrent_calls() > 1 for g in cfg.generators.values()):
        return batch  # hosted batch mode: one block = one provider batch, many in flight per actor
    actors = sum(g.pool.max_size for g in cfg.generators.values())
    fair_share = num_rows // max(1, actors * 4)
    return max(batch, min(MAX_BATCHES_PER_CALL * batch, fair_share // batch * batch))


MAX_BATCHES_PER_CALL = 8
"""A call holds its block's images until it returns: whole-block calls only for blocks of at most this many GPU
batches (a user's larger `source.num_rows_per_block` keeps one call per batch)."""


def call_rows(gen: GeneratorBase, block_rows: int) -> int:
    """Rows per call of a generator fed blocks of `block_rows` (`Stage.call_rows`; 0 = one GPU batch per call)."""
    batch = gen.pool.batch_size
    if gen.concurrent_calls() > 1 or block_rows <= batch or block_rows > MAX_BATCHES_PER_CALL * batch:
        return 0  # hosted batch mode (a block is one provider batch), or nothing to gain, or too much to hold
    return block_rows


def scorer_source_problem(cfg: JobConfig, source_columns: list[str]) -> str:
    """Why what the scorer reads from the prompt table won't reach it ('' = it will, or it reads nothing there): a
    `facts` scorer's column rides as a pass-through value (the scorer's optional `source_problem`)."""
    check = getattr(SCORERS[cfg.scorer.backend], "source_problem", None) if cfg.scorer is not None else None
    if check is None:
        return ""
    carried = pass_through_columns(cfg.source, cfg.routing.column_read, source_columns)
    return str(check(cfg.scorer, cfg.source, carried))
