"""Driver-side plumbing for a run: environment, store resolution, isolated Ray start/stop, reporting."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from actors.storage import ObjectStore, StorageError, resolve_store_spec
from actors.stores import open_store
from configs.generator_base import MASK_TASKS, STRENGTH_TASKS
from configs.job import JobConfig
from configs.storage import StoreSpec
from pipelines.manifest import RunSummary
from pipelines.plan import Plan, Stores
from pipelines.pools import Pool, missing_on_local, reserved_cpus, unplaceable
from pipelines.text_to_image import SourceInfo, failure_line

logger = logging.getLogger(__name__)

# Ray on loopback only, no usage stats (see shared/ENVIRONMENT.md); set before ray is imported.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "NO_PROXY": "127.0.0.1,localhost",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


VERBOSE = False
"""--verbose: full tracebacks on stderr too (set once per command by prepare_environment)."""
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Ray's Unix socket paths live under the temp dir: they must stay under 107 bytes
MAX_TEMP_DIR_CHARS = 40


def prepare_environment(verbose: bool = False) -> None:
    """Loopback-only Ray settings, and how loud the run is: tracebacks and Ray's progress tables only with
    `verbose` (they always go to the log file of a failure)."""
    global VERBOSE
    VERBOSE = verbose
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if verbose:
        logging.getLogger().setLevel(logging.INFO)


def run_id_arg(value: str) -> str:
    """argparse type for --run-id: a name, never a path (it names staged parts and manifest files)."""
    if not RUN_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid run id: use 1-100 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit)")
    return value


def log_folder() -> Path:
    """This user's log folder in the temp dir (0700, refused when another user owns it: run ids are guessable)."""
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"imagefleet-logs-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid():
        raise StorageError(f"{folder} is not a folder owned by this user; remove it or set TMPDIR elsewhere")
    return folder


def open_log(path: Path) -> Any:
    """Append to a log file without following a symlink planted at its name (owner-only)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")


def keep_log(objects: ObjectStore, log: Path, run_id: str) -> str:
    """Copy the run's log next to its outputs (`logs/<run_id>.log`): on a cluster the driver's temp dir is gone
    with its pod. The stored URI, or '' when it can't be stored (the local file stays)."""
    from actors.layout import LOGS_DIR

    try:
        objects.put(f"{LOGS_DIR}/{run_id}.log", log.read_bytes(), "text/plain")
        return objects.uri_of(f"{LOGS_DIR}/{run_id}.log")
    except Exception as exc:  # noqa: BLE001 - a log that can't be copied never changes how the run ended
        logger.warning("run log not copied to the output: %s", exc)
        return ""


def run_log(run_id: str) -> Path:
    """The run's log file: everything Ray and the actors print during the run, and any failure's traceback."""
    return log_folder() / f"{run_id}.log"


def record_failure(what: str, exc: BaseException, path: Path | None = None) -> str:
    """Append the full traceback of a failure to `path` (default: a new log file; shown on stderr only with
    --verbose); the file's path."""
    import traceback

    path = path or log_folder() / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.log"
    text = "".join(traceback.format_exception(exc))
    with open_log(path) as fh:
        fh.write(f"\n{what} failed\n{text}")
    if VERBOSE:
        print(text, file=sys.stderr)
    return str(path)


def report(cfg: JobConfig, stores: Stores, write: Any) -> str:
    """Write the run report; a report that can't be written never fails a committed run (one line instead)."""
    try:
        return str(write(cfg.output.uri, stores.output))
    except Exception as exc:  # noqa: BLE001 - the manifest is committed; `imagefleet report` can redo this
        return f"not written ({failure_line(exc)}; details: {record_failure('report', exc)})"


def config_path(arg: str) -> str:
    """`env:VAR` → a temp file holding that variable's YAML (how `imagefleet submit` ships a config)."""
    if not arg.startswith("env:"):
        return arg
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="imagefleet-")
    with os.fdopen(fd, "w") as fh:
        fh.write(os.environ.get(arg[4:], ""))
    return path


