"""What a run says and records: the plan (`--dry-run`), the one-screen summary, `run.json`, and the problem that
makes a committed run exit non-zero."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any

from imagefleet.configs.generator_base import MASK_TASKS, STRENGTH_TASKS
from imagefleet.configs.job import JobConfig
from imagefleet.pipelines.manifest import RunSummary
from imagefleet.pipelines.plan import Plan
from imagefleet.pipelines.text_to_image import SourceInfo
from imagefleet.pipelines.units import duration, throughput_text


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("imagefleet", "ray", "torch", "diffusers", "transformers", "pyarrow", "boto3"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_record(cfg: JobConfig, summary: RunSummary, source: SourceInfo, executor: str = "") -> dict[str, Any]:
    """run.json content: the config used (no secrets: it only names env vars), versions, counts, timing, and where
    the stages ran (`ray` or `in_process`)."""
    return {
        "run_id": summary.run_id,
        "executor": executor,
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
        "source_files": len(source.files),
        "source_rows": source.num_rows,
        "summary": summary.to_dict(),
    }


EXECUTOR_WORDS = {"ray": "on Ray, in the actor pools above", "in_process": "in this process, one copy of each stage"}


def plan_text(cfg: JobConfig, source: SourceInfo, plan: Plan, executor: tuple[str, str] = ("", "")) -> str:
    """What a run would do (printed by --dry-run and at the start of a run); `executor`: where its stages run and
    why (`pipelines.in_process.choose_executor`)."""
    from imagefleet.actors.layout import image_pattern

    lines = [f"imagefleet plan for {cfg.name!r}",
             f"  source : {cfg.source.uri} ({len(source.files)} file(s), {source.num_rows} rows)",
             f"  output : {cfg.output.uri}/{image_pattern(cfg.output.format)}  +  manifest/  +  run.json",
             *[f"           {name}'s images: {fmt}" for name, fmt in odd_formats(cfg).items()],
             f"  routing: {cfg.routing.mode} (default {cfg.default_generator})",
             *input_lines(cfg),
             *pass_through_lines(source),
             "  stages :", *plan.describe(),
             *([f"  runs   : {EXECUTOR_WORDS.get(executor[0], executor[0])} ({executor[1]})"] if executor[0] else []),
             f"  cost estimate: {cost_estimate(cfg, source.num_images or source.num_rows)}"]
    for name, gen in cfg.generators.items():
        info = getattr(gen, "info", lambda: None)()
        if info is not None and info.retires:
            lines.append(f"  note   : {name} uses {gen.model}, which the provider shuts down on {info.retires}")
    return "\n".join(lines)


def pass_through_lines(source: SourceInfo) -> list[str]:
    """The prompt table's columns the manifest carries (`source.pass_through`), a renamed one as `name → new`."""
    if not source.pass_through:
        return []
    names = [c if c == out else f"{c} → {out}" for c, out in source.pass_through.items()]
    shown = ", ".join(names[:12]) + (f", … ({len(names)} columns)" if len(names) > 12 else "")
    return [f"  carries: {shown} (from the prompt table to the manifest, unchanged)"]


def input_lines(cfg: JobConfig) -> list[str]:
    """What rows are made from besides their prompt (input images, variants), and settings that have no effect."""
    src = cfg.source
    lines = []
    if src.reads_inputs():
        mask = f", masks from column {src.columns.of('mask')!r}" if src.task in MASK_TASKS else ""
        lines.append(f"  inputs : {src.task}: input images from column {src.columns.of('image')!r}{mask}")
        if src.task in STRENGTH_TASKS:
            ignored = [n for n in cfg.routing.used(list(cfg.generators)) if not cfg.generators[n].takes_strength()]
            if ignored:
                lines.append(f"  note   : strength has no effect on {', '.join(ignored)} (the API has no such setting)")
    if src.variants:
        lines.append(f"  variants: {', '.join(src.variants)} (each request rendered {len(src.variants)} times)")
    return lines


