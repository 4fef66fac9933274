"""The Python API (`imagefleet.run`): one run from a notebook, an Airflow/Dagster task or a Ray job.

`imagefleet run` (jobs/generate.py) is this same function plus argument parsing and exit codes, so the API and
the CLI give the same one-line messages. Errors are typed: `ConfigInvalid` (the YAML), `InputInvalid` (the prompt
table, storage, credentials, resources, an output another run holds), `RunFailed` (the run started and failed,
or committed with too many errors); each is an `ImagefleetError` whose `str` is the CLI's line.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs import runtime
from jobs.progress import MODES, ProgressDisplay, run_output

if TYPE_CHECKING:
    from configs.job import JobConfig
    from configs.storage import StoreSpec
    from pipelines.manifest import RunSummary


class ImagefleetError(Exception):
    """Base of the API's errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigInvalid(ImagefleetError):
    """The config is wrong (unknown key, bad value, contradiction): fix the YAML or the overrides."""

    exit_code = 2


class InputInvalid(ImagefleetError):
    """The inputs or surroundings are wrong before any work: prompt table, storage access, credentials, resources,
    or an output another run holds."""

    exit_code = 2


class RunFailed(ImagefleetError):
    """The run started and failed (nothing committed), or committed with more errors than allowed."""

    def __init__(self, message: str, run_id: str, log: str = "", result: RunResult | None = None) -> None:
        super().__init__(message)
        self.run_id, self.log, self.result = run_id, log, result


@dataclass(frozen=True)
class RunResult:
    """What a run made: counts and cost (`summary`), where things are, and the manifest to load."""

    run_id: str
    output_uri: str
    summary: RunSummary | None
    """None for a dry run."""
    record_uri: str = ""
    report_uri: str = ""
    shards: str = ""
    log: str = ""
    """The run's log file: what Ray and the actors printed, and a failure's traceback."""
    plan: str = ""
    """The plan text (what --dry-run prints)."""
    store: StoreSpec | None = None

    def manifest(self) -> Any:
        """The committed manifest as a `pyarrow.dataset.Dataset` (lazy; `.to_table()`, filters, columns)."""
        from pipelines.manifest import manifest_dataset

        assert self.store is not None
        return manifest_dataset(self.output_uri, self.store)

    def to_pandas(self) -> Any:
        """The whole manifest as a pandas DataFrame (small and medium runs)."""
        return self.manifest().to_table().to_pandas()

    def to_ray(self) -> Any:
        """The manifest as a Ray Dataset (large runs; needs Ray initialised or starts a local one)."""
        import ray.data

        parts = self.manifest()
        return ray.data.read_parquet(parts.files, filesystem=parts.filesystem)


def load(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str] = ()) -> JobConfig:
    """A JobConfig from a path (`env:VAR` too), a dict or a JobConfig, with `--set`-style overrides."""
    from configs import ConfigError, load_config
    from configs.job import JobConfig
    from configs.loader import apply_overrides, parse_config


    try:
        if isinstance(config, JobConfig):
            return parse_config(apply_overrides(config.model_dump(), list(overrides))) if overrides else config
        if isinstance(config, dict):
            return parse_config(apply_overrides(dict(config), list(overrides)))
        return load_config(runtime.config_path(str(config)), list(overrides))
    except ConfigError as exc:
        raise ConfigInvalid(str(exc)) from None


