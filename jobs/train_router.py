"""`imagefleet train-router OUTPUT [OUTPUT ...] --out FOLDER`: a gain model for predictive routing
(`routing.cascade.predict`), fitted on earlier cascade runs' manifests.

A training row is a manifest row with both a draft's and a heavy image's score: an `ok` row of route `escalated`
(`draft_score` is its draft's score, `clip_score` its heavy image's) or `escalated_kept_draft` (`draft_score` and
`clip_score` are the draft's, `heavy_score` the heavy image's). The target is heavy score - draft score; the model
(actors/gain_model.py) sees only the prompt text.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from imagefleet.actors.better_keeper import KEPT_DRAFT
from imagefleet.actors.escalator import ESCALATED

COLUMNS = ("prompt", "status", "route", "draft_score", "clip_score", "heavy_score")
"""What a training row is read from (every imagefleet cascade manifest has them)."""
NEEDED = ("prompt", "status", "route", "draft_score", "clip_score")
"""Columns a manifest must have (`heavy_score` came later: a manifest without it has no kept drafts)."""


class TrainError(ValueError):
    """Training can't start or can't use what it read (one line)."""


def scored_rows(output: str) -> tuple[list[str], list[float], list[float]]:
    """(prompts, draft scores, heavy scores) of the rows of `output`'s committed manifest that have both.

    Raises:
        TrainError: no committed manifest there, or one without the cascade's columns.
    """
    from imagefleet.actors.storage import resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.storage import S3Config
    from imagefleet.pipelines.commit import current_parts
    from imagefleet.pipelines.manifest import iter_manifest_batches

    objects = open_store(output, resolve_store_spec(output, S3Config()))
    parts = current_parts(objects)
    if not parts:
        raise TrainError(f"no committed manifest at {output}: pass the output.uri of a finished cascade run")
    import pyarrow.parquet as pq

    fs, root = objects.arrow()
    names = set(pq.read_schema(f"{root}/{parts[0]}", filesystem=fs).names)
    missing = [c for c in NEEDED if c not in names]
    if missing:
        raise TrainError(f"the manifest at {output} has no column(s) {', '.join(missing)}: pass the output of an "
                         f"imagefleet cascade run (routing.mode: cascade)")
    prompts: list[str] = []
    drafts: list[float] = []
    heavies: list[float] = []
    for batch in iter_manifest_batches(objects, list(COLUMNS)):
        cols = {c: batch.column(c).to_pylist() for c in COLUMNS}
        for i, route in enumerate(cols["route"]):
            heavy = cols["heavy_score"][i] if route == KEPT_DRAFT else cols["clip_score"][i]
            draft = cols["draft_score"][i]
            if (cols["status"][i] == "ok" and route in (ESCALATED, KEPT_DRAFT) and cols["prompt"][i]
                    and _finite(draft) and _finite(heavy)):
                prompts.append(str(cols["prompt"][i]))
                drafts.append(float(draft))
                heavies.append(float(heavy))
    return prompts, drafts, heavies


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def train_router(outputs: list[str], folder: str, buckets: int = 2048, ngrams: int = 2, held_share: float = 0.2,
                 min_rows: int = 20) -> dict[str, Any]:
    """Read every output's training rows, fit the gain model, write `folder`; router.json's content.

    Raises:
        TrainError: an output without a usable manifest, or fewer than `min_rows` rows with both scores.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagefleet.actors.gain_model import ROWS_FILE, save, train

    # 1 the rows with both a draft and a heavy score, from every manifest
    prompts: list[str] = []
    drafts: list[float] = []
    heavies: list[float] = []
    sources: list[str] = []
    used = []
    for output in outputs:
        p, d, h = scored_rows(output)
        prompts, drafts, heavies, sources = prompts + p, drafts + d, heavies + h, sources + [output] * len(p)
        used.append({"output": output, "rows": len(p)})
    if len(prompts) < min_rows:
        raise TrainError(f"{len(prompts)} row(s) with both a draft and a heavy score (escalated rows) in "
                         f"{', '.join(outputs)}; need at least {min_rows}: train from cascade runs that escalate "
                         f"more rows (routing.cascade.escalate_fraction: 1 escalates every draft)")
    # 2 fit (lambda chosen on held-out prompt strings), then write the folder
    gains = np.array(heavies) - np.array(drafts)
    trained = train(prompts, gains, buckets=buckets, ngrams=ngrams, held_share=held_share)
    out = Path(folder).expanduser()
    save(out, trained, {"manifests": used, "columns": {
        "draft": "draft_score", "heavy": f"clip_score (route {ESCALATED}), heavy_score (route {KEPT_DRAFT})"}})
    pq.write_table(pa.table({"prompt": prompts, "draft_score": drafts, "heavy_score": heavies, "gain": gains,
                             "predicted_gain": trained.predicted, "held_out": trained.held, "output": sources}),
                   out / ROWS_FILE)
    import json

    return dict(json.loads((out / "router.json").read_text()))


