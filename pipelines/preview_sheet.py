"""The preview's contact sheet: one self-contained HTML page (thumbnails inline, each linking to its full image in
the preview folder) with every image's prompt, generator, route, seed, score, cost and, for a row without an image,
its error; and the terminal listing that names the page."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagefleet.pipelines.report import jpeg_thumbnail

if TYPE_CHECKING:
    import pyarrow as pa

PREVIEW_HTML = "preview.html"
THUMB_PX = 384
"""Longest side of a sheet's inline thumbnail (the full image is one click away, beside the page)."""
SMALL_PX = 256
"""Images smaller than this are scaled up on the sheet pixel for pixel (not blurred)."""
SHOWN = ("id", "prompt", "generator", "route", "seed", "clip_score", "cost_usd", "status", "error", "image_uri",
         "width", "height", "variant")


def sheet_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The preview's rows as dicts of the columns the sheet and the listing show (a column the run didn't make is
    None)."""
    present = [c for c in SHOWN if c in table.column_names]
    return [{c: row.get(c) for c in SHOWN} for row in table.select(present).to_pylist()]


def score_text(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "–"


def cost_text(value: Any) -> str:
    """Dollars: 4 decimals, 6 below a cent (a local model's GPU time per image)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"${value:.6f}" if 0 < value < 0.01 else f"${value:.4f}"


def thumbnail(path: Path) -> str:
    """A JPEG thumbnail of the image at `path` as base64 ('' when it can't be read: the card shows why)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return jpeg_thumbnail(data, THUMB_PX, quality=85)


def local_file(folder: Path, uri: str) -> Path | None:
    """The file an image URI names inside the preview folder (None: none, or elsewhere)."""
    if not uri:
        return None
    path = Path(uri.removeprefix("file://")).resolve()
    return path if path.is_relative_to(folder.resolve()) and path.is_file() else None


def _card(number: int, row: dict[str, Any], folder: Path) -> str:
    esc = html.escape
    path = local_file(folder, str(row["image_uri"] or ""))
    thumb = thumbnail(path) if path is not None else ""
    status = str(row["status"] or "")
    if thumb and path is not None:
        rel = path.relative_to(folder.resolve()).as_posix()
        small = ' class="small"' if max(row["width"] or 0, row["height"] or 0) < SMALL_PX else ""
        picture = (f'<a href="{esc(rel)}" title="full image: {esc(rel)}"><img{small} '
                   f'src="data:image/jpeg;base64,{thumb}" alt="image {number}"></a>')
    else:
        picture = f'<div class="none">{esc(status or "no image")}</div>'
    size = f"{row['width']}×{row['height']}" if row["width"] and row["height"] else "–"
    facts = [("generator", row["generator"] or "–"), ("route", row["route"] or "–"), ("seed", row["seed"]),
             ("score", score_text(row["clip_score"])), ("cost", cost_text(row["cost_usd"])), ("size", size)]
    if row["variant"]:
        facts.append(("variant", row["variant"]))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)
    error = f'<p class="why">{esc(str(row["error"]))}</p>' if row["error"] else ""
    prompt = (f'<p class="prompt">{esc(str(row["prompt"]))}</p>' if row["prompt"] else
              '<p class="prompt empty">(no prompt)</p>')
    good = "good" if status == "ok" else "bad"
    return (f'<figure class="card">{picture}<figcaption>'
            f'<div class="head"><span class="num">#{number}</span><span class="status {good}">{esc(status)}</span>'
            f'<span class="id">{esc(str(row["id"] or ""))}</span></div>'
            f'{prompt}<table>{table}</table>{error}</figcaption></figure>')


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{font-size:18px;margin:0 0 6px}header p{margin:2px 0;color:#c9cfdb;font-size:13px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:16px;padding:20px 24px}
.card{margin:0;background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.15);overflow:hidden}
.card img{display:block;width:100%;aspect-ratio:1;object-fit:contain;background:#e6e8ec}
.card img.small{image-rendering:pixelated}
.card .none{aspect-ratio:1;display:flex;align-items:center;justify-content:center;background:#fbeaea;
color:#a12a2a;font-weight:600;text-transform:uppercase;letter-spacing:.05em}
figcaption{padding:10px 12px}
.head{display:flex;gap:8px;align-items:baseline;font-size:12px;color:#5b6475}
.num{font-weight:700;color:#1d2330}.id{margin-left:auto;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.status{padding:1px 6px;border-radius:4px}.good{background:#e2f3e5;color:#1c6b2c}
.bad{background:#fbeaea;color:#a12a2a}
.prompt{margin:6px 0;font-weight:500;word-break:break-word}.prompt.empty{color:#8a92a3;font-style:italic}
table{border-collapse:collapse;font-size:12px;width:100%}th{text-align:left;color:#5b6475;font-weight:500;
width:34%;padding:1px 0}td{padding:1px 0;font-variant-numeric:tabular-nums;word-break:break-all}
.why{margin:6px 0 0;padding:6px 8px;background:#fbeaea;color:#a12a2a;border-radius:4px;font-size:12px;
word-break:break-word}
"""


def write_sheet(table: pa.Table, folder: Path, title: str, facts: Sequence[str]) -> Path:
    """Write the contact sheet of `table`'s rows to `folder`/preview.html; its path.

    Args:
        table: the preview's rows (shaped like the manifest's).
        folder: the preview folder (the images are under it).
        title: the page's heading.
        facts: lines under the heading (source, cost, where things are).
    """
    esc = html.escape
    cards = "\n".join(_card(i, row, folder) for i, row in enumerate(sheet_rows(table), 1))
    lines = "".join(f"<p>{esc(line)}</p>" for line in facts)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><header><h1>{esc(title)}</h1>{lines}</header>"
            f"<main>\n{cards}\n</main></body></html>\n")
    path = folder / PREVIEW_HTML
    path.write_text(page, encoding="utf-8")
    return path


def listing(table: pa.Table, width: int = 60) -> list[str]:
    """One line per image for the terminal (an error row's error on the line below it)."""
    rows = sheet_rows(table)
    lines = [f"  {'#':>3}  {'status':<8} {'generator':<12} {'route':<10} {'seed':>11}  {'score':>6}  {'cost':>9}  "
             f"prompt"]
    for i, r in enumerate(rows, 1):
        prompt = str(r["prompt"] or "")
        prompt = prompt if len(prompt) <= width else prompt[: width - 1] + "…"
        lines.append(f"  {i:>3}  {str(r['status'] or ''):<8} {str(r['generator'] or ''):<12} "
                     f"{str(r['route'] or '–'):<10} {str(r['seed']):>11}  {score_text(r['clip_score']):>6}  "
                     f"{cost_text(r['cost_usd']):>9}  {prompt}")
        if r["error"]:
            lines.append(f"       {str(r['error'])[:200]}")
    return lines
