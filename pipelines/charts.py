"""The run report's charts: inline SVG (no script, no image file, no network) with axes, ticks and units, that
scale to the width of their place on the page."""

from __future__ import annotations

import html
import math
from typing import Any

from imagefleet.pipelines.report_stats import Timeline
from imagefleet.pipelines.units import THROUGHPUT_MEANS, duration, throughput

SCORE_BIN = 0.01  # scores are counted in bins this wide (fine enough for 0..1 scorers such as the facts scorer; a
# CLIP score's 0..100 is at most 10,000 counters), never one per row; bars merge bins to a round width
MAX_BARS = 40
WIDTH = 480
"""Every chart's drawing width (its viewBox); the page scales it to the column it sits in."""
LEFT, RIGHT, TOP, BOTTOM = 58, 26, 12, 46
"""The plot area's margins: tick labels and the axis titles live there."""
FONT = 12
AXIS = "#444"
GRID = "#e5e7eb"
# tick steps of a time axis, in seconds: whole units, so every label is short ('30 s', '2 min', '1 h')
TIME_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
              86400)


def svg(label: str, height: int, body: str) -> str:
    """The report's one chart form: an inline SVG of WIDTH user units that scales to its column's width."""
    return (f'<svg viewBox="0 0 {WIDTH} {height}" preserveAspectRatio="xMinYMin meet" role="img" '
            f'aria-label="{html.escape(label)}" font-family="system-ui,sans-serif" font-size="{FONT}">{body}</svg>')


def nice_ticks(hi: float, target: int = 5, steps: tuple[float, ...] = (), whole: bool = False) -> list[float]:
    """Tick values from 0 to at least `hi`: about `target` of them at a round step (1, 2 or 5 times a power of
    ten, or one of `steps`); `whole`: a step of at least 1 (counts)."""
    if hi <= 0:
        return [0.0, 1.0]
    if steps:
        step = next((s for s in steps if hi / s <= target), steps[-1] * math.ceil(hi / steps[-1] / target))
    else:
        raw = hi / target
        power = 10 ** math.floor(math.log10(raw))
        step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1.0) if whole else step
    count = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(count + 1)]


