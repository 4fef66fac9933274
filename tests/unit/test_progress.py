"""Live progress: the counts a manifest batch adds, the board, the display in both modes, the run's one throughput
figure, Ray Data's starvation warning said once on the terminal, and where Ray's output goes while a run works (the
run's log file, never the user's terminal)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from imagefleet.actors.manifest_schema import FLAT_SCHEMA, typed
from imagefleet.jobs.progress import Pace, ProgressDisplay, clock, pick_mode
from imagefleet.jobs.run_text import summary_text
from imagefleet.pipelines.manifest import RunSummary
from imagefleet.pipelines.progress import ProgressBoard, Snapshot, post_written, tally
from imagefleet.pipelines.schema import MANIFEST
from imagefleet.pipelines.units import throughput, throughput_text

REPO = Path(__file__).resolve().parents[2]


def manifest_rows(rows: list[dict[str, object]]) -> pa.Table:
    full = [{**{f.name: None for f in MANIFEST}, **r} for r in rows]
    return typed(pa.Table.from_pylist(full, schema=FLAT_SCHEMA))


def test_tally_counts_by_generator_and_charges_only_new_images() -> None:
    table = manifest_rows([
        {"generator": "draft", "status": "ok", "already_present": False, "cost_usd": 0.01, "route": "draft"},
        {"generator": "draft", "status": "ok", "already_present": True, "cost_usd": 0.01, "route": "draft"},
        {"generator": "heavy", "status": "ok", "already_present": False, "cost_usd": 0.2, "route": "escalated"},
        {"generator": "heavy", "status": "error", "already_present": False, "cost_usd": 0.0},
        {"generator": "heavy", "status": "refused", "already_present": False, "cost_usd": 0.05},
        {"generator": "heavy", "status": "skipped", "already_present": None, "cost_usd": None},
        # escalated, the heavy image scored below the draft: the row kept its draft (and counts as escalated)
        {"generator": "draft", "status": "ok", "already_present": False, "cost_usd": 0.21,
         "route": "escalated_kept_draft"},
        # predictive routing sent it straight to the heavy generator (no draft, not escalated)
        {"generator": "heavy", "status": "ok", "already_present": False, "cost_usd": 0.2, "route": "predicted_heavy"},
    ])
    counts = tally(table)
    assert counts["draft"] == {"done": 3, "new": 2, "present": 1, "error": 0, "refused": 0, "skipped": 0,
                               "escalated": 1, "predicted": 0, "cost_usd": pytest.approx(0.22)}
    heavy = counts["heavy"]
    assert (heavy["done"], heavy["new"], heavy["error"], heavy["refused"], heavy["skipped"], heavy["escalated"],
            heavy["predicted"]) == (5, 2, 1, 1, 1, 1, 1)
    assert heavy["cost_usd"] == pytest.approx(0.45)  # a refusal the provider billed is spend too
    assert tally(manifest_rows([])) == {}


def test_the_writer_posts_each_finished_batch_to_the_board() -> None:
    """The image writer's output (numpy columns, no `route` without a cascade) is tallied in its own process and
    posted; a board that fails to take it never fails the batch."""
    import numpy as np

    from imagefleet.actors.image_writer import ImageWriter
    from imagefleet.configs.storage import StoreSpec
    from imagefleet.configs.writer import ImageWriterConfig

    class Board:
        def __init__(self, fail: bool = False) -> None:
            self.posted: list[dict[str, dict[str, float]]] = []
            self.add = self
            self.fail = fail

        def remote(self, counts: dict[str, dict[str, float]]) -> None:
            if self.fail:
                raise ConnectionError("board gone")
            self.posted.append(counts)

    batch = {"status": np.array(["ok", "error", "ok"], dtype=object), "already_present": np.array([False, False, True]),
             "cost_usd": np.array([0.5, 0.0, 0.5]), "generator": np.array(["g", "g", "h"], dtype=object)}
    board = Board()
    post_written(board, batch)
    assert board.posted == [{"g": {"done": 2, "new": 1, "present": 0, "error": 1, "refused": 0, "skipped": 0,
                                   "escalated": 0, "predicted": 0, "cost_usd": 0.5},
                             "h": {"done": 1, "new": 0, "present": 1, "error": 0, "refused": 0, "skipped": 0,
                                   "escalated": 0, "predicted": 0, "cost_usd": 0.0}}]
    post_written(Board(fail=True), batch)  # lost, not raised
    # the writer calls it with every batch it finishes (cached rows only: nothing to encode or upload)
    seen: list[int] = []
    writer = ImageWriter(ImageWriterConfig(uri="/tmp/unused", format="png", quality=90, png_compress_level=1,
                                           num_upload_threads=1, store=StoreSpec(kind="local")),
                         on_batch=lambda out: seen.append(len(out["status"])))
    n = 2
    writer({"image": np.array([b"", b""], dtype=object), "image_mime": np.array(["", ""], dtype=object),
            "image_key": np.array(["a" * 40, "b" * 40], dtype=object), "width": np.full(n, 8),
            "height": np.full(n, 8), "status": np.array(["cached"] * n, dtype=object),
            "prior": np.array(['{"sha256":"x","bytes":1}', '{"sha256":"y","bytes":1}'], dtype=object),
            "error": np.array(["", ""], dtype=object)})
    assert seen == [2]


def test_board_accumulates_batches() -> None:
    board = ProgressBoard()
    board.add({"g": {"done": 2.0, "new": 2.0}})
    board.add({"g": {"done": 3.0, "error": 1.0}, "h": {"done": 1.0}})
    snap = board.snapshot()
    assert snap["counts"]["g"]["done"] == 5 and snap["counts"]["g"]["error"] == 1 and snap["counts"]["h"]["done"] == 1
    assert snap["first_at"] > 0


def test_pace_follows_the_recent_window_and_starts_with_the_first_image() -> None:
    pace = Pace()
    assert pace.add(0.0, 0) == 0.0
    assert pace.add(10.0, 0) == 0.0  # start-up time doesn't dilute the rate
    assert pace.add(11.0, 5) == pytest.approx(5.0)  # measured from the last moment without images
    assert pace.add(12.0, 10) == pytest.approx(5.0)
    for t in range(13, 60):
        rate = pace.add(float(t), 10 + (t - 12) * 2)
    assert rate == pytest.approx(2.0)  # the recent pace, not the average since the start


class Script:
    """A reader that returns the next snapshot each time it's asked (the last one forever)."""

    def __init__(self, snaps: list[Snapshot | None]) -> None:
        self.snaps = snaps

    def __call__(self) -> Snapshot | None:
        return self.snaps.pop(0) if len(self.snaps) > 1 else self.snaps[0]


