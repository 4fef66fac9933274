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

from imagefleet.jobs import preflight, run_text, runtime
from imagefleet.jobs.progress import MODES, ProgressDisplay, run_output

if TYPE_CHECKING:
    from imagefleet.actors.storage import ObjectStore
    from imagefleet.configs.job import JobConfig
    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.hf_export import ExportSummary
    from imagefleet.pipelines.manifest import RunSummary
    from imagefleet.pipelines.plan import Plan, Stores
    from imagefleet.pipelines.text_to_image import SourceInfo


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
        from imagefleet.actors.stores import open_store
        from imagefleet.pipelines.manifest import manifest_dataset

        assert self.store is not None
        return manifest_dataset(open_store(self.output_uri, self.store))

    def manifest_files(self) -> list[str]:
        """The committed manifest's part files (URIs; see `manifest_files`): read exactly these, never a glob."""
        from imagefleet.actors.stores import open_store
        from imagefleet.pipelines.manifest import manifest_files as files_of

        assert self.store is not None
        return files_of(open_store(self.output_uri, self.store))

    def to_pandas(self) -> Any:
        """The whole manifest as a pandas DataFrame (small and medium runs)."""
        return self.manifest().to_table().to_pandas()

    def to_ray(self) -> Any:
        """The manifest as a Ray Dataset (large runs; needs Ray initialised or starts a local one)."""
        import ray.data

        parts = self.manifest()
        return ray.data.read_parquet(parts.files, filesystem=parts.filesystem)


