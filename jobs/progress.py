"""What a run shows while it works, and where everything else goes.

`RunOutput` sends everything the process writes during a run (Ray's operator tables, its C++ warnings, actors'
logs and model-loading bars streamed to the driver) to the run's log file, and hands back a stream to the real
terminal. `ProgressDisplay` polls the run's progress board (pipelines/progress.py) and shows images done of the
total per generator, the run's throughput (`pipelines.units.THROUGHPUT_MEANS`, the figure the summary and the
report give), ETA, errors and refusals, spend against the budget and escalations: a live panel (rich) on a
terminal, a plain line every `every_s` seconds elsewhere (CI, Ray Jobs logs, Airflow). Ray Data's warning that the
cluster can't run a stage is said there too, once (jobs/ray_notices.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from imagefleet.jobs.ray_notices import explain_starved, starved_notice
from imagefleet.jobs.runtime import open_log
from imagefleet.pipelines.manifest import RunSummary
from imagefleet.pipelines.pools import Pool
from imagefleet.pipelines.progress import Snapshot
from imagefleet.pipelines.units import throughput, throughput_text

MODES = ("auto", "bar", "lines", "off")
EVERY_S = 10.0
"""Seconds between plain progress lines (the live panel refreshes twice a second)."""
WINDOW_S = 20.0
"""The ETA follows the pace over this trailing window (the current pace, not the run's throughput)."""


@contextlib.contextmanager
def run_output(log_path: Path, quiet: bool) -> Iterator[TextIO]:
    """While the block runs, stdout and stderr (Python and file descriptors 1 and 2, so C++ and Ray's threads
    too) go to `log_path`; yields a stream to where stdout went before. Nothing is redirected when not `quiet`."""
    if not quiet:
        yield sys.stdout
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log = open_log(log_path)
    saved = _save_fds()
    terminal = sys.stdout
    if saved and _fd_of(sys.stdout) == 1:  # a real stdout: keep a copy of it for the display
        terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    old_out, old_err = sys.stdout, sys.stderr
    try:
        if saved:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        sys.stdout, sys.stderr = log, log
        yield terminal
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        log.flush()
        if saved:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        if terminal is not old_out:
            terminal.close()
        # logging handlers made during the run (Ray Data configures its logger on first use) captured the log
        # file as their stream; it is about to close, so they write where stderr goes again (a notebook that runs
        # imagefleet and then Ray Data would otherwise get "I/O operation on closed file" for every log line)
        _repoint_handlers(log, old_err)
        log.close()


def _repoint_handlers(old: TextIO, new: TextIO) -> None:
    """Every logging.StreamHandler writing to `old` writes to `new` instead."""
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


def _save_fds() -> tuple[int, int] | None:
    try:
        return os.dup(1), os.dup(2)
    except OSError:  # no descriptors 1/2 (some embedded interpreters): Python-level redirection only
        return None


def _fd_of(stream: TextIO) -> int:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # notebooks, captured streams
        return -1


def pick_mode(mode: str, stream: TextIO) -> str:
    """`auto` → the live panel on a terminal, plain lines anywhere else."""
    if mode != "auto":
        return mode
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


class Pace:
    """Rows per second over a trailing window (for the ETA)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, at: float, count: float) -> float:
        if count == 0:  # the pace starts with the first image, not with Ray's start-up
            self.samples.clear()
        self.samples.append((at, count))
        while len(self.samples) > 2 and at - self.samples[1][0] >= WINDOW_S:
            self.samples.popleft()
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 1 or usd == 0 else f"${usd:.4f}"


class ProgressDisplay:
    """Shows a run's progress while the block runs (a thread polls the board; the run never waits on it)."""

    def __init__(self, read: Callable[[], Snapshot | None] | None, total: int, stream: TextIO, mode: str = "auto",
                 budget_usd: float = 0.0, log_path: str = "", every_s: float = EVERY_S,
                 pools: dict[str, Pool] | None = None) -> None:
        """`read` returns the counts now (`pipelines.progress.read_board`); None: no display. `pools`: the run's
        actor pools on Ray, named when Ray Data warns that the cluster can't run a stage (None: no Ray)."""
        self.read, self.total, self.stream = read, total, stream
        self.mode = pick_mode(mode, stream) if read is not None else "off"
        self.budget_usd, self.log_path, self.every_s = budget_usd, log_path, every_s
        self.started = time.time()
        self.pace = Pace()
        self.eta_rate = 0.0
        self.settled: tuple[int, float] | None = None
        """(new images, wall s) of the committed run (`settle`): the final line gives the summary's figure."""
        self.last: Snapshot | None = None
        self.pools = pools
        self._notice: contextlib.ExitStack | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.mode == "off":
            return self
        if self.mode == "bar":
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live(self.panel(), console=console, refresh_per_second=4, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        if self.pools is not None:  # Ray's own line goes to the run's log; this one to the terminal
            self._notice = contextlib.ExitStack()
            self._notice.enter_context(starved_notice(self.note, explain_starved(self.pools)))
        self._thread = threading.Thread(target=self._loop, name="imagefleet-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._notice is not None:
            self._notice.close()
        try:
            self._finish(exc[0] is None)
        except Exception:  # noqa: BLE001 - a display that fails at the end never changes how the run ended
            self.mode = "off"

    def settle(self, summary: RunSummary) -> None:
        """The run committed: the final line gives its throughput as the summary does (the committed counts and
        wall time), which the live figure was approaching."""
        self.settled = (summary.num_written, summary.wall_s)

    def note(self, text: str) -> None:
        """One line for the user while the run works (above the live panel, or between the plain lines)."""
        if self.mode == "off":
            return
        if self._live is not None:
            try:
                self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
            except (OSError, ValueError):
                self.mode = "off"
            return
        self._say(text)

    def _finish(self, ok: bool) -> None:
        if self.mode == "off":
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.refresh()  # the final counts (the board has every batch once the write returned)
        if self._live is not None:
            self._live.stop()
        elif ok and self.last is not None:
            self._say(self.line())

    # polling

    def _loop(self) -> None:
        next_line = self.started + self.every_s
        first_said = False
        while not self._stop.wait(0.5):
            self.refresh()
            if self._live is not None:
                continue
            now = time.time()
            first = not first_said and self.last is not None and (self.last.done > 0 or bool(self.last.stages))
            if first or now >= next_line:
                self._say(self.line())
                first_said = first_said or first
                next_line = now + self.every_s

    def refresh(self) -> None:
        snap = self.read() if self.read is not None else None
        if snap is None:
            return
        self.last = snap
        # the ETA follows all finished rows at the recent pace (a resumed run skips through cached ones)
        self.eta_rate = self.pace.add(snap.at, float(snap.done))
        if self._live is not None:
            self._live.update(self.panel())

    def _say(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # the terminal went away; the run goes on
            self.mode = "off"

    # rendering

    def wall_s(self) -> float:
        """The run's wall time so far (the committed run's once settled)."""
        return self.settled[1] if self.settled else time.time() - self.started

    def rate_text(self) -> str:
        """The run's throughput as the summary and the report give it (images made so far / wall time so far)."""
        s = self.last
        new = self.settled[0] if self.settled else (s.sum("new") if s is not None else 0.0)
        return throughput_text(new, self.wall_s())

    def eta(self) -> str:
        s, rate = self.last, self.eta_rate
        if s is None or s.done == 0:
            return "–"
        if s.done >= self.total:
            return "0:00:00"
        return clock((self.total - s.done) / rate) if rate > 0 else "–"

    def tail(self) -> list[str]:
        """Errors, refusals, spend and escalations so far (what a plain line ends with)."""
        s = self.last
        assert s is not None
        parts = [f"errors {int(s.sum('error'))}", f"refused {int(s.sum('refused'))}"]
        if s.sum("skipped"):
            parts.append(f"skipped (budget) {int(s.sum('skipped'))}")
        if s.sum("present"):
            parts.append(f"already present {int(s.sum('present'))}")
        spend = money(s.sum("cost_usd"))
        parts.append(f"spent {spend} of {money(self.budget_usd)}" if self.budget_usd else f"spent {spend}")
        if s.sum("escalated"):
            parts.append(f"escalated {int(s.sum('escalated'))} ({s.sum('escalated') / max(s.done, 1):.0%})")
        if s.sum("predicted"):
            parts.append(f"straight to heavy {int(s.sum('predicted'))} ({s.sum('predicted') / max(s.done, 1):.0%})")
        return parts

    def stages_text(self) -> str:
        """Each pool's rows finished before the writer and its actors
        (`preprocess 96 rows (1 ready), generate:draft 40 rows (1 ready, 1 loading), write (2 ready)`): the work
        under way and the models loading while images are not yet written ('' before any)."""
        s = self.last
        if s is None or not (s.stages or s.actors):
            return ""
        shown = []
        for name in dict.fromkeys([*(self.pools or {}), *s.actors, *s.stages]):  # in the plan's order
            if name not in s.actors and name not in s.stages:
                continue
            text = f"{name} {int(s.stages[name])} rows" if name in s.stages else name
            loading, ready = s.actors.get(name, (0, 0))
            if loading or ready:
                text += f" ({ready} ready, {loading} loading)" if loading else f" ({ready} ready)"
            shown.append(text)
        return ", ".join(shown)

    def line(self) -> str:
        """One plain progress line."""
        s = self.last
        elapsed = clock(time.time() - self.started)
        stages = self.stages_text()
        if s is None or s.done == 0:
            if stages:  # drafting, scoring, deciding: not "starting" while work runs
                return f"imagefleet: {elapsed} 0/{self.total} images written; stages: {stages}"
            return f"imagefleet: {elapsed} starting (Ray, actor pools, models); 0/{self.total} images"
        head = (f"imagefleet: {elapsed} {s.done}/{self.total} images ({s.done / max(self.total, 1):.0%}), "
                f"{self.rate_text()}, ETA {self.eta()}")
        gens = ""
        if len(s.by_generator) > 1:
            wall = self.wall_s()
            gens = " [" + ", ".join(f"{g} {int(c['done'])} at {throughput(c.get('new', 0.0), wall):.2f} img/s"
                                    for g, c in sorted(s.by_generator.items())) + "]"
        through = f"; stages: {stages}" if stages and s.done < self.total else ""
        return head + gens + "; " + ", ".join(self.tail()) + through

    def panel(self) -> Any:
        """The live panel: an overall bar, a row per generator, spend and escalations, where the log is."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.last
        done = s.done if s is not None else 0
        head = Table.grid(padding=(0, 1))
        head.add_row(Text("imagefleet", style="bold"),
                     ProgressBar(total=max(self.total, 1), completed=done, width=24),
                     Text(f"{done}/{self.total} · {self.rate_text()} · ETA {self.eta()} · "
                          f"{clock(time.time() - self.started)}"))
        parts: list[Any] = [head]
        stages = self.stages_text()
        if (s is None or done == 0) and stages:
            parts.append(Text(f"  stages: {stages}", style="dim"))
        elif s is None or done == 0:
            parts.append(Text("  starting: Ray, actor pools, models ...", style="dim"))
        else:
            table = Table(box=None, padding=(0, 1), show_edge=False)
            for title in ("generator", "done", "new", "present", "errors", "refused", "skipped", "img/s", "spent"):
                table.add_column(title, justify="left" if title == "generator" else "right")
            for name, c in sorted(s.by_generator.items()):
                table.add_row(name, *(str(int(c.get(k, 0))) for k in ("done", "new", "present", "error",
                                                                       "refused", "skipped")),
                              f"{throughput(c.get('new', 0.0), self.wall_s()):.2f}", money(c.get("cost_usd", 0.0)))
            parts += [table, Text("  " + " · ".join(self.tail()[2:]), style="dim")]
            if stages and done < self.total:
                parts.append(Text(f"  stages: {stages}", style="dim"))
        if self.log_path:
            parts.append(Text(f"  Ray's output: {self.log_path}", style="dim"))
        return Group(*parts)
