"""Every stage reads and writes only the columns it declares (what `Plan.check` follows): each routing mode's
stages run in process over a small table, with every read and every added or changed column recorded."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from imagefleet.configs.loader import parse_config
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.in_process import execute
from imagefleet.pipelines.plan import Plan, Stage, Stores, make_plan
from tests.helpers import sleep_job

STORES = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))


class _Reads(dict):  # type: ignore[type-arg]
    """A batch that notes every column asked for (`batch[c]`, `c in batch`, `batch.get(c)`)."""

    def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self.seen = seen

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)


def _same(a: Any, b: Any) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            continue
        try:
            equal = x == y
            equal = bool(np.all(equal)) if isinstance(equal, np.ndarray) else bool(equal)
        except (TypeError, ValueError):
            equal = False
        if not equal:
            return False
    return True


def _recorded(plan: Plan, folder: Path) -> Plan:
    """The plan with every numpy stage's actor wrapped to record its reads and writes as JSON lines in `folder`
    (one file per actor process: the same record in process and in Ray's actor pools)."""
    import json
    import os

    def wrap(stage: Stage) -> Stage:
        base = stage.actor
        if stage.batch_format != "numpy":
            return stage

        def call(self: Any, batch: dict[str, Any]) -> Any:
            seen: set[str] = set()
            out = base.__call__(self, _Reads(batch, seen))
            wrote = {c for c in out if c not in batch or not _same(out[c], batch[c])}
            with open(Path(folder, f"{stage.name.replace(':', '_')}.{os.getpid()}.jsonl"), "a") as fh:
                fh.write(json.dumps({"stage": stage.name, "reads": sorted(seen), "writes": sorted(wrote)}) + "\n")
            return out

        return Stage(**{**stage.__dict__, "actor": type(base.__name__, (base,), {"__call__": call})})

    folder.mkdir(parents=True, exist_ok=True)
    return Plan(plan.source_columns, tuple(wrap(s) for s in plan.stages), plan.pools)


def recorded_columns(folder: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(reads, writes) per stage name, from `_recorded`'s files."""
    import json

    reads: dict[str, set[str]] = defaultdict(set)
    writes: dict[str, set[str]] = defaultdict(set)
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            reads[entry["stage"]] |= set(entry["reads"])
            writes[entry["stage"]] |= set(entry["writes"])
    return reads, writes


def routed_job(tmp_path: Path, routing: dict[str, Any]) -> Any:
    """Two sleep generators (`a`, `c`), a rule scorer and `routing`."""
    raw = sleep_job(tmp_path / "in.parquet", str(tmp_path / "out"))
    base = raw["generators"].pop("sleepy")
    raw["generators"] = {n: {**base, "model": f"m-{n}"} for n in ("a", "c")}
    raw.update(routing=routing, scorer={"backend": "rule"})
    return parse_config(raw)


def assert_as_declared(plan: Plan, reads: dict[str, set[str]], writes: dict[str, set[str]]) -> None:
    """Every numpy stage read and wrote only what it declares."""
    assert writes, "no stage ran"
    for stage in plan.stages:
        if stage.batch_format != "numpy":
            continue
        undeclared_reads = reads[stage.name] - set(stage.reads) - set(stage.optional_reads)
        assert not undeclared_reads, f"{stage.name} reads undeclared {sorted(undeclared_reads)}"
        undeclared_writes = writes[stage.name] - set(stage.writes)
        assert not undeclared_writes, f"{stage.name} writes undeclared {sorted(undeclared_writes)}"


ROUTINGS = {
    "cascade": {"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 2.0}},  # all escalate
    "best_of": {"mode": "best_of", "default": "a", "candidates": 3},
    "fanout": {"mode": "fanout", "fanout": ["a", "c"]},
}


@pytest.mark.parametrize("mode", list(ROUTINGS))
def test_stages_read_and_write_what_they_declare(tmp_path: Path, mode: str) -> None:
    routing = ROUTINGS[mode]
    plan = make_plan(routed_job(tmp_path, routing), STORES, ["prompt", "num_images"], 4)
    plan.check()
    table = pa.table({"prompt": ["a fox", "a crow", "an owl"], "num_images": [1, 2, 1]})
    rows = list(execute(_recorded(plan, tmp_path / "seen"), [table]))
    assert sum(t.num_rows for t in rows) == len(routing.get("fanout", ["x"])) * 4
    reads, writes = recorded_columns(tmp_path / "seen")
    assert_as_declared(plan, reads, writes)
    if mode == "best_of":
        assert {"candidate_images", "candidate_seeds"} <= writes["generate:a"]
    if mode == "cascade":
        assert "draft_image_uri" in writes["write"]


def test_a_cascade_scores_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second scorer scores only the heavy images: drafts that stay final keep their score (10 images
    requested, 2 escalated: 12 scored, not 20)."""
    from imagefleet.actors.clip_scorer import RuleScorer

    scored: list[str] = []
    rule = RuleScorer._score

    def counting(self: RuleScorer, images: list[Any], prompts: list[str]) -> list[float]:
        scored.extend(prompts)
        return rule(self, images, prompts)

    monkeypatch.setattr(RuleScorer, "_score", counting)
    raw = sleep_job(tmp_path / "in.parquet", str(tmp_path / "out"))
    base = raw["generators"].pop("sleepy")
    raw["generators"] = {n: {**base, "model": f"m-{n}"} for n in ("a", "c")}
    # the rule scorer gives prompts with its marker 1.0, others 0.0: the two without it escalate
    raw.update(routing={"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "threshold": 0.5}},
               scorer={"backend": "rule", "marker": "!"})
    plan = make_plan(parse_config(raw), STORES, ["prompt"], 10)
    prompts = [f"prompt {i}!" for i in range(8)] + ["plain one", "plain two"]
    rows = pa.concat_tables(execute(plan, [pa.table({"prompt": prompts})])).to_pylist()
    assert sorted(r["route"] for r in rows).count("escalated") == 2
    assert len(scored) == 12 and sorted(scored).count("plain one") == 2
    escalated = [r for r in rows if r["route"] == "escalated"]
    assert all(r["draft_score"] == 0.0 and r["clip_score"] == 0.0 for r in escalated)  # the heavy one's own score
