"""report.html next to the manifest: contact sheet, throughput over time, stage timings, errors, cost."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

from actors.layout import REPORT_HTML
from actors.manifest_schema import REPORT_COLUMNS
from actors.storage import ObjectStore, open_store
from configs.storage import StoreSpec
from pipelines.manifest import iter_manifest_batches

NUM_THUMBS = 48
THUMB_PX = 160
NUM_PROBLEMS = 200
STAGES = ("queue_ms", "generate_ms", "encode_ms", "upload_ms")  # timing rows of the page, in pipeline order
COLUMNS = list(REPORT_COLUMNS)  # the manifest columns flagged `report`


@dataclass
class Tally:
    """What the page needs, accumulated one manifest batch at a time: about 40 bytes per row (timings and
    timestamps as float arrays), never the manifest itself, so a million-row report stays small."""

    step: int
    """Every step-th ok image goes to the contact sheet."""
    total: int = 0
    num_ok_seen: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    cost_by_gen: dict[str, float] = field(default_factory=dict)
    stages: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name in STAGES})
    fresh_times: list[Any] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)

    def add(self, batch: Any) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        table = pa.Table.from_batches([batch])
        self.total += table.num_rows
        for r in table.group_by("status").aggregate([("status", "count")]).to_pylist():
            self.by_status[r["status"]] = self.by_status.get(r["status"], 0) + r["status_count"]
        for r in table.group_by("generator").aggregate([("cost_usd", "sum")]).to_pylist():
            self.cost_by_gen[r["generator"]] = self.cost_by_gen.get(r["generator"], 0.0) + (r["cost_usd_sum"] or 0)
        for name in STAGES:
            v = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            self.stages[name].append(v[np.isfinite(v) & (v > 0)])
        status_ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
        ok = pc.fill_null(pc.and_(status_ok, pc.not_equal(table.column("image_uri"), "")), False)
        # this run's generation only: images made by an earlier run carry their old timestamps
        made_now = pc.and_(ok, pc.invert(pc.fill_null(table.column("already_present"), False)))
        self.fresh_times.append(table.filter(made_now).column("generated_at").to_numpy(zero_copy_only=False))
        if len(self.problems) < NUM_PROBLEMS:
            bad = table.filter(pc.invert(status_ok))
            self.problems += bad.slice(0, NUM_PROBLEMS - len(self.problems)).to_pylist()
        ok_rows = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
        picks = [int(i) for n, i in enumerate(ok_rows) if (self.num_ok_seen + n) % self.step == 0]
        picks = picks[: NUM_THUMBS - len(self.sample)]
        if picks:
            self.sample += table.take(pa.array(picks, pa.int64())).to_pylist()
        self.num_ok_seen += len(ok_rows)


def write_report(output_uri: str, store: StoreSpec) -> str:
    """Build report.html from every row of the committed manifest and a sample of images; returns its URI."""
    import pyarrow.compute as pc

    objects = open_store(output_uri, store)
    # 1 how many ok images there are (one cheap column), so the contact sheet spreads over all of them
    num_ok = sum(pc.sum(pc.equal(b.column("status"), "ok")).as_py() or 0
                 for b in iter_manifest_batches(output_uri, store, ["status"]))
    # 2 one streaming pass for counts, cost, timings, throughput, problems and the thumbnail rows
    tally = Tally(step=max(1, num_ok // NUM_THUMBS))
    for batch in iter_manifest_batches(output_uri, store, COLUMNS):
        tally.add(batch)
    thumbs = [(r, _thumb(objects, r["image_uri"])) for r in tally.sample]
    # 3 the page
    objects.put(REPORT_HTML, _page(tally, thumbs, output_uri).encode(), "text/html; charset=utf-8")
    return objects.uri_of(REPORT_HTML)


def _thumb(objects: ObjectStore, uri: str) -> str:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(objects.get(objects.rel_of(uri)))).convert("RGB")
    except Exception:  # noqa: BLE001 - a missing thumbnail must not break the report
        return ""
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def _score_text(score: float | None) -> str:
    return f" · score {score:.1f}" if score is not None else ""


def _stats(chunks: list[Any]) -> tuple[str, str, str]:
    import numpy as np

    v = np.concatenate(chunks) if chunks else np.zeros(0)
    if not v.size:
        return "–", "–", "–"
    return f"{v.mean():.1f}", f"{np.percentile(v, 50):.1f}", f"{np.percentile(v, 95):.1f}"


def _throughput_svg(times: Any, width: int = 640, height: int = 160) -> str:
    """Images completed over time (a cumulative line: no bins, so no invented peaks and no tiny-run failures)."""
    import numpy as np

    t = np.asarray(times, dtype=np.float64)
    t = np.sort(t[np.isfinite(t) & (t > 0)])
    if t.size < 2:
        return "<p>not enough images for a throughput chart</p>"
    rel = t - t[0]  # relative seconds: absolute Unix times lose precision in float math
    span = float(rel[-1])
    if span <= 0:
        return f"<p>{t.size} images completed at the same moment</p>"
    step = max(1, t.size // 200)  # at most ~200 points
    idx = np.unique(np.append(np.arange(0, t.size, step), t.size - 1))
    pts = " ".join(f"{rel[i] / span * width:.1f},{height - (i + 1) / t.size * (height - 10):.1f}" for i in idx)
    return (f'<svg width="{width}" height="{height + 20}" role="img" aria-label="images completed over time">'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{pts}"/>'
            f'<text x="0" y="{height + 16}" font-size="12">0 s</text>'
            f'<text x="{width - 60}" y="{height + 16}" font-size="12">{span:.1f} s</text>'
            f'<text x="4" y="12" font-size="12">{t.size} images in {span:.1f} s '
            f'(average {t.size / span:.2f} img/s)</text></svg>')


def _page(tally: Tally, thumbs: list[tuple[dict[str, Any], str]], uri: str) -> str:
    import numpy as np

    e = html.escape
    cards = "".join(
        f'<figure><img alt="{e(r["prompt"][:80])}" src="data:image/jpeg;base64,{b64}"/>'
        f'<figcaption><b>{e(r["generator"])}</b>'
        f'{_score_text(r["clip_score"])}'
        f'<br/>{e(r["prompt"][:90])}</figcaption></figure>'
        for r, b64 in thumbs if b64)
    stages = "".join(
        f"<tr><td>{name}</td><td>{a}</td><td>{b}</td><td>{c}</td></tr>"
        for name in STAGES
        for a, b, c in [_stats(tally.stages[name])])
    problem_rows = "".join(
        f"<tr><td>{e(str(r['id']))}</td><td>{e(r['generator'])}</td><td>{e(r['status'])}</td>"
        f"<td>{e((r['error'] or '')[:200])}</td></tr>" for r in tally.problems)
    cost_by_gen = tally.cost_by_gen
    costs = "".join(f"<tr><td>{e(g)}</td><td>${c:.4f}</td></tr>" for g, c in sorted(cost_by_gen.items()))
    status_line = ", ".join(f"{k}: {v}" for k, v in sorted(tally.by_status.items()))
    total = tally.total
    throughput = _throughput_svg(np.concatenate(tally.fresh_times) if tally.fresh_times else np.zeros(0))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>imagefleet report</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#111}}h1{{font-size:22px}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}}figure{{margin:0;width:{THUMB_PX}px;font-size:11px}}
figure img{{width:{THUMB_PX}px;height:{THUMB_PX}px;object-fit:contain;background:#eee;border-radius:4px}}
table{{border-collapse:collapse;margin:8px 0 20px}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px}}
th{{background:#f3f4f6}}</style></head><body>
<h1>imagefleet run report</h1>
<p>{e(uri)} · {total} images requested · {e(status_line)} · cost of these images ${sum(cost_by_gen.values()):.4f}</p>
<h2>Contact sheet</h2><div class="grid">{cards or "<p>no images</p>"}</div>
<h2>Throughput over time</h2>{throughput}
<h2>Stage timings (ms per image)</h2><table><tr><th>stage</th><th>mean</th><th>p50</th><th>p95</th></tr>{stages}</table>
<h2>Cost by generator</h2><table><tr><th>generator</th><th>USD</th></tr>{costs}</table>
<h2>Errors and refusals</h2><table><tr><th>id</th><th>generator</th><th>status</th><th>reason</th></tr>
{problem_rows or "<tr><td colspan=4>none</td></tr>"}</table></body></html>"""
