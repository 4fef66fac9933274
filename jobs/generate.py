"""`imagefleet run`: config → preflight → Ray → build → write manifest → summary (the main job)."""

from __future__ import annotations

import argparse
import sys

from imagefleet.jobs import runtime
from imagefleet.jobs.progress import MODES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagefleet run", description="Run a batch image-generation job.")
    p.add_argument("config", help="YAML run config (or env:VAR to read the YAML from a variable: `submit` uses it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set output.uri=s3://bucket/run2 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="validate config, input and bucket access; print the plan")
    p.add_argument("--run-id", default=None, type=runtime.run_id_arg,
                   help="id for this run: letters, digits, '.', '_', '-' (default: time + random)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's progress tables, actors' output and full tracebacks (otherwise they go to the "
                        "run's log file, named in the summary)")
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="live progress: a panel on a terminal, a plain line every 10 s elsewhere (auto), or off")
    p.add_argument("--retry-failed", action="store_true", help="redo images that failed in an earlier run")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one job; returns the process exit code (0 ok, 1 run failed, 2 bad config/input/storage)."""
    args = parser().parse_args(argv)
    from imagefleet.jobs.api import ImagefleetError, RunFailed, run

    try:
        run(args.config, args.overrides, dry_run=args.dry_run, retry_failed=args.retry_failed, run_id=args.run_id,
            verbose=args.verbose, progress=args.progress)
    except RunFailed as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)  # after the summary when the run committed
        return exc.exit_code
    except ImagefleetError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.dry_run:
        print("dry run: config, input schema and output access are fine; nothing was generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
