"""report.html from a local manifest, without Ray: counts and cost over every row, thumbnails with their
prompts, the error/refusal table, and a throughput chart of this run's images only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagefleet.actors.layout import MANIFEST_DIR, image_rel, manifest_part
from imagefleet.actors.manifest_schema import FLAT_SCHEMA, typed
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.report import write_report
from imagefleet.pipelines.schema import MANIFEST


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


def test_report_covers_every_row(tmp_path: Path) -> None:
    rows = [manifest_row(i, tmp_path) for i in range(6)]
    rows += [manifest_row(6, tmp_path, status="error", error="prompt is empty", cost_usd=0.0),
             manifest_row(7, tmp_path, status="refused", error="safety system", cost_usd=0.25),
             manifest_row(8, tmp_path, already_present=True, generated_at=5.0)]  # made by an earlier run
    (tmp_path / MANIFEST_DIR).mkdir()
    pq.write_table(typed(pa.Table.from_pylist(rows, schema=FLAT_SCHEMA)), tmp_path / manifest_part("r1", 0))
    uri = write_report(open_store(str(tmp_path), StoreSpec(kind="local")))
    page = Path(uri).read_text()
    assert "9 images requested" in page and "error: 1, ok: 7, refused: 1" in page
    assert "cost of these images $3.7500" in page  # 7 ok x 0.5 + 0.25 refused, over all rows
    assert page.count("data:image/jpeg;base64,") == 7 and "prompt &lt;3&gt;" in page  # prompts escaped
    assert "prompt is empty" in page and "safety system" in page
    assert "<svg" in page and "5.0 s" in page  # 1000..1005: the earlier run's image (t=5) is not in the chart


@pytest.mark.parametrize("times", [[1.7e9, 1.7e9 + 1e-7, 1.7e9 + 2e-7], [1.7e9] * 3, [1.7e9, 1.7e9 + 0.5],
                                   [1.7e9 + i * 0.01 for i in range(5000)]])
def test_throughput_chart_never_fails_and_shows_completed_images(times: list[float]) -> None:
    """Runs of 2-3 images crashed the report ("Too many bins") after the manifest was committed."""
    from imagefleet.pipelines.charts import throughput_svg

    svg = throughput_svg(times)
    assert "images" in svg and "peak" not in svg
    if len(set(times)) > 1 and max(times) - min(times) > 0.1:
        assert f"{len(times)} images in" in svg and svg.count(",") <= 2 * 202  # a bounded number of points


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
    assert small.stats() == (f"{values[:100].mean():.1f}", f"{np.percentile(values[:100], 50):.1f}",
                             f"{np.percentile(values[:100], 95):.1f}")  # small runs: exact
    for q in (50, 95):
        assert abs(sketch.percentile(q) / np.percentile(values, q) - 1) < 0.03
    assert sketch.stats()[0] == f"{values.mean():.1f}"  # the mean is exact

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
    assert f"1000000 images in {times[-1] - times[0]:.1f} s" in svg and svg.count(",") <= 2 * 202
    assert EXACT < 1_000_000