def snap(total: int, **by_gen: dict[str, float]) -> Snapshot:
    return Snapshot(at=time.time(), total=total, by_generator=by_gen, first_at=time.time())


def test_plain_lines_say_done_rate_eta_errors_spend_and_escalations() -> None:
    out = io.StringIO()
    steps = [None, snap(8), snap(8, draft={"done": 3, "new": 3, "cost_usd": 0.03}),
             snap(8, draft={"done": 6, "new": 5, "error": 1, "cost_usd": 0.05},
                  heavy={"done": 2, "new": 2, "escalated": 2, "refused": 0, "cost_usd": 0.4})]
    with ProgressDisplay(Script(steps), 8, out, "lines", budget_usd=10.0, every_s=0.05):
        time.sleep(2.2)
    lines = out.getvalue().splitlines()
    assert lines and all(ln.startswith("imagefleet: ") for ln in lines)
    final = lines[-1]
    assert "8/8 images (100%)" in final and "ETA 0:00:00" in final
    assert "errors 1" in final and "refused 0" in final and "spent $0.4500 of $10.00" in final
    assert "escalated 2 (25%)" in final and "draft 6 at" in final and "heavy 2 at" in final


def test_no_images_yet_says_it_is_starting() -> None:
    out = io.StringIO()
    with ProgressDisplay(Script([snap(4)]), 4, out, "lines", every_s=0.05):
        time.sleep(0.7)
    assert "starting" in out.getvalue() and "0/4 images" in out.getvalue()


def test_live_panel_renders_a_row_per_generator() -> None:
    out = io.StringIO()
    reader = Script([snap(10, a={"done": 4, "new": 4, "cost_usd": 1.5}, b={"done": 1, "new": 0, "present": 1})])
    with ProgressDisplay(reader, 10, out, "bar", budget_usd=3.0, log_path="/tmp/x.log"):
        time.sleep(0.8)
    text = out.getvalue()
    assert "5/10" in text and "$1.50" in text and "of $3.00" in text and "/tmp/x.log" in text
    assert " a " in text and " b " in text


