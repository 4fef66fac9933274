"""report.html next to the manifest: contact sheet, throughput over time, stage timings, cascade, errors, cost."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from imagefleet.actors.layout import EVALUATIONS_DIR, REPORT_HTML
from imagefleet.actors.manifest_schema import REPORT_COLUMNS
from imagefleet.actors.storage import ObjectStore
from imagefleet.pipelines.charts import SCORE_BIN, histogram_svg, throughput_svg
from imagefleet.pipelines.manifest import iter_manifest_batches
from imagefleet.pipelines.report_stats import Sketch, Timeline

logger = logging.getLogger(__name__)

NUM_THUMBS = 48
NUM_PAIRS = 12  # escalated images shown next to their drafts
THUMB_PX = 160
NUM_PROBLEMS = 200
STAGES = ("queue_ms", "generate_ms", "encode_ms", "upload_ms")  # timing rows of the page, in pipeline order
COLUMNS = list(REPORT_COLUMNS)  # the manifest columns flagged `report`
THUMB_THREADS = 8
# the cascade's score histograms: (series, route, score column); drawn in this order and these colours
SCORE_SERIES = (("kept drafts", "draft", "clip_score"), ("escalated: draft score", "escalated", "draft_score"),
                ("escalated: final score", "escalated", "clip_score"))
SERIES_COLOURS = dict(zip((s for s, _, _ in SCORE_SERIES), ("#16a34a", "#f59e0b", "#2563eb"), strict=True))


@dataclass
class Tally:
    """What the page needs, accumulated one manifest batch at a time: about 40 bytes per image (timings and
    timestamps as float arrays), fixed-size counters for routes and score histograms, and bounded samples;
    never the manifest itself, so a million-row report stays small."""

    step: int
    """Every step-th ok image goes to the contact sheet."""
    pair_step: int = 1
    """Every pair_step-th escalated image goes to the draft | final sample."""
    total: int = 0
    num_ok_seen: int = 0
    num_escalated_seen: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    cost_by_gen: dict[str, float] = field(default_factory=dict)
    stages: dict[str, Sketch] = field(default_factory=lambda: {name: Sketch() for name in STAGES})
    """This run's timings (its images and its failed rows)."""
    earlier_stages: dict[str, Sketch] = field(default_factory=lambda: {name: Sketch() for name in STAGES})
    """Timings an earlier run recorded for the images this run found already present (carried columns)."""
    fresh_times: Timeline = field(default_factory=Timeline)
    earlier_times: Timeline = field(default_factory=Timeline)
    routes: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    """(route, generator, draft generator) -> [rows, ok rows, USD]."""
    num_drafted: int = 0
    """Cascade rows that produced a draft: kept drafts plus escalated rows."""
    scores: dict[str, dict[int, int]] = field(default_factory=dict)
    """Score histogram per SCORE_SERIES name: bin -> count."""
    problems: list[dict[str, Any]] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-image metrics from <output>/evaluations/*.parquet: image key -> {metric: value}."""
    metric_sums: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(group, metric) -> [images evaluated, sum]; groups are routes, `escalated: draft` and `all`."""

    def add(self, batch: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        table = pa.Table.from_batches([batch])
        self.total += table.num_rows
        for r in table.group_by("status").aggregate([("status", "count")]).to_pylist():
            key = r["status"] or ""
            self.by_status[key] = self.by_status.get(key, 0) + r["status_count"]
        for r in table.group_by("generator").aggregate([("cost_usd", "sum")]).to_pylist():
            key = r["generator"] or ""
            self.cost_by_gen[key] = self.cost_by_gen.get(key, 0.0) + (r["cost_usd_sum"] or 0)
        status_ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
        ok = pc.fill_null(pc.and_(status_ok, pc.not_equal(table.column("image_uri"), "")), False)
        # already present: made by an earlier run, whose timings the row carries (or by a racing writer)
        earlier = pc.fill_null(pc.and_(ok, table.column("already_present")), False)
        ok_np = ok.to_numpy(zero_copy_only=False)
        self._timings(table, ok_np, earlier.to_numpy(zero_copy_only=False))
        if len(self.problems) < NUM_PROBLEMS:
            bad = table.filter(pc.invert(status_ok))
            self.problems += bad.slice(0, NUM_PROBLEMS - len(self.problems)).to_pylist()
        self.num_ok_seen = _pick(table, ok_np, self.sample, NUM_THUMBS, self.step, self.num_ok_seen)
        route = pc.fill_null(table.column("route"), "")
        if self.evaluations:
            self._metrics(table, ok_np)
        if pc.any(pc.not_equal(route, "")).as_py():
            route_np = route.to_numpy(zero_copy_only=False)
            self._cascade(table, route, route_np, ok_np)
            self.num_escalated_seen = _pick(table, ok_np & (route_np == "escalated"), self.pairs, NUM_PAIRS,
                                            self.pair_step, self.num_escalated_seen)

    def _metrics(self, table: Any, ok: Any) -> None:
        """Sum each evaluated image's metrics per route (an escalated row's kept draft counts as `escalated: draft`)."""
        keys = table.column("image_key").to_pylist()
        routes = table.column("route").to_pylist()
        drafts = table.column("draft_image_key").to_pylist()
        for i in [int(j) for j in ok.nonzero()[0]]:
            groups = [("all", keys[i]), (routes[i] or "", keys[i])]
            if routes[i] == "escalated" and drafts[i]:
                groups.append(("escalated: draft", drafts[i]))
            for group, key in groups:
                for metric, value in self.evaluations.get(key, {}).items():
                    acc = self.metric_sums.setdefault((group, metric), [0, 0.0])
                    acc[0], acc[1] = acc[0] + 1, acc[1] + value

    def _timings(self, table: Any, ok: Any, earlier: Any) -> None:
        import numpy as np

        for name in STAGES:
            v = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            keep = np.isfinite(v) & (v > 0)
            self.stages[name].add(v[keep & ~earlier])
            self.earlier_stages[name].add(v[keep & earlier])
        made_at = table.column("generated_at").to_numpy(zero_copy_only=False).astype(np.float64)
        self.fresh_times.add(made_at[ok & ~earlier])
        self.earlier_times.add(made_at[earlier])

    def _cascade(self, table: Any, route: Any, route_np: Any, ok: Any) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        groups = pa.table({"route": route, "generator": pc.fill_null(table.column("generator"), ""),
                           "draft_generator": pc.fill_null(table.column("draft_generator"), ""),
                           "cost": pc.fill_null(table.column("cost_usd"), 0.0), "ok": ok.astype(np.int64)})
        aggregated = groups.group_by(["route", "generator", "draft_generator"]).aggregate(
            [("ok", "count"), ("ok", "sum"), ("cost", "sum")])
        for r in aggregated.to_pylist():
            acc = self.routes.setdefault((r["route"], r["generator"], r["draft_generator"]), [0, 0, 0.0])
            acc[0] += r["ok_count"]
            acc[1] += r["ok_sum"] or 0
            acc[2] += r["cost_sum"] or 0.0
        escalated = route_np == "escalated"
        self.num_drafted += int(np.sum(escalated) + np.sum(ok & (route_np == "draft")))
        for series, name, column in SCORE_SERIES:
            # an escalated row's draft score exists even when its heavy image failed; the others need the image
            rows = (route_np == name) & (True if column == "draft_score" else ok)
            values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)[rows]
            values = np.clip(values[np.isfinite(values)], -1e4, 1e4)  # bounds the number of bins
            bins, counts = np.unique(np.floor(values / SCORE_BIN).astype(np.int64), return_counts=True)
            hist = self.scores.setdefault(series, {})
            for b, c in zip(bins.tolist(), counts.tolist(), strict=True):
                hist[b] = hist.get(b, 0) + c


def _pick(table: Any, mask: Any, into: list[dict[str, Any]], limit: int, step: int, seen: int) -> int:
    """Append every step-th row of `mask` (counting from `seen` over all batches) to `into`, up to `limit` rows;
    returns the new count of mask rows seen."""
    import numpy as np
    import pyarrow as pa

    rows = np.flatnonzero(mask)
    picks = rows[(np.arange(rows.size) + seen) % step == 0][: max(0, limit - len(into))]
    if picks.size:
        into += table.take(pa.array(picks, pa.int64())).to_pylist()
    return seen + int(rows.size)


def write_report(objects: ObjectStore) -> str:
    """Build report.html from every row of the committed manifest and a sample of images; returns its URI."""
    import pyarrow.compute as pc

    output_uri = objects.location.uri
    # 1 how many ok and escalated images there are (two cheap columns), so the samples spread over all of them
    num_ok = num_escalated = 0
    for b in iter_manifest_batches(objects, ["status", "route"]):
        ok = pc.equal(b.column("status"), "ok")
        num_ok += pc.sum(ok).as_py() or 0
        num_escalated += pc.sum(pc.and_(ok, pc.equal(b.column("route"), "escalated"))).as_py() or 0
    # 2 one streaming pass for counts, cost, timings, throughput, routes, problems and the sampled rows
    tally = Tally(step=max(1, num_ok // NUM_THUMBS), pair_step=max(1, num_escalated // NUM_PAIRS),
                  evaluations=read_evaluations(objects))
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
    objects.put(REPORT_HTML, _page(tally, thumbs, pairs, output_uri).encode(), "text/html; charset=utf-8")
    return objects.uri_of(REPORT_HTML)


def _thumb(objects: ObjectStore, uri: str) -> str:
    from PIL import Image

    if not uri:
        return ""  # e.g. a draft not kept (cascade keep_draft: false)
    try:
        img = Image.open(io.BytesIO(objects.get(objects.rel_of(uri)))).convert("RGB")
    except Exception:  # noqa: BLE001 - a missing thumbnail must not break the report
        return ""
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def _text(value: Any) -> str:
    """A manifest string cell for the page (null -> ''), escaped."""
    return html.escape(str(value) if value is not None else "")


def _score_text(score: float | None) -> str:
    return f" · score {score:.1f}" if score is not None and math.isfinite(score) else ""


def _settings_text(row: dict[str, Any], prefix: str = "") -> str:
    """'1024×1024 · 30 steps · cfg 7.5' from a row's (or its draft's) settings; parts not recorded are left out."""
    w, h, steps, cfg = (row.get(f"{prefix}{n}") for n in ("width", "height", "num_steps", "guidance_scale"))
    parts = [f"{w}×{h}" if w and h else "", f"{steps} step{'' if steps == 1 else 's'}" if steps else "",
             f"cfg {cfg:g}" if cfg is not None and math.isfinite(cfg) else ""]
    return " · ".join(p for p in parts if p)


def _timings_html(tally: Tally) -> str:
    """Throughput and stage timings: this run's, and those of the earlier runs that made the images it found."""
    now, before = tally.fresh_times, tally.earlier_times
    earlier_chart = throughput_svg(before, label="images completed over time by earlier runs")
    if before.count and not now.count:
        charts = (f'<p class="note">All {before.count} images were made by earlier runs (this run found them '
                  f"already present); the timings below are theirs.</p>{earlier_chart}")
    else:
        charts = throughput_svg(now)
        if before.count:
            charts += (f'<p class="note">{before.count} more images were made by earlier runs (already present); '
                       f"their timings:</p>{earlier_chart}")
    groups = [("earlier runs", tally.earlier_stages)] if before.count else []
    if now.count or not before.count or any(sketch.count for sketch in tally.stages.values()):
        groups.insert(0, ("this run", tally.stages))
    head = "".join(f"<th colspan=3>{name}</th>" for name, _ in groups)
    sub = "<th>mean</th><th>p50</th><th>p95</th>" * len(groups)
    rows = "".join(f"<tr><td>{stage}</td>" + "".join(f"<td>{a}</td><td>{b}</td><td>{c}</td>"
                                                     for _, s in groups for a, b, c in [s[stage].stats()]) + "</tr>"
                   for stage in STAGES)
    return (f"<h2>Throughput over time</h2>{charts}<h2>Stage timings (ms per image)</h2>"
            f"<table><tr><th rowspan=2>stage</th>{head}</tr><tr>{sub}</tr>{rows}</table>")


def read_evaluations(objects: ObjectStore) -> dict[str, dict[str, float]]:
    """image key -> {metric: value} from every evaluations/*.parquet (numeric columns; later files win)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, dict[str, float]] = {}
    for rel, _ in sorted(objects.list(EVALUATIONS_DIR)):
        if not rel.endswith(".parquet"):
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


def _evaluations_html(tally: Tally) -> str:
    """Means of the evaluation metrics per route (draft | escalated | escalated: draft | all)."""
    if not tally.metric_sums:
        return ""
    metrics = sorted({m for _, m in tally.metric_sums})
    order = {"draft": 0, "escalated: draft": 1, "escalated": 2, "": 3, "all": 4}
    groups = sorted({g for g, _ in tally.metric_sums}, key=lambda g: order.get(g, 9))
    head = "".join(f"<th>mean {html.escape(m)}</th>" for m in metrics)
    rows = ""
    for g in groups:
        n = max(int(tally.metric_sums.get((g, m), [0, 0.0])[0]) for m in metrics)
        cells = "".join(
            f"<td>{tally.metric_sums[(g, m)][1] / tally.metric_sums[(g, m)][0]:.3f}</td>"
            if tally.metric_sums.get((g, m), [0])[0] else "<td>–</td>" for m in metrics)
        label = {"": "(no route)", "escalated": "escalated: final"}.get(g, g)
        rows += f"<tr><td>{html.escape(label)}</td><td>{n}</td>{cells}</tr>"
    return f"""<h2>Evaluations</h2><p class="note">from {EVALUATIONS_DIR}/*.parquet next to the manifest, by image
key; `escalated: draft` are the kept drafts of escalated rows, `escalated: final` their heavy images, `all`
every final image</p>
<table><tr><th>route</th><th>images</th>{head}</tr>{rows}</table>"""


def _cascade_html(tally: Tally, pairs: list[tuple[dict[str, Any], str, str]]) -> str:
    """Escalation rate, cost per route and generator, score histograms, and escalated images beside their drafts."""
    if not any(route for route, _, _ in tally.routes):
        return ""
    e = html.escape
    per_route: dict[str, list[float]] = {}
    for (route, _, _), (n, n_ok, usd) in tally.routes.items():
        acc = per_route.setdefault(route, [0, 0, 0.0])
        acc[0], acc[1], acc[2] = acc[0] + n, acc[1] + n_ok, acc[2] + usd
    escalated = int(per_route.get("escalated", [0])[0])
    rate = f"{escalated / tally.num_drafted:.1%}" if tally.num_drafted else "–"
    route_rows = "".join(
        f"<tr><td>{e(route or 'none')}</td><td>{n:.0f}</td><td>{n_ok:.0f}</td><td>${usd:.4f}</td>"
        f"<td>{f'${usd / n:.4f}' if n else '–'}</td></tr>" for route, (n, n_ok, usd) in sorted(per_route.items()))
    gen_rows = "".join(
        f"<tr><td>{e(route or 'none')}</td><td>{e(gen)}</td><td>{e(draft_gen) or '–'}</td><td>{n:.0f}</td>"
        f"<td>${usd:.4f}</td></tr>" for (route, gen, draft_gen), (n, _, usd) in sorted(tally.routes.items()))
    cards = "".join(
        f'<div class="pair">{_pair_figure("draft", r, draft, "draft_", tally.evaluations)}'
        f'{_pair_figure("final", r, final, "", tally.evaluations)}'
        f"<p>{_text((r['prompt'] or '')[:160])}</p></div>" for r, draft, final in pairs)
    return f"""<h2>Cascade</h2>
<p>escalation rate {rate} ({escalated} of {tally.num_drafted} drafts escalated)</p>
<h3>Cost per route</h3><table><tr><th>route</th><th>images</th><th>ok</th><th>USD</th><th>USD per image</th></tr>
{route_rows}</table>
<h3>Cost per route and generator</h3><p class="note">an escalated image's cost is its draft's plus its own</p>
<table><tr><th>route</th><th>generator</th><th>draft generator</th><th>images</th><th>USD</th></tr>{gen_rows}</table>
<h3>Scores per route</h3>{histogram_svg([(name, tally.scores.get(name, {})) for name, _, _ in SCORE_SERIES],
                                         SERIES_COLOURS)}
<h3>Escalated images: draft and final</h3><div class="grid">{cards or "<p>no escalated images</p>"}</div>"""


def _route_label(route: str | None) -> str:
    """The contact sheet's small tag saying which cascade route an image took ('' outside a cascade)."""
    return f' <span class="route">{_text(route)}</span>' if route else ""


def _pair_figure(title: str, row: dict[str, Any], b64: str, prefix: str,
                 evaluations: dict[str, dict[str, float]] | None = None) -> str:
    generator = row[f"{prefix}generator"]
    metrics = (evaluations or {}).get(row[f"{prefix}image_key"] or "", {})
    measured = "".join(f"<br/>{_text(m)} {v:.2f}" for m, v in sorted(metrics.items()))
    score = row["draft_score" if prefix else "clip_score"]
    img = (f'<img alt="{title}" src="data:image/jpeg;base64,{b64}"/>' if b64
           else f'<div class="missing">{title} not kept</div>')
    return (f"<figure>{img}<figcaption><b>{title}</b> · {_text(generator)}{_score_text(score)}"
            f"<br/>{_settings_text(row, prefix)}{measured}</figcaption></figure>")


def _page(tally: Tally, thumbs: list[tuple[dict[str, Any], str]], pairs: list[tuple[dict[str, Any], str, str]],
          uri: str) -> str:
    e = html.escape
    cards = "".join(
        f'<figure><img alt="{_text((r["prompt"] or "")[:80])}" src="data:image/jpeg;base64,{b64}"/>'
        f'<figcaption><b>{_text(r["generator"])}</b>'
        f'{_score_text(r["clip_score"])}{_route_label(r.get("route"))}'
        f'<br/>{_text((r["prompt"] or "")[:90])}</figcaption></figure>'
        for r, b64 in thumbs if b64)
    problem_rows = "".join(
        f"<tr><td>{_text(r['id'])}</td><td>{_text(r['generator'])}</td><td>{_text(r['status'])}</td>"
        f"<td>{_text((r['error'] or '')[:200])}</td></tr>" for r in tally.problems)
    cost_by_gen = tally.cost_by_gen
    costs = "".join(f"<tr><td>{e(g)}</td><td>${c:.4f}</td></tr>" for g, c in sorted(cost_by_gen.items()))
    status_line = ", ".join(f"{k}: {v}" for k, v in sorted(tally.by_status.items()))
    cost = sum(cost_by_gen.values())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>imagefleet report</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#111}}h1{{font-size:22px}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}}figure{{margin:0;width:{THUMB_PX}px;font-size:11px}}
figure img,.missing{{width:{THUMB_PX}px;height:{THUMB_PX}px;object-fit:contain;background:#eee;border-radius:4px}}
.missing{{display:flex;align-items:center;justify-content:center;color:#666}}
.pair{{display:flex;flex-wrap:wrap;gap:6px;width:{2 * THUMB_PX + 6}px;font-size:11px}}.pair p{{margin:0}}
.route{{background:#e0e7ff;border-radius:3px;padding:0 4px}}.note{{color:#555}}
table{{border-collapse:collapse;margin:8px 0 20px}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px}}
th{{background:#f3f4f6}}</style></head><body>
<h1>imagefleet run report</h1>
<p>{e(uri)} · {tally.total} images requested · {e(status_line)} · cost of these images ${cost:.4f}</p>
<h2>Contact sheet</h2><div class="grid">{cards or "<p>no images</p>"}</div>
{_timings_html(tally)}
{_evaluations_html(tally)}
{_cascade_html(tally, pairs)}
<h2>Cost by generator</h2><table><tr><th>generator</th><th>USD</th></tr>{costs}</table>
<h2>Errors and refusals</h2><table><tr><th>id</th><th>generator</th><th>status</th><th>reason</th></tr>
{problem_rows or "<tr><td colspan=4>none</td></tr>"}</table></body></html>"""