def run(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str] = (), *, dry_run: bool = False,
        retry_failed: bool = False, run_id: str | None = None, verbose: bool = False,
        echo: Callable[[str], None] | None = print, progress: str = "auto") -> RunResult:
    """Run one job (or check it with `dry_run`) and return what it made.

    Args:
        config: a YAML path, a dict shaped like the YAML, or a JobConfig.
        overrides: `key=value` strings, as `--set` takes them.
        dry_run: check config, inputs and output access and return the plan; nothing is generated.
        retry_failed: redo images that failed in an earlier run on this output.
        run_id: the run's id (default: time + random).
        verbose: Ray's progress tables, actors' output and full tracebacks on stderr (otherwise they go to the
            run's log file, `RunResult.log`).
        echo: where the plan and the end-of-run summary go (None = nowhere).
        progress: live progress on stdout while the run works: `bar` (a live panel), `lines` (a plain line every
            10 s), `off`, or `auto` (a panel on a terminal, lines elsewhere; off when `echo` is None).
    Raises:
        ConfigInvalid, InputInvalid (before any work), RunFailed (the run failed or broke max_error_fraction).
    """
    say = echo or (lambda _text: None)
    if progress not in MODES:
        raise ConfigInvalid(f"progress={progress!r}: use one of {', '.join(MODES)}")
    runtime.prepare_environment(verbose)
    if run_id is not None:
        try:
            run_id = runtime.run_id_arg(run_id)
        except argparse.ArgumentTypeError as exc:  # the CLI's message, typed like a config mistake
            raise ConfigInvalid(str(exc)) from None
    from actors.contract import ray_running
    from actors.storage import StorageError
    from actors.stores import open_store
    from pipelines.commit import Lease, collect_garbage
    from pipelines.in_process import IN_PROCESS, choose_executor, stream
    from pipelines.manifest import write_manifest, write_manifest_tables, write_run_json
    from pipelines.plan import PlanError
    from pipelines.progress import ProgressBoard, read_board, start_board, stop_board
    from pipelines.report import write_report
    from pipelines.text_to_image import InputError, build, expected_rows, failure_line, inspect_source, plan_run

    # 1 everything that can be wrong with the inputs is found here, before any GPU work
    cfg = load(config, [*overrides, *(["output.retry_failed=true"] if retry_failed else [])])
    try:
        stores = runtime.resolve_stores(cfg)
        source = inspect_source(cfg, stores)
        runtime.preflight_output(cfg, stores)
        plan = plan_run(cfg, stores, source)
        total = expected_rows(cfg, source)
        executor = choose_executor(cfg, plan, total, ray_running())
    except (InputError, StorageError, PlanError) as exc:
        raise InputInvalid(str(exc)) from None
    plan_text = runtime.plan_text(cfg, source, plan, executor)
    say(plan_text)
    if dry_run:
        return RunResult("", cfg.output.uri, None, plan=plan_text, store=stores.output)
    # 2 own the output (a second run on it is refused), then Ray, the graph and the commit; everything Ray
    # prints goes to the run's log (shown with verbose) while the progress display shows what's done
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if progress == "auto" and echo is None:
        progress = "off"
    in_process = executor[0] == IN_PROCESS
    log = runtime.run_log(run_id)
    objects = open_store(cfg.output.uri, stores.output)
    lease, started, board = Lease(objects, run_id, cfg.output.lease_ttl_s), False, None
    failed = ""
    with run_output(log, quiet=not verbose) as terminal:
        try:
            lease.acquire()
            collect_garbage(objects, staging=False)  # parts of a commit that died before its index write
            if not in_process:  # the stages run in actor pools on Ray (else here: pipelines/in_process.py)
                started = runtime.start_ray(cfg)
                runtime.check_resources(cfg, plan.pools)
            board = None if progress == "off" else ProgressBoard() if in_process else start_board()
            read = (lambda: read_board(board, total)) if board is not None else None
            shown = "lines" if verbose and progress in ("auto", "bar") else progress  # a panel garbled by Ray's
            with ProgressDisplay(read, total, terminal, shown, cfg.limits.budget_usd or 0.0,  # output: lines
                                 "" if verbose else str(log)):
                if in_process:
                    summary = write_manifest_tables(stream(cfg, stores, source, plan, board), objects, lease,
                                                    total)
                else:
                    summary = write_manifest(build(cfg, stores, source, plan, board), objects, lease, total)
            shards = runtime.export_webdataset(cfg, stores, summary, run_id)  # after the commit; never fails
            # 3 record and report
            record_uri = write_run_json(cfg.output.uri, stores.output,
                                        runtime.run_record(cfg, summary, source, executor[0]))
            report_uri = runtime.report(cfg, stores, write_report)
        except StorageError as exc:
            raise InputInvalid(str(exc)) from None
        except Exception as exc:  # a broken actor ends the run; one line, the rest in the log file
            runtime.record_failure(f"run {run_id}", exc, log)
            failed = f"run {run_id} failed, nothing committed: {failure_line(exc)}"
        finally:
            lease.release()
            stop_board(board)
            if started:
                import ray

                ray.shutdown()
    # the log also goes next to the outputs (a cluster driver's temp dir goes with its pod)
    kept = runtime.keep_log(objects, log, run_id) if failed or not verbose else ""
    if failed:
        raise RunFailed(f"{failed} (details: {log}{f'; copy: {kept}' if kept else ''})", run_id, str(log))
    result = RunResult(run_id, cfg.output.uri, summary, record_uri, report_uri, shards, str(log), plan_text,
                       stores.output)
    say(runtime.summary_text(summary, record_uri, report_uri, shards,
                             "" if verbose else f"{log}{f'  (copy: {kept})' if kept else ''}"))
    problem = runtime.final_problem(cfg, summary, shards)
    if problem:
        raise RunFailed(problem, run_id, result=result)
    return result
