"""report.html next to the manifest: contact sheet, throughput over time, stage timings, cascade, errors, cost.

`write_report` reads the committed manifest in one streaming pass (pipelines/report_tally.py), the run's wall
time from its run.json, and writes the page (pipelines/report_page.py)."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor

from imagefleet.actors.layout import EVALUATIONS_DIR, REPORT_HTML, RUN_JSON
from imagefleet.actors.storage import ObjectStore
from imagefleet.pipelines.manifest import iter_manifest_batches
from imagefleet.pipelines.report_page import RunClock, page
from imagefleet.pipelines.report_quality import BASELINES, read_baselines
from imagefleet.pipelines.report_tally import COLUMNS, NUM_PAIRS, NUM_THUMBS, STAGES, Tally

__all__ = ["COLUMNS", "NUM_PAIRS", "NUM_THUMBS", "STAGES", "RunClock", "Tally", "read_evaluations", "run_clock",
           "write_report"]

logger = logging.getLogger(__name__)

THUMB_PX = 160
THUMB_THREADS = 8


def write_report(objects: ObjectStore) -> str:
    """Build report.html from every row of the committed manifest and a sample of images; returns its URI."""
    import pyarrow.compute as pc

    output_uri = objects.location.uri
    # 1 how many ok and escalated images there are (two cheap columns), so the samples spread over all of them;
    #   and the run that committed the manifest, whose run.json says when it started and how long it ran
    num_ok = num_escalated = 0
    run_id = ""
    for b in iter_manifest_batches(objects, ["status", "route", "run_id"]):
        ok = pc.equal(b.column("status"), "ok")
        num_ok += pc.sum(ok).as_py() or 0
        num_escalated += pc.sum(pc.and_(ok, pc.equal(b.column("route"), "escalated"))).as_py() or 0
        run_id = run_id or next((r for r in b.column("run_id").to_pylist() if r), "")
    # 2 one streaming pass for counts, cost, timings, throughput, routes, problems and the sampled rows
    tally = Tally(step=max(1, num_ok // NUM_THUMBS), pair_step=max(1, num_escalated // NUM_PAIRS),
                  evaluations=read_evaluations(objects), baselines=_baselines(objects))
    for batch in iter_manifest_batches(objects, COLUMNS):
        tally.add(batch)
    with ThreadPoolExecutor(max_workers=THUMB_THREADS) as pool:  # one GET each: object stores answer slowly
        def thumbs_of(uris: list[str]) -> list[str]:
            return list(pool.map(lambda uri: _thumb(objects, uri), uris))

        thumbs = list(zip(tally.sample, thumbs_of([r["image_uri"] for r in tally.sample]), strict=True))
        drafts = thumbs_of([r["draft_image_uri"] or "" for r in tally.pairs])
        finals = thumbs_of([r["image_uri"] for r in tally.pairs])
        pairs = list(zip(tally.pairs, drafts, finals, strict=True))
    # 3 the page
    html = page(tally, thumbs, pairs, output_uri, run_clock(objects, run_id))
    objects.put(REPORT_HTML, html.encode(), "text/html; charset=utf-8")
    return objects.uri_of(REPORT_HTML)


def run_clock(objects: ObjectStore, run_id: str) -> RunClock:
    """When run `run_id` started and its wall time, from the run.json next to the manifest (`RunSummary`); zeros
    when there is none, or it is another run's (a run.json write that failed after the commit)."""
    try:
        record = json.loads(objects.get(RUN_JSON))
        summary = record["summary"]
        if not run_id or record.get("run_id") != run_id:
            return RunClock()
        return RunClock(float(summary.get("wall_s") or 0.0), float(summary.get("started_at") or 0.0))
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable run.json costs the throughput, not the report
        logger.info("run.json not read for the report: %s", str(exc).splitlines()[0][:200] if str(exc) else exc)
        return RunClock()


def _thumb(objects: ObjectStore, uri: str) -> str:
    if not uri:
        return ""  # e.g. a draft not kept (cascade keep_draft: false)
    try:
        data = objects.get(objects.rel_of(uri))
    except Exception:  # noqa: BLE001 - a missing thumbnail must not break the report
        return ""
    return jpeg_thumbnail(data, THUMB_PX, quality=80)


def jpeg_thumbnail(data: bytes, px: int, quality: int) -> str:
    """A JPEG thumbnail (at most `px` a side) of an encoded image, as base64; '' when it can't be decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as stored:
            img = stored.convert("RGB")
        img.thumbnail((px, px))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
    except Exception:  # noqa: BLE001 - an unreadable image costs its thumbnail, never the page
        return ""
    return base64.b64encode(buf.getvalue()).decode()


def _baselines(objects: ObjectStore) -> list[dict[str, object]]:
    """The reference runs in evaluations/baselines.parquet (report_quality.BASELINES); none when absent or
    unreadable (it costs the chart, never the report)."""
    import pyarrow.parquet as pq

    try:
        if not any(rel == BASELINES for rel, _ in objects.list(EVALUATIONS_DIR)):
            return []
        return read_baselines(pq.read_table(io.BytesIO(objects.get(BASELINES))).to_pylist())
    except Exception as exc:  # noqa: BLE001 - someone else's file: a bad one is skipped, never the report
        logger.warning("%s skipped: %s", BASELINES, str(exc).splitlines()[0][:200] if str(exc) else exc)
        return []


def read_evaluations(objects: ObjectStore) -> dict[str, dict[str, float]]:
    """image key -> {metric: value} from every evaluations/*.parquet (numeric columns; later files win)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, dict[str, float]] = {}
    for rel, _ in sorted(objects.list(EVALUATIONS_DIR)):
        if not rel.endswith(".parquet") or rel == BASELINES:  # reference runs, not per-image metrics: _baselines
            continue
        try:
            table = pq.read_table(io.BytesIO(objects.get(rel)))
        except Exception as exc:  # noqa: BLE001 - someone else's file: a bad one is skipped, never the report
            logger.warning("evaluations file %s skipped: %s", rel, str(exc).splitlines()[0][:200])
            continue
        if "image_key" not in table.column_names:
            continue
        metrics = [f.name for f in table.schema if f.name != "image_key" and (pa.types.is_floating(f.type)
                   or pa.types.is_integer(f.type) or pa.types.is_boolean(f.type))]
        for row in table.select(["image_key", *metrics]).to_pylist():
            values = {m: float(row[m]) for m in metrics if row[m] is not None and math.isfinite(float(row[m]))}
            out.setdefault(str(row["image_key"]), {}).update(values)
    return out
