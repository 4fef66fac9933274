"""The demo on the shapes world (bench/world): prompts whose images can be graded exactly, a draft → score →
escalate cascade of the world's trained tiny models, and the world's oracle written next to the manifest as an
evaluation the report shows per route. The oracle lives in bench/ (a benchmark tool, not the runtime path): only
this demo imports it, from the repository it runs in."""

from __future__ import annotations

import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "bench" / "world" / "models"
CONFIG = REPO / "configs" / "world_cascade.yaml"
PROMPT_SEED = 4242  # demo prompts: not the training or the benchmark's held-out seed


def available() -> bool:
    """Whether the world's models are in this checkout (the demo falls back to the random tiny model if not)."""
    return all((MODELS / name / "model_index.json").exists() for name in ("draft", "heavy")) and \
        (MODELS / "clip" / "config.json").exists()


def write_prompts(path: Path, n: int = 96) -> Path:
    """n prompts of the world (objects, counts, colours, positions) as a prompt table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    from bench.world.scene import sample_prompts

    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(n, seed=PROMPT_SEED)
    pq.write_table(pa.table({"id": [f"world-{i:03d}" for i in range(n)], "prompt": prompts}), path)
    return path


def overrides(home: Path) -> list[str]:
    """--set arguments pointing the shipped config at this checkout's models and the demo's prompts."""
    return [f"--set=source.uri={home / 'prompts' / 'world.parquet'}",
            f"--set=generators.draft.model={MODELS / 'draft'}", f"--set=generators.heavy.model={MODELS / 'heavy'}",
            f"--set=scorer.model={MODELS / 'clip'}"]


def grade(config_args: list[str]) -> str:
    """Grade every final image and kept draft of the committed run with the oracle, store the grades as
    evaluations/oracle.parquet, rewrite the report, and return a one-screen summary per route."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from actors.layout import EVALUATIONS_DIR
    from actors.storage import open_store, resolve_store_spec
    from configs.loader import load_config
    from pipelines.manifest import read_manifest_columns
    from pipelines.report import write_report

    sys.path.insert(0, str(REPO))
    from bench.world.oracle import oracle

    cfg = load_config(CONFIG, [a.removeprefix("--set=") for a in config_args if a.startswith("--set=")])
    store = resolve_store_spec(cfg.output.uri, cfg.output.s3)
    objects = open_store(cfg.output.uri, store)
    table = read_manifest_columns(cfg.output.uri, store, ["prompt", "status", "route", "image_key", "image_uri",
                                                          "draft_image_key", "draft_image_uri", "cost_usd"])
    graded: dict[str, tuple[float, bool]] = {}
    by_route: dict[str, list[float]] = {}
    for r in table.to_pylist():
        if r["status"] != "ok":
            continue
        for key, uri, group in ((r["image_key"], r["image_uri"], r["route"] or "all"),
                                (r["draft_image_key"], r["draft_image_uri"], "escalated: draft")):
            if not key or not uri:
                continue
            if key not in graded:
                with Image.open(io.BytesIO(objects.get(objects.rel_of(uri)))) as img:
                    v = oracle(r["prompt"], np.asarray(img.convert("RGB")))
                graded[key] = (v.faithfulness, v.passed)
            by_route.setdefault(group, []).append(graded[key][0])
    out = pa.table({"image_key": list(graded), "faithfulness": [f for f, _ in graded.values()],
                    "oracle_pass": [p for _, p in graded.values()]})
    buf = io.BytesIO()
    pq.write_table(out, buf)
    objects.put(f"{EVALUATIONS_DIR}/oracle.parquet", buf.getvalue(), "application/vnd.apache.parquet")
    report = write_report(cfg.output.uri, store)
    lines = ["world oracle (share of each prompt's facts found in the pixels), per route:"]
    for group in ("draft", "escalated: draft", "escalated", "all"):
        if group in by_route:
            label = {"escalated": "escalated: final"}.get(group, group)
            lines.append(f"  {label:<17} {len(by_route[group]):>4} images   faithfulness "
                         f"{float(np.mean(by_route[group])):.3f}")
    finals = [v for g, vals in by_route.items() if g != "escalated: draft" for v in vals]
    lines.append(f"  {'all final images':<17} {len(finals):>4} images   faithfulness {float(np.mean(finals)):.3f}")
    lines.append(f"  report with the grades per route and escalated pairs: {report}")
    return "\n".join(lines)