def version() -> str:
    """The installed package's version ('0+unknown' when run from a checkout that isn't installed)."""
    from importlib import metadata

    try:
        return metadata.version("imagefleet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def load(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str] = ()) -> JobConfig:
    """A JobConfig from a path (`env:VAR` too), a dict or a JobConfig, with `--set`-style overrides."""
    from imagefleet.configs import ConfigError
    from imagefleet.configs.job import JobConfig
    from imagefleet.configs.loader import apply_overrides, parse_config

    try:
        if isinstance(config, JobConfig):
            return parse_config(apply_overrides(config.model_dump(), list(overrides))) if overrides else config
        if isinstance(config, dict):
            return parse_config(apply_overrides(dict(config), list(overrides)))
        return runtime.load_config_arg(str(config), list(overrides))
    except ConfigError as exc:
        raise ConfigInvalid(str(exc)) from exc


@dataclass(frozen=True)
class _Checked:
    """What step 1 of a run found: connections, the source, the checked plan, where it runs and what it says."""

    stores: Stores
    source: SourceInfo
    plan: Plan
    total: int
    executor: tuple[str, str]
    plan_text: str


def _check(cfg: JobConfig, dry_run: bool = False) -> _Checked:
    """Stores, source, output access, plan and executor, each checked before any work (InputInvalid: one line);
    a dry run also checks the pools against the cluster the run would join (a run does once it has joined)."""
    from imagefleet.actors.contract import ray_running
    from imagefleet.actors.storage import StorageError
    from imagefleet.pipelines.in_process import IN_PROCESS, choose_executor
    from imagefleet.pipelines.plan import PlanError
    from imagefleet.pipelines.text_to_image import InputError, expected_rows, inspect_source, plan_run

    try:
        stores = preflight.resolve_stores(cfg)
        source = inspect_source(cfg, stores)
        preflight.preflight_output(cfg, stores)
        plan = plan_run(cfg, stores, source)
        total = expected_rows(cfg, source)
        executor = choose_executor(cfg, plan, total, ray_running())
        if executor[0] != IN_PROCESS:
            preflight.refuse_ray_client(cfg.cluster.address)
        if executor[0] != IN_PROCESS and cfg.cluster.address == "local" and not ray_running():
            # the private Ray this run would start: its pools must fit it (found now, not after Ray starts)
            problem = preflight.local_resource_problem(plan.pools, preflight.planned_local_resources(cfg))
            if problem:
                raise StorageError(problem)
        note = ""
        if dry_run and executor[0] != IN_PROCESS and cfg.cluster.address != "local" and not ray_running():
            note = preflight.check_joined_cluster(cfg, plan.pools)  # what the run finds once it has joined
    except (InputError, StorageError, PlanError) as exc:
        raise InputInvalid(str(exc)) from exc
    text = run_text.plan_text(cfg, source, plan, executor) + (f"\n  note   : {note}" if note else "")
    return _Checked(stores, source, plan, total, executor, text)


Done = tuple["RunSummary", str, str, str]
"""A committed run: its summary, run.json, report and WebDataset export (if any)."""


def _execute(cfg: JobConfig, checked: _Checked, run_id: str, progress: str, verbose: bool
             ) -> tuple[Done | None, str, Path, ObjectStore]:
    """Own the output, run the plan on its executor into the commit, record and report: (what it made, '' ) or
    (None, the one-line failure); the run's log and its output store either way."""
    from imagefleet.actors.storage import StorageError
    from imagefleet.actors.stores import open_store
    from imagefleet.jobs.executors import executor_for
    from imagefleet.pipelines.commit import Lease
    from imagefleet.pipelines.manifest import write_run_json
    from imagefleet.pipelines.progress import read_board, stop_board
    from imagefleet.pipelines.report import write_report
    from imagefleet.pipelines.text_to_image import failure_line

    stores, total = checked.stores, checked.total
    log = runtime.run_log(run_id)
    objects = open_store(cfg.output.uri, stores.output)
    lease, board, watch = Lease(objects, run_id, cfg.output.lease_ttl_s), None, None
    executor = executor_for(checked.executor[0], cfg, stores, checked.source, checked.plan)
    with run_output(log, quiet=not verbose) as terminal:
        try:
            lease.acquire()
            executor.start()
            watch = runtime.watch_cluster(cfg)  # a joined cluster that goes away ends the run with one line,
            executor.check()  # while it waits for the pools' nodes too
            board = executor.board(progress)
            read = (lambda: read_board(board, total)) if board is not None else None
            shown = "lines" if verbose and progress in ("auto", "bar") else progress  # a panel garbled by Ray's
            with ProgressDisplay(read, total, terminal, shown, cfg.limits.budget_usd or 0.0,  # output: lines
                                 "" if verbose else str(log),
                                 pools=checked.plan.pools if checked.executor[0] == "ray" else None) as display:
                summary = executor.commit(objects, lease, total, board)
                display.settle(summary)  # its last line gives the summary's throughput
            if watch:  # committed: nothing is interrupted from here on
                watch.stop()
            # after the commit point: what fails here is reported, never a failed run (`runtime.after_commit`)
            shards = runtime.export_webdataset(cfg, objects, summary, run_id)
            record_uri = runtime.after_commit("run.json", lambda: write_run_json(
                objects, run_text.run_record(cfg, summary, checked.source, checked.executor[0])))
            return (summary, record_uri, runtime.report(objects, write_report), shards), "", log, objects
        except StorageError as exc:
            raise InputInvalid(str(exc)) from exc
        except Exception as exc:  # a broken actor ends the run; one line, the rest in the log file
            lost = watch.stop() if watch else ""  # a lost cluster is the cause, whatever Ray raised meanwhile
            runtime.record_failure(f"run {run_id}", exc, log)
            return None, f"run {run_id} failed, nothing committed: {lost or failure_line(exc)}", log, objects
        finally:  # never raises: the run's outcome is decided
            if watch:
                watch.stop()
            lease.release()
            runtime.quietly("stopping the progress board", lambda: stop_board(board))
            runtime.quietly("stopping the executor", executor.stop)


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
    if progress not in MODES:
        raise ConfigInvalid(f"progress={progress!r}: use one of {', '.join(MODES)}")
    with runtime.environment(verbose):  # what a run sets in the process is undone after it (a notebook goes on)
        return _run(config, overrides, dry_run, retry_failed, run_id, verbose, echo, progress)


def _run(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str], dry_run: bool,
         retry_failed: bool, run_id: str | None, verbose: bool, echo: Callable[[str], None] | None,
         progress: str) -> RunResult:
    say = echo or (lambda _text: None)
    if run_id is not None:
        try:
            run_id = runtime.run_id_arg(run_id)
        except argparse.ArgumentTypeError as exc:  # the CLI's message, typed like a config mistake
            raise ConfigInvalid(str(exc)) from exc
    # 1 everything that can be wrong with the inputs is found here, before any GPU work
    cfg = load(config, [*overrides, *(["output.retry_failed=true"] if retry_failed else [])])
    checked = _check(cfg, dry_run)
    say(checked.plan_text)
    if dry_run:
        return RunResult("", cfg.output.uri, None, plan=checked.plan_text, store=checked.stores.output)
    # 2 own the output (a second run on it is refused), run the plan on its executor into the manifest commit;
    #   everything Ray prints goes to the run's log (shown with verbose) while the progress display shows what's
    #   done
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if progress == "auto" and echo is None:
        progress = "off"
    done, failed, log, objects = _execute(cfg, checked, run_id, progress, verbose)
    # 3 the log also goes next to the outputs (a cluster driver's temp dir goes with its pod); then the summary
    kept = runtime.keep_log(objects, log, run_id) if failed or not verbose else ""
    if failed or done is None:
        raise RunFailed(f"{failed} (details: {log}{f'; copy: {kept}' if kept else ''})", run_id, str(log))
    summary, record_uri, report_uri, shards = done
    result = RunResult(run_id, cfg.output.uri, summary, record_uri, report_uri, shards, str(log), checked.plan_text,
                       checked.stores.output)
    say(run_text.summary_text(summary, record_uri, report_uri, shards,
                              "" if verbose else f"{log}{f'  (copy: {kept})' if kept else ''}"))
    problem = run_text.final_problem(cfg, summary, shards)
    if problem:
        raise RunFailed(problem, run_id, result=result)
    return result


