"""Progress from the first row: every stage before the writer counts the rows it finished on the run's board, so a
cascade's drafting and scoring show while no image has been written yet (the panel said `starting` for minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imagefleet.pipelines.progress import ProgressBoard, counted, read_board
from tests.unit.test_combinations import _job

CASCADE = {"mode": "cascade", "cascade": {"draft": "a", "escalate": "c", "escalate_fraction": 0.34}}


class Doubler:
    """A stage actor stand-in."""

    def __call__(self, batch: dict[str, list[int]]) -> dict[str, list[int]]:
        return {"x": batch["x"] * 2}


def test_a_counted_actor_keeps_its_name_and_output_and_counts_its_rows() -> None:
    board = ProgressBoard()
    cls = counted(Doubler, board, "generate:a")
    assert cls.__name__ == "Doubler" and issubclass(cls, Doubler)  # Ray names the operator after it
    assert cls()({"x": [1, 2, 3]}) == {"x": [1, 2, 3, 1, 2, 3]}
    assert cls()({"x": [4]}) == {"x": [4, 4]}
    assert board.snapshot()["stages"] == {"generate:a": 8.0}
    counted(Doubler, None, "s")()({"x": [1]})  # no board: nothing to post, nothing fails


def _cascade_run(tmp_path: Path, executor: str) -> tuple[dict[str, float], Any]:
    """A cascade deciding over the whole run; returns the stage counts at the writer's first post, and the end."""
    from imagefleet.actors.stores import open_store
    from imagefleet.jobs import api
    from imagefleet.jobs.executors import executor_for
    from imagefleet.pipelines.commit import Lease

    raw = _job(tmp_path, "cascade")
    raw["routing"] = CASCADE
    raw["cluster"]["executor"] = executor
    cfg = api.load(raw)
    checked = api._check(cfg)
    run = executor_for(executor, cfg, checked.stores, checked.source, checked.plan)
    board = run.board("lines")
    at_first_write: dict[str, float] = {}
    if isinstance(board, ProgressBoard):
        add = board.add

        def first(counts: dict[str, dict[str, float]]) -> None:
            if not at_first_write:
                at_first_write.update(board.snapshot()["stages"])
            add(counts)
        board.add = first  # type: ignore[method-assign]
    objects = open_store(cfg.output.uri, checked.stores.output)
    with Lease(objects, "r1", 60.0) as lease:
        run.commit(objects, lease, checked.total, board)
    end = read_board(board, checked.total)
    assert end is not None
    return at_first_write, end


def test_in_process_a_cascades_drafts_and_scores_show_before_any_image_is_written(tmp_path: Path) -> None:
    at_first_write, end = _cascade_run(tmp_path, "in_process")
    # 3 rows drafted and scored, and the escalation decided over all of them, before the writer's first batch
    assert at_first_write["preprocess"] == 3 and at_first_write["generate:a"] == 3 and at_first_write["score"] == 3
    assert end.done == 3 and end.stages["escalate"] == 3 and end.stages["generate:c"] == 3
    assert end.stages["score#2"] == 3  # the heavy images' scoring: its own pool, its own count
    assert "write" not in end.stages  # the writer's rows are the `done` counts, by generator
    # one actor per stage in process, each loaded: (loading, ready)
    assert end.actors == dict.fromkeys(("preprocess", "generate:a", "score", "escalate", "generate:c", "score#2",
                                        "keep better", "write"), (0, 1))


@pytest.mark.slow
def test_on_ray_every_stage_pool_counts_its_rows(tmp_path: Path, ray_cluster: None) -> None:
    """The counting class travels to Ray's workers by value: the board gets every pool's rows."""
    _, end = _cascade_run(tmp_path, "ray")
    assert end.done == 3
    names = ("preprocess", "generate:a", "score", "escalate", "generate:c", "score#2", "keep better")
    assert {k: end.stages.get(k) for k in names} == dict.fromkeys(names, 3)
    # every pool's actors said they loaded (the writer's too), none is still loading
    assert set(end.actors) == {*names, "write"}
    assert all(loading == 0 and ready >= 1 for loading, ready in end.actors.values()), end.actors


def test_the_display_shows_stage_rows_instead_of_starting_while_no_image_is_written() -> None:
    import io
    import time

    from rich.console import Console

    from imagefleet.jobs.progress import ProgressDisplay
    from imagefleet.pipelines.progress import Snapshot

    for mode in ("lines", "bar"):
        display = ProgressDisplay(None, 96, io.StringIO(), mode)
        display.last = Snapshot(at=time.time(), total=96)
        assert "starting" in display.line()  # nothing has reached any stage yet
        display.last = Snapshot(at=time.time(), total=96, stages={"preprocess": 96, "generate:draft": 40, "score": 32})
        line = display.line()
        assert "starting" not in line and "0/96 images written" in line
        assert "stages: preprocess 96 rows, generate:draft 40 rows, score 32 rows" in line
        console = Console(file=io.StringIO(), width=160)
        console.print(display.panel())
        shown = console.file.getvalue()  # type: ignore[attr-defined]
        assert "starting" not in shown and "generate:draft 40" in shown
        done = Snapshot(at=time.time(), total=96, by_generator={"draft": {"done": 96, "new": 96}},
                        stages={"preprocess": 96, "generate:draft": 96, "score": 96})
        display.last = done
        assert "stages:" not in display.line()  # every image written: the stages say nothing more


