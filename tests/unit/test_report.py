"""report.html from a local manifest, without Ray: counts and cost over every row, thumbnails with their
prompts, the error/refusal table, a throughput chart of this run's images only (with axes, ticks and units), the
run's one throughput figure from its run.json, and durations in human units."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagefleet.actors.layout import MANIFEST_DIR, RUN_JSON, image_rel, manifest_part
from imagefleet.actors.manifest_schema import FLAT_SCHEMA, typed
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.report import write_report
from imagefleet.pipelines.schema import MANIFEST
from imagefleet.pipelines.units import duration, duration_ms


def manifest_row(i: int, root: Path, **extra: Any) -> dict[str, Any]:
    key = f"{i:040x}"
    uri = ""
    if extra.get("status", "ok") == "ok":
        path = root / image_rel(key, "png")
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (i * 20 % 255, 80, 160)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        uri = str(path)
    base = {"id": f"r{i}", "image_key": key, "prompt": f"prompt <{i}>", "generator": "g1" if i % 2 else "g2",
            "status": "ok", "error": "", "image_uri": uri, "cost_usd": 0.5, "generate_ms": 100.0 + i,
            "generated_at": 1000.0 + i, "already_present": False, "clip_score": 30.0}
    return {f.name: {**base, **extra}.get(f.name) for f in MANIFEST}


def write_manifest(root: Path, rows: list[dict[str, Any]]) -> None:
    (root / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(typed(pa.Table.from_pylist(rows, schema=FLAT_SCHEMA)), root / manifest_part("r1", 0))


def test_report_covers_every_row(tmp_path: Path) -> None:
    rows = [manifest_row(i, tmp_path) for i in range(6)]
    rows += [manifest_row(6, tmp_path, status="error", error="prompt is empty", cost_usd=0.0),
             manifest_row(7, tmp_path, status="refused", error="safety system", cost_usd=0.25),
             manifest_row(8, tmp_path, already_present=True, generated_at=5.0)]  # made by an earlier run
    write_manifest(tmp_path, rows)
    uri = write_report(open_store(str(tmp_path), StoreSpec(kind="local")))
    page = Path(uri).read_text()
    assert "9 images requested" in page and "error: 1, ok: 7, refused: 1" in page
    assert "<b>$3.7500</b>cost of these images" in page  # 7 ok x 0.5 + 0.25 refused, over all rows
    assert "<b>7</b>images ready (6 new, 1 already present)" in page
    assert page.count("data:image/jpeg;base64,") == 7 and "prompt &lt;3&gt;" in page  # prompts escaped
    assert "prompt is empty" in page and "safety system" in page
    # 1000..1005: the earlier run's image (t=5) is not in the chart
    assert 'aria-label="images completed over time: 6 images in 5.0 s"' in page
    # no run.json: no throughput figure rather than another definition of it
    assert "<b>–</b>throughput (the run&#x27;s wall time is not recorded" in page or "<b>–</b>throughput (the run's" \
        in page
    assert "img/s" not in page


def test_report_gives_the_runs_throughput_and_human_durations(tmp_path: Path) -> None:
    """The run's one throughput figure (new images / run wall time, from its run.json), the chart's time axis from
    the run's start with ticks and titles on both axes, and stage timings in ms / s rather than raw ms."""
    rows = [manifest_row(i, tmp_path, run_id="run-a", generated_at=1000.0 + 10 * i, queue_ms=0.04,
                         generate_ms=850.0 + i, encode_ms=12_300.0, upload_ms=245_000.0) for i in range(6)]
    rows.append(manifest_row(6, tmp_path, run_id="run-a", already_present=True, generated_at=5.0))
    write_manifest(tmp_path, rows)
    (tmp_path / RUN_JSON).write_text(json.dumps({"run_id": "run-a", "summary": {"wall_s": 66.0, "started_at": 990.0}}))
    page = Path(write_report(open_store(str(tmp_path), StoreSpec(kind="local")))).read_text()
    assert "<b>0.09 img/s</b>throughput (new images / run wall time)" in page  # 6 new in 66 s; 1 present: not
    assert "<b>1 min 06 s</b>run wall time" in page and "6 new in 1 min 06 s" not in page
    assert "0.09 img/s (new images / run wall time: 6 in 1 min 06 s)" in page  # the chart's caption
    chart = re.search(r'<svg[^>]*aria-label="images completed over time[^"]*".*?</svg>', page, re.S)
    assert chart
    svg = chart.group(0)
    ticks = re.findall(r'text-anchor="middle" fill="#444">([^<]+)</text>', svg)
    assert ticks == ["0", "15 s", "30 s", "45 s", "60 s", "75 s"]  # from the run's start (990) past its end
    assert re.findall(r'text-anchor="end" fill="#444">([^<]+)</text>', svg) == ["0", "2", "4", "6"]
    assert ">time since the run started</text>" in svg and ">images completed</text>" in svg
    assert "stroke-dasharray" in svg  # the run's throughput drawn as a line from the start
    # stage timings: human units, the manifest column named beside each stage
    assert "generate <span class=\"note\">generate_ms</span>" in page
    for text in ("40 µs", "852 ms", "12.3 s", "4 min 05 s"):
        assert f'<td class="n">{text}</td>' in page, text
    assert '<meta name="viewport"' in page and "grid-template-columns" in page  # laid out for any width