def resolve_stores(cfg: JobConfig, online: bool = False) -> Stores:
    """Read secrets from the environment / secret files (the only place that does).

    `online` (serving) reads no prompt table and writes no outputs, so their credentials aren't asked for.
    """
    if cfg.scorer is not None and not online:  # a scorer that can't load would fail the run after drafts were paid
        from actors import SCORERS

        problem = SCORERS[cfg.scorer.backend].check_model(cfg.scorer)
        if problem:
            raise StorageError(problem)
    needs = {name: g.needs() for name, g in cfg.generators.items()}
    for name, n in needs.items():
        if n.model_path and not Path(n.model_path).expanduser().is_dir():
            raise StorageError(f"generators.{name}.model: local model folder {n.model_path} does not exist; give a "
                               f"folder with model_index.json, a hub id (org/name) or an s3:// folder")
    models = {name: resolve_store_spec(n.model_uri or "s3://adapters", n.model_s3) for name, n in needs.items()
              if n.model_uri or n.s3_adapters}
    unused = StoreSpec(kind="local")
    source = unused if online else resolve_store_spec(cfg.source.uri, cfg.source.s3)
    return Stores(
        source=source,
        inputs=input_store(cfg, source) if cfg.source.reads_inputs() and not online else source,
        output=unused if online else resolve_store_spec(cfg.output.uri, cfg.output.s3),
        models=models,
        api_keys=resolve_api_keys(cfg),
        adapters=resolve_adapters(cfg, models),
    )


def input_store(cfg: JobConfig, source: StoreSpec) -> StoreSpec:
    """The connection for rows' s3:// input images: the prompt table's when it is on S3, else one from
    `source.s3` and the environment if credentials are there (without them, an s3:// input is that row's error)."""
    if source.kind == "s3":
        return source
    try:
        return resolve_store_spec("s3://inputs", cfg.source.s3)
    except StorageError:
        return source


def resolve_adapters(cfg: JobConfig, models: dict[str, StoreSpec]) -> dict[str, dict[str, str]]:
    """Every generator's LoRA adapters by name → the hash of its weights (read once here: it is part of image
    keys); StorageError naming an adapter that can't be found."""
    from actors.adapters import AdapterError, adapter_sha256

    out: dict[str, dict[str, str]] = {}
    for name, g in cfg.generators.items():
        for a in g.adapters():
            try:
                digest = adapter_sha256(a, models.get(name, StoreSpec(kind="local")), "/tmp/imagefleet-models")
            except AdapterError as exc:
                raise StorageError(f"generators.{name}.loras: {exc}") from None
            out.setdefault(name, {})[a.name] = digest
    return out


def resolve_api_keys(cfg: JobConfig) -> dict[str, SecretStr]:
    """Hosted generators' keys from their secret file or environment variable (never from the YAML)."""
    keys: dict[str, SecretStr] = {}
    for name, g in cfg.generators.items():
        n = g.needs()
        if not n.api_key:
            continue
        if n.api_key_file:
            try:
                value = Path(n.api_key_file).read_text().strip()
            except OSError as exc:
                raise StorageError(f"generators.{name}.api_key_file {n.api_key_file}: {exc.strerror}") from None
        else:
            value = os.environ.get(n.api_key_env, "").strip()
        if not value:
            raise StorageError(f"generator {name!r} ({g.backend}) needs an API key: set {n.api_key_env} "
                               f"or generators.{name}.api_key_file")
        keys[name] = SecretStr(value)
    return keys


def preflight_output(cfg: JobConfig, stores: Stores) -> None:
    """Fail before any GPU work if the output can't be written (or a private Ray could not start)."""
    if cfg.cluster.address == "local":
        check_temp_dir(cfg.cluster.temp_dir)
    open_store(cfg.output.uri, stores.output).check_writable()


def start_ray(cfg: JobConfig) -> bool:
    """Connect to or start Ray; returns whether this call started it (and so must shut it down).

    A `local` cluster is private: its own temp dir, loopback only, no dashboard. A Ray already initialised
    in this process (a notebook, a test session, a pipeline step) is reused as is.
    """
    import ray

    if ray.is_initialized():
        return False
    c = cfg.cluster
    if c.address != "local":
        ray.init(address=c.address, log_to_driver=True)
        return True
    kwargs: dict[str, Any] = {
        "address": "local",
        "_temp_dir": os.path.join(c.temp_dir, uuid.uuid4().hex[:8]),
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "log_to_driver": True,
        "runtime_env": {"env_vars": {k: v for k, v in RAY_ENV.items() if k not in ("RAY_USAGE_STATS_ENABLED",)}},
        # no idle workers started ahead of need: on a small machine they compete with the actors' imports for
        # the first minute (a one-prompt job's first image came 4 s later with them)
        "_system_config": {"enable_worker_prestart": False, "prestart_worker_first_driver": False},
    }
    if c.num_cpus:
        kwargs["num_cpus"] = c.num_cpus
    if c.num_gpus:
        kwargs["num_gpus"] = c.num_gpus
    if c.object_store_memory_mb:
        kwargs["object_store_memory"] = c.object_store_memory_mb * 1024 * 1024
    ray.init(**kwargs)
    return True


