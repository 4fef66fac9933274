"""`imagefleet export OUTPUT DEST`: a finished run's output as a dataset others load without imagefleet."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    """Export OUTPUT's committed images and manifest rows to DEST and print one summary line.

    Args:
        argv: `OUTPUT DEST [--format hf-imagefolder]`.

    Returns:
        0; 2 with one line on stderr when OUTPUT has no committed manifest or no `ok` image, DEST holds other
        files, or a store can't be read or written.
    """
    from imagefleet.pipelines.hf_export import FORMATS

    p = argparse.ArgumentParser(prog="imagefleet export", description="Export a finished run's ok images and their "
                                "manifest rows as a dataset: hf-imagefolder is Hugging Face's ImageFolder layout "
                                "(DEST/train/<image_key>.<ext> + DEST/train/metadata.parquet), which "
                                "datasets.load_dataset(\"imagefolder\", data_dir=DEST) reads.")
    p.add_argument("output", help="a run's output.uri (local folder or s3://bucket/prefix)")
    p.add_argument("dest", help="where the dataset goes (local folder or s3://bucket/prefix): empty, or an earlier "
                   "export of OUTPUT (a rerun copies only what is missing)")
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="dataset layout (default: %(default)s)")
    args = p.parse_args(argv)
    from imagefleet.jobs.api import ImagefleetError, export

    try:
        summary = export(args.output, args.dest, format=args.format)
    except ImagefleetError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return exc.exit_code
    print(summary.line())
    return 0
