"""`imagefleet run`: config → preflight → Ray → build → write manifest → summary (the main job)."""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from jobs import runtime


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagefleet run", description="Run a batch image-generation job.")
    p.add_argument("config", help="YAML run config (or env:VAR to read the YAML from a variable: `submit` uses it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set output.uri=s3://bucket/run2 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="validate config, input and bucket access; print the plan")
    p.add_argument("--run-id", default=None, type=runtime.run_id_arg,
                   help="id for this run: letters, digits, '.', '_', '-' (default: time + random)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's progress tables and full tracebacks (they always go to the run's log file)")
    p.add_argument("--retry-failed", action="store_true", help="redo images that failed in an earlier run")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one job; returns the process exit code (0 ok, 1 run failed, 2 bad config/input/storage)."""
    args = parser().parse_args(argv)
    runtime.prepare_environment(args.verbose)
    args.config = runtime.config_path(args.config)
    from actors.storage import StorageError, open_store
    from configs import ConfigError, load_config
    from pipelines.commit import Lease, collect_garbage
    from pipelines.manifest import write_manifest, write_run_json
    from pipelines.plan import PlanError
    from pipelines.report import write_report
    from pipelines.text_to_image import InputError, build, expected_rows, failure_line, inspect_source, plan_run

    # 1 everything that can be wrong with the inputs is found here, before any GPU work
    try:
        cfg = load_config(args.config, args.overrides + (["output.retry_failed=true"] if args.retry_failed else []))
        stores = runtime.resolve_stores(cfg)
        source = inspect_source(cfg, stores)
        runtime.preflight_output(cfg, stores)
        plan = plan_run(cfg, stores, source)
    except (ConfigError, InputError, StorageError, PlanError) as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    print(runtime.plan_text(cfg, source, plan))
    if args.dry_run:
        print("dry run: config, input schema and output access are fine; nothing was generated")
        return 0
    # 2 own the output (a second run on it is refused), then Ray, the graph and the commit
    run_id = args.run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    import ray

    objects = open_store(cfg.output.uri, stores.output)
    lease, started = Lease(objects, run_id, cfg.output.lease_ttl_s), False
    try:
        lease.acquire()
        collect_garbage(objects, staging=False)  # parts of a commit that died before its index write
        started = runtime.start_ray(cfg)
        runtime.check_resources(cfg, plan.pools)
        summary = write_manifest(build(cfg, stores, source, plan), objects, lease, expected_rows(cfg, source))
        shards = runtime.export_webdataset(cfg, stores, summary, run_id)  # after the commit; never fails the run
        # 3 record and report
        record_uri = write_run_json(cfg.output.uri, stores.output, runtime.run_record(cfg, summary, source))
        report_uri = runtime.report(cfg, stores, write_report)
    except StorageError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a broken actor ends the run; say so in one line, log the rest
        log = runtime.record_failure(f"run {run_id}", exc)
        print(f"imagefleet: run {run_id} failed, nothing committed: {failure_line(exc)} (details: {log})",
              file=sys.stderr)
        return 1
    finally:
        lease.release()
        if started:
            ray.shutdown()
    print(runtime.summary_text(summary, record_uri, report_uri, shards))
    problem = runtime.final_problem(cfg, summary, shards)
    if problem:
        print(f"imagefleet: {problem}", file=sys.stderr)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
