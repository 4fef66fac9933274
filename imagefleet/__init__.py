"""imagefleet's Python API: `imagefleet.run(config, overrides=..., **options) -> RunResult`.

    import imagefleet
    result = imagefleet.run("configs/local_tiny.yaml", ["output.uri=s3://bucket/run7"])
    result.summary.num_ok, result.summary.cost_usd, result.report_uri
    df = result.to_pandas()          # or result.manifest() (pyarrow dataset), result.to_ray()

Errors are typed and carry the CLI's one-line message: ConfigInvalid, InputInvalid, RunFailed (ImagefleetError).
"""

from jobs.api import ConfigInvalid, ImagefleetError, InputInvalid, RunFailed, RunResult, load, run, version

__version__ = version()

__all__ = ["ConfigInvalid", "ImagefleetError", "InputInvalid", "RunFailed", "RunResult", "__version__", "load", "run"]
