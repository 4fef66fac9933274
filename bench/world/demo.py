"""The shapes world's part of `imagefleet demo`: its prompts, and the oracle's grades of a committed run.

`imagefleet demo` (jobs/world_demo.py) reaches this through its command line, run in the repository:

    python -m bench.world.demo prompts PATH N SEED
    python -m bench.world.demo grade CONFIG [--set=k=v ...]

so the runtime packages never import bench/ (a benchmark tool, not the runtime path).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any


def write_prompts(path: Path, n: int, seed: int) -> Path:
    """n prompts of the world (objects, counts, colours, positions) as a prompt table, with each prompt's world
    facts (`verifier_data.world_facts`, from the world's parser) in a `facts` column for the `facts` scorer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.world.scene import sample_prompts
    from bench.world.verifier_data import world_facts

    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(n, seed=seed)
    pq.write_table(pa.table({"id": [f"world-{i:03d}" for i in range(n)], "prompt": prompts,
                             "facts": pa.array([world_facts(p) for p in prompts], pa.list_(pa.string()))}), path)
    return path


BASELINES = (("draft", "draft only"), ("heavy", "heavy only"))


def unit_prices(rows: list[dict[str, Any]]) -> dict[str, float]:
    """USD per image of each generator as the cascade run paid it (measured generation time x the config's price):
    rows that kept a draft cost their drafts (`candidates`: one each; null: one draft); an escalated row costs its
    drafts plus one heavy image. Empty for a generator the run has no image of."""
    ok = [r for r in rows if r["status"] == "ok"]

    def drafts(r: dict[str, Any]) -> int:
        return len(r["candidates"]) if isinstance(r["candidates"], list) and r["candidates"] else 1

    kept = [r for r in ok if r["route"] == "draft"]
    prices: dict[str, float] = {}
    if kept:
        prices["draft"] = sum(r["cost_usd"] or 0.0 for r in kept) / sum(drafts(r) for r in kept)
    up = [r for r in ok if str(r["route"]).startswith("escalated")]
    if up and "draft" in prices:
        prices["heavy"] = sum((r["cost_usd"] or 0.0) - prices["draft"] * drafts(r) for r in up) / len(up)
    return prices


def baselines(config: str, config_args: list[str], prices: dict[str, float]) -> list[dict[str, object]]:
    """Draft only and heavy only on the run's prompts: each generator alone (routing single, no scorer) through
    `imagefleet.run` in process into a scratch folder, at the rows' own seeds (the job seed and row id: the
    cascade's first drafts), every image graded by the oracle; one row per baseline for the report's chart. Each
    image is priced at what the same generator's image cost in the run (`prices`, so the points compare like for
    like on a shared machine whose timings vary between runs); the baseline run's own bill if the run made none."""
    import copy
    import tempfile

    import numpy as np
    import yaml
    from PIL import Image

    import imagefleet
    from bench.world.oracle import oracle
    from imagefleet.configs.loader import apply_overrides

    sets = [a.removeprefix("--set=") for a in config_args if a.startswith("--set=")]
    raw = apply_overrides(yaml.safe_load(Path(config).read_text()), sets)
    out: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="imagefleet-baselines-") as scratch:
        for name, label in BASELINES:
            job = {**copy.deepcopy(raw), "generators": {name: raw["generators"][name]}, "routing": {"mode": "single"},
                   "output": {"uri": str(Path(scratch) / name), "format": "png"}, "cluster": {"executor": "in_process"}}
            job.pop("scorer", None)
            made = imagefleet.run(job, echo=None, progress="off").manifest().to_table(
                columns=["prompt", "status", "image_uri", "cost_usd"])
            rows = [r for r in made.to_pylist() if r["status"] == "ok"]
            faith = []
            for r in rows:
                with Image.open(r["image_uri"]) as img:
                    faith.append(oracle(r["prompt"], np.asarray(img.convert("RGB"))).faithfulness)
            own = float(np.mean([r["cost_usd"] or 0.0 for r in rows]))
            out.append({"baseline": label, "images": len(rows), "faithfulness": float(np.mean(faith)),
                        "cost_usd_per_image": prices.get(name, own),
                        "how": f"the {name} generator alone at the rows' own seeds, graded by the world oracle; "
                               + ("priced as the run paid its images" if name in prices else "its own bill")})
    return out


