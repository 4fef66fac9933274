"""imagefleet's Python API: `imagefleet.run(config, overrides=..., **options) -> RunResult`.

    import imagefleet
    result = imagefleet.run("configs/local_tiny.yaml", ["output.uri=s3://bucket/run7"])
    result.summary.num_ok, result.summary.cost_usd, result.report_uri
    df = result.to_pandas()          # or result.manifest() (pyarrow dataset), result.to_ray()
    files = imagefleet.manifest_files("s3://bucket/run7")  # the committed parts, for DuckDB/Polars/Spark
    imagefleet.export("s3://bucket/run7", "hf/run7")  # a Hugging Face ImageFolder of its ok images
    rows = imagefleet.processor(config)(ray_dataset)   # the same stages over your own Ray Dataset (lazy)
    imagefleet.preview("configs/local_tiny.yaml", n=8)   # its first 8 images in this process + preview.html

Errors are typed and carry the CLI's one-line message: ConfigInvalid, InputInvalid, RunFailed (ImagefleetError).

The code lives in the subpackages `imagefleet.configs`, `imagefleet.actors`, `imagefleet.pipelines` and
`imagefleet.jobs` (the repository's top-level folders, mapped into this package by the build). The API names are
resolved on first use, so importing a subpackage (as every Ray worker does) doesn't load the whole API.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagefleet.jobs.api import (
        ConfigInvalid,
        ImagefleetError,
        InputInvalid,
        RunFailed,
        RunResult,
        export,
        load,
        manifest_files,
        run,
    )
    from imagefleet.jobs.preview import PreviewResult, preview
    from imagefleet.jobs.processor_api import ImageProcessor, processor

__all__ = ["ConfigInvalid", "ImagefleetError", "InputInvalid", "RunFailed", "RunResult", "__version__", "export",
           "ImageProcessor", "PreviewResult", "load", "manifest_files", "preview", "processor", "run"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return import_module("imagefleet.jobs.api").version()
    if name in ("preview", "PreviewResult"):
        return getattr(import_module("imagefleet.jobs.preview"), name)
    if name in ("processor", "ImageProcessor"):
        return getattr(import_module("imagefleet.jobs.processor_api"), name)
    if name in __all__:
        return getattr(import_module("imagefleet.jobs.api"), name)
    raise AttributeError(f"module 'imagefleet' has no attribute {name!r}")