def test_off_and_mode_choice() -> None:
    out = io.StringIO()
    with ProgressDisplay(None, 3, out, "auto"):
        pass
    assert out.getvalue() == ""
    assert pick_mode("auto", io.StringIO()) == "lines" and pick_mode("bar", io.StringIO()) == "bar"
    assert clock(3725) == "1:02:05"


def test_a_board_that_never_answers_leaves_the_display_at_starting() -> None:
    out = io.StringIO()
    with ProgressDisplay(lambda: None, 5, out, "lines", every_s=0.05):
        time.sleep(0.3)
    assert out.getvalue() == ""  # nothing known: no line at exit either


def test_run_output_sends_everything_to_the_log_and_keeps_the_terminal(tmp_path: Path) -> None:
    """Python prints, raw writes to descriptors 1 and 2 (C++), and child processes all land in the log."""
    log = tmp_path / "run.log"
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from imagefleet.jobs.progress import run_output
        print("before")
        with run_output(Path({str(log)!r}), quiet=True) as terminal:
            print("python stdout")
            sys.stderr.write("python stderr\\n")
            os.write(1, b"fd one\\n")
            os.write(2, b"fd two\\n")
            os.system("echo child process")
            terminal.write("progress line\\n")
        print("after")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["before", "progress line", "after"]
    assert done.stderr == ""
    kept = log.read_text()
    for text in ("python stdout", "python stderr", "fd one", "fd two", "child process"):
        assert text in kept


def test_run_output_not_quiet_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imagefleet.jobs.progress import run_output

    with run_output(tmp_path / "x.log", quiet=False) as terminal:
        print("shown")
        assert terminal is sys.stdout
    assert "shown" in capsys.readouterr().out and not (tmp_path / "x.log").exists()


def test_run_output_restores_after_an_exception(tmp_path: Path) -> None:
    from imagefleet.jobs.progress import run_output

    before = sys.stdout
    with pytest.raises(RuntimeError), run_output(tmp_path / "x.log", quiet=True):
        raise RuntimeError("boom")
    assert sys.stdout is before


def test_api_refuses_an_unknown_progress_mode(tmp_path: Path) -> None:
    from imagefleet.jobs.api import ConfigInvalid, run

    with pytest.raises(ConfigInvalid, match="progress='fancy'"):
        run(tmp_path / "missing.yaml", progress="fancy")


def test_the_log_folder_and_file_refuse_planted_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ids are guessable: another local user must not be able to point a run's log at a file of theirs."""
    import tempfile

    from imagefleet.actors.storage import StorageError
    from imagefleet.jobs.runtime import open_log, run_log

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f"imagefleet-logs-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="not a folder owned by this user"):
        run_log("nightly")
    (tmp_path / f"imagefleet-logs-{os.getuid()}").unlink()
    log = run_log("nightly")
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    log.symlink_to(victim)
    with pytest.raises(OSError):
        open_log(log)
    assert victim.read_text() == "keep"


def test_a_logging_handler_made_during_a_run_writes_to_stderr_after_it(tmp_path: Path) -> None:
    """Ray Data configures its logger on first use, inside a run, so its handler holds the run's log file; after
    the run (a notebook going on to use Ray Data) it must not write to the closed file."""
    import logging

    from imagefleet.jobs.progress import run_output

    logger = logging.getLogger("imagefleet-test-late-handler")
    with run_output(tmp_path / "run.log", quiet=True):
        handler = logging.StreamHandler()  # takes sys.stderr as it is now: the log
        logger.addHandler(handler)
        logger.warning("inside")
    try:
        assert handler.stream is sys.stderr
        logger.warning("after")  # would print "--- Logging error --- I/O operation on closed file"
    finally:
        logger.removeHandler(handler)
    assert "inside" in (tmp_path / "run.log").read_text()


def summary_of(new: int, present: int, wall_s: float) -> RunSummary:
    return RunSummary(run_id="r", num_rows=new + present, num_ok=new + present, num_error=0, num_refused=0,
                      num_skipped=0, num_already_present=present, num_written=new, bytes_written=0, cost_usd=0.0,
                      wall_s=wall_s, images_per_s=round(throughput(new, wall_s), 3), manifest_uri="", images_uri="",
                      errors_sample=[])


