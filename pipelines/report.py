"""report.html next to the manifest: contact sheet, throughput over time, stage timings, errors, cost."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from actors.storage import ObjectStore
from configs.storage import StoreSpec
from pipelines.manifest import read_manifest_columns

NUM_THUMBS = 48
THUMB_PX = 160
NUM_PROBLEMS = 200
STAGES = ("queue_ms", "generate_ms", "encode_ms", "upload_ms")
# everything but the prompts, which only the sampled thumbnails need (kept columnar: 1M rows stay cheap)
COLUMNS = ["id", "image_key", "generator", "status", "error", "image_uri", "clip_score", "cost_usd", *STAGES,
           "generated_at", "already_present"]


def write_report(output_uri: str, store: StoreSpec) -> str:
    """Build report.html from the whole committed manifest (columnar) and a sample of images; returns its URI."""
    import pyarrow.compute as pc

    # 1 the manifest's columns for every row (Arrow, no per-row Python objects)
    table = read_manifest_columns(output_uri, store, COLUMNS)
    objects = ObjectStore(output_uri, store)
    # 2 an evenly spread sample of ok images for the contact sheet, with their prompts
    ok = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.not_equal(table.column("image_uri"), "")))
    step = max(1, ok.num_rows // NUM_THUMBS)
    sample = ok.take(list(range(0, ok.num_rows, step))[:NUM_THUMBS]).to_pylist()
    prompts = _prompts(output_uri, store, [r["image_key"] for r in sample])
    thumbs = [({**r, "prompt": prompts.get(r["image_key"], "")}, _thumb(objects, output_uri, r["image_uri"]))
              for r in sample]
    # 3 the page
    objects.put("report.html", _page(table, thumbs, output_uri).encode(), "text/html; charset=utf-8")
    return objects.uri_of("report.html")


def _prompts(output_uri: str, store: StoreSpec, keys: list[str]) -> dict[str, str]:
    import pyarrow.compute as pc

    if not keys:
        return {}
    found = read_manifest_columns(output_uri, store, ["image_key", "prompt"],
                                  where=pc.field("image_key").isin(keys))
    return dict(zip(found.column("image_key").to_pylist(), found.column("prompt").to_pylist(), strict=True))


def _thumb(objects: ObjectStore, root: str, uri: str) -> str:
    from PIL import Image

    rel = uri[len(root.rstrip("/")) + 1 :] if uri.startswith(root.rstrip("/")) else uri
    try:
        img = Image.open(io.BytesIO(objects.get(rel))).convert("RGB")
    except Exception:  # noqa: BLE001 - a missing thumbnail must not break the report
        return ""
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def _score_text(score: float | None) -> str:
    return f" · score {score:.1f}" if score is not None else ""


def _stats(column: Any) -> tuple[str, str, str]:
    import numpy as np

    v = column.to_numpy(zero_copy_only=False).astype(np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return "–", "–", "–"
    return f"{v.mean():.1f}", f"{np.percentile(v, 50):.1f}", f"{np.percentile(v, 95):.1f}"


def _throughput_svg(times: Any, width: int = 640, height: int = 160) -> str:
    import numpy as np

    t = np.asarray(times, dtype=np.float64)
    t = t[np.isfinite(t) & (t > 0)]
    if t.size < 2:
        return "<p>not enough images for a throughput chart</p>"
    t0, t1 = float(t.min()), float(t.max())
    bins = 40
    span = max(t1 - t0, 1e-6)
    counts, _ = np.histogram(t, bins=bins, range=(t0, t0 + span))
    rate = [float(c) / (span / bins) for c in counts]
    top = max(rate) or 1
    pts = " ".join(f"{i * width / (bins - 1):.1f},{height - r / top * (height - 10):.1f}" for i, r in enumerate(rate))
    return (f'<svg width="{width}" height="{height + 20}" role="img" aria-label="images per second over time">'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{pts}"/>'
            f'<text x="0" y="{height + 16}" font-size="12">0 s</text>'
            f'<text x="{width - 60}" y="{height + 16}" font-size="12">{span:.1f} s</text>'
            f'<text x="4" y="12" font-size="12">peak {top:.1f} img/s</text></svg>')


def _page(table: Any, thumbs: list[tuple[dict[str, Any], str]], uri: str) -> str:
    import pyarrow.compute as pc

    e = html.escape
    counts = table.group_by("status").aggregate([("status", "count")]).to_pylist()
    by_status = {r["status"]: r["status_count"] for r in counts}
    costs_by = table.group_by("generator").aggregate([("cost_usd", "sum")]).to_pylist()
    cost_by_gen = {r["generator"]: r["cost_usd_sum"] or 0.0 for r in costs_by}
    cards = "".join(
        f'<figure><img alt="{e(r["prompt"][:80])}" src="data:image/jpeg;base64,{b64}"/>'
        f'<figcaption><b>{e(r["generator"])}</b>'
        f'{_score_text(r["clip_score"])}'
        f'<br/>{e(r["prompt"][:90])}</figcaption></figure>'
        for r, b64 in thumbs if b64)
    stages = "".join(
        f"<tr><td>{name}</td><td>{a}</td><td>{b}</td><td>{c}</td></tr>"
        for name in STAGES
        for a, b, c in [_stats(table.column(name))])
    problems = table.filter(pc.not_equal(table.column("status"), "ok")).slice(0, NUM_PROBLEMS).to_pylist()
    problem_rows = "".join(
        f"<tr><td>{e(str(r['id']))}</td><td>{e(r['generator'])}</td><td>{e(r['status'])}</td>"
        f"<td>{e((r['error'] or '')[:200])}</td></tr>" for r in problems)
    costs = "".join(f"<tr><td>{e(g)}</td><td>${c:.4f}</td></tr>" for g, c in sorted(cost_by_gen.items()))
    status_line = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
    total = table.num_rows
    # this run's generation only: images made by an earlier run carry their old timestamps
    made_now = pc.invert(pc.fill_null(table.column("already_present"), False))
    fresh = pc.and_(pc.equal(table.column("status"), "ok"), made_now)
    throughput = _throughput_svg(table.filter(fresh).column("generated_at").to_numpy(zero_copy_only=False))
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
