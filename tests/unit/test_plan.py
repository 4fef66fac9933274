"""The run plan as a value: stage order per routing mode, the column chain check, CPU accounting, cost."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from imagefleet.configs.loader import parse_config
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.plan import Plan, PlanError, Stage, Stores, make_plan
from imagefleet.pipelines.pools import Pool, missing_on_local
from tests.helpers import sleep_job

STORES = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))


def fleet(routing: dict[str, Any], scorer: bool = False, names: tuple[str, ...] = ("a", "b", "c")) -> Any:
    raw = sleep_job("in.parquet", "/tmp/out")
    base = raw["generators"].pop("sleepy")
    raw["generators"] = {n: {**base, "model": f"m-{n}"} for n in names}
    raw["routing"] = routing
    if scorer:
        raw["scorer"] = {"backend": "rule"}
    return parse_config(raw)


def names(plan: Plan) -> list[str]:
    return [s.name for s in plan.stages]


@pytest.mark.parametrize(
    ("routing", "scorer", "stages"),
    [
        ({"mode": "single", "default": "b"}, False, ["generate:b"]),
        ({"mode": "column", "default": "a"}, False, ["generate:a", "generate:b", "generate:c"]),
        ({"mode": "rules", "default": "a", "rules": [{"field": "pixels", "op": ">", "value": 1, "generator": "c"}]},
         True, ["generate:a", "generate:c", "score"]),
        ({"mode": "fanout", "fanout": ["c", "a"]}, False, ["generate:c", "generate:a"]),
        ({"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5}}, True,
         ["generate:a", "score", "escalate", "generate:c", "score", "keep better"]),
        ({"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5, "keep_better": False}},
         True, ["generate:a", "score", "escalate", "generate:c", "score"]),
    ],
)
def test_each_routing_mode_is_one_straight_line_of_stages(routing: dict[str, Any], scorer: bool,
                                                          stages: list[str]) -> None:
    """Rows are read and preprocessed once: every mode is preprocess → its steps → write, no branches."""
    plan = make_plan(fleet(routing, scorer), STORES, ["prompt"], 100)
    assert names(plan) == ["preprocess", *stages, "write"]
    plan.check()
    # the first generator pool gets blocks of a few GPU batches; the rest keep them
    assert [s.rows_per_block > 0 for s in plan.stages if s.generator][0]
    assert sum(s.rows_per_block > 0 for s in plan.stages) == 1


def test_a_broken_column_chain_fails_at_plan_time_with_one_line() -> None:
    plan = make_plan(fleet({"mode": "single", "default": "a"}), STORES, ["prompt"], 10)
    writer = plan.stages[-1]
    broken = replace(plan, stages=(*plan.stages[:-1], replace(writer, reads=(*writer.reads, "depth_map"))))
    with pytest.raises(PlanError) as err:
        broken.check()
    assert "\n" not in str(err.value)
    assert "stage 'write' (ImageWriter) reads column(s) depth_map that no earlier stage writes" in str(err.value)


def test_an_escalator_before_any_scorer_is_caught() -> None:
    """Each actor's declared inputs are the columns it really reads: moving the escalator ahead of the scorer
    is caught (the Escalator reads the draft's clip_score)."""
    cfg = fleet({"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5}}, scorer=True)
    plan = make_plan(cfg, STORES, ["prompt"], 10)
    stages = list(plan.stages)
    stages.remove(next(s for s in stages if s.name == "escalate"))
    stages.insert(1, next(s for s in plan.stages if s.name == "escalate"))
    with pytest.raises(PlanError, match="stage 'escalate' .*clip_score"):
        replace(plan, stages=tuple(stages)).check()


def test_the_source_must_have_the_prompt_column() -> None:
    plan = make_plan(fleet({"mode": "single", "default": "a"}), STORES, ["text"], 10)
    with pytest.raises(PlanError, match="stage 'preprocess' .*prompt"):
        plan.check()


def test_cpu_accounting_and_pools_come_from_the_plan() -> None:
    plan = make_plan(fleet({"mode": "fanout", "fanout": ["a", "b"]}, scorer=True), STORES, ["prompt"], 10)
    expected = sum(s.pool.max_size * s.pool.num_cpus for s in plan.stages)
    assert plan.actor_cpus() == pytest.approx(expected)
    assert set(plan.pools) == set(names(plan))
    text = "\n".join(plan.describe())
    assert "generate:a" in text and "SleepGenerator" in text and "RuleScorer" in text


def test_a_cascade_reserves_cpus_for_both_scorer_pools() -> None:
    cfg = fleet({"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5}}, scorer=True)
    plan = make_plan(cfg, STORES, ["prompt"], 10)
    assert len(plan.pools) == len(plan.stages) and {"score", "score#2"} <= set(plan.pools)
    assert plan.actor_cpus() == pytest.approx(sum(s.pool.max_size * s.pool.num_cpus for s in plan.stages))


def test_missing_accelerator_is_named_with_the_pool() -> None:
    pools = {"generate:sdxl": Pool(1, 1, 1, num_cpus=1, batch_size=4, num_gpus=1, accelerator_type="H100")}
    problem = missing_on_local(pools, {"CPU": 4.0, "GPU": 2.0})
    assert "pool 'generate:sdxl' asks for accelerator_type H100 but no node" in problem
    assert missing_on_local(pools, {"CPU": 4, "GPU": 2, "accelerator_type:H100": 1}) == ""
    two = {"p": replace(pools["generate:sdxl"], num_gpus=2, accelerator_type="")}
    assert "asks for 2 GPU per actor but this local Ray has 1" in missing_on_local(two, {"CPU": 4.0, "GPU": 1.0})


def test_stage_values_carry_only_their_config_slice() -> None:
    """torchtitan's rule: each actor gets its own slice (never the JobConfig)."""
    from imagefleet.configs.job import JobConfig

    plan = make_plan(fleet({"mode": "column", "default": "a"}), STORES, ["prompt"], 10)
    for stage in plan.stages:
        assert not any(isinstance(v, JobConfig) for v in stage.kwargs.values()), stage.name
    gen: Stage = plan.stages[1]
    assert gen.kwargs["cfg"].model == "m-a"


def test_pool_autoscaling_can_grow_and_shrinks_at_stage_end() -> None:
    """A threaded pool (hosted batch mode) with room to grow can reach Ray Data's upscaling threshold (tasks in
    flight per call slot), and `cluster.pools_shrink` decides whether utilization alone shrinks a pool."""
    from ray.data.context import AutoscalingConfig

    from imagefleet.pipelines.pools import autoscaling, map_batches_kwargs

    defaults = AutoscalingConfig()
    for concurrency in (1, 8):
        pool = Pool(min_size=1, max_size=4, initial_size=1, num_cpus=0.5, batch_size=8, concurrency=concurrency)
        strategy = map_batches_kwargs(pool)["compute"]
        in_flight = strategy.max_tasks_in_flight_per_actor or 2 * concurrency  # Ray Data's default: 2 per slot
        assert in_flight / concurrency >= defaults.actor_pool_util_upscaling_threshold
    assert autoscaling(defaults, "when_idle") == defaults
    kept = autoscaling(defaults, "at_stage_end")
    assert kept.actor_pool_util_downscaling_threshold < 0  # no utilization is below it
    assert kept.actor_pool_util_upscaling_threshold == defaults.actor_pool_util_upscaling_threshold
    assert parse_config(sleep_job("p.parquet", "/o")).cluster.pools_shrink == "at_stage_end"


def test_a_stage_its_arguments_cant_build_fails_at_plan_time_with_one_line() -> None:
    """A constructor argument dropped (or misnamed, or a config slice of the wrong class) is found before Ray
    starts, naming the stage — not when the first actor starts."""
    plan = make_plan(fleet({"mode": "single", "default": "a"}), STORES, ["prompt"], 10)
    gen = plan.generator_stages()[0]

    def with_kwargs(kwargs: dict[str, Any]) -> Plan:
        return replace(plan, stages=tuple(replace(s, kwargs=kwargs) if s is gen else s for s in plan.stages))

    dropped = {k: v for k, v in gen.kwargs.items() if k != "cfg"}
    with pytest.raises(PlanError) as err:
        with_kwargs(dropped).check()
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("stage 'generate:a' (SleepGenerator) can't be built: missing a required "
                                     "argument: 'cfg'")
    with pytest.raises(PlanError, match="stage 'generate:a' .* unexpected keyword argument 'api_kee'"):
        with_kwargs({**gen.kwargs, "api_kee": "x"}).check()
    writer = plan.stages[-1]
    with pytest.raises(PlanError, match="stage 'generate:a' .*argument 'cfg' is a ImageWriterConfig, not a "
                                        "SleepConfig"):
        with_kwargs({**gen.kwargs, "cfg": writer.kwargs["cfg"]}).check()


def test_dry_run_refuses_a_stage_its_arguments_cant_build(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import imagefleet.pipelines.plan as plan_module
    from imagefleet.jobs import generate
    from tests.helpers import write_prompts

    made = plan_module.generator_stage

    def renamed(*args: Any, **kwargs: Any) -> Stage:  # a refactor that renamed the config slice's argument
        stage = made(*args, **kwargs)
        return replace(stage, kwargs={("config" if k == "cfg" else k): v for k, v in stage.kwargs.items()})

    monkeypatch.setattr(plan_module, "generator_stage", renamed)
    write_prompts(tmp_path / "p.parquet", {"prompt": ["a fox"]})
    import yaml

    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(sleep_job(tmp_path / "p.parquet", str(tmp_path / "out"))))
    assert generate.main([str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'generate:sleepy' (SleepGenerator) can't be built" in err[0], err


def test_a_column_read_when_present_but_written_later_is_caught() -> None:
    """Optional reads are declared (`OPTIONAL_COLUMNS`) and checked: a stage that reads a column only a later
    stage writes would silently never see it."""
    cfg = fleet({"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5, "keep_better": False}},
                scorer=True)
    plan = make_plan(cfg, STORES, ["prompt"], 10)
    writer = plan.stages[-1]
    assert "draft_image" in writer.optional_reads
    stages = list(plan.stages)
    escalate = next(s for s in stages if s.name == "escalate")
    stages.remove(escalate)
    stages.insert(stages.index(writer), replace(escalate, reads=()))  # now after the heavy generator: fine
    replace(plan, stages=tuple(stages)).check()
    stages.remove(writer)
    stages.insert(1, replace(writer, reads=()))
    with pytest.raises(PlanError, match="stage 'write' .*reads column.* draft_image.* when present, but only a "
                                        "later stage writes them"):
        replace(plan, stages=tuple(stages)).check()


@pytest.mark.parametrize(("cascade", "escalate_actors"), [
    ({"threshold": 0.5, "max_escalations": 3}, 4),  # a capped threshold: the lowest below it, decided over the run
    ({"threshold": 0.5}, 4),
    ({"escalate_fraction": 0.2, "max_escalations": 3}, 4),  # the whole run's cutoff already holds the cap
])
def test_the_cascades_decisions_grow_as_pools_unless_they_count_across_rows(cascade: dict[str, Any],
                                                                           escalate_actors: int) -> None:
    raw = {"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "max_drafts": 2, "redraw_below": 0.3,
                                          **cascade}}
    cfg = fleet(raw, scorer=True)
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"address": "head:6379"})})
    pools = make_plan(cfg, STORES, ["prompt"], 10).pools
    assert pools["escalate"].max_size == escalate_actors
    assert pools["redraw"].max_size == pools["keep best draft"].max_size == pools["keep better"].max_size == 4
    local = make_plan(fleet(raw, scorer=True), STORES, ["prompt"], 10).pools  # a 4-CPU local Ray: one each
    assert {local[k].max_size for k in ("escalate", "redraw", "keep best draft", "keep better")} == {1}