def test_the_panel_rate_is_the_runs_throughput_and_ends_on_the_summarys() -> None:
    """One definition: new images / run wall time (already present ones are ready, not throughput). Live it is
    measured so far; once the run committed the last line gives the summary's own figure, named the same way."""
    out = io.StringIO()
    steps = [snap(10, g={"done": 4, "new": 2, "present": 2}), snap(10, g={"done": 10, "new": 6, "present": 4})]
    with ProgressDisplay(Script(steps), 10, out, "lines", every_s=0.05) as display:
        time.sleep(1.2)  # two polls: the board has reached its last counts
        live = display.rate_text()
        elapsed = time.time() - display.started
        display.settle(summary_of(6, 4, 7.5))
    assert live.endswith(" img/s (new images / run wall time)")
    assert float(live.split()[0]) == pytest.approx(6 / elapsed, rel=0.2)  # made so far / wall time so far
    final = out.getvalue().splitlines()[-1]
    assert "10/10 images (100%), 0.80 img/s (new images / run wall time), ETA 0:00:00" in final, final
    assert "already present 4" in final
    assert throughput_text(6, 7.5) in summary_text(summary_of(6, 4, 7.5), "run.json", "report.html")


RAY_STARVED = ("Cluster resources are not enough to run any task from TaskPoolMapOperator[ReadPromptTable]. The job "
               "may hang forever unless the cluster scales up.")


def test_ray_datas_starvation_warning_reaches_the_terminal_once_saying_what_to_change() -> None:
    """Ray Data logs it into the run's log file only; the display says it once, on its own line, with the pools
    that ask for more than the cluster has."""
    import logging

    from imagefleet.jobs.ray_notices import STARVED_LOGGER, starved_line, starved_notice
    from imagefleet.pipelines.pools import Pool

    pools = {"sdxl": Pool(min_size=1, max_size=4, initial_size=1, num_cpus=1, batch_size=4, num_gpus=1),
             "writer": Pool(min_size=1, max_size=2, initial_size=1, num_cpus=1, batch_size=8)}
    line = starved_line(RAY_STARVED, pools, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 3.0, "GPU": 0.0})
    assert line.startswith("imagefleet: warning: Ray Data has no resources to run any task of "
                           "TaskPoolMapOperator[ReadPromptTable]")
    assert "the pools ask for 4 GPU at their max_size (sdxl 4 x 1) but the cluster has 2" in line
    assert "CPU at their max_size" not in line  # 4 + 2 + 1 for tasks fit 8
    assert "lower the pools' max_size / num_cpus / num_gpus, or give the cluster more" in line
    busy = starved_line(RAY_STARVED, pools, {"CPU": 16.0, "GPU": 8.0}, {"CPU": 0.0, "GPU": 1.0})
    assert "in use now: 16 of 16 CPU, 7 of 8 GPU" in busy  # enough in all: something else holds them

    out = io.StringIO()
    with ProgressDisplay(Script([snap(4)]), 4, out, "lines", every_s=60) as display, \
            starved_notice(display.note, lambda message: starved_line(message, pools, {"GPU": 2.0}, {})):
        ray_logger = logging.getLogger(STARVED_LOGGER)
        ray_logger.warning(RAY_STARVED)
        ray_logger.warning(RAY_STARVED)  # Ray logs it once per execution; a second one is not said again
        ray_logger.warning("something else")
    said = [ln for ln in out.getvalue().splitlines() if "warning" in ln]
    assert len(said) == 1 and "sdxl 4 x 1" in said[0]
    assert not [h for h in logging.getLogger(STARVED_LOGGER).handlers if type(h).__name__ == "StarvedNotice"]


def test_the_live_panel_prints_the_warning_above_itself() -> None:
    out = io.StringIO()
    with ProgressDisplay(Script([snap(4)]), 4, out, "bar") as display:
        display.note("imagefleet: warning: a line")
    assert out.getvalue().count("imagefleet: warning: a line") == 1


def test_rows_sent_straight_to_heavy_are_counted_apart_from_escalations() -> None:
    display = ProgressDisplay(None, 10, io.StringIO())
    display.last = snap(10, draft={"done": 6, "new": 6}, heavy={"done": 4, "new": 4, "escalated": 1, "predicted": 3})
    tail = display.tail()
    assert "escalated 1 (10%)" in tail and "straight to heavy 3 (30%)" in tail
