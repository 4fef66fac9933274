"""The report's quality section: a cascade's rounds (where its rows ended), quality and cost per route from the
run's evaluations, and quality against cost: the run's point beside reference runs of the same prompts (e.g.
draft only and heavy only, from evaluations/baselines.parquet). Evaluations are data the report reads; whatever
graded them (an oracle, people, a metric) is not imported here."""

from __future__ import annotations

import html
import math
from typing import Any

from imagefleet.actors.layout import EVALUATIONS_DIR
from imagefleet.pipelines.charts import BOTTOM, LEFT, RIGHT, TOP, WIDTH, axes, nice_ticks, svg
from imagefleet.pipelines.report_tally import Tally

BASELINES = f"{EVALUATIONS_DIR}/baselines.parquet"
"""Reference runs of the same prompts: a row per run with `baseline` (its name), `images`, `cost_usd_per_image`,
the mean of each metric (numeric columns, named as in the other evaluations) and optionally `how` (a sentence)."""
PREFERRED = "faithfulness"
"""The metric the chart plots when the run has it (else the first the run and a baseline share)."""
RUN_COLOUR, BASE_COLOUR = "#16a34a", "#6b7280"


def _mean(acc: list[float] | None) -> float | None:
    return acc[1] / acc[0] if acc and acc[0] else None


def chart_metric(tally: Tally) -> str:
    """The metric the quality chart and tables lead with: `faithfulness` if evaluated, else the first one."""
    metrics = sorted({m for _, m in tally.metric_sums})
    return PREFERRED if PREFERRED in metrics else (metrics[0] if metrics else "")


def run_point(tally: Tally, metric: str) -> tuple[float, float] | None:
    """(USD per image, mean metric) of the run's final images; None when not evaluated."""
    value, ok = _mean(tally.metric_sums.get(("all", metric))), tally.by_status.get("ok", 0)
    return None if value is None or not ok else (sum(tally.cost_by_gen.values()) / ok, value)


def quality_cost_svg(points: list[tuple[str, float, float, str]], metric: str, height: int = 260) -> str:
    """Mean `metric` against USD per image: one labelled dot per (name, usd, value, colour)."""
    x_vals = nice_ticks(max(p[1] for p in points) * 1.15 or 1.0, 4)
    y_vals = nice_ticks(max(p[2] for p in points) * 1.1 or 1.0, 4)
    box = (LEFT, TOP, WIDTH - RIGHT, height - BOTTOM)
    sx, sy = (box[2] - box[0]) / x_vals[-1], (box[3] - box[1]) / y_vals[-1]
    x_ticks = [(box[0] + v * sx, _usd(v).rstrip("0").rstrip(".") if v else "$0") for v in x_vals]
    body = [axes(x_ticks, [(box[3] - v * sy, f"{v:.2g}") for v in y_vals], "USD per image", f"mean {metric}", box)]
    for name, usd, value, colour in points:
        x, y = box[0] + usd * sx, box[3] - value * sy
        anchor = "end" if x > (box[0] + box[2]) / 2 else "start"
        dx = -8 if anchor == "end" else 8
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"><title>{html.escape(name)}: '
                    f"{value:.3f} at {_usd(usd)} per image</title></circle>"
                    f'<text x="{x + dx:.1f}" y="{y - 7:.1f}" text-anchor="{anchor}" fill="{colour}">'
                    f"{html.escape(name)} {value:.3f}</text>")
    return svg(f"mean {metric} against cost per image", height, "".join(body))


