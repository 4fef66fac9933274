"""Driver-side plumbing for a run: environment, store resolution, isolated Ray start/stop, reporting."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imagefleet.actors.storage import ObjectStore, StorageError
from imagefleet.configs.job import JobConfig
from imagefleet.pipelines.manifest import RunSummary
from imagefleet.pipelines.text_to_image import failure_line

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


@contextlib.contextmanager
def environment(verbose: bool = False) -> Iterator[None]:
    """`prepare_environment` for one run, undone after it: the variables it set are removed again, `VERBOSE` and the
    root logger's level restored (a notebook or a pipeline step calling `imagefleet.run` keeps its own)."""
    global VERBOSE
    before = {key: os.environ.get(key) for key in RAY_ENV}
    verbose_before, level = VERBOSE, logging.getLogger().level
    prepare_environment(verbose)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        VERBOSE = verbose_before
        logging.getLogger().setLevel(level)


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
    from imagefleet.actors.layout import LOGS_DIR

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


def report(objects: ObjectStore, write: Any) -> str:
    """Write the run report; a report that can't be written never fails a committed run (one line instead)."""
    try:
        return str(write(objects))
    except Exception as exc:  # noqa: BLE001 - the manifest is committed; `imagefleet report` can redo this
        return f"not written ({failure_line(exc)}; details: {record_failure('report', exc)})"


def load_config_arg(arg: str, overrides: list[str]) -> JobConfig:
    """The config a command names: a YAML path, or `env:VAR` for YAML held in a variable (how `imagefleet submit`
    ships a config); read directly, no temp file. ConfigError for an unset variable."""
    from imagefleet.configs.loader import ConfigError, load_config, load_config_text

    if not arg.startswith("env:"):
        return load_config(arg, overrides)
    name = arg[4:]
    text = os.environ.get(name) if name else None
    if text is None:
        raise ConfigError(f"config {arg}: the environment variable {name or '(no name)'} is not set; set it to the "
                          f"config's YAML, or pass a YAML file")
    return load_config_text(text, arg, overrides)


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
        join_cluster(c.address, log_to_driver=True)
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


def cluster_endpoint(address: str) -> tuple[str, int]:
    """(host, port) a joined cluster answers on: the Ray client server for `ray://`, else its GCS (`auto`: the
    cluster Ray finds running on this node, RAY_ADDRESS first). StorageError when `auto` finds none."""
    from ray._private.services import canonicalize_bootstrap_address

    target = address[len("ray://"):] if address.startswith("ray://") else address
    try:
        if not address.startswith("ray://"):
            target = canonicalize_bootstrap_address(address) or ""
    except ConnectionError:
        raise StorageError(f"cluster.address {address}: no running Ray cluster found on this node (nor in "
                           f"RAY_ADDRESS); start one, name it, or use cluster.address: local") from None
    except ValueError:
        target = ""
    if address.startswith("ray://") and ":" not in target:
        target += ":10001"  # the Ray client server's default port
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise StorageError(f"cluster.address {address!r} is not host:port, ray://host:port, auto or local")
    return host.strip("[]"), int(port)


