"""`imagefleet cat URI...`: stream stored objects to stdout (how webdataset's `pipe:` URLs read s3:// shards);
`imagefleet cat --parts OUTPUT`: list the committed manifest's part files (what other engines should read)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import IO

CHUNK_BYTES = 1 << 20
"""Copy granularity: shards can be GBs, so they are streamed, never held in memory."""


def main(argv: list[str]) -> int:
    """Write each object's bytes to stdout, in order (like `cat`); with `--parts`, each output's committed
    manifest part files instead, one URI per line.

    Args:
        argv: the object URIs: `s3://bucket/key` (credentials and endpoint from the same AWS_* variables
            `imagefleet run` reads) or local paths; with `--parts`, outputs (a run's `output.uri`).

    Returns:
        0; 2 with one line on stderr when an object (or an output's manifest) can't be read; 141 when the reader
        closed the pipe early (webdataset's `pipe:` reader ignores that status, as a shell does for `cat | head`).
    """
    p = argparse.ArgumentParser(prog="imagefleet cat", description="Write stored objects (s3://bucket/key or "
                                "local paths) to stdout, e.g. for webdataset's pipe: URLs.")
    p.add_argument("uri", nargs="+", help="an object: s3://bucket/key or a local path (--parts: an output.uri)")
    p.add_argument("--parts", action="store_true", help="print the part files of each output's committed "
                   "manifest, one URI per line (what DuckDB, Polars or Spark should read; never glob manifest/)")
    args = p.parse_args(argv)
    if args.parts:
        return print_parts(args.uri)
    from imagefleet.actors.storage import StorageError
    from imagefleet.actors.store_errors import explain_s3_error

    out = sys.stdout.buffer
    for uri in args.uri:
        try:
            copy_object(uri, out)
            out.flush()
        except BrokenPipeError:
            # stdout is gone: point it at /dev/null so the interpreter's final flush doesn't print a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except StorageError as exc:
            print(f"imagefleet: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a local path
            print(f"imagefleet: cannot read {uri}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - botocore's errors (missing key, credentials): one line
            print(f"imagefleet: cannot read {uri}: {explain_s3_error(exc, uri)}", file=sys.stderr)
            return 2
    return 0


def print_parts(outputs: list[str]) -> int:
    """Print the committed manifest part files of each output, one URI per line (0; 2 with one line on stderr
    when an output has no committed manifest or can't be read)."""
    from imagefleet.jobs.api import InputInvalid, manifest_files

    for output in outputs:
        try:
            files = manifest_files(output)
        except InputInvalid as exc:
            print(f"imagefleet: {exc}", file=sys.stderr)
            return 2
        try:
            print("\n".join(files), flush=True)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    return 0


def copy_object(uri: str, out: IO[bytes]) -> None:
    """Stream one object to `out`.

    Args:
        uri: `s3://bucket/key` or a local path (optionally `file://`).
        out: a binary stream.
    """
    from imagefleet.actors.storage import StorageError, parse_location, resolve_store_spec, s3_client
    from imagefleet.configs.storage import S3Config

    loc = parse_location(uri)
    if loc.kind == "local":
        with open(loc.prefix, "rb") as fh:
            shutil.copyfileobj(fh, out, CHUNK_BYTES)
        return
    if not loc.prefix:
        raise StorageError(f"{uri} is a bucket, not an object: name a key (s3://bucket/key)")
    body = s3_client(resolve_store_spec(uri, S3Config())).get_object(Bucket=loc.bucket, Key=loc.prefix)["Body"]
    for chunk in body.iter_chunks(CHUNK_BYTES):
        out.write(chunk)