def test_a_run_json_of_another_run_gives_no_throughput(tmp_path: Path) -> None:
    """run.json is rewritten by each run; one that is not this manifest's (a write that failed after the
    commit) must not lend its wall time to this run."""
    write_manifest(tmp_path, [manifest_row(i, tmp_path, run_id="run-b") for i in range(3)])
    (tmp_path / RUN_JSON).write_text(json.dumps({"run_id": "run-a", "summary": {"wall_s": 9.0, "started_at": 1.0}}))
    page = Path(write_report(open_store(str(tmp_path), StoreSpec(kind="local")))).read_text()
    assert "img/s" not in page and "time since the first image" in page


@pytest.mark.parametrize("times", [[1.7e9, 1.7e9 + 1e-7, 1.7e9 + 2e-7], [1.7e9] * 3, [1.7e9, 1.7e9 + 0.5],
                                   [1.7e9 + i * 0.01 for i in range(5000)]])
def test_throughput_chart_never_fails_and_shows_completed_images(times: list[float]) -> None:
    """Runs of 2-3 images crashed the report ("Too many bins") after the manifest was committed."""
    from imagefleet.pipelines.charts import throughput_svg

    svg = throughput_svg(times)
    assert "images" in svg and "peak" not in svg
    if len(set(times)) > 1 and max(times) - min(times) > 0.1:
        assert f"{len(times)} images in" in svg and svg.count(",") <= 2 * 302  # a bounded number of points


def test_report_accumulators_are_bounded_and_close() -> None:
    """Past a few thousand rows the report keeps histograms, not values: memory stays fixed at a million rows,
    percentiles stay within the bins' 2.6% and the completion curve keeps its count, span and shape."""
    import numpy as np

    from imagefleet.pipelines.charts import throughput_svg
    from imagefleet.pipelines.report_stats import EXACT, LOG_BINS, MAX_BUCKETS, Sketch, Timeline

    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=4.0, sigma=1.0, size=300_000)
    sketch, small = Sketch(), Sketch()
    for chunk in np.array_split(values, 300):
        sketch.add(chunk)
    small.add(values[:100])
    assert sketch.values is None and sketch.bins.size == LOG_BINS  # folded: fixed size
    assert small.stats() == tuple(duration_ms(v) for v in (values[:100].mean(), np.percentile(values[:100], 50),
                                                           np.percentile(values[:100], 95)))  # small runs: exact
    for q in (50, 95):
        assert abs(sketch.percentile(q) / np.percentile(values, q) - 1) < 0.03
    assert sketch.stats()[0] == duration_ms(values.mean())  # the mean is exact

    times = 1.7e9 + np.sort(rng.uniform(0, 3600, size=1_000_000))
    timeline = Timeline()
    for chunk in np.array_split(times, 1000):
        timeline.add(chunk)
    assert timeline.count == 1_000_000 and len(timeline.buckets) <= MAX_BUCKETS and timeline.values is None
    rel, done = timeline.curve()
    assert done[-1] == 1_000_000 and np.all(np.diff(done) > 0) and np.all(np.diff(rel) >= 0)
    middle = np.searchsorted(rel, 1800)
    assert abs(done[middle] / 1_000_000 - 0.5) < 0.01  # uniform arrivals: half done halfway
    svg = throughput_svg(timeline)
    assert f"1000000 images in {duration(times[-1] - times[0])}" in svg and svg.count(",") <= 2 * 302
    assert EXACT < 1_000_000


@pytest.mark.parametrize(("seconds", "text"), [(0.00004, "40 µs"), (0.0072, "7.2 ms"), (0.85, "850 ms"),
                                               (0.9996, "1.0 s"), (12.34, "12.3 s"), (59.97, "1 min 00 s"),
                                               (245, "4 min 05 s"), (3725, "1 h 02 min"), (float("nan"), "–")])
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_one_throughput_definition() -> None:
    from imagefleet.pipelines.units import THROUGHPUT_MEANS, throughput, throughput_text

    assert throughput(151, 100.0) == 1.51 and throughput(5, 0.0) == 0.0
    assert throughput_text(151, 100.0) == f"1.51 img/s ({THROUGHPUT_MEANS})"
    assert THROUGHPUT_MEANS == "new images / run wall time"


def test_time_axis_labels_stay_short_and_apart() -> None:
    """Tick labels of the throughput chart: a round step in one unit, at most 6 ticks, whatever the span."""
    from imagefleet.pipelines.charts import LEFT, RIGHT, TIME_STEPS, WIDTH, nice_ticks, time_tick

    for span in (0.3, 7.0, 66.0, 299.0, 3000.0, 7300.0, 200_000.0):
        ticks = nice_ticks(span, 5, TIME_STEPS)
        labels = [time_tick(v, ticks[1]) for v in ticks]
        assert ticks[-1] >= span and len(ticks) <= 6, (span, labels)
        gap = (WIDTH - LEFT - RIGHT) / (len(ticks) - 1)
        assert max(len(label) for label in labels) * 8 < gap, (span, labels)  # ~8 units a character at most