def _rounds_html(tally: Tally, metric: str) -> str:
    """How many rows ended in each draft round, escalated or predicted, and their images' mean metric."""
    if not any(k != "draft round 1" for k in tally.rounds):
        return ""  # one draft round and no escalation: nothing to tell apart
    total = sum(tally.rounds.values())

    def order(key: str) -> tuple[int, int, str]:
        return (0, int(key.rsplit(" ", 1)[1]), "") if key.startswith("draft round ") else (1, 0, key)

    head = f"<th>mean {html.escape(metric)}</th>" if metric else ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td class=\"n\">{n:,}</td><td class=\"n\">{n / total:.1%}</td>"
        + (f'<td class="n">{_fmt(_mean(tally.round_metrics.get((k, metric))))}</td>' if metric else "") + "</tr>"
        for k, n in sorted(tally.rounds.items(), key=lambda kv: order(kv[0])))
    return ("<h3>Rounds: where each row ended</h3><p class=\"note\"><code>draft round k</code>: the row kept its "
            "k-th draft (adaptive drafts redraw a row while its best score is below <code>redraw_below</code>); the "
            "others were "
            "escalated to the heavy generator (or sent there by prediction)</p>"
            + f'<div class="table"><table><tr><th>ended</th><th>rows</th><th>share</th>{head}</tr>{rows}</table></div>')


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _usd(value: float) -> str:
    """A price per image with three significant digits below a dollar, never in e-notation ('$0.0000799',
    '$0.0475', '$0.140', '$12.50')."""
    if value <= 0 or not math.isfinite(value):
        return f"${value:g}"
    return f"${value:,.{max(2, 2 - math.floor(math.log10(value)))}f}"


def _routes_html(tally: Tally, metric: str) -> str:
    """Per route: images, mean metric of its final images, USD per image (a cascade row's cost is all it drew)."""
    per_route: dict[str, list[float]] = {}
    for (route, _, _), (n, n_ok, usd) in tally.routes.items():
        acc = per_route.setdefault(route, [0, 0, 0.0])
        acc[0], acc[1], acc[2] = acc[0] + n, acc[1] + n_ok, acc[2] + usd
    if not per_route or not metric:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(route or 'none')}</td><td class=\"n\">{n_ok:.0f}</td>"
        f'<td class="n">{_fmt(_mean(tally.metric_sums.get((route, metric))))}</td>'
        f'<td class="n">{_usd(usd / n) if n else "–"}</td></tr>' for route, (n, n_ok, usd) in sorted(
            per_route.items()))
    point = run_point(tally, metric)
    if point:
        rows += (f"<tr><th>all</th><th class=\"n\">{tally.by_status.get('ok', 0):,}</th>"
                 f'<th class="n">{point[1]:.3f}</th><th class="n">{_usd(point[0])}</th></tr>')
    return (f"<h3>{html.escape(metric)} and cost per route</h3>"
            f'<div class="table"><table><tr><th>route</th><th>images</th><th>mean {html.escape(metric)}</th>'
            f"<th>USD per image</th></tr>{rows}</table></div>")


def _chart_html(tally: Tally, metric: str) -> str:
    """The run's point against the baselines that report the same metric."""
    point = run_point(tally, metric) if metric else None
    others = [b for b in tally.baselines if isinstance(b.get(metric), float) and
              isinstance(b.get("cost_usd_per_image"), float)]
    if not point or not others:
        return ""
    points = [(str(b["baseline"]), float(b["cost_usd_per_image"]), float(b[metric]), BASE_COLOUR) for b in others]
    points.append(("this run", point[0], point[1], RUN_COLOUR))
    notes = "; ".join(f"{html.escape(str(b['baseline']))}: {int(b.get('images') or 0)} images"
                      + (f" ({html.escape(str(b['how']))})" if b.get("how") else "") for b in others)
    return (f'<h3>{html.escape(metric)} against cost</h3><figure class="chart">{quality_cost_svg(points, metric)}'
            f"<figcaption>green: this run's final images; grey: reference runs of the same prompts "
            f"({BASELINES}) — {notes}</figcaption></figure>")


def quality_html(tally: Tally) -> str:
    """The section: rounds, quality and cost per route, and the chart; '' when the run has none of them."""
    metric = chart_metric(tally)
    parts = [_rounds_html(tally, metric), _routes_html(tally, metric), _chart_html(tally, metric)]
    if not any(parts):
        return ""
    return ('<h2>Quality and cost</h2><div class="cols"><section>' + parts[0] + parts[1] + "</section><section>"
            + parts[2] + "</section></div>")


def read_baselines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baselines file's rows as the page uses them: numbers as floats, rows without a name left out."""
    out = []
    for row in rows:
        if not row.get("baseline"):
            continue
        out.append({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in row.items()})
    return out
