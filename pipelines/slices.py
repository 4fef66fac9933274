"""Each stage's slice of the job config: what the preprocessor, the writer and the input reader are built with
(`plan.make_plan` puts them in the stages; serving builds the preprocessor's the same way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import SecretStr

from imagefleet.configs.prep import GeneratorIdentity, PrepConfig, ResumeConfig
from imagefleet.configs.storage import StoreSpec
from imagefleet.configs.writer import ImageWriterConfig
from imagefleet.pipelines.schema import pass_through_settings
from imagefleet.pipelines.table_formats import TABLE_SUFFIXES

if TYPE_CHECKING:
    from imagefleet.configs.job import JobConfig


@dataclass(frozen=True)
class Stores:
    """Resolved connections (with secrets) for the run's locations; built by jobs from the environment."""

    source: StoreSpec
    output: StoreSpec
    inputs: StoreSpec | None = None
    """Connection for rows' input images (None: the source's)."""
    models: dict[str, StoreSpec] = field(default_factory=dict)
    api_keys: dict[str, SecretStr] = field(default_factory=dict)  # hosted generators, by generator name
    adapters: dict[str, dict[str, str]] = field(default_factory=dict)
    """LoRA adapters by generator: name → sha256 of its weights file (read once by jobs, part of image keys)."""
    model_ids: dict[str, str] = field(default_factory=dict)
    """Generators with a local model folder: name → its content digest (`actors.model_digest`; part of keys)."""
    model_versions: dict[str, str] = field(default_factory=dict)
    """name → what its model is now (a hub commit, a local folder's digest): `model_version`, never in keys."""
    scorer_id: str = ""
    """The scorer's local model folder as its content digest ('' = not a local folder): what keys name it by when
    it picks the kept image (best-of-N, adaptive drafts)."""


def input_base(source_uri: str) -> str:
    """The folder relative input-image paths are resolved against: the prompt table's (a file's parent, a folder
    itself, a glob's fixed part)."""
    from imagefleet.actors.storage import parse_location

    uri = source_uri
    if any(ch in uri for ch in "*?["):
        uri = uri[: min(uri.find(ch) for ch in "*?[" if ch in uri)].rsplit("/", 1)[0]
    elif uri.rstrip("/").lower().endswith(TABLE_SUFFIXES):
        path = uri.rstrip("/")
        uri = (path.rsplit("/", 1)[0] or "/") if "/" in path else "."  # `p.csv`: the working folder
    return parse_location(uri).uri


def selection(cfg: JobConfig, scorer_id: str = "") -> str:
    """What decides which candidate is kept (best-of-N), as it enters image keys; '' without selection. The scorer
    is named by `scorer_id` (a local folder's content digest) when given, else by its model as written (a hub id)."""
    n = cfg.routing.candidates_per_image()
    cascade = getattr(cfg.routing, "cascade", None)
    drafts = cascade.max_drafts if cascade is not None else 1
    if (n <= 1 and drafts <= 1) or cfg.scorer is None:
        return ""
    model = scorer_id or getattr(cfg.scorer, "model", "")
    if cascade is not None and drafts > 1:  # adaptive drafts: the stop rule and the scorer decide the kept draft
        return f"drafts={drafts},redraw_below={cascade.redraw_below!r},scorer={cfg.scorer.backend}:{model}"
    return f"best_of={n},scorer={cfg.scorer.backend}:{model}"


def prep_config(cfg: JobConfig, stores: Stores | None = None, source_columns: list[str] | tuple[str, ...] = ()
                ) -> PrepConfig:
    """The preprocessor's slice of the job config (resume state when the output store is known; pass-through)."""
    resume = None
    if stores is not None:
        resume = ResumeConfig(output_uri=cfg.output.uri, store=stores.output, image_format=cfg.output.format,
                              keep_provider_bytes=cfg.output.keep_provider_bytes,
                              skip_existing=cfg.output.skip_existing, retry_failed=cfg.output.retry_failed)
    return PrepConfig(
        resume=resume,
        job_seed=cfg.seed,
        prompt_column=cfg.source.prompt_column,
        id_column=cfg.source.id_column,
        negative_prompt_column=cfg.source.negative_prompt_column,
        columns=cfg.source.columns.by_field(),
        template=cfg.source.template,
        task=cfg.source.task,
        variants=cfg.source.variants,
        selection=selection(cfg, stores.scorer_id if stores is not None else ""),
        max_prompt_chars=cfg.source.max_prompt_chars,
        **pass_through_settings(cfg.source, cfg.routing.column_read, source_columns),
        max_images_per_row=cfg.routing.max_images_per_row,
        routing=cfg.routing,
        budget_usd=cfg.limits.budget_usd,
        default_generator=cfg.default_generator,
        generators={
            name: GeneratorIdentity(model=g.model, content=stores.model_ids.get(name, "") if stores is not None else "",
                                    version=stores.model_versions.get(name, "") if stores is not None else "",
                                    revision=g.revision, scheduler=g.scheduler, defaults=g.defaults,
                                    render=g.render(),
                                    est_usd_per_image=g.estimate_usd(int(cfg.source.reads_inputs()))
                                    * cfg.routing.candidates_per_image(),
                                    max_input_images=g.max_input_images(), masks=g.takes_mask(cfg.source.task),
                                    takes_strength=g.takes_strength(), size_multiple=g.size_multiple(),
                                    adapters=stores.adapters.get(name, {}) if stores is not None else {},
                                    default_adapters=g.default_adapters())
            for name, g in cfg.generators.items()
        },
    )


def writer_config(cfg: JobConfig, stores: Stores) -> ImageWriterConfig:
    """The writer's slice of the job config."""
    out = cfg.output
    return ImageWriterConfig(
        uri=out.uri,
        format=out.format,
        quality=out.quality,
        png_compress_level=out.png_compress_level,
        keep_provider_bytes=out.keep_provider_bytes,
        image_records=out.image_records,
        num_upload_threads=out.pool.num_upload_threads,
        store=stores.output,
        abort_error_fraction=cfg.limits.max_error_fraction,
        abort_min_rows=cfg.limits.abort_min_rows,
    )
