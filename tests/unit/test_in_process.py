"""The in-process executor's decisions and plumbing (pipelines/in_process.py), without Ray: which executor a job
gets and why, batches converted as Ray Data converts them, rows per call, and actors closed however a run ends."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pytest

from imagefleet.configs.loader import parse_config
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.in_process import StageFailed, choose_executor, execute, manifest_table
from imagefleet.pipelines.plan import Plan, PlanError, Stage, Stores, make_plan
from imagefleet.pipelines.pools import PREPROCESS_POOL
from tests.helpers import sleep_job

STORES = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"),
                api_keys={})


def job(**cluster: Any) -> tuple[Any, Plan]:
    raw = sleep_job("in.parquet", "/tmp/out")
    raw["cluster"] = {"address": "local", **cluster}
    cfg = parse_config(raw)
    return cfg, make_plan(cfg, STORES, ["prompt"], 4)


@pytest.mark.parametrize(("cluster", "rows", "running", "want", "why"), [
    ({}, 4, False, "in_process", "4 image(s) fit one generator batch (4)"),
    ({}, 5, False, "ray", "5 images are more than one generator batch (4)"),
    ({}, 1, True, "ray", "Ray is already running in this process"),
    ({"address": "auto"}, 1, False, "ray", "cluster.address: auto"),
    ({"executor": "ray"}, 1, False, "ray", "cluster.executor: ray"),
    ({"executor": "in_process"}, 10_000, True, "in_process", "cluster.executor: in_process"),
])
def test_auto_runs_one_batch_in_process_and_everything_else_on_ray(cluster: dict[str, Any], rows: int,
                                                                   running: bool, want: str, why: str) -> None:
    cfg, plan = job(**cluster)
    executor, reason = choose_executor(cfg, plan, rows, running)
    assert executor == want and why in reason


def test_run_services_stay_with_the_one_actor_and_what_needs_ray_is_refused_in_process() -> None:
    """A stage with run services (`start_run`: hosted rate limits and spend, shared by a pool's actors through Ray)
    runs in process, where its one actor keeps them; WebDataset export is a Ray Data job, so `auto` keeps it on
    Ray and forcing `in_process` is one line saying what to change."""
    class Shared:
        @staticmethod
        def start_run(**_: Any) -> list[Any]:
            raise AssertionError("not started in process")

    cfg, plan = job()
    hosted = replace(plan, stages=(*plan.stages[:1], replace(plan.stages[1], actor=Shared), *plan.stages[2:]))
    assert choose_executor(cfg, hosted, 1, False)[0] == "in_process"
    raw = sleep_job("in.parquet", "/tmp/out")
    raw["cluster"] = {"address": "local"}
    raw["output"]["webdataset"] = {"enabled": True}
    cfg = parse_config(raw)
    executor, why = choose_executor(cfg, make_plan(cfg, STORES, ["prompt"], 1), 1, False)
    assert executor == "ray" and "webdataset" in why
    raw["cluster"]["executor"] = "in_process"
    cfg = parse_config(raw)
    with pytest.raises(PlanError, match="in_process can't run this job: output.webdataset .*; use ray or auto"):
        choose_executor(cfg, make_plan(cfg, STORES, ["prompt"], 1), 1, False)


def test_numpy_batches_are_what_ray_data_gives_a_numpy_stage() -> None:
    """Arrow → numpy as Ray Data converts it (its own BlockAccessor is the reference): strings, nullable ints,
    lists and an all-null column."""
    from ray.data.block import BlockAccessor

    from imagefleet.pipelines.in_process import _as_format

    table = pa.table({"prompt": ["a", None], "n": pa.array([1, None], pa.int64()), "x": [1.5, 2.0],
                      "tags": [["p", "q"], []], "none": pa.nulls(2), "ok": [True, False]})
    ours = _as_format(table, "numpy", "stage")
    theirs = BlockAccessor.for_block(table).to_batch_format("numpy")
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        assert ours[name].shape == theirs[name].shape, name
        assert str(ours[name].tolist()) == str(theirs[name].tolist()), name
    with pytest.raises(PlanError, match="batch format 'pandas' can't run in process"):
        _as_format(table, "pandas", "odd")


class Recorder:
    """A stage actor that records its calls' sizes and batch types, and can fail on a row."""

    calls: ClassVar[list[tuple[str, int, str]]] = []
    closed: ClassVar[list[str]] = []

    def __init__(self, name: str, fail_on: str = "") -> None:
        self.name, self.fail_on = name, fail_on

    def __call__(self, batch: Any) -> Any:
        rows = batch["prompt"] if isinstance(batch, dict) else batch.column("prompt").to_pylist()
        if self.fail_on in list(rows):
            raise RuntimeError(f"{self.name} broke")
        Recorder.calls.append((self.name, len(rows), type(batch).__name__))
        if isinstance(batch, dict):
            return {**batch, "status": np.array(["ok"] * len(rows), dtype=object)}
        return batch

    def close(self) -> None:
        Recorder.closed.append(self.name)


def stage(name: str, fmt: str, batch: int, call_rows: int = 0, **kwargs: Any) -> Stage:
    return Stage(name, Recorder, {"name": name, **kwargs}, replace(PREPROCESS_POOL, batch_size=batch), (), (),
                 batch_format=fmt, call_rows=call_rows)


def test_stages_get_their_rows_per_call_and_format_and_are_closed_however_the_run_ends() -> None:
    Recorder.calls.clear()
    Recorder.closed.clear()
    plan = Plan(("prompt",), (stage("prep", "pyarrow", 100), stage("gen", "numpy", 2, call_rows=4),
                              stage("write", "numpy", 3)))
    blocks = [pa.table({"prompt": [f"p{i}" for i in range(10)]})]
    out = list(execute(plan, blocks))
    assert [t.num_rows for t in out] == [3, 1, 3, 1, 2] and out[0].column_names == ["prompt", "status"]
    assert [r for t in out for r in t.column("prompt").to_pylist()] == [f"p{i}" for i in range(10)]
    assert Recorder.calls == [("prep", 10, "Table"), ("gen", 4, "dict"), ("write", 3, "dict"), ("write", 1, "dict"),
                              ("gen", 4, "dict"), ("write", 3, "dict"), ("write", 1, "dict"), ("gen", 2, "dict"),
                              ("write", 2, "dict")]
    assert Recorder.closed == ["prep", "gen", "write"]
    Recorder.closed.clear()
    broken = Plan(("prompt",), (stage("prep", "pyarrow", 100), stage("gen", "numpy", 4, fail_on="p5")))
    with pytest.raises(StageFailed, match=r"^stage gen \(Recorder\) failed on a batch: RuntimeError: gen broke$"):
        list(execute(broken, blocks))
    assert Recorder.closed == ["prep", "gen"]


def test_only_manifest_columns_leave_the_writer() -> None:
    """Pixels and pipeline-internal columns stay behind; an earlier run's `prior` comes along."""
    batch = {"status": np.array(["ok", "error"], dtype=object), "image": np.zeros((2, 4, 4, 3), np.uint8),
             "prior": np.array(["", "{}"], dtype=object), "error": np.array([None, "bad"], dtype=object),
             "bytes": np.array([3, 0]), "internal": np.array([1, 2])}
    table = manifest_table(batch)
    assert table.column_names == ["status", "prior", "error", "bytes"]
    assert table.column("error").to_pylist() == [None, "bad"]