def manifest_files(output: str) -> list[str]:
    """The part files of the manifest committed at `output`, one URI each, in order: what `manifest/_manifest.json`
    lists. Any engine given this list reads the current manifest with its typed columns, also while another run
    is committing there (a glob of `manifest/*.parquet` then sees both runs' parts), e.g.
    `duckdb.read_parquet(files)`, `polars.read_parquet(files)`, `pyarrow.parquet.read_table(files)` (local; for
    s3:// give pyarrow the paths without `s3://` and its S3 filesystem).

    Args:
        output: a run's `output.uri` (local folder or `s3://bucket/prefix`; S3 credentials and endpoint from the
            AWS_* variables `imagefleet run` reads). Local parts come as absolute paths.

    Raises:
        InputInvalid: no committed manifest at `output`, or a store that can't be read.
    """
    from imagefleet.actors.storage import StorageError, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config
    from imagefleet.pipelines.manifest import manifest_files as files_of

    try:
        files = files_of(open_store(output, resolve_store_spec(output, S3Config())))
    except (StorageError, ValueError) as exc:  # ValueError: an s3:// URI without a bucket
        raise InputInvalid(str(exc)) from exc
    if not files:
        raise InputInvalid(f"no committed manifest at {output}: pass the output.uri of a finished run")
    return files


def export(output: str, dest: str, *, format: str = "hf-imagefolder") -> ExportSummary:
    """Export a finished run's output as a dataset others load without imagefleet: `hf-imagefolder` writes
    Hugging Face's ImageFolder layout (`DEST/train/<image_key>.<ext>` plus `DEST/train/metadata.parquet` with
    `file_name`, a `text` caption and the manifest's columns), which `datasets.load_dataset("imagefolder",
    data_dir=DEST)` reads. Only `ok` rows with an image are exported; a rerun into the same DEST copies only
    what is missing.

    Args:
        output: a run's `output.uri` (local folder or `s3://bucket/prefix`; S3 credentials and endpoint from the
            AWS_* variables `imagefleet run` reads).
        dest: where the dataset goes (local folder or `s3://bucket/prefix`): empty, or an earlier export of
            `output`.
        format: the dataset layout (`hf-imagefolder`).

    Returns:
        What was exported (`ExportSummary.line()` is the CLI's summary).

    Raises:
        ConfigInvalid: an unknown format. InputInvalid: no committed manifest at `output`, no `ok` image, a
            DEST holding other files, or a store that can't be read or written.
    """
    from imagefleet.actors.storage import StorageError, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config
    from imagefleet.pipelines.hf_export import FORMATS, ExportError, export_imagefolder

    if format not in FORMATS:
        raise ConfigInvalid(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    try:
        source = open_store(output, resolve_store_spec(output, S3Config()))
        target = open_store(dest, resolve_store_spec(dest, S3Config()))
    except (StorageError, ValueError) as exc:  # ValueError: an s3:// URI without a bucket
        raise InputInvalid(str(exc)) from exc
    try:
        return export_imagefolder(source, target)
    except (ExportError, StorageError) as exc:
        raise InputInvalid(str(exc)) from exc
