"""The `imagefleet` command: dispatches to run, s3, demo and dev helpers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

# Arrow's allocator (mimalloc) hands freed pages back to the OS at once instead of keeping them for reuse: the
# driver's end-of-run passes over a million manifest rows (commit, summary, report) otherwise kept ~120 MB more
# resident (BENCHMARKS.md, scale). Set before pyarrow loads; a value the user set wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

USAGE = """imagefleet <command> [args]

commands:
  --version                                print the installed version
  run CONFIG [--set k=v ...] [--dry-run]   run a batch job
  preview CONFIG [-n 8] [--out DIR]        its first images in this process, as a contact sheet (no output)
  submit CONFIG [--no-wait] [--set k=v]    run CONFIG on a Ray cluster as a Ray job (Ray Jobs API)
  status|logs [-f]|stop JOB, list          its jobs (each takes --address URL, default: $RAY_ADDRESS)
  serve CONFIG [--set k=v ...]             the config's generators online (Ray Serve HTTP, until Ctrl-C)
  demo                                     tiny offline model + embedded S3 + 80 prompts, end to end
  s3 serve|start|stop|env [--dir D]        embedded SeaweedFS S3 on 127.0.0.1 (auth on)
  tiny-model PATH [--kind sd|sdxl]         build a tiny random-weight diffusers pipeline offline
             [--lora-for PIPELINE]        (or a tiny LoRA adapter for one)
  report OUTPUT_URI                        (re)write OUTPUT_URI/report.html from the manifest
  cat URI [URI ...]                        write stored objects to stdout (s3://bucket/key or local paths)
  cat --parts OUTPUT                       the committed manifest's part files, one URI a line (for DuckDB, Polars)
  export OUTPUT DEST [--format hf-imagefolder]
                                           OUTPUT's ok images + manifest rows as a Hugging Face ImageFolder
  init PARQUET [-o CONFIG] [--backend B]   write a starter config from a prompt table's columns
  train-verifier OUTPUT OUT [--labels L]   train a fact verifier (the facts scorer's model) on OUTPUT's images
  train-router OUTPUT [...] --out FOLDER   fit a gain model for routing.cascade.predict from cascade manifests
"""


def report_main(argv: list[str]) -> int:
    """`imagefleet report OUTPUT_URI`: rebuild report.html from the committed manifest."""
    p = argparse.ArgumentParser(prog="imagefleet report", description="(Re)write OUTPUT_URI/report.html from the "
                                "committed manifest.")
    p.add_argument("output_uri", help="a run's output.uri (local folder or s3://bucket/prefix)")
    args = p.parse_args(argv)
    from imagefleet.actors.storage import StorageError, resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config
    from imagefleet.pipelines.commit import current_parts
    from imagefleet.pipelines.report import write_report

    try:
        spec = resolve_store_spec(args.output_uri, S3Config())
        objects = open_store(args.output_uri, spec)
        if not current_parts(objects):
            print(f"imagefleet: no manifest at {args.output_uri}: pass the output.uri of a finished run",
                  file=sys.stderr)
            return 2
        print(write_report(objects))
    except StorageError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. botocore's credential errors: one line, not a traceback
        from imagefleet.actors.store_errors import explain_s3_error

        print(f"imagefleet: cannot read {args.output_uri}: {explain_s3_error(exc, args.output_uri)}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `imagefleet` command. Ctrl-C is one line (exit 130), not a traceback: a run's cleanup (its lease, a
    private Ray) has run by then, and nothing it hadn't committed is current."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("imagefleet: interrupted (Ctrl-C); run the same command again to resume: images already stored are "
              "not made again", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("IMAGEFLEET_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from imagefleet.jobs.api import version

        print(f"imagefleet {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from imagefleet.jobs import generate

        return generate.main(rest)
    if command == "preview":
        from imagefleet.jobs import preview

        return preview.main(rest)
    if command in ("submit", "status", "logs", "stop", "list"):
        from imagefleet.jobs import submit

        return {"submit": submit.submit, "status": submit.status, "logs": submit.logs, "stop": submit.stop,
                "list": submit.list_jobs}[command](rest)
    if command == "serve":
        from imagefleet.jobs import serve

        return serve.main(rest)
    if command == "demo":
        from imagefleet.jobs import demo

        return demo.main(rest)
    if command == "s3":
        return s3_main(rest)
    if command == "report":
        return report_main(rest)
    if command == "cat":
        from imagefleet.jobs import cat

        return cat.main(rest)
    if command == "export":
        from imagefleet.jobs import export

        return export.main(rest)
    if command == "init":
        from imagefleet.jobs import init

        return init.main(rest)
    if command == "train-verifier":
        from imagefleet.jobs import train_verifier

        return train_verifier.main(rest)
    if command == "train-router":
        from imagefleet.jobs import train_router

        return train_router.main(rest)
    if command == "tiny-model":
        p = argparse.ArgumentParser(prog="imagefleet tiny-model")
        p.add_argument("path")
        p.add_argument("--kind", choices=["sd", "sdxl"], default="sd")
        p.add_argument("--lora-for", default="", metavar="PIPELINE",
                       help="build a tiny LoRA adapter for this tiny sd pipeline folder instead")
        args = p.parse_args(rest)
        from imagefleet.jobs.tiny_models import build_tiny_lora, build_tiny_pipeline

        print(build_tiny_lora(args.lora_for, args.path) if args.lora_for else build_tiny_pipeline(args.path,
                                                                                                  kind=args.kind))
        return 0
    print(f"imagefleet: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def s3_main(argv: list[str]) -> int:
    """`imagefleet s3 serve` (foreground), `start` (background), `stop`, `env` (print export lines)."""
    p = argparse.ArgumentParser(prog="imagefleet s3")
    p.add_argument("action", choices=["serve", "start", "stop", "env"])
    p.add_argument("--dir", default=".imagefleet/s3", help="data folder (keeps credentials and ports)")
    p.add_argument("--bucket", action="append", default=[], help="bucket(s) to create")
    args = p.parse_args(argv)
    from imagefleet.jobs.seaweed import S3Server

    if args.action in ("stop", "env") and not (Path(args.dir) / "server.json").is_file():
        print(f"imagefleet: no embedded S3 in {args.dir} (no server.json there); check --dir", file=sys.stderr)
        return 2  # never create a folder (and report a server) for a mistyped path
    server = S3Server.prepare(args.dir)
    if args.action == "stop":
        if not server.running():
            print(f"imagefleet: SeaweedFS in {server.data_dir} is not running; nothing to stop", file=sys.stderr)
            return 2
        server.stop()
        print(f"stopped SeaweedFS in {server.data_dir}")
        return 0
    if args.action == "env":
        for key, value in server.env().items():
            print(f"export {key}={value}")
        return 0
    if not server.running():
        server.start()
    for bucket in args.bucket:
        server.ensure_bucket(bucket)
    print(f"SeaweedFS S3 at {server.endpoint_url} (data {server.data_dir}, pid {server.pid or 'running'})")
    print(f"credentials: eval \"$(imagefleet s3 env --dir {args.dir})\"")
    if args.action == "start":
        return 0
    try:
        while server.running():
            time.sleep(1)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
