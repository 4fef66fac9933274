"""report.html next to the manifest: contact sheet, throughput over time, stage timings, errors, cost."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from actors.storage import ObjectStore
from configs.storage import StoreSpec
from pipelines.manifest import read_manifest_columns

NUM_THUMBS = 48
THUMB_PX = 160
COLUMNS = ["id", "image_index", "prompt", "generator", "status", "error", "image_uri", "clip_score", "cost_usd",
           "queue_ms", "generate_ms", "encode_ms", "upload_ms", "generated_at", "written_at", "route",
           "already_present"]


def write_report(output_uri: str, store: StoreSpec) -> str:
    """Build report.html from the committed manifest and a sample of images; returns its URI."""
    table = read_manifest_columns(output_uri, store, COLUMNS)
    objects = ObjectStore(output_uri, store)
    rows = table.to_pylist() if table.num_rows <= 200_000 else table.slice(0, 200_000).to_pylist()
    ok = [r for r in rows if r["status"] == "ok" and r["image_uri"]]
    step = max(1, len(ok) // NUM_THUMBS)
    thumbs = [(r, _thumb(objects, output_uri, r["image_uri"])) for r in ok[::step][:NUM_THUMBS]]
    page = _page(rows, thumbs, table.num_rows, output_uri)
    objects.put("report.html", page.encode(), "text/html; charset=utf-8")
    return objects.uri_of("report.html")


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


def _stats(values: list[float]) -> tuple[str, str, str]:
    v = sorted(x for x in values if x is not None and not math.isnan(x) and x > 0)
    if not v:
        return "–", "–", "–"
    return f"{sum(v) / len(v):.1f}", f"{v[len(v) // 2]:.1f}", f"{v[min(len(v) - 1, int(len(v) * 0.95))]:.1f}"


def _throughput_svg(times: list[float], width: int = 640, height: int = 160) -> str:
    times = sorted(t for t in times if t)
    if len(times) < 2:
        return "<p>not enough images for a throughput chart</p>"
    t0, t1 = times[0], times[-1]
    bins = 40
    span = max(t1 - t0, 1e-6)
    counts = [0] * bins
    for t in times:
        counts[min(bins - 1, int((t - t0) / span * bins))] += 1
    rate = [c / (span / bins) for c in counts]
    top = max(rate) or 1
    pts = " ".join(f"{i * width / (bins - 1):.1f},{height - r / top * (height - 10):.1f}" for i, r in enumerate(rate))
    return (f'<svg width="{width}" height="{height + 20}" role="img" aria-label="images per second over time">'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{pts}"/>'
            f'<text x="0" y="{height + 16}" font-size="12">0 s</text>'
            f'<text x="{width - 60}" y="{height + 16}" font-size="12">{span:.1f} s</text>'
            f'<text x="4" y="12" font-size="12">peak {top:.1f} img/s</text></svg>')


def _page(rows: list[dict[str, Any]], thumbs: list[tuple[dict[str, Any], str]], total: int, uri: str) -> str:
    e = html.escape
    by_status: dict[str, int] = {}
    cost_by_gen: dict[str, float] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        cost_by_gen[r["generator"]] = cost_by_gen.get(r["generator"], 0.0) + (r["cost_usd"] or 0.0)
    cards = "".join(
        f'<figure><img alt="{e(r["prompt"][:80])}" src="data:image/jpeg;base64,{b64}"/>'
        f'<figcaption><b>{e(r["generator"])}</b>'
        f'{_score_text(r["clip_score"])}'
        f'<br/>{e(r["prompt"][:90])}</figcaption></figure>'
        for r, b64 in thumbs if b64)
    stages = "".join(
        f"<tr><td>{name}</td><td>{a}</td><td>{b}</td><td>{c}</td></tr>"
        for name in ("queue_ms", "generate_ms", "encode_ms", "upload_ms")
        for a, b, c in [_stats([r[name] for r in rows])])
    problems = [r for r in rows if r["status"] not in ("ok",)][:200]
    problem_rows = "".join(
        f"<tr><td>{e(str(r['id']))}</td><td>{e(r['generator'])}</td><td>{e(r['status'])}</td>"
        f"<td>{e((r['error'] or '')[:200])}</td></tr>" for r in problems)
    costs = "".join(f"<tr><td>{e(g)}</td><td>${c:.4f}</td></tr>" for g, c in sorted(cost_by_gen.items()))
    status_line = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
    # this run's generation only: images made by an earlier run carry their old timestamps
    throughput = _throughput_svg([r["generated_at"] for r in rows if r["status"] == "ok" and not r["already_present"]])
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
