"""How the driver connects to Ray."""

from typing import Literal

from pydantic import Field

from imagefleet.configs.base import StrictModel


class ClusterConfig(StrictModel):
    """Ray connection. `address: local` starts a private, loopback-only Ray for this run."""

    executor: Literal["auto", "ray", "in_process"] = "auto"
    """Where the stages run. `ray`: autoscaled actor pools. `in_process`: every stage in this process, one copy
    each, no Ray (a small job's first image in seconds; one device, no parallelism). `auto`: in_process for a job
    of at most one generator batch on a private local cluster with no Ray running in the process, unless it
    exports WebDataset shards (a Ray Data job); else ray."""
    address: str = "local"
    """`local` (private cluster), `auto` (join the cluster of the node it runs on: a submitted job's) or
    `host:port` (a cluster's GCS). Not `ray://` (Ray Client can't run Ray Data: submit a Ray job instead)."""
    num_cpus: int = Field(default=0, ge=0)
    """CPUs for a local cluster; 0 = all cores."""
    num_gpus: int = Field(default=0, ge=0)
    """GPUs for a local cluster; 0 = detected. Set >0 on a CPU box to schedule with fake GPUs."""
    temp_dir: str = "/tmp/ifray"
    """Ray temp dir for a local cluster (kept short: socket paths must stay under 107 bytes)."""
    object_store_memory_mb: int = Field(default=0, ge=0)
    """Object store size for a local cluster; 0 = Ray's default."""
    pools_shrink: Literal["at_stage_end", "when_idle"] = "at_stage_end"
    """When an autoscaled pool gives actors back (Ray runs). `at_stage_end`: a pool keeps the actors it grew to
    until its stage has consumed all its input, so a bursty stage (the writer between whole-block generator calls,
    a cascade's heavy pool between escalations) doesn't shrink and regrow, paying a process start and a model
    load each time. `when_idle`: Ray Data's own rule, shrink whenever a pool is less than half busy (gives GPUs
    back sooner on a shared cluster)."""
    max_preprocessors: int = Field(default=4, ge=1, le=1024)
    """Preprocessor actors at most (a quarter CPU each; the pool grows from one under load; on a local Ray at
    most one per 8 of its CPUs). One makes ~43k rows/s on a first run, ~23k on a rerun that finds every row; they
    share the run's ledger (budget, resume index), so any number stays exact."""
    startup_timeout_s: float = Field(default=120.0, gt=0)
    """How long to wait for the generator pools to get their resources before failing."""