def stored_format(cfg: JobConfig, name: str) -> str:
    """What a generator's images are stored as: a hosted API's own format when its bytes are kept as sent
    ('' = the provider picks), else output.format."""
    sent = cfg.generators[name].sent_format()
    return cfg.output.format if sent is None or not cfg.output.keep_provider_bytes else sent


def odd_formats(cfg: JobConfig) -> dict[str, str]:
    """Generators whose images are not stored as output.format, and what they are stored as (for people)."""
    from imagefleet.actors.layout import image_ext

    out = {}
    for name in cfg.routing.used(list(cfg.generators)):
        fmt = stored_format(cfg, name)
        if fmt != cfg.output.format:
            out[name] = (f"<key>.{image_ext(fmt)} (stored as the API sends them)" if fmt else
                         "<key>.<png|jpg|webp> in the format the API sends (output.keep_provider_bytes)")
    return out


def cost_estimate(cfg: JobConfig, images: int) -> str:
    """Expected spend of `images` requested images from each generator's cost model and the routing mode."""
    per_image = {name: g.estimate_usd(int(cfg.source.reads_inputs())) for name, g in cfg.generators.items()}
    low, high = cfg.routing.cost_range(per_image, images)
    if cfg.limits.budget_usd:
        high = min(high, cfg.limits.budget_usd)
    text = f"${low:,.4f}" if abs(high - low) < 1e-12 else f"${low:,.4f} – ${high:,.4f}"
    budget = f" (budget ${cfg.limits.budget_usd:,.2f})" if cfg.limits.budget_usd else ""
    unpriced = [n for n in cfg.routing.used(list(cfg.generators)) if per_image[n] <= 0]
    hint = (f"; {', '.join(unpriced)} priced at $0: set cost.est_seconds_per_image with cost.usd_per_gpu_hour, "
            f"or cost.usd_per_image" if unpriced else "")
    each = ", ".join(f"{n} ${per_image[n]:.4f}" for n in cfg.routing.used(list(cfg.generators)))
    return f"{text} for {images} images{budget} (per image: {each}){hint}"


def final_problem(cfg: JobConfig, summary: RunSummary, shards: str) -> str:
    """Why a committed run still exits non-zero ('' when it doesn't)."""
    if summary.stopped:  # every answer already delivered was stored and is in the manifest
        return (f"run {summary.run_id} {summary.stopped} — {summary.num_ok} image(s) stored and in the manifest, "
                f"{summary.num_skipped} not made (status skipped; rerun when the account allows)")
    failed = summary.num_error / max(summary.num_rows, 1)
    if failed > cfg.limits.max_error_fraction:
        return f"{failed:.1%} of images failed (limit {cfg.limits.max_error_fraction:.1%})"
    if shards.startswith("failed:"):
        return f"webdataset export {shards}"
    return ""


def summary_text(s: RunSummary, record_uri: str, report_uri: str, shards: str = "", log: str = "") -> str:
    """The one-screen end-of-run summary."""
    lines = [
        "",
        "=" * 72,
        f" imagefleet run {s.run_id}",
        f"   images requested : {s.num_rows}",
        f"   ok               : {s.num_ok}  ({s.num_written} written, {s.num_already_present} already present)",
        f"   errors           : {s.num_error}   refused: {s.num_refused}   skipped (budget): {s.num_skipped}",
        f"   wall time        : {duration(s.wall_s)}   throughput: {throughput_text(s.num_written, s.wall_s)}",
        f"   bytes written    : {s.bytes_written / 1e6:.2f} MB   cost: ${s.cost_usd:.4f}",
        f"   images           : {s.images_uri}/",
        f"   manifest         : {s.manifest_uri}/",
        f"   run record       : {record_uri}",
        f"   report           : {report_uri}",
    ]
    if shards:
        lines.append(f"   webdataset       : {shards}")
    if log:
        lines.append(f"   log              : {log}")
    for msg in s.errors_sample:
        lines.append(f"   e.g. error       : {msg[:100]}")
    if s.unread:
        lines.append(f"   note             : {s.unread[:200]}")
    lines.append("=" * 72)
    return "\n".join(lines)
