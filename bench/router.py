"""Predictive routing on the shapes world (issue #32): train a gain model from a world cascade run's manifest, then
compare, on prompt strings the router never saw, the plain cascade with the cascade that sends the prompts of
highest predicted gain straight to the heavy model, at about the same cost.

    python -m bench.router [--train 600] [--eval 300] [--share 0.2] [--out .imagefleet/bench-router]

1. training run: every draft escalated (`escalate_fraction: 1`, `keep_better: false`), so every row has a draft and
   a heavy score (world CLIP) — an unbiased sample of the gain; `imagefleet train-router`'s code fits the model;
2. reference run on the evaluation rows, also escalating everything: the oracle's faithfulness of each row's draft
   and heavy image (draft-only, heavy-only, and the true gain the router's prediction is compared with);
3. the plain cascade (`escalate_fraction` 0.3) and the predictive one (the `share` of highest predicted gain to
   heavy, the escalation fraction lowered so the nominal cost matches: a draft costs 0.1 of a heavy image).

Every row has its own id, so its own seed; training and evaluation prompt strings are disjoint (split by a hash of
the string). Costs are nominal (draft 0.1, heavy 1.0 per image, relative to heavy-only), as in bench/quality.py.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "bench" / "world" / "models"
DRAFT_COST = 0.1
"""A draft's cost relative to a heavy image (the issue's ratio)."""


def split_prompts(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Rows of training and evaluation prompts whose strings are disjoint (a string's side is a hash of it)."""
    from bench.world.scene import sample_prompts
    from imagefleet.actors.gain_model import held_out

    pool = sample_prompts(20 * (n_train + n_eval), seed=seed)
    # salted: the gain model holds out strings by the same hash (its lambda needs some of the training strings)
    train = [p for p in pool if not held_out(f"bench:{p}", 0.35)][:n_train]
    evaluation = [p for p in pool if held_out(f"bench:{p}", 0.35)][:n_eval]
    return train, evaluation