def time_tick(seconds: float, step: float) -> str:
    """A time axis label in the unit of its axis's `step` (a TIME_STEPS value): '45 s', '3 min', '2 h'."""
    if seconds == 0:
        return "0"
    if step < 60:
        return f"{seconds:g} s"
    if step < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def count_tick(value: float) -> str:
    """A count axis label: '40', '2,500', '25k', '1.5M'."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:,.0f}" if value >= 1 or value == 0 else f"{value:g}"


def axes(x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]], x_title: str, y_title: str,
         box: tuple[float, float, float, float]) -> str:
    """Grid lines, tick marks, tick labels and axis titles around the plot area `box` (x0, y0, x1, y1); tick
    positions are already in drawing units."""
    x0, y0, x1, y1 = box
    parts = []
    for y, text in y_ticks:
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
                     f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}">{html.escape(text)}</text>')
    for x, text in x_ticks:
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y1 + 5}" stroke="{AXIS}"/>'
                     f'<text x="{x:.1f}" y="{y1 + 18}" text-anchor="middle" fill="{AXIS}">{html.escape(text)}</text>')
    parts.append(f'<path d="M{x0},{y0} V{y1} H{x1}" fill="none" stroke="{AXIS}"/>'
                 f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 + 38}" text-anchor="middle">{html.escape(x_title)}</text>'
                 f'<text transform="translate(14 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 f"{html.escape(y_title)}</text>")
    return "".join(parts)


def throughput_svg(times: Any, started_at: float = 0.0, wall_s: float = 0.0, num_new: int = 0,
                   label: str = "images completed over time", height: int = 250) -> str:
    """Images completed over time: a cumulative line (no bins, so no invented peaks and no tiny-run failures).

    Args:
        times: a Timeline, or completion times (Unix seconds).
        started_at: when the run started (the time axis starts there); 0: at the first completed image.
        wall_s: the run's wall time; with `num_new` it draws the run's throughput (THROUGHPUT_MEANS) as a dashed
            line from the start.
        num_new: the images the run made.
        label: the chart's accessible name.
        height: its drawing height.
    """
    import numpy as np

    if not isinstance(times, Timeline):
        timeline = Timeline()
        timeline.add(times)
        times = timeline
    n = times.count
    if n < 2 and not (n == 1 and started_at):
        return "<p>not enough images for a throughput chart</p>"
    rel, done = times.curve()  # relative seconds: absolute Unix times lose precision in float math
    origin = started_at if 0 < started_at <= times.first else times.first
    rel = rel + (times.first - origin)
    span = max(float(rel[-1]), wall_s if started_at else 0.0)
    if span <= 0:
        return f"<p>{n} images completed at the same moment</p>"
    x_vals = nice_ticks(span, 5, TIME_STEPS)
    y_vals = nice_ticks(float(n), 4, whole=True)
    box = (LEFT, TOP, WIDTH - RIGHT, height - BOTTOM)
    sx = (box[2] - box[0]) / x_vals[-1]
    sy = (box[3] - box[1]) / y_vals[-1]
    step = max(1, rel.size // 300)  # at most ~300 points
    idx = np.unique(np.append(np.arange(0, rel.size, step), rel.size - 1))
    # nothing completed between the start and the first image: the line runs along the time axis until then
    start = [f"{box[0]},{box[3]}", f"{box[0] + rel[0] * sx:.1f},{box[3]:.1f}"] if origin < times.first else []
    pts = " ".join([*start, *(f"{box[0] + rel[i] * sx:.1f},{box[3] - done[i] * sy:.1f}" for i in idx)])
    body = [axes([(box[0] + v * sx, time_tick(v, x_vals[1])) for v in x_vals],
                 [(box[3] - v * sy, count_tick(v)) for v in y_vals],
                 "time since the run started" if origin < times.first or started_at else
                 "time since the first image", "images completed", box),
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{pts}"/>']
    if started_at and wall_s > 0 and num_new:
        rate = throughput(num_new, wall_s)
        body.append(f'<line x1="{box[0]}" y1="{box[3]}" x2="{box[0] + wall_s * sx:.1f}" '
                    f'y2="{box[3] - num_new * sy:.1f}" stroke="#9ca3af" stroke-width="1.5" stroke-dasharray="5 4">'
                    f"<title>{rate:.2f} img/s ({THROUGHPUT_MEANS})</title></line>")
    return svg(f"{label}: {n} images in {duration(float(rel[-1]) - float(rel[0]))}", height, "".join(body))


def throughput_caption(times: Timeline, started_at: float, wall_s: float, num_new: int) -> str:
    """What the throughput chart shows, in words (HTML-safe)."""
    if started_at and wall_s > 0 and num_new:
        return (f"blue: images completed since the run started; dashed grey: the run's throughput, "
                f"{throughput(num_new, wall_s):.2f} img/s ({THROUGHPUT_MEANS}: {num_new} in {duration(wall_s)})")
    if times.count >= 2:
        return (f"{times.count} images completed within {duration(times.last - times.first)} "
                f"of each other")
    return ""


def bins_per_bar(span: int) -> int:
    """SCORE_BIN-wide bins per bar for `span` bins: a round number (1, 2 or 5 times a power of ten) giving at most
    MAX_BARS bars, so bars are 0.01, 0.02, 0.05, 0.1, ... 1, 2, 5 score units wide."""
    power = 1
    while True:
        for m in (power, 2 * power, 5 * power):
            if math.ceil(span / m) <= MAX_BARS - 1:  # one bar spare: aligning the first bar down may add one
                return m
        power *= 10


def histogram_svg(series: list[tuple[str, dict[int, int]]], colours: dict[str, str] | None = None,
                  band: int = 104) -> str:
    """Score histograms on one shared score axis, one band per series (counts kept in SCORE_BIN-wide bins), each
    in its colour (default blue) with its own count axis and a title above it."""
    filled = [(name, hist) for name, hist in series if hist]
    if not filled:
        return "<p>no scores recorded</p>"
    lo = min(min(h) for _, h in filled)
    hi = max(max(h) for _, h in filled)
    merge = bins_per_bar(hi - lo + 1)
    lo = lo // merge * merge  # bars start at a round score
    num_bars = (hi - lo) // merge + 1
    x0, x1 = LEFT, WIDTH - RIGHT
    bar_w = (x1 - x0) / num_bars
    height = len(filled) * band + BOTTOM
    body = []
    for k, (name, hist) in enumerate(filled):
        counts = [0] * num_bars
        for b, c in hist.items():
            counts[(b - lo) // merge] += c
        top_y, base_y = k * band + 34, (k + 1) * band  # the top of each band holds its title
        ticks = nice_ticks(float(max(counts)), 2, whole=True)
        sy = (base_y - top_y) / ticks[-1]
        colour = (colours or {}).get(name, "#2563eb")
        body.append(f'<text x="{x0}" y="{top_y - 12}" font-weight="600">{html.escape(name)}: {sum(counts):,} '
                    f"images</text>")
        for t in ticks:
            body.append(f'<line x1="{x0}" x2="{x1}" y1="{base_y - t * sy:.1f}" y2="{base_y - t * sy:.1f}" '
                        f'stroke="{GRID}"/><text x="{x0 - 6}" y="{base_y - t * sy + 4:.1f}" text-anchor="end" '
                        f'fill="{AXIS}">{count_tick(t)}</text>')
        body += [f'<rect x="{x0 + i * bar_w:.1f}" y="{base_y - c * sy:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                 f'height="{c * sy:.1f}" fill="{colour}"><title>{count_tick(c)}</title></rect>'
                 for i, c in enumerate(counts) if c]
        body.append(f'<path d="M{x0},{top_y} V{base_y} H{x1}" fill="none" stroke="{AXIS}"/>')
    axis_y = len(filled) * band
    lo_score, width_score = lo * SCORE_BIN, num_bars * merge * SCORE_BIN
    step = nice_ticks(width_score, 6)[1]
    first = math.ceil(lo_score / step - 1e-9) * step  # ticks at round scores inside the axis
    for v in [first + i * step for i in range(int((lo_score + width_score - first) / step + 1e-9) + 1)]:
        x = x0 + (v - lo_score) / width_score * (x1 - x0)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y}" y2="{axis_y + 5}" stroke="{AXIS}"/>'
                    f'<text x="{x:.1f}" y="{axis_y + 18}" text-anchor="middle" fill="{AXIS}">{v:g}</text>')
    body.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{axis_y + 38}" text-anchor="middle">score (bars '
                f"{round(merge * SCORE_BIN, 9):g} wide)</text>"
                f'<text transform="translate(14 {axis_y / 2:.1f}) rotate(-90)" text-anchor="middle">images</text>')
    return svg("score histograms per route", height, "".join(body))