@pytest.mark.slow
def test_a_captured_cascade_run_says_what_its_stages_did_before_its_first_image(tmp_path: Path) -> None:
    """`imagefleet run` off a terminal: a cascade deciding over the whole run writes no image until every draft is
    made and scored (~3 s of drafting here), and its first progress line says so instead of `starting`."""
    import os
    import subprocess

    from tests.helpers import CLI, REPO, sleep_job, write_config, write_prompts

    src = write_prompts(tmp_path / "p.parquet", {"prompt": [f"p{i}{'!' if i % 2 else ''}" for i in range(24)]})
    raw = sleep_job(src, str(tmp_path / "out"), latency_s=1.0)  # each draft call holds its batch for 1 s
    raw["generators"]["heavy"] = {**raw["generators"]["sleepy"], "base_latency_s": 0.0}
    raw["scorer"] = {"backend": "rule", "marker": "!"}
    raw["routing"] = {"mode": "cascade", "cascade": {"draft": "sleepy", "escalate": "heavy",
                                                     "escalate_fraction": 0.25}}
    raw["cluster"]["temp_dir"] = f"/tmp/ifray/s{os.getpid()}"
    done = subprocess.run([*CLI, "run", str(write_config(tmp_path / "job.yaml", raw)), "--progress", "lines"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("imagefleet: ")]
    working = [ln for ln in lines if "0/24 images written; stages:" in ln and "preprocess 24 rows" in ln]
    assert working and "(1 ready" in working[0], lines
    assert not any("starting" in ln for ln in lines[lines.index(working[0]):]), lines
    assert "24/24 images (100%)" in lines[-1] and "escalated 6 (25%)" in lines[-1], lines


class Broken:
    """A stage actor whose model doesn't load."""

    def __init__(self, fail: bool) -> None:
        if fail:
            raise RuntimeError("no weights")

    def __call__(self, batch: dict[str, list[int]]) -> dict[str, list[int]]:
        return batch


def test_a_pools_actors_show_loading_then_ready_and_a_failed_load_is_not_ready() -> None:
    board = ProgressBoard()
    seen: list[tuple[int, int]] = []

    class Slow(Broken):
        def __init__(self, fail: bool) -> None:
            seen.append(board.snapshot()["actors"]["generate:a"])  # while the model loads
            super().__init__(fail)

    cls = counted(Slow, board, "generate:a")
    cls(False)
    with pytest.raises(RuntimeError, match="no weights"):
        cls(True)
    writer = counted(Broken, board, "write", rows=False)
    writer(False)({"x": [1]})
    snap = board.snapshot()
    assert seen == [(1, 0), (1, 1)]  # loading; then one ready and the next loading
    assert snap["actors"] == {"generate:a": (0, 1), "write": (0, 1)}
    assert "write" not in snap["stages"]  # the writer's rows are counted by generator, not here


def test_the_display_names_models_loading_before_any_row_moves() -> None:
    import io
    import time

    from imagefleet.jobs.progress import ProgressDisplay
    from imagefleet.pipelines.progress import Snapshot

    display = ProgressDisplay(None, 96, io.StringIO(), "lines")
    display.last = Snapshot(at=time.time(), total=96, actors={"preprocess": (0, 1), "generate:heavy": (2, 0)})
    line = display.line()
    assert "starting" not in line
    assert "0/96 images written; stages: preprocess (1 ready), generate:heavy (0 ready, 2 loading)" in line


def test_the_display_lists_pools_in_the_plans_order_whatever_reported_first() -> None:
    import io
    import time

    from imagefleet.jobs.progress import ProgressDisplay
    from imagefleet.pipelines.pools import PREPROCESS_POOL
    from imagefleet.pipelines.progress import Snapshot

    pools = dict.fromkeys(("preprocess", "generate:draft", "score", "write"), PREPROCESS_POOL)
    display = ProgressDisplay(None, 8, io.StringIO(), "lines", pools=pools)
    display.last = Snapshot(at=time.time(), total=8, stages={"score": 2, "generate:draft": 4, "preprocess": 8},
                            actors={"write": (0, 1), "generate:draft": (0, 2), "preprocess": (0, 1)})
    assert display.stages_text() == ("preprocess 8 rows (1 ready), generate:draft 4 rows (2 ready), score 2 rows, "
                                     "write (1 ready)")