def grade(config: str, config_args: list[str]) -> str:
    """Grade every final image and kept draft of the committed run with the oracle, store the grades as
    evaluations/oracle.parquet, rewrite the report, and return a one-screen summary per route.

    The grades hold, per image key, `faithfulness`, `oracle_pass` and `facts` (list<struct<fact: string, holds:
    bool>>: each of the prompt's world facts and whether the oracle found it), so a run's output and its grades
    are a training set for `imagefleet train-verifier OUTPUT FOLDER`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from bench.world.oracle import oracle
    from bench.world.verifier_data import world_facts
    from imagefleet.actors.layout import EVALUATIONS_DIR
    from imagefleet.actors.storage import resolve_store_spec
    from imagefleet.actors.stores import open_store
    from imagefleet.configs.loader import load_config
    from imagefleet.pipelines.manifest import read_manifest_columns
    from imagefleet.pipelines.report import write_report

    cfg = load_config(config, [a.removeprefix("--set=") for a in config_args if a.startswith("--set=")])
    store = resolve_store_spec(cfg.output.uri, cfg.output.s3)
    objects = open_store(cfg.output.uri, store)
    table = read_manifest_columns(cfg.output.uri, store, ["prompt", "status", "route", "image_key", "image_uri",
                                                          "draft_image_key", "draft_image_uri", "cost_usd",
                                                          "draft_round", "candidates"])
    graded: dict[str, tuple[float, bool, list[dict[str, object]]]] = {}
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
                said = world_facts(r["prompt"])  # in the oracle's order, one statement per fact
                graded[key] = (v.faithfulness, v.passed, [{"fact": s, "holds": f.ok}
                                                          for s, f in zip(said, v.facts, strict=True)])
            by_route.setdefault(group, []).append(graded[key][0])
    fact = pa.struct([("fact", pa.string()), ("holds", pa.bool_())])
    out = pa.table({"image_key": list(graded), "faithfulness": [g[0] for g in graded.values()],
                    "oracle_pass": [g[1] for g in graded.values()],
                    "facts": pa.array([g[2] for g in graded.values()], pa.list_(fact))})
    buf = io.BytesIO()
    pq.write_table(out, buf)
    objects.put(f"{EVALUATIONS_DIR}/oracle.parquet", buf.getvalue(), "application/vnd.apache.parquet")
    refs = baselines(config, config_args, unit_prices(table.to_pylist()))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(refs), buf)
    objects.put(f"{EVALUATIONS_DIR}/baselines.parquet", buf.getvalue(), "application/vnd.apache.parquet")
    report = write_report(objects)
    lines = ["world oracle (share of each prompt's facts found in the pixels), per route:"]
    for group in ("draft", "escalated: draft", "escalated", "escalated_kept_draft", "predicted_heavy", "all"):
        if group in by_route:
            label = {"escalated": "escalated: final", "escalated_kept_draft": "escalated, kept"}.get(group, group)
            lines.append(f"  {label:<17} {len(by_route[group]):>4} images   faithfulness "
                         f"{float(np.mean(by_route[group])):.3f}")
    finals = [v for g, vals in by_route.items() if g != "escalated: draft" for v in vals]
    spent = [r["cost_usd"] or 0.0 for r in table.to_pylist() if r["status"] == "ok"]
    lines.append(f"  {'all final images':<17} {len(finals):>4} images   faithfulness {float(np.mean(finals)):.3f}   "
                 f"${float(np.mean(spent)):.6f} per image")
    ended: dict[str, int] = {}
    for r in table.to_pylist():
        if r["status"] == "ok":
            where = f"round {r['draft_round'] or 1}" if r["route"] == "draft" else str(r["route"])
            ended[where] = ended.get(where, 0) + 1
    lines.append("  rows ended in: " + ", ".join(f"{k} {v}" for k, v in sorted(ended.items())))
    for ref in refs:
        lines.append(f"  {ref['baseline']:<17} {ref['images']:>4} images   faithfulness {ref['faithfulness']:.3f}   "
                     f"${ref['cost_usd_per_image']:.6f} per image (the same prompts apart, priced as the run paid)")
    lines.append(f"  report with the grades per route and escalated pairs: {report}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["prompts"] and len(argv) == 4:
        write_prompts(Path(argv[1]), int(argv[2]), int(argv[3]))
        return 0
    if argv[:1] == ["grade"] and len(argv) >= 2:
        print(grade(argv[1], argv[2:]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
