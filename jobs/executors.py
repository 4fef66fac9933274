"""Where a run's stages execute, behind one small interface: Ray's actor pools, or this process (one copy of each
stage, no Ray: pipelines/in_process.py). `imagefleet.run` starts one, runs the plan through it into the manifest
commit, and stops it, without knowing which it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from imagefleet.actors.storage import ObjectStore
    from imagefleet.configs.job import JobConfig
    from imagefleet.pipelines.commit import Lease
    from imagefleet.pipelines.manifest import RunSummary
    from imagefleet.pipelines.plan import Plan, Stores
    from imagefleet.pipelines.text_to_image import SourceInfo


class Executor(Protocol):
    """Runs one plan: `start` before the first row (and before the progress board) joins or starts where the
    stages run, `check` then waits until the pools can be placed (a lost cluster is watched for from between the
    two), `commit` streams every row through the stages into the manifest commit, `stop` always (after a failure
    too)."""

    def start(self) -> None: ...

    def check(self) -> None: ...

    def board(self, progress: str) -> Any: ...

    def commit(self, objects: ObjectStore, lease: Lease, total: int, board: Any) -> RunSummary: ...

    def stop(self) -> None: ...


@dataclass
class _Run:
    cfg: JobConfig
    stores: Stores
    source: SourceInfo
    plan: Plan


class InProcess(_Run):
    """The stages run here, one copy each (a job of one generator batch gains nothing from pools)."""

    def start(self) -> None:
        return None

    def check(self) -> None:
        return None

    def board(self, progress: str) -> Any:
        from imagefleet.pipelines.progress import ProgressBoard

        return None if progress == "off" else ProgressBoard()

    def commit(self, objects: ObjectStore, lease: Lease, total: int, board: Any) -> RunSummary:
        from imagefleet.pipelines.in_process import stream
        from imagefleet.pipelines.manifest import write_manifest_tables

        return write_manifest_tables(stream(self.cfg, self.stores, self.source, self.plan, board), objects, lease,
                                     total, self.source.pass_through_schema())

    def stop(self) -> None:
        return None


class OnRay(_Run):
    """The stages run in Ray Data actor pools: a private local Ray (stopped at the end) or the cluster's."""

    started = False

    def start(self) -> None:
        from imagefleet.jobs.runtime import start_ray

        self.started = start_ray(self.cfg)

    def check(self) -> None:
        from imagefleet.jobs.preflight import check_resources

        check_resources(self.cfg, self.plan.pools)

    def board(self, progress: str) -> Any:
        from imagefleet.pipelines.progress import start_board

        return None if progress == "off" else start_board()

    def commit(self, objects: ObjectStore, lease: Lease, total: int, board: Any) -> RunSummary:
        from imagefleet.pipelines.manifest import write_manifest
        from imagefleet.pipelines.pools import stop_shared
        from imagefleet.pipelines.text_to_image import build

        try:
            return write_manifest(build(self.cfg, self.stores, self.source, self.plan, board), objects, lease,
                                  total, self.source.pass_through_schema())
        finally:
            stop_shared()  # the run's ledger (its resume index) ends with the run, committed or not

    def stop(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def executor_for(name: str, cfg: JobConfig, stores: Stores, source: SourceInfo, plan: Plan) -> Executor:
    """The executor `choose_executor` named (`in_process` or `ray`)."""
    from imagefleet.pipelines.in_process import IN_PROCESS

    kind = InProcess if name == IN_PROCESS else OnRay
    return kind(cfg, stores, source, plan)