def world_run(home: Path, name: str, prompts: list[str], cascade: dict[str, Any], ids: str = "eval") -> Path:
    """A world cascade over `prompts` (ids `<ids>-<i>`: each row its own seed, the same in every run over the same
    rows), in this process; the output folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import imagefleet

    src = home / f"{name}.parquet"
    pq.write_table(pa.table({"id": [f"{ids}-{i}" for i in range(len(prompts))], "prompt": prompts}), src)
    raw = imagefleet.load(REPO / "configs" / "world_cascade.yaml").model_dump(mode="json", exclude_unset=True)
    raw["source"] = {"uri": str(src)}
    raw["generators"]["draft"]["model"] = str(MODELS / "draft")
    raw["generators"]["heavy"]["model"] = str(MODELS / "heavy")
    raw["scorer"] = {"backend": "clip", "model": str(MODELS / "clip"), "pool": raw["scorer"]["pool"]}  # the gain
    # the router learns is world CLIP's (the demo config's own scorer is the fact verifier)
    raw["routing"]["cascade"] = {"draft": "draft", "escalate": "heavy", **cascade}
    raw["output"] = {**raw["output"], "uri": str(home / name)}
    raw["cluster"] = {**raw["cluster"], "executor": "in_process"}
    imagefleet.run(raw, echo=None, progress="off")
    return home / name


def graded(output: Path) -> list[dict[str, Any]]:
    """The output's rows with the oracle's faithfulness of the final image (`final`) and of the draft (`draft`, when
    one was stored)."""
    import numpy as np
    from PIL import Image

    from bench.world.oracle import oracle
    from imagefleet.actors.storage import resolve_store_spec
    from imagefleet.configs.storage import S3Config
    from imagefleet.pipelines.manifest import read_manifest_columns

    table = read_manifest_columns(str(output), resolve_store_spec(str(output), S3Config()),
                                  ["id", "prompt", "status", "route", "image_uri", "draft_image_uri", "candidates"])
    def faith(prompt: str, uri: str) -> float:
        with Image.open(io.BytesIO(Path(uri).read_bytes())) as img:
            return float(oracle(prompt, np.asarray(img.convert("RGB"))).faithfulness)

    rows = []
    for r in table.to_pylist():
        assert r["status"] == "ok", r
        rows.append({**r, "final": faith(r["prompt"], r["image_uri"]),
                     "draft": faith(r["prompt"], r["draft_image_uri"]) if r["draft_image_uri"] else None})
    return rows


def summary(name: str, rows: list[dict[str, Any]]) -> str:
    """One line: faithfulness, nominal cost relative to heavy-only, and the route split."""
    import numpy as np

    routes: dict[str, int] = {}
    cost = 0.0
    for r in rows:
        routes[r["route"]] = routes.get(r["route"], 0) + 1
        cost += {"draft": DRAFT_COST, "predicted_heavy": 1.0}.get(r["route"], DRAFT_COST + 1.0)
    faith = np.array([r["final"] for r in rows])
    se = faith.std(ddof=1) / np.sqrt(len(faith))
    split = ", ".join(f"{k} {v}" for k, v in sorted(routes.items()))
    return (f"  {name:<28} faithfulness {faith.mean():.3f} ± {1.96 * se:.3f}   cost {cost / len(rows):.3f} of "
            f"heavy-only   ({split})")


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from imagefleet.actors.gain_model import load, rank_correlation
    from imagefleet.jobs.train_router import summary as router_summary
    from imagefleet.jobs.train_router import train_router

    p = argparse.ArgumentParser(prog="python -m bench.router", description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--eval", type=int, default=300)
    p.add_argument("--share", type=float, default=0.2, help="share of rows sent straight to heavy")
    p.add_argument("--fraction", type=float, default=0.3, help="the plain cascade's escalate_fraction")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", default=str(REPO / ".imagefleet" / "bench-router"))
    args = p.parse_args(argv)
    home = Path(args.out)
    home.mkdir(parents=True, exist_ok=True)
    train_p, eval_p = split_prompts(args.train, args.eval, args.seed)
    print(f"shapes world: {len(train_p)} training rows ({len(set(train_p))} strings), {len(eval_p)} evaluation rows "
          f"({len(set(eval_p))} strings, none in training)")
    # 1 train on a run escalating everything
    t0 = time.time()
    everything = {"escalate_fraction": 1.0, "keep_better": False}
    train_out = world_run(home, "train", train_p, everything, ids="train")
    t1 = time.time()
    doc = train_router([str(train_out)], str(home / "router"), min_rows=min(20, len(train_p)))
    print(router_summary(doc, str(home / "router")))
    print(f"  training run {t1 - t0:.0f} s, fit {time.time() - t1:.1f} s (this CPU)")
    # 2 the evaluation rows' drafts and heavy images: references and the true (oracle) gain
    ref = {r["id"]: r for r in graded(world_run(home, "reference", eval_p, everything))}
    model = load(home / "router")
    ids = sorted(ref)
    gain = np.array([ref[i]["final"] - ref[i]["draft"] for i in ids])
    predicted = model.predict([ref[i]["prompt"] for i in ids])
    print(f"  on the evaluation rows: rank correlation of predicted CLIP gain with oracle gain "
          f"{rank_correlation(gain, predicted):.3f}; draft-only {np.mean([ref[i]['draft'] for i in ids]):.3f}, "
          f"heavy-only {np.mean([ref[i]['final'] for i in ids]):.3f}")
    # 3 plain vs predictive cascade at about the same nominal cost
    heavy_above = float(doc["heavy_above_for_share"][f"{args.share:g}"])
    # cost per row: plain D + f H; predictive s H + (1 - s)(D + g H) -> g matching the plain one
    lowered = max(1e-3, ((DRAFT_COST + args.fraction) - args.share - (1 - args.share) * DRAFT_COST)
                  / (1 - args.share))
    plain = graded(world_run(home, "plain", eval_p, {"escalate_fraction": args.fraction}))
    pred = graded(world_run(home, "predict", eval_p, {"escalate_fraction": round(min(1.0, lowered), 4),
                                                      "predict": {"model": str(home / "router"),
                                                                  "heavy_above": heavy_above}}))
    print(f"evaluation ({len(eval_p)} rows), oracle faithfulness (95% CI from rows), nominal cost:")
    print(summary(f"cascade f={args.fraction:g}", plain))
    print(summary(f"predict {args.share:.0%} + f={lowered:.3f}", pred))
    hit = [r for r in pred if r["route"] == "predicted_heavy"]
    if hit:
        true = np.array([ref[r["id"]]["final"] - ref[r["id"]]["draft"] for r in hit])
        print(f"  predicted rows: {len(hit)}, their mean oracle gain {true.mean():.3f} vs all rows {gain.mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
