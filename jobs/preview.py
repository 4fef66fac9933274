"""`imagefleet preview CONFIG` and `imagefleet.preview(config)`: the first images of a run, before the run.

The config's own prompt table and plan (checked as a run checks them: one line, exit 2), its first N images made
in this process into a local preview folder, shown as a contact sheet (preview.html there) and a terminal listing.
Nothing goes to the configured output: `output.uri` is swapped for the preview folder before the plan is made, so
no image, manifest, lease or record is written there, and an s3:// output is never even connected to. Hosted
generators are paid: the estimate is printed before the first request, and `limits.budget_usd` holds as in a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagefleet.jobs import run_text, runtime
from imagefleet.jobs.api import ConfigInvalid, ImagefleetError, InputInvalid, RunFailed, _check, load

if TYPE_CHECKING:
    import pyarrow as pa

    from imagefleet.configs.job import JobConfig

DEFAULT_IMAGES = 8


@dataclass(frozen=True)
class PreviewResult:
    """What a preview made: its rows (shaped like the manifest's), the folder its images are in and its sheet."""

    folder: str
    """The local preview folder: images under images/, the contact sheet preview.html."""
    html: str
    """The contact sheet's path."""
    rows: pa.Table
    """One row per image, the manifest's columns (status, error, image_uri in the preview folder, cost_usd...)."""
    estimate: str
    """The cost estimate printed before rendering."""
    rows_read: int
    """Prompt-table rows read (only those the images come from)."""

    @property
    def cost_usd(self) -> float:
        """What the preview's images cost (hosted generators: what the provider billed)."""
        return cost_of(self.rows)

    def to_pandas(self) -> Any:
        return self.rows.to_pandas()


def cost_of(rows: pa.Table) -> float:
    """The summed `cost_usd` of a preview's rows."""
    if "cost_usd" not in rows.column_names:
        return 0.0
    return float(sum(v for v in rows.column("cost_usd").to_pylist() if v is not None and v == v))


def preview(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str] = (), n: int = DEFAULT_IMAGES,
            *, out: str | Path | None = None, verbose: bool = False,
            echo: Callable[[str], None] | None = print) -> PreviewResult:
    """Make the first `n` images of a run's prompt table with its own plan, in this process, into a local folder,
    and write their contact sheet there. Nothing is written to the config's output.

    Args:
        config: a YAML path, a dict shaped like the YAML, or a JobConfig.
        overrides: `key=value` strings, as `--set` takes them.
        n: images to make (rows are read until they make `n`: templates, variants, num_images and fan-out count).
        out: the preview folder (a local folder, made if missing); default a new temp folder, kept.
        verbose: actors' output on the terminal (otherwise in the preview's log file).
        echo: where the estimate and the listing go (None = nowhere).

    Raises:
        ConfigInvalid, InputInvalid (before any work), RunFailed (a stage broke; the log has the traceback).
    """
    if n < 1:
        raise ConfigInvalid(f"preview of {n} images: ask for at least 1 (-n)")
    with runtime.environment(verbose):
        return _preview(config, overrides, n, out, verbose, echo or (lambda _text: None))


