"""The run report's charts: inline SVG (no script, no image file), readable in any browser."""

from __future__ import annotations

import html
import math
from typing import Any

from imagefleet.pipelines.report_stats import Timeline

SCORE_BIN = 1.0  # scores are counted in bins this wide: a histogram is a few hundred counters, not one per row
MAX_BARS = 40


def svg(label: str, width: int, height: int, body: str) -> str:
    """The report's one chart form: an inline SVG (no script, no image file), readable in any browser."""
    return f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(label)}">{body}</svg>'


def throughput_svg(times: Any, width: int = 640, height: int = 160,
                    label: str = "images completed over time") -> str:
    """Images completed over time (a cumulative line: no bins, so no invented peaks and no tiny-run failures).
    `times`: a Timeline, or completion times."""
    import numpy as np

    if not isinstance(times, Timeline):
        timeline = Timeline()
        timeline.add(times)
        times = timeline
    n = times.count
    if n < 2:
        return "<p>not enough images for a throughput chart</p>"
    rel, done = times.curve()  # relative seconds: absolute Unix times lose precision in float math
    span = times.last - times.first
    if span <= 0:
        return f"<p>{n} images completed at the same moment</p>"
    step = max(1, rel.size // 200)  # at most ~200 points
    idx = np.unique(np.append(np.arange(0, rel.size, step), rel.size - 1))
    pts = " ".join(f"{rel[i] / span * width:.1f},{height - done[i] / n * (height - 10):.1f}" for i in idx)
    return svg(label, width, height + 20,
                f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{pts}"/>'
                f'<text x="0" y="{height + 16}" font-size="12">0 s</text>'
                f'<text x="{width - 60}" y="{height + 16}" font-size="12">{span:.1f} s</text>'
                f'<text x="4" y="12" font-size="12">{n} images in {span:.1f} s '
                f'(average {n / span:.2f} img/s)</text>')


def histogram_svg(series: list[tuple[str, dict[int, int]]], colours: dict[str, str] | None = None, width: int = 640,
                  band: int = 64) -> str:
    """Score histograms on one shared axis, one band per series (counts kept in SCORE_BIN-wide bins), each in its
    colour (default blue)."""
    filled = [(name, hist) for name, hist in series if hist]
    if not filled:
        return "<p>no scores recorded</p>"
    lo = min(min(h) for _, h in filled)
    hi = max(max(h) for _, h in filled)
    merge = max(1, math.ceil((hi - lo + 1) / MAX_BARS))  # bins per bar
    num_bars = (hi - lo) // merge + 1
    bar_w = width / num_bars
    body = []
    for k, (name, hist) in enumerate(filled):
        counts = [0] * num_bars
        for b, c in hist.items():
            counts[(b - lo) // merge] += c
        top, y0 = max(counts), (k + 1) * band
        colour = (colours or {}).get(name, "#2563eb")
        body += [f'<rect x="{i * bar_w:.1f}" y="{y0 - c / top * (band - 22):.1f}" width="{max(bar_w - 1, 1):.1f}" '
                 f'height="{c / top * (band - 22):.1f}" fill="{colour}"/>' for i, c in enumerate(counts) if c]
        body.append(f'<text x="4" y="{y0 - band + 14}" font-size="12">{html.escape(name)}: '
                    f'{sum(counts)} images</text>')
    axis = len(filled) * band + 16
    body.append(f'<text x="0" y="{axis}" font-size="12">score {lo * SCORE_BIN:g}</text>')
    body.append(f'<text x="{width - 70}" y="{axis}" font-size="12">{(lo + num_bars * merge) * SCORE_BIN:g}</text>')
    return svg("score histograms per route", width, axis + 4, "".join(body))
