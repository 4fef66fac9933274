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


def write_prompts(path: Path, n: int, seed: int) -> Path:
    """n prompts of the world (objects, counts, colours, positions) as a prompt table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.world.scene import sample_prompts

    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(n, seed=seed)
    pq.write_table(pa.table({"id": [f"world-{i:03d}" for i in range(n)], "prompt": prompts}), path)
    return path


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
                                                          "draft_image_key", "draft_image_uri", "cost_usd"])
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
    report = write_report(objects)
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
