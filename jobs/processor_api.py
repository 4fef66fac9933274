"""`imagefleet.processor(config)`: imagefleet's stages over a user's own Ray Dataset (pipelines/processor.py).

    import imagefleet, ray
    proc = imagefleet.processor({"generators": {...}, "output": {"uri": "s3://bucket/synth"}})
    rows = proc(ray.data.read_parquet("s3://bucket/prompts").filter(...))   # lazy: manifest rows
    rows.write_parquet("s3://bucket/joined")                                 # ... or any other step
    summary = proc.commit(ds)                                                # or: the output's own manifest

The config is a job config without a source file: `source` (optional) names the Dataset's columns (`prompt_column`,
`id_column`, `columns`, `template`, `pass_through`); its `uri` is not read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagefleet.jobs import preflight
from imagefleet.jobs.api import ConfigInvalid, InputInvalid, load

if TYPE_CHECKING:
    import ray.data

    from imagefleet.configs.job import JobConfig
    from imagefleet.pipelines.manifest import RunSummary
    from imagefleet.pipelines.plan import Stores

DATASET_URI = "ray-dataset"
"""`source.uri` of a processor's config when it names none (nothing reads it; relative input image paths are
read from the working directory)."""


@dataclass(frozen=True)
class ImageProcessor:
    """imagefleet's stages as a Ray Data processor: call it on a Dataset, get a Dataset of manifest rows."""

    config: JobConfig
    stores: Stores

    def __call__(self, ds: ray.data.Dataset, *, num_rows: int = 0, run_id: str | None = None) -> ray.data.Dataset:
        """The manifest rows of `ds`'s images, lazily (images are stored as rows pass the writer; nothing is made
        twice, however often the result is consumed). `num_rows`: the Dataset's size if known (bigger blocks)."""
        from imagefleet.pipelines.processor import process
        from imagefleet.pipelines.text_to_image import InputError

        try:
            return process(ds, self.config, self.stores, run_id or new_run_id(), num_rows)
        except InputError as exc:
            raise InputInvalid(str(exc)) from exc

    def commit(self, ds: ray.data.Dataset, *, run_id: str | None = None) -> RunSummary:
        """Run `ds` and commit its manifest to `output.uri`, exactly as `imagefleet run` does (one run owns the
        output; the manifest becomes current in one step, with one row per requested image)."""
        from imagefleet.actors.storage import StorageError
        from imagefleet.actors.stores import open_store
        from imagefleet.pipelines.processor import commit_dataset
        from imagefleet.pipelines.text_to_image import InputError

        try:
            objects = open_store(self.config.output.uri, self.stores.output)
            return commit_dataset(ds, self.config, self.stores, objects, run_id or new_run_id())
        except (InputError, StorageError) as exc:
            raise InputInvalid(str(exc)) from exc


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def processor(config: str | Path | dict[str, Any] | JobConfig, overrides: Sequence[str] = ()) -> ImageProcessor:
    """An ImageProcessor for `config` (a YAML path, a dict or a JobConfig; `source.uri` may be left out), its stores
    and secrets resolved and the output's access checked now, before any Dataset runs.

    Raises:
        ConfigInvalid, InputInvalid: one line saying what to change.
    """
    from imagefleet.actors.storage import StorageError

    if isinstance(config, dict):
        source = dict(config.get("source") or {})
        config = {**config, "source": {"uri": DATASET_URI, **source}}
    cfg = load(config, overrides)
    if cfg.cluster.executor == "in_process":
        raise ConfigInvalid("cluster.executor=in_process: a processor runs on Ray Data; leave cluster.executor out")
    try:
        stores = preflight.resolve_stores(cfg)
        preflight.preflight_output(cfg, stores)
    except StorageError as exc:
        raise InputInvalid(str(exc)) from exc
    return ImageProcessor(cfg, stores)