def _preview(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str], n: int,
             out: str | Path | None, verbose: bool, say: Callable[[str], None]) -> PreviewResult:
    from imagefleet.actors.storage import StorageError
    from imagefleet.jobs.progress import run_output
    from imagefleet.pipelines.preview import render
    from imagefleet.pipelines.preview_sheet import listing, write_sheet
    from imagefleet.pipelines.text_to_image import failure_line

    # 1 the run's config with its output swapped for the preview folder, checked as a run checks it
    cfg = load(config, overrides)
    folder = preview_folder(cfg, out)
    try:
        shown = preview_config(cfg, folder)
        checked = _check(shown)
    except ImagefleetError:
        if out is None:  # the temp folder made for it: nothing to keep
            shutil.rmtree(folder, ignore_errors=True)
        raise
    images = min(n, checked.total)
    # 2 what it costs, said before the first (paid) request
    estimate = run_text.cost_estimate(shown, images)
    say(f"preview of {cfg.name!r}: the first {images} image(s) of {cfg.source.uri}, made in this process into "
        f"{folder} (nothing is written to {cfg.output.uri})")
    say(f"  cost estimate: {estimate}")
    # 3 the run's stages over the first rows; what actors print goes to the log
    preview_id = f"preview-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log = runtime.run_log(preview_id)
    started = time.monotonic()
    with run_output(log, quiet=not verbose):
        try:
            rows_read, rows = render(shown, checked.stores, checked.source, checked.plan, images)
        except StorageError as exc:
            raise InputInvalid(str(exc)) from exc
        except Exception as exc:  # a broken actor: one line, the traceback in the log
            runtime.record_failure(preview_id, exc, log)
            raise RunFailed(f"preview failed: {failure_line(exc)} (details: {log})", preview_id, str(log)) from exc
    wall_s = time.monotonic() - started
    # 4 the contact sheet and the listing
    summary = (f"{rows.num_rows} image(s) from the first {rows_read} row(s) in {wall_s:.1f} s, in this process; "
               f"cost ${cost_of(rows):.4f}")
    facts = [f"config {cfg.name!r}: source {cfg.source.uri}", summary, f"cost estimate: {estimate}",
             f"images in {folder}; nothing was written to output.uri {cfg.output.uri}"]
    page = write_sheet(rows, folder, f"imagefleet preview: {cfg.name}", facts)
    say("\n".join([*listing(rows), summary, f"contact sheet: {page.as_uri()}"]))
    return PreviewResult(str(folder), str(page), rows, estimate, rows_read)


def preview_folder(cfg: JobConfig, out: str | Path | None) -> Path:
    """The preview's local folder: `out` (made if missing; never inside the run's output, never s3://), or a new
    temp folder."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="imagefleet-preview-")).resolve()
    text = str(out)
    if "://" in text and not text.startswith("file://"):
        raise ConfigInvalid(f"--out {text}: give a local folder (a preview is never written to an object store)")
    folder = Path(text.removeprefix("file://")).expanduser().resolve()
    output = cfg.output.uri
    if "://" not in output or output.startswith("file://"):
        target = Path(output.removeprefix("file://")).expanduser().resolve()
        if folder == target or folder.is_relative_to(target) or target.is_relative_to(folder):
            raise InputInvalid(f"--out {text} overlaps output.uri {output}; a preview writes nothing to the run's "
                               f"output: pick a folder outside it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputInvalid(f"--out {text}: cannot make the folder ({exc.strerror or exc})") from exc
    if not os.access(folder, os.W_OK):
        raise InputInvalid(f"--out {text}: the folder is not writable")
    return folder


def preview_config(cfg: JobConfig, folder: Path) -> JobConfig:
    """`cfg` as the preview runs it: its output a local folder, every image made (a preview into an earlier
    preview's folder shows what this one made, not what that one recorded), its stages in this process, no
    WebDataset export (a run's last step), and no mid-run abort on errors (an error row is something the preview
    shows)."""
    raw = cfg.model_dump()
    raw["output"].update(uri=str(folder), skip_existing=False,
                         webdataset={**raw["output"]["webdataset"], "enabled": False})
    raw["cluster"]["executor"] = "in_process"
    raw["limits"]["max_error_fraction"] = 1.0
    return load(raw)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagefleet preview", description="Make the first images of a run with its "
                                "own plan, in this process, into a local folder, and show them as a contact sheet "
                                "(preview.html). Nothing is written to the config's output.")
    p.add_argument("config", help="YAML run config")
    p.add_argument("-n", "--num-images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help="images to make (default %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as `imagefleet run --set` (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="local folder for the images and preview.html (default: a new temp folder, kept)")
    p.add_argument("--verbose", "-v", action="store_true", help="actors' output on the terminal (else in a log)")
    return p


def main(argv: list[str]) -> int:
    """`imagefleet preview`: 0 when the images were made (error rows included: the sheet shows them), 2 with one
    line for bad config or input, 1 when a stage broke."""
    args = parser().parse_args(argv)
    try:
        preview(args.config, args.overrides, args.num_images, out=args.out, verbose=args.verbose)
    except ImagefleetError as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