def check_temp_dir(temp_dir: str) -> None:
    """A local Ray's temp dir must be short (socket paths) and writable, or ray.init fails with a traceback."""
    if len(temp_dir) > MAX_TEMP_DIR_CHARS:
        raise StorageError(f"cluster.temp_dir {temp_dir!r} is {len(temp_dir)} characters; Ray's socket paths under it "
                           f"must stay under 107 bytes: use at most {MAX_TEMP_DIR_CHARS}, e.g. /tmp/ifray")
    try:
        os.makedirs(temp_dir, exist_ok=True)
        probe = Path(temp_dir) / f".probe-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"cluster.temp_dir {temp_dir!r} is not writable ({exc.strerror}); "
                           f"point it at a writable folder") from None


def check_resources(cfg: JobConfig, pools: dict[str, Pool], spare_cpu: bool = True) -> None:
    """Fail fast where Ray would wait forever: a pool no node can host, or pools that leave no CPU for Ray
    Data's own read/repartition/write tasks (`spare_cpu`; serving runs none). A local cluster is checked at
    once; on a real cluster each pool must be placeable within `cluster.startup_timeout_s` (an autoscaler may
    add nodes meanwhile)."""
    import ray

    if cfg.cluster.address not in ("local", ""):
        problem = unplaceable(pools, cfg.cluster.startup_timeout_s)
        if problem:
            raise StorageError(problem)
        return
    have = ray.cluster_resources()
    problem = missing_on_local(pools, have)
    if problem:
        hint = "set cluster.num_gpus (fake GPUs on a CPU box) or the pool's num_gpus: 0" if "GPU" in problem else (
            "remove pool.accelerator_type for a local run, or run on a cluster that has it")
        raise StorageError(f"{problem}; {hint}")
    cpus, reserved = have.get("CPU", 0.0), reserved_cpus(pools)
    if spare_cpu and cpus - reserved < 1:
        raise StorageError(
            f"the actor pools can reserve {reserved:g} of this local Ray's {cpus:g} CPUs, leaving less than the 1 "
            f"CPU that read/repartition/write tasks need (the run would stall); raise cluster.num_cpus or lower "
            f"the pools' num_cpus / max_size"
        )


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("imagefleet", "ray", "torch", "diffusers", "transformers", "pyarrow", "boto3"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_record(cfg: JobConfig, summary: RunSummary, source: SourceInfo, executor: str = "") -> dict[str, Any]:
    """run.json content: the config used (no secrets: it only names env vars), versions, counts, timing, and where
    the stages ran (`ray` or `in_process`)."""
    return {
        "run_id": summary.run_id,
        "executor": executor,
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
        "source_files": len(source.files),
        "source_rows": source.num_rows,
        "summary": summary.to_dict(),
    }


def plan_text(cfg: JobConfig, source: SourceInfo, plan: Plan, executor: tuple[str, str] = ("", "")) -> str:
    """What a run would do (printed by --dry-run and at the start of a run); `executor`: where its stages run and
    why (`pipelines.in_process.choose_executor`)."""
    from actors.layout import image_pattern

    lines = [f"imagefleet plan for {cfg.name!r}",
             f"  source : {cfg.source.uri} ({len(source.files)} file(s), {source.num_rows} rows)",
             f"  output : {cfg.output.uri}/{image_pattern(cfg.output.format)}  +  manifest/  +  run.json",
             *[f"           {name}'s images: {fmt}" for name, fmt in odd_formats(cfg).items()],
             f"  routing: {cfg.routing.mode} (default {cfg.default_generator})",
             *input_lines(cfg),
             "  stages :", *plan.describe(),
             *([f"  runs   : {EXECUTOR_WORDS.get(executor[0], executor[0])} ({executor[1]})"] if executor[0] else []),
             f"  cost estimate: {cost_estimate(cfg, source.num_images or source.num_rows)}"]
    for name, gen in cfg.generators.items():
        info = getattr(gen, "info", lambda: None)()
        if info is not None and info.retires:
            lines.append(f"  note   : {name} uses {gen.model}, which the provider shuts down on {info.retires}")
    return "\n".join(lines)


EXECUTOR_WORDS = {"ray": "on Ray, in the actor pools above", "in_process": "in this process, one copy of each stage"}


def input_lines(cfg: JobConfig) -> list[str]:
    """What rows are made from besides their prompt (input images, variants), and settings that have no effect."""
    src = cfg.source
    lines = []
    if src.reads_inputs():
        mask = f", masks from column {src.columns.of('mask')!r}" if src.task in MASK_TASKS else ""
        lines.append(f"  inputs : {src.task}: input images from column {src.columns.of('image')!r}{mask}")
        if src.task in STRENGTH_TASKS:
            ignored = [n for n in cfg.routing.used(list(cfg.generators)) if not cfg.generators[n].takes_strength()]
            if ignored:
                lines.append(f"  note   : strength has no effect on {', '.join(ignored)} (the API has no such setting)")
    if src.variants:
        lines.append(f"  variants: {', '.join(src.variants)} (each request rendered {len(src.variants)} times)")
    return lines


def stored_format(cfg: JobConfig, name: str) -> str:
    """What a generator's images are stored as: a hosted API's own format when its bytes are kept as sent
    ('' = the provider picks), else output.format."""
    sent = cfg.generators[name].sent_format()
    return cfg.output.format if sent is None or not cfg.output.keep_provider_bytes else sent


def odd_formats(cfg: JobConfig) -> dict[str, str]:
    """Generators whose images are not stored as output.format, and what they are stored as (for people)."""
    from actors.layout import image_ext

    out = {}
    for name in cfg.routing.used(list(cfg.generators)):
        fmt = stored_format(cfg, name)
        if fmt != cfg.output.format:
            out[name] = (f"<key>.{image_ext(fmt)} (stored as the API sends them)" if fmt else
                         "<key>.<png|jpg|webp> in the format the API sends (output.keep_provider_bytes)")
    return out


def cost_estimate(cfg: JobConfig, images: int) -> str:
    """Expected spend of `images` requested images from each generator's cost model and the routing mode."""
    per_image = {name: g.estimate_usd(int(cfg.source.reads_inputs())) for name, g in cfg.generators.items()}
    low, high = cfg.routing.cost_range(per_image, images)
    if cfg.limits.budget_usd:
        high = min(high, cfg.limits.budget_usd)
    text = f"${low:,.4f}" if abs(high - low) < 1e-12 else f"${low:,.4f} – ${high:,.4f}"
    budget = f" (budget ${cfg.limits.budget_usd:,.2f})" if cfg.limits.budget_usd else ""
    unpriced = [n for n in cfg.routing.used(list(cfg.generators)) if per_image[n] <= 0]
    hint = (f"; {', '.join(unpriced)} priced at $0: set cost.est_seconds_per_image with cost.usd_per_gpu_hour, "
            f"or cost.usd_per_image" if unpriced else "")
    each = ", ".join(f"{n} ${per_image[n]:.4f}" for n in cfg.routing.used(list(cfg.generators)))
    return f"{text} for {images} images{budget} (per image: {each}){hint}"


def export_webdataset(cfg: JobConfig, stores: Stores, summary: RunSummary, run_id: str) -> str:
    """WebDataset shards of the committed run when configured: the index URI, `failed: …`, or ''."""
    if not cfg.output.webdataset.enabled or summary.num_ok == 0:
        return ""
    from pipelines.webdataset import write_webdataset

    try:
        return write_webdataset(cfg.output, stores.output, summary.num_ok, run_id)
    except Exception as exc:  # noqa: BLE001 - the manifest is committed; the export can be redone by a rerun
        log = record_failure("webdataset export", exc)
        return f"failed: {failure_line(exc)} (rerun to retry: finished images are skipped; details: {log})"


def final_problem(cfg: JobConfig, summary: RunSummary, shards: str) -> str:
    """Why a committed run still exits non-zero ('' when it doesn't)."""
    failed = summary.num_error / max(summary.num_rows, 1)
    if failed > cfg.limits.max_error_fraction:
        return f"{failed:.1%} of images failed (limit {cfg.limits.max_error_fraction:.1%})"
    if shards.startswith("failed:"):
        return f"webdataset export {shards}"
    return ""


def summary_text(s: RunSummary, record_uri: str, report_uri: str, shards: str = "", log: str = "") -> str:
    """The one-screen end-of-run summary."""
    lines = [
        "",
        "=" * 72,
        f" imagefleet run {s.run_id}",
        f"   images requested : {s.num_rows}",
        f"   ok               : {s.num_ok}  ({s.num_written} written, {s.num_already_present} already present)",
        f"   errors           : {s.num_error}   refused: {s.num_refused}   skipped (budget): {s.num_skipped}",
        f"   wall time        : {s.wall_s:.1f} s   throughput: {s.images_per_s:.2f} new images/s",
        f"   bytes written    : {s.bytes_written / 1e6:.2f} MB   cost: ${s.cost_usd:.4f}",
        f"   images           : {s.images_uri}/",
        f"   manifest         : {s.manifest_uri}/",
        f"   run record       : {record_uri}",
        f"   report           : {report_uri}",
    ]
    if shards:
        lines.append(f"   webdataset       : {shards}")
    if log:
        lines.append(f"   log              : {log}")
    for msg in s.errors_sample:
        lines.append(f"   e.g. error       : {msg[:100]}")
    lines.append("=" * 72)
    return "\n".join(lines)