def summary(doc: dict[str, Any], folder: str) -> str:
    """What a person needs from router.json: rows, fit, and the threshold for each share of rows."""
    fit = doc["fit"]

    def num(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    shares = ", ".join(f"{float(s):.0%} → {v:.4g}" for s, v in doc["heavy_above_for_share"].items())
    return (f"gain model written to {folder}: {fit['rows']} rows ({fit['prompts']} prompts), mean gain "
            f"{fit['gain_mean']:.4g}; held out {fit['held_out_prompts']} prompts: R^2 {num(fit['held_out_r2'])}, rank "
            f"correlation {num(fit['held_out_rank_correlation'])} (lambda {fit['lambda']:g})\n"
            f"  routing.cascade.predict: {{model: {folder}, heavy_above: X}} sends about this share of these "
            f"prompts to heavy: {shares}")


def main(argv: list[str]) -> int:
    """`imagefleet train-router`: 0 and a summary; 2 with one line on stderr when there is nothing to train on."""
    p = argparse.ArgumentParser(prog="imagefleet train-router", description="Fit a gain model for predictive "
                                "routing (routing.cascade.predict) from cascade runs' manifests: target heavy score "
                                "- draft score of escalated rows, features the prompt's hashed words and word pairs.")
    p.add_argument("outputs", nargs="+", metavar="OUTPUT", help="a cascade run's output.uri (local or s3://)")
    p.add_argument("--out", required=True, help="local folder to write the model to")
    p.add_argument("--buckets", type=int, default=2048, help="hashed feature buckets (default: %(default)s)")
    p.add_argument("--ngrams", type=int, default=2, choices=(1, 2, 3), help="longest word run (default: %(default)s)")
    p.add_argument("--held-out", type=float, default=0.2, help="share of prompt strings held out to choose the "
                   "ridge strength and report the fit (default: %(default)s)")
    p.add_argument("--min-rows", type=int, default=20, help="fewest training rows accepted (default: %(default)s)")
    args = p.parse_args(argv)
    if args.buckets < 16 or not 0 <= args.held_out < 1 or args.min_rows < 2:
        print("imagefleet: --buckets must be at least 16, --held-out in [0, 1) and --min-rows at least 2",
              file=sys.stderr)
        return 2
    from imagefleet.actors.storage import StorageError

    try:
        doc = train_router(args.outputs, args.out, args.buckets, args.ngrams, args.held_out, args.min_rows)
    except (TrainError, StorageError) as exc:
        print(f"imagefleet: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. botocore's credential errors: one line, not a traceback
        from imagefleet.actors.store_errors import explain_s3_error

        print(f"imagefleet: cannot read {' '.join(args.outputs)}: {explain_s3_error(exc, args.outputs[0])}",
              file=sys.stderr)
        return 2
    print(summary(doc, args.out))
    return 0
