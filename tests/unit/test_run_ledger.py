"""RunLedger without Ray: one batch's keys found in the resume index as `ResumeIndex.get` finds them (the row's
resume state made from the index rows it returns), pending ones reserved against the budget in order, and two
preprocessors sharing one ledger count one budget (what a pool does through the ledger actor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from imagefleet.actors.manifest_schema import PRIOR, prior_values
from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.actors.resume_index import READ, load_index
from imagefleet.actors.resume_scan import PartRows
from imagefleet.actors.run_ledger import PENDING, RunLedger, prior_state, resume_states, start_kwargs
from imagefleet.actors.stores import open_store
from imagefleet.configs.loader import parse_config
from imagefleet.configs.prep import ResumeConfig
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.plan import Stores, consumed_again, make_plan
from imagefleet.pipelines.slices import prep_config
from tests.helpers import sleep_job
from tests.unit.test_resume_index import K, row, setup


def resume(out: Path, retry_failed: bool = False) -> ResumeConfig:
    return ResumeConfig(output_uri=str(out), store=StoreSpec(kind="local"), skip_existing=True, image_format="png",
                        retry_failed=retry_failed)


def earlier_output(tmp: Path) -> Path:
    """ok (aaa), an error (bbb), ok but its image gone (ccc), an escalated draft eee whose final image is ddd."""
    heavy = row(K["ddd"], "ok", route="escalated", draft_image_key=K["eee"], generator="heavy", model="h@main",
                clip_score=0.9, width=64)
    setup(tmp, [[row(K["aaa"], "ok", clip_score=31.5), row(K["bbb"], "error"), row(K["ccc"], "ok")], [heavy]],
          objects=[K["aaa"], K["ddd"]])
    return tmp


def reader(out: Path) -> Any:
    return PartRows(str(out), StoreSpec(kind="local"), READ, 0.0).take


def index_parts(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in (out / "manifest").glob("*.parquet")]


@pytest.mark.parametrize("retry_failed", [False, True])
def test_each_key_is_settled_as_the_resume_index_finds_it(tmp_path: Path, retry_failed: bool) -> None:
    out = earlier_output(tmp_path)
    keys = [K["aaa"], K["bbb"], K["ccc"], K["eee"], "f" * 40, K["aaa"]]
    ledger = RunLedger(resume(out, retry_failed))
    answer = ledger.settle(keys, [0.0] * len(keys))
    # the ledger returns where the rows are (not the rows) for the keys an earlier run settled, nothing for the rest
    assert len(answer.locs) == len(answer.rows) and set(answer.rows) == ({0, 3, 5} | (set() if retry_failed else {1}))
    assert set(answer.parts.values()) <= {p for p in index_parts(out)}
    assert answer.redirected == {3} and not answer.adopted and not answer.skipped
    index = load_index(open_store(str(out), StoreSpec(kind="local")), "png")
    expected = []
    for key in keys:
        prior = index.get(key)
        expected.append(PENDING if prior is None or (prior.status != "ok" and retry_failed) else prior_state(prior))
    states = resume_states(answer, len(keys), 0.0, reader(out))
    assert states == expected
    assert [s["status"] for s in states] == ["cached", "pending" if retry_failed else "error", "pending", "cached",
                                             "pending", "cached"]
    assert states[3]["image_key"] == K["ddd"] and states[3]["generator"] == "heavy" and states[3]["width"] == 64


def test_pending_rows_are_reserved_against_the_budget_in_order(tmp_path: Path) -> None:
    out = earlier_output(tmp_path)
    ledger = RunLedger(resume(out), budget_usd=0.25)
    # a cached key costs nothing; 0.1 + 0.1 fit, the third 0.1 would pass 0.25, a cheaper 0.05 still fits
    first = ledger.settle([K["aaa"], "1" * 40, "2" * 40, "3" * 40, "4" * 40], [0.1, 0.1, 0.1, 0.1, 0.05])
    assert first.skipped == {3} and [s["status"] for s in resume_states(first, 5, 0.25, reader(out))] == [
        "cached", "pending", "pending", "skipped", "pending"]
    # the count goes on across calls (another preprocessor's batch): nothing more fits
    second = ledger.settle(["5" * 40, "6" * 40], [0.1, 0.01])
    assert second.skipped == {0, 1}
    skipped = resume_states(second, 2, 0.25, reader(out))[0]
    assert skipped["status"] == "skipped" and "budget_usd=0.25 reached" in skipped["error"]
    assert ledger.spent_usd == pytest.approx(0.25)


def test_preprocessors_sharing_a_ledger_count_one_budget(tmp_path: Path) -> None:
    raw = sleep_job("p", str(tmp_path / "out"))
    raw["generators"]["sleepy"]["cost"] = {"usd_per_image": 0.01}
    raw["limits"] = {"budget_usd": 0.05}
    prep = prep_config(parse_config(raw))
    ledger = RunLedger(**start_kwargs(prep))  # type: ignore[arg-type]
    pool = [PromptPreprocessor(prep, ledger=ledger) for _ in range(3)]
    statuses: list[str] = []
    for n in range(6):  # six batches of 3 prompts, round robin over the pool
        out = pool[n % 3](pa.table({"prompt": [f"p{n}-{i}" for i in range(3)]}))
        statuses += list(out["status"])
    assert statuses.count("pending") == 5 and statuses.count("skipped") == 13
    # alone, each would have made 5 of its own 6
    alone = PromptPreprocessor(prep)(pa.table({"prompt": [f"q{i}" for i in range(6)]}))
    assert list(alone["status"]).count("pending") == 5


def test_the_plan_shares_a_ledger_only_when_the_run_counts_something(tmp_path: Path) -> None:
    stores = Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local"))
    raw: dict[str, Any] = sleep_job("in.parquet", str(tmp_path / "out"))
    raw["output"]["skip_existing"] = False
    plan = make_plan(parse_config(raw), stores, ["prompt"], 10)
    assert plan.stages[0].name == "preprocess" and plan.stages[0].shared == {}
    raw["output"]["skip_existing"] = True
    prep_stage = make_plan(parse_config(raw), stores, ["prompt"], 10).stages[0]
    actor, kwargs = prep_stage.shared["ledger"]
    assert actor is RunLedger and kwargs["resume"].output_uri == str(tmp_path / "out")
    plan = make_plan(parse_config(raw), stores, ["prompt"], 10)
    assert "one shared RunLedger" in "\n".join(plan.describe())
    # a pool that grows: up to 4 actors, on a local Ray one per 8 CPUs (this one has 4: the pools leave Ray Data one)
    assert prep_stage.pool.max_size == 1 and prep_stage.pool.num_cpus == 0.25
    raw["cluster"].update(num_cpus=16)
    assert make_plan(parse_config(raw), stores, ["prompt"], 10).stages[0].pool.max_size == 2
    raw["cluster"] = {"address": "head:6379"}
    assert make_plan(parse_config(raw), stores, ["prompt"], 10).stages[0].pool.max_size == 4
    raw["cluster"]["max_preprocessors"] = 64  # a big cluster's rate: the pool grows as far as the user lets it
    assert make_plan(parse_config(raw), stores, ["prompt"], 10).stages[0].pool.max_size == 64
    # a lazy processor Dataset: one preprocessor with its own ledger, made anew by each consumption
    again = consumed_again(plan)
    assert again.stages[0].shared == {} and again.stages[0].pool.max_size == again.pools["preprocess"].max_size == 1
    assert again.stages[1:] == plan.stages[1:]


def test_a_stored_image_no_manifest_row_names_is_adopted_by_the_ledger(tmp_path: Path) -> None:
    """Unlisted adoption (the image's own record) goes through the ledger too, and beats an earlier error row."""
    from tests.unit.test_adoption import _xattrs_work, manifest_rows
    from tests.unit.test_provider_bytes import generate, pending, provider_png, writer

    if not _xattrs_work():
        pytest.skip("no user extended attributes on this file system")
    from imagefleet.actors.backend_io import Outcome

    out = generate([Outcome(encoded=provider_png(), mime="image/png", cost_usd=0.19, requests=2)], pending(),
                   usd_per_image=0.19)
    writer(tmp_path, fmt="webp")[0](out)  # the row never reaches a manifest: the driver died here
    key = str(out["image_key"][0])
    manifest_rows(tmp_path, [{"image_key": key, "status": "error", "sha256": "", "bytes": 0, "error": "timed out",
                              "generator": "gpt", "model": "gpt-image-2@api"}])
    config = resume(tmp_path).model_copy(update={"image_format": "webp"})
    answer = RunLedger(config, budget_usd=0.1).settle([key, "9" * 40], [0.19, 0.19])
    assert set(answer.adopted) == {0} and not answer.rows and answer.skipped == {1}  # 0.19 > the 0.1 budget
    state = resume_states(answer, 2, 0.1, reader(tmp_path))[0]
    assert state["status"] == "cached" and prior_values(state[PRIOR])["cost_usd"] == 0.19
