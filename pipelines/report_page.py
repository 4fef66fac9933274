"""report.html's page: one self-contained file (inline CSS and SVG, thumbnails as data URIs) whose sections sit in
a responsive grid, readable from a phone's width to a wide screen."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from imagefleet.actors.gain_model import PREDICTED
from imagefleet.actors.layout import EVALUATIONS_DIR
from imagefleet.pipelines.charts import histogram_svg, throughput_caption, throughput_svg
from imagefleet.pipelines.report_quality import quality_html
from imagefleet.pipelines.report_tally import ESCALATED_ROUTES, SCORE_SERIES, SERIES_COLOURS, STAGES, Tally
from imagefleet.pipelines.units import THROUGHPUT_MEANS, duration, throughput

STAGE_NAMES = {"queue_ms": "queue (waiting for a generator)", "generate_ms": "generate", "encode_ms": "encode",
               "upload_ms": "upload"}
CSS = """*{box-sizing:border-box}body{font-family:system-ui,sans-serif;margin:0 auto;padding:16px 24px 40px;
max-width:1500px;color:#111;line-height:1.35}h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 10px}
h3{font-size:15px;margin:16px 0 6px}.uri{color:#555;word-break:break-all;margin:0 0 12px}.note{color:#555}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin:12px 0}
.facts div{background:#f3f4f6;border-radius:6px;padding:8px 12px;font-size:13px;color:#333}
.facts b{display:block;font-size:20px;color:#111}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,440px),1fr));gap:8px 32px;
align-items:start}.cols>section{min-width:0}
figure.chart{margin:0}figure.chart svg{display:block;width:100%;max-width:680px;height:auto}
figure.chart figcaption{font-size:13px;color:#555;margin:4px 0 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(112px,1fr));gap:10px}
.grid figure{margin:0;font-size:11px;min-width:0;overflow-wrap:anywhere}
.grid img,.pair img,.missing{width:100%;aspect-ratio:1;object-fit:contain;background:#eee;border-radius:4px;
display:block}.missing{display:flex;align-items:center;justify-content:center;color:#666}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,290px),1fr));gap:14px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:6px;font-size:11px}.pair figure{margin:0;min-width:0}
.pair p{margin:0;grid-column:1/3}
.route{background:#e0e7ff;border-radius:3px;padding:0 4px}
.table{overflow-x:auto;margin:6px 0 18px}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left}td.n{text-align:right;white-space:nowrap}
th{background:#f3f4f6}
@media (max-width:600px){body{padding:10px 10px 30px}h1{font-size:19px}figure.chart svg{font-size:15px}}"""


@dataclass(frozen=True)
class RunClock:
    """When the run that committed the manifest started and how long it ran (its run.json); zeros when unknown."""

    wall_s: float = 0.0
    started_at: float = 0.0


def _text(value: Any) -> str:
    """A manifest string cell for the page (null -> ''), escaped."""
    return html.escape(str(value) if value is not None else "")


def _table(head: str, rows: str) -> str:
    """A table that scrolls sideways inside its column instead of widening the page on a phone."""
    return f'<div class="table"><table>{head}{rows}</table></div>'


def _score_text(score: float | None) -> str:
    return f" · score {score:.1f}" if score is not None and math.isfinite(score) else ""


def _settings_text(row: dict[str, Any], prefix: str = "") -> str:
    """'1024×1024 · 30 steps · cfg 7.5' from a row's (or its draft's) settings; parts not recorded are left out."""
    w, h, steps, cfg = (row.get(f"{prefix}{n}") for n in ("width", "height", "num_steps", "guidance_scale"))
    parts = [f"{w}×{h}" if w and h else "", f"{steps} step{'' if steps == 1 else 's'}" if steps else "",
             f"cfg {cfg:g}" if cfg is not None and math.isfinite(cfg) else ""]
    return " · ".join(p for p in parts if p)


def _facts_html(tally: Tally, clock: RunClock) -> str:
    """The run at a glance: requested, ready (new and already present), problems, throughput, wall time, cost."""
    ready = tally.by_status.get("ok", 0)
    problems = sum(n for status, n in tally.by_status.items() if status != "ok")
    rate = (f"<b>{throughput(tally.num_new, clock.wall_s):.2f} img/s</b>throughput ({THROUGHPUT_MEANS})"
            if clock.wall_s > 0 else "<b>–</b>throughput (the run's wall time is not recorded: no run.json of "
            "this run)")
    facts = [f"<b>{tally.total:,}</b>images requested",
             f"<b>{ready:,}</b>images ready ({tally.num_new:,} new, {ready - tally.num_new:,} already present)",
             f"<b>{problems:,}</b>not made (errors, refusals, skipped)", rate,
             f"<b>{duration(clock.wall_s) if clock.wall_s > 0 else '–'}</b>run wall time",
             f"<b>${sum(tally.cost_by_gen.values()):,.4f}</b>cost of these images"]
    return '<div class="facts">' + "".join(f"<div>{f}</div>" for f in facts) + "</div>"


def _throughput_html(tally: Tally, clock: RunClock) -> str:
    """This run's images over time, and those of the earlier runs that made the images it found."""
    now, before = tally.fresh_times, tally.earlier_times
    earlier = (f'<figure class="chart">{throughput_svg(before, label="images completed over time by earlier runs")}'
               f"<figcaption>{throughput_caption(before, 0.0, 0.0, 0)}</figcaption></figure>")
    if before.count and not now.count:
        return (f'<p class="note">All {before.count:,} images were made by earlier runs (this run found them '
                f"already present); the timings are theirs.</p>{earlier}")
    this = (f'<figure class="chart">{throughput_svg(now, clock.started_at, clock.wall_s, tally.num_new)}'
            f"<figcaption>{throughput_caption(now, clock.started_at, clock.wall_s, tally.num_new)}</figcaption>"
            f"</figure>")
    if before.count:
        this += (f'<p class="note">{before.count:,} more images were made by earlier runs (already present); '
                 f"theirs:</p>{earlier}")
    return this


def _timings_html(tally: Tally) -> str:
    """Stage timings per image: this run's, and those of the earlier runs that made the images it found."""
    now, before = tally.fresh_times, tally.earlier_times
    groups = [("earlier runs", tally.earlier_stages)] if before.count else []
    if now.count or not before.count or any(sketch.count for sketch in tally.stages.values()):
        groups.insert(0, ("this run", tally.stages))
    head = "".join(f"<th colspan=3>{name}</th>" for name, _ in groups)
    sub = "<th>mean</th><th>p50</th><th>p95</th>" * len(groups)
    rows = "".join(f"<tr><td>{STAGE_NAMES[stage]} <span class=\"note\">{stage}</span></td>" +
                   "".join(f'<td class="n">{a}</td><td class="n">{b}</td><td class="n">{c}</td>'
                           for _, s in groups for a, b, c in [s[stage].stats()]) + "</tr>" for stage in STAGES)
    return _table(f"<tr><th rowspan=2>stage</th>{head}</tr><tr>{sub}</tr>", rows)


def evaluations_html(tally: Tally) -> str:
    """Means of the evaluation metrics per route (draft | escalated | escalated: draft | all)."""
    if not tally.metric_sums:
        return ""
    metrics = sorted({m for _, m in tally.metric_sums})
    order = {"draft": 0, "escalated: draft": 1, "escalated": 2, "escalated_kept_draft": 3,
             "escalated_kept_draft: heavy": 4, PREDICTED: 4.5, "": 5, "all": 6}
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
key; `escalated: draft` are the kept drafts of escalated rows, `escalated: final` their heavy images,
`escalated_kept_draft` the drafts kept because their heavy image scored lower, `escalated_kept_draft: heavy` those
heavy images, `predicted_heavy` the heavy images of rows predictive routing sent without a draft, `all` every final
image</p>
{_table(f"<tr><th>route</th><th>images</th>{head}</tr>", rows)}"""


def _cascade_html(tally: Tally, pairs: list[tuple[dict[str, Any], str, str]]) -> str:
    """Escalation rate, cost per route and generator, score histograms, and escalated images beside their drafts."""
    if not any(route for route, _, _ in tally.routes):
        return ""
    e = html.escape
    per_route: dict[str, list[float]] = {}
    for (route, _, _), (n, n_ok, usd) in tally.routes.items():
        acc = per_route.setdefault(route, [0, 0, 0.0])
        acc[0], acc[1], acc[2] = acc[0] + n, acc[1] + n_ok, acc[2] + usd
    escalated = sum(int(per_route.get(route, [0])[0]) for route in ESCALATED_ROUTES)
    kept = int(per_route.get(ESCALATED_ROUTES[1], [0])[0])
    rate = f"{escalated / tally.num_drafted:.1%}" if tally.num_drafted else "–"
    kept_text = f"; {kept} kept their draft: the heavy image scored lower" if kept else ""
    predicted = int(per_route.get(PREDICTED, [0])[0])  # predictive routing: never drafted, not in the rate
    kept_text += f"; {predicted} more sent straight to heavy by prediction, without a draft" if predicted else ""
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
    histograms = histogram_svg([(name, tally.scores.get(name, {})) for name, _, _ in SCORE_SERIES], SERIES_COLOURS)
    return f"""<h2>Cascade</h2>
<p>escalation rate {rate} ({escalated} of {tally.num_drafted} drafts escalated{kept_text})</p>
<div class="cols"><section><h3>Cost per route</h3>
{_table("<tr><th>route</th><th>images</th><th>ok</th><th>USD</th><th>USD per image</th></tr>", route_rows)}
<h3>Cost per route and generator</h3><p class="note">an escalated image's cost is its draft's plus its own</p>
{_table("<tr><th>route</th><th>generator</th><th>draft generator</th><th>images</th><th>USD</th></tr>", gen_rows)}
</section><section><h3>Scores per route</h3><figure class="chart">{histograms}</figure></section></div>
<h3>Escalated images: draft and final</h3><div class="pairs">{cards or "<p>no escalated images</p>"}</div>"""


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


def page(tally: Tally, thumbs: list[tuple[dict[str, Any], str]], pairs: list[tuple[dict[str, Any], str, str]],
         uri: str, clock: RunClock) -> str:
    """The whole report.html."""
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
    costs = "".join(f"<tr><td>{e(g)}</td><td>${c:.4f}</td></tr>" for g, c in sorted(tally.cost_by_gen.items()))
    status_line = ", ".join(f"{k}: {v}" for k, v in sorted(tally.by_status.items()))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>imagefleet report</title>
<style>{CSS}</style></head><body>
<h1>imagefleet run report</h1>
<p class="uri">{e(uri)} · {tally.total} images requested · {e(status_line)}</p>
{_facts_html(tally, clock)}
<h2>Contact sheet</h2><div class="grid">{cards or "<p>no images</p>"}</div>
<div class="cols"><section><h2>Throughput over time</h2>{_throughput_html(tally, clock)}</section>
<section><h2>Stage timings per image</h2>{_timings_html(tally)}
<h2>Cost by the kept image's generator</h2>{_table("<tr><th>generator</th><th>USD</th></tr>", costs)}
<p class="note">A cascade row's cost (its drafts and any heavy image) is booked under the generator of the image it
kept; "Cost per route and generator" below splits it by route.</p></section></div>
{evaluations_html(tally)}
{_cascade_html(tally, pairs)}
{quality_html(tally)}
<h2>Errors and refusals</h2>
{_table("<tr><th>id</th><th>generator</th><th>status</th><th>reason</th></tr>",
        problem_rows or "<tr><td colspan=4>none</td></tr>")}</body></html>"""