def reach_cluster(address: str, timeout_s: float = 5.0) -> str:
    """The address to join after checking something answers there within `timeout_s` (ray.init would retry for
    minutes): StorageError in one line when nothing does."""
    import socket

    host, port = cluster_endpoint(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise StorageError(f"no Ray cluster answers at {address} ({host}:{port}: "
                           f"{exc.strerror or f'no answer within {timeout_s:g} s'}); start it, or fix "
                           f"cluster.address") from exc
    return f"{host}:{port}" if address == "auto" else address


def join_cluster(address: str, **init_kwargs: Any) -> None:
    """`ray.init` on a running cluster; StorageError in one line when nothing answers there (`reach_cluster`) or it
    can't be joined (a missing auth token, another Ray version): the deepest cause, not Ray's wrapper."""
    import ray

    target = reach_cluster(address)
    try:
        ray.init(address=target, **init_kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever stops a driver from joining is this one line
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise StorageError(f"could not join the Ray cluster at {address}: {failure_line(cause)}") from exc


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 goes nowhere while the block runs (Ray's C++ retries print a line a second while a
    connection fails; the failure is said in one line after)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class ClusterLost(Exception):
    """Raised in a run's thread when the Ray cluster it joined stops answering (`ClusterWatch.lost` says how)."""


class ClusterWatch:
    """Watches a joined Ray cluster while a run works on it: a daemon thread probes where it answers
    (`cluster_endpoint`) every second. Ray's own reaction to a lost GCS is to end the driver process after
    `gcs_rpc_server_reconnect_timeout_s` (60 s) with exit 1 and nothing on stderr; once nothing has answered
    for half of that (a GCS restarted under fault tolerance may come back), the run's thread gets `ClusterLost`
    and `lost` says what happened, so the run ends with its one line while the process still can."""

    def __init__(self, address: str, endpoint: tuple[str, int]) -> None:
        self.address, self.endpoint, self.lost = address, endpoint, ""
        self._thread_id = threading.get_ident()
        self._lock, self._done = threading.Lock(), threading.Event()
        # Ray reads its settings from RAY_<name> variables too: the driver's core worker gives up after this
        reconnect_s = os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", "")  # noqa: SIM112
        self.grace_s = (float(reconnect_s) if re.fullmatch(r"\d+(\.\d+)?", reconnect_s) else 60.0) / 2
        threading.Thread(target=self._watch, name="imagefleet-cluster-watch", daemon=True).start()

    def _watch(self) -> None:
        import ctypes
        import socket

        since, reason = 0.0, ""
        while not self._done.wait(1.0):
            try:
                socket.create_connection(self.endpoint, timeout=2.0).close()
                since = 0.0
                continue
            except OSError as exc:
                since, reason = since or time.monotonic(), exc.strerror or "no answer"
            gone_s = time.monotonic() - since
            if gone_s < self.grace_s:
                continue
            with self._lock:
                if self._done.is_set():
                    return
                where = f"{self.endpoint[0]}:{self.endpoint[1]}"
                where = where if where == self.address else f"{self.address} ({where})"
                self.lost = (f"the Ray cluster at {where} went away ({reason} for {gone_s:.0f} s); rerun when "
                             f"it is back: images already stored are adopted")
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id),
                                                           ctypes.py_object(ClusterLost))
                return

    def stop(self) -> str:
        """Stop watching; what was lost ('' = nothing). Called from the run's thread."""
        import ctypes

        with self._lock:
            self._done.set()
        if self.lost:  # an injected ClusterLost that has not been raised yet must not fire later
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)
        return self.lost


def watch_cluster(cfg: JobConfig) -> ClusterWatch | None:
    """A `ClusterWatch` on the cluster this run joined (None for a private local one, or when Ray isn't up)."""
    import ray

    if cfg.cluster.address == "local" or not ray.is_initialized():
        return None
    address = cfg.cluster.address
    try:
        if address.startswith("ray://"):
            return ClusterWatch(address, cluster_endpoint(address))
        host, port = str(ray.get_runtime_context().gcs_address).rsplit(":", 1)
        return ClusterWatch(address, (host.strip("[]"), int(port)))
    except Exception as exc:  # noqa: BLE001 - a watch that can't start never fails a run (Ray's own exit remains)
        logger.warning("not watching the Ray cluster at %s: %s", address, exc)
        return None


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
                           f"point it at a writable folder") from exc


def export_webdataset(cfg: JobConfig, objects: ObjectStore, summary: RunSummary, run_id: str) -> str:
    """WebDataset shards of the committed run when configured: the index URI, `failed: …`, or ''."""
    if not cfg.output.webdataset.enabled or summary.num_ok == 0:
        return ""
    from imagefleet.pipelines.webdataset import write_webdataset

    try:
        return write_webdataset(cfg.output, objects, summary.num_ok, run_id)
    except Exception as exc:  # noqa: BLE001 - the manifest is committed; the export can be redone by a rerun
        log = record_failure("webdataset export", exc)
        return f"failed: {failure_line(exc)} (rerun to retry: finished images are skipped; details: {log})"


def after_commit(what: str, step: Callable[[], str]) -> str:
    """Run a step that follows the manifest commit (run.json): the run is committed, so a failure
    here (a store that fails past its retry budget) is logged and named in its place, never a failed run."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - after the commit point nothing fails the run
        logger.warning("committed; %s could not be written: %s", what, exc)
        return f"not written ({type(exc).__name__}; the manifest is committed)"


def quietly(what: str, step: Callable[[], object]) -> None:
    """A cleanup step in a `finally` block: it logs what goes wrong and never raises."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - cleanup; the run's outcome is decided
        logger.warning("%s failed: %s", what, exc)
