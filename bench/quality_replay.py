"""The quality benchmark's replay of imagefleet's cascade on the shapes world: the product's own preprocessor
(seeds, image keys), DiffusersGenerator on the world's draft and heavy models, ClipScorer on the world's CLIP,
and the cascade's decisions (`Redrawer` rounds, `Escalator.over_run` then `Escalator`) on dict batches, without
Ray. Every image is made once and cached by (generator, prompt, seed), so policies share what they have in common;
`verify` runs the same policy through `imagefleet.run` and compares row by row.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import REPO

MODELS = REPO / "bench" / "world" / "models"  # v1's; a v2 replay reads bench/world/models_v2
WORLD_CONFIG = REPO / "configs" / "world_cascade.yaml"  # the demo's cascade: job seed 7, the world's models
CHUNK = 256  # rows per generator call (the generator batches them by its own batch_size)
SCORERS = ("clip", "verifier")  # the world's CLIP (0..100), or its fact verifier as the `facts` scorer (0..1)
SCORE_TOLERANCE = 0.01  # CLIP units (0..100): a row's pixels may differ by 1 in a few values with its batch's other
# rows (float32 batched math on CPU), so the run's and the replay's scores of one image agree to ~1e-3, not exactly
Batch = dict[str, np.ndarray]
DRAFTS = ("draft", "heavy@2", "heavy@3", "heavy@4")  # the draft generator: the world's draft model at its 4 steps,
# or the heavy model sampled with 2-4 steps (the same weights, fewer steps: a few-step mode of the heavy model)


def draft_spec(draft: str) -> tuple[str, int | None]:
    """`draft` (the draft model at its own steps) or `heavy@K` (the heavy model at K steps): (folder, steps)."""
    if draft not in DRAFTS:
        raise ValueError(f"unknown draft generator {draft!r}; one of {', '.join(DRAFTS)}")
    folder, _, steps = draft.partition("@")
    return folder, int(steps) if steps else None


def v2_results_name(which: str, scorer: str, draft: str = "draft") -> str:
    """A v2 run's results file: per strings and scorer, and per draft generator when it is not the draft model
    (`quality_v2_unseen_verifier_draft-heavy3.json` for heavy@3)."""
    return f"quality_v2_{which}_{scorer}" + ("" if draft == "draft" else f"_draft-{draft.replace('@', '')}") + ".json"


@dataclass(frozen=True)
class Policy:
    """One cascade configuration: adaptive drafts (max_drafts, redraw_below) then one escalation rule —
    `escalate_fraction` (relative, decided over the run) or an absolute `threshold` (0 escalates nothing: CLIP
    scores are >= 0)."""

    max_drafts: int = 1
    redraw_below: float | None = None
    escalate_fraction: float | None = None
    threshold: float | None = None
    keep_better: bool = True  # the product's default: an escalated row keeps a draft its heavy image scored below

    def cascade(self) -> dict[str, Any]:
        """The `routing.cascade` block of a job config."""
        out: dict[str, Any] = {"draft": "draft", "escalate": "heavy", "max_drafts": self.max_drafts,
                               "keep_better": self.keep_better}
        if self.max_drafts > 1:
            out["redraw_below"] = self.redraw_below
        if self.escalate_fraction is not None:
            out["escalate_fraction"] = self.escalate_fraction
        else:
            out["threshold"] = self.threshold
        return out

    def label(self) -> str:
        drafts = f"max_drafts {self.max_drafts}, redraw_below {_num(self.redraw_below)}" if self.max_drafts > 1 \
            else "1 draft"
        drafts += "" if self.keep_better else " (heavy always kept)"
        if self.escalate_fraction is not None:
            return f"{drafts}, escalate_fraction {self.escalate_fraction:.2f}"
        return f"{drafts}, threshold {_num(self.threshold)}" if self.threshold else f"{drafts}, no escalation"

    @staticmethod
    def parse(text: str) -> Policy:
        """`max_drafts=3,redraw_below=60,escalate_fraction=0.25` (the keys above; `keep_better=0` turns it off)."""
        values: dict[str, Any] = {}
        for part in filter(None, text.split(",")):
            name, _, value = (x.strip() for x in part.partition("="))
            values[name] = int(value) if name == "max_drafts" else bool(int(value)) if name == "keep_better" \
                else float(value)
        return Policy(**values)


def _num(x: float | None) -> str:
    """A score threshold as printed: one decimal on CLIP's 0..100 scale, three significant digits below 10 (the
    verifier's 0..1 scores)."""
    return "–" if x is None else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def job_config(policy: Policy, source: Path, output: Path, scorer: str = "clip", models: Path = MODELS,
               draft: str = "draft") -> dict[str, Any]:
    """configs/world_cascade.yaml (its seed and generators) with this checkout's world models, no GPUs, in process,
    a local output, the policy's cascade and the scorer named here: the world's CLIP, or with `scorer` `verifier`
    the world's fact verifier (bench/world/models/verifier) as the `facts` scorer, each row's facts from the prompt
    table's `facts` column (write_rows(..., facts=True)); `models` the world's model folder (models_v2: v2);
    `draft` the draft generator (DRAFTS: the draft model, or the heavy model sampled with fewer steps)."""
    raw = yaml.safe_load(WORLD_CONFIG.read_text())
    raw["source"] = {"uri": str(source)}
    for name in ("draft", "heavy"):
        raw["generators"][name]["model"] = str(models / name)
        raw["generators"][name]["pool"].update(num_gpus=0, min_size=1, max_size=1)
    folder, steps = draft_spec(draft)
    raw["generators"]["draft"]["model"] = str(models / folder)
    if steps:
        raw["generators"]["draft"]["defaults"]["num_steps"] = steps
    raw["scorer"] = {"backend": "clip", "model": str(models / "clip"), "pool": raw["scorer"]["pool"]}
    if scorer == "verifier":
        raw["scorer"] = {"backend": "facts", "model": str(models / "verifier"), "pool": raw["scorer"]["pool"]}
    raw["routing"] = {"mode": "cascade", "cascade": policy.cascade()}
    raw["output"] = {"uri": str(output), "format": "png"}
    raw["cluster"] = {"executor": "in_process"}
    return raw


def write_rows(path: Path, rows: list[tuple[str, str]], facts: bool = False, grammar: str = "v1") -> Path:
    """The prompt table: an `id` per row (so every row gets its own derived seed) and its prompt; `facts`: each
    prompt's world facts too (bench/world/verifier_data.world_facts), for the verifier."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.world.verifier_data import world_facts

    columns: dict[str, Any] = {"id": [i for i, _ in rows], "prompt": [p for _, p in rows]}
    if facts:
        columns["facts"] = pa.array([world_facts(p, grammar) for _, p in rows], pa.list_(pa.string()))
    pq.write_table(pa.table(columns), path)
    return path


@dataclass(frozen=True)
class Image:
    """One made image: its CLIP score, the oracle's verdict and a digest of its pixels."""

    score: float
    faithfulness: float
    passed: bool
    digest: str


@dataclass(frozen=True)
class Outcome:
    """What the cascade made of one row."""

    route: str
    seed: int  # the kept draft's (an escalated row's heavy image uses it too)
    drafts: tuple[int, ...]  # every draft's seed, in order
    draft_round: int
    faithfulness: float
    final: Image
    kept: Image  # the kept draft


class Replay:
    """The world's models behind the product's actors, each image made once.

    Args:
        rows: (id, prompt) of every evaluation row.
        scorer: `clip` or `verifier` (SCORERS).
        grammar: the world's grammar, `v1` (models) or `v2` (models_v2; the oracle reads v2's words).
        draft: the draft generator (DRAFTS).
    """

    def __init__(self, rows: list[tuple[str, str]], scorer: str = "clip", grammar: str = "v1",
                 draft: str = "draft") -> None:
        import imagefleet
        from bench.world import models_for
        from imagefleet.actors import SCORERS
        from imagefleet.actors.diffusers_generator import DiffusersGenerator
        from imagefleet.jobs.preflight import resolve_stores

        self.rows, self.scorer_name, self.grammar, self.models = dict(rows), scorer, grammar, models_for(grammar)
        self.draft = draft
        self.work = Path(tempfile.mkdtemp(prefix="imagefleet-quality-"))
        source = write_rows(self.work / "rows.parquet", rows, scorer == "verifier", grammar)
        cfg = imagefleet.load(job_config(Policy(threshold=0.0), source, self.work / "out", scorer, self.models,
                                         draft))
        self.stores = resolve_stores(cfg)  # model folders keyed by content, as a run keys them
        self.generators = {name: DiffusersGenerator(cfg.generators[name], name=name) for name in ("draft", "heavy")}
        self.scorer = SCORERS[cfg.scorer.backend](cfg.scorer)  # type: ignore[arg-type]
        self.cache: dict[tuple[str, str, int], Image] = {}
        self.cpu = {name: [0.0, 0] for name in ("draft", "heavy", "score", "oracle")}
        self.wall = {name: [0.0, 0] for name in ("draft", "heavy")}

    def config(self, policy: Policy) -> Any:
        import imagefleet

        return imagefleet.load(job_config(policy, self.work / "rows.parquet", self.work / "out", self.scorer_name,
                                          self.models, self.draft))

    def preprocess(self, policy: Policy, ids: list[str]) -> Batch:
        """The preprocessor's rows for `ids` under `policy` (seeds from the job seed and row id; the draft key
        names the adaptive-draft rule), in the order of `ids`."""
        import pyarrow as pa

        from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
        from imagefleet.pipelines.plan import prep_config

        table = pa.table({"id": ids, "prompt": [self.rows[i] for i in ids]})
        if self.scorer_name == "verifier":  # each row's facts ride as a pass-through column, as in a run
            from bench.world.verifier_data import world_facts

            table = table.append_column("facts", pa.array([world_facts(self.rows[i], self.grammar) for i in ids],
                                                           pa.list_(pa.string())))
        prep = prep_config(self.config(policy), self.stores, table.column_names).model_copy(update={"resume": None})
        out = PromptPreprocessor(prep)(table)
        order = {rid: k for k, rid in enumerate(out["id"])}
        idx = np.array([order[i] for i in ids])
        return {name: np.asarray(col)[idx] for name, col in out.items()}

    def heavy_identity(self, policy: Policy) -> Any:
        from imagefleet.pipelines.plan import prep_config

        return prep_config(self.config(policy), self.stores).generators["heavy"]

    def image(self, generator: str, prompt: str, seed: int) -> Image:
        return self.cache[(generator, prompt, int(seed))]

    def make(self, generator: str, batch: Batch, rows: list[int]) -> None:
        """Make (and cache) the images of `rows` of `batch` that aren't made yet: the generator's and the
        scorer's public __call__ on those rows, then the oracle."""
        from bench.world.oracle import oracle

        todo, seen = [], set()
        for i in rows:
            key = (generator, str(batch["prompt"][i]), int(batch["seed"][i]))
            if key not in self.cache and key not in seen:
                seen.add(key)
                todo.append(i)
        for start in range(0, len(todo), CHUNK):
            part = np.array(todo[start:start + CHUNK])
            sub = {name: np.asarray(col)[part] for name, col in batch.items()}
            sub["status"] = np.array(["pending"] * len(part), dtype=object)
            sub["generator"] = np.array([generator] * len(part), dtype=object)
            out = self._timed(generator, lambda s=sub: self.generators[generator](s), len(part))
            if set(out["status"]) != {"generated"}:
                raise RuntimeError(f"{generator}: {sorted(set(out['status']))} {sorted(set(out['error']))[:3]}")
            out = self._timed("score", lambda o=out: self.scorer(o), len(part))
            started = time.process_time()
            for k in range(len(part)):
                pixels = np.frombuffer(out["image"][k], np.uint8).reshape(int(out["height"][k]), int(out["width"][k]),
                                                                          3)
                verdict = oracle(str(out["prompt"][k]), pixels, self.grammar)
                self.cache[(generator, str(out["prompt"][k]), int(out["seed"][k]))] = Image(
                    float(out["clip_score"][k]), verdict.faithfulness, verdict.passed,
                    hashlib.sha256(pixels.tobytes()).hexdigest()[:16])
            self.cpu["oracle"][0] += time.process_time() - started
            self.cpu["oracle"][1] += len(part)

    def _timed(self, name: str, call: Any, n: int) -> Batch:
        cpu, wall = time.process_time(), time.perf_counter()
        out: Batch = call()
        self.cpu[name][0] += time.process_time() - cpu
        self.cpu[name][1] += n
        if name in self.wall:
            self.wall[name][0] += time.perf_counter() - wall
            self.wall[name][1] += n
        return out

    def seconds(self, name: str, clock: str = "cpu") -> float:
        """Measured seconds per image (CPU by default: this machine is shared, so wall time is noisy)."""
        total, n = (self.cpu if clock == "cpu" else self.wall)[name]
        return total / max(1, n)

    def _fill(self, generator: str, batch: Batch) -> Batch:
        """Rows of `batch` pending for `generator` become generated, with their image's score (as a generator
        stage then a scorer stage leave them)."""
        rows = [i for i in range(len(batch["status"]))
                if batch["status"][i] == "pending" and batch["generator"][i] == generator]
        self.make(generator, batch, rows)
        out = dict(batch)
        status = np.array(batch["status"], dtype=object)
        score = np.array(batch["clip_score"] if "clip_score" in batch else [math.nan] * len(status), dtype=np.float64)
        image = np.array(batch["image"] if "image" in batch else [b""] * len(status), dtype=object)
        for i in rows:
            made = self.image(generator, str(batch["prompt"][i]), int(batch["seed"][i]))
            status[i], score[i], image[i] = "generated", made.score, made.digest.encode()
        out.update(status=status, clip_score=score, image=image,
                   image_mime=np.array(batch.get("image_mime", [""] * len(status)), dtype=object))
        return out

    def run(self, policy: Policy, ids: list[str]) -> dict[str, Outcome]:
        """The cascade under `policy` on rows `ids`, decided by the product's actors: draft, score, the
        Redrawer's rounds, the Escalator's decision over these rows, heavy, score, and (keep_better, the product's
        default) the BetterKeeper's choice of draft or heavy image."""
        from imagefleet.actors.better_keeper import BetterKeeper
        from imagefleet.actors.escalator import Escalator
        from imagefleet.actors.redrawer import Redrawer

        cascade = self.config(policy).routing.cascade
        batch = self._fill("draft", self.preprocess(policy, ids))
        for round_ in range(1, cascade.max_drafts + 1) if cascade.max_drafts > 1 else ():
            batch = Redrawer(cascade, round_)(batch)
            if round_ < cascade.max_drafts:
                batch = self._fill("draft", batch)
        heavy = self.heavy_identity(policy)
        cutoff = Escalator.over_run(batch, cascade, heavy)["cutoff"] if Escalator.decides_over_run(cascade) else None
        batch = self._fill("heavy", Escalator(cascade, "heavy", heavy, cutoff)(batch))
        batch = BetterKeeper(cascade)(batch) if cascade.keep_better else batch
        out = {}
        for i, rid in enumerate(ids):
            prompt, seed = str(batch["prompt"][i]), int(batch["seed"][i])
            drafts = tuple(int(d["seed"]) for d in json.loads(batch["candidates"][i])) \
                if "candidates" in batch and batch["candidates"][i] else (seed,)
            route = str(batch["route"][i])
            final = self.image("heavy" if route == "escalated" else "draft", prompt, seed)
            out[rid] = Outcome(route, seed, drafts, int(batch["draft_round"][i]) if "draft_round" in batch else 1,
                               final.faithfulness, final, self.image("draft", prompt, seed))
        return out


def verify(replay: Replay, policy: Policy, ids: list[str], log: Any = print) -> dict[str, Any]:
    """Run `policy` on rows `ids` through `imagefleet.run` (in process; the world models, CLIP and seeds of the
    replay) and compare every row with the replay: rows, routes, every draft's seed, the kept draft, the final
    image's score (within SCORE_TOLERANCE) and its oracle faithfulness; identical pixels are counted apart."""
    from PIL import Image as PILImage

    import imagefleet
    from bench.world.oracle import oracle

    work = Path(tempfile.mkdtemp(prefix="imagefleet-verify-"))
    source = write_rows(work / "rows.parquet", [(i, replay.rows[i]) for i in ids], replay.scorer_name == "verifier",
                        replay.grammar)
    started = time.perf_counter()
    result = imagefleet.run(job_config(policy, source, work / "out", replay.scorer_name, replay.models,
                                       replay.draft), echo=None, progress="off")
    run_s = time.perf_counter() - started
    manifest = {str(r["id"]): r for r in result.to_pandas().to_dict("records")}
    ours = replay.run(policy, ids)
    checks = {"rows": 0, "route": 0, "drafts": 0, "kept_seed": 0, "draft_round": 0, "score": 0, "faithfulness": 0}
    identical = 0
    mismatches: list[str] = []
    faith = []
    for rid in ids:
        row, mine = manifest.get(rid), ours[rid]
        if row is None or row["status"] != "ok":
            mismatches.append(f"{rid}: {row and row['status']} in the run's manifest")
            continue
        listed = [] if row["candidates"] is None else list(row["candidates"])  # typed {seed, score}s; null: 1 draft
        drafts = tuple(int(d["seed"]) for d in listed) if listed else (int(row["seed"]),)
        with PILImage.open(io.BytesIO(Path(row["image_uri"]).read_bytes())) as img:
            pixels = np.asarray(img.convert("RGB"))
        theirs = oracle(str(row["prompt"]), pixels, replay.grammar).faithfulness
        faith.append((theirs, mine.faithfulness))
        same = {"rows": True, "route": row["route"] == mine.route, "drafts": drafts == mine.drafts,
                "kept_seed": int(row["seed"]) == mine.seed,
                "draft_round": (int(row["draft_round"]) if listed else 1) == mine.draft_round,
                "score": abs(float(row["clip_score"]) - mine.final.score) <= SCORE_TOLERANCE,
                "faithfulness": theirs == mine.faithfulness}
        identical += hashlib.sha256(pixels.tobytes()).hexdigest()[:16] == mine.final.digest
        for name, ok in same.items():
            checks[name] += ok
        if not all(same.values()):
            mismatches.append(f"{rid}: " + ", ".join(n for n, ok in same.items() if not ok))
    agree = len(manifest) == len(ids) and all(v == len(ids) for v in checks.values())
    log(f"verify: {len(ids)} rows through imagefleet.run in {run_s:.1f} s; agree: {agree} {checks}; identical "
        f"pixels {identical}/{len(ids)}")
    return {"rows": len(ids), "policy": policy.label(), "run_s": round(run_s, 1), "agree": agree,
            "checks": checks, "identical_pixels": int(identical), "mismatches": mismatches[:20],
            "escalated": sum(o.route.startswith("escalated") for o in ours.values()),  # either outcome
            "redrawn": sum(len(o.drafts) > 1 for o in ours.values()),
            "faithfulness_run": float(np.mean([a for a, _ in faith])) if faith else float("nan"),
            "faithfulness_replay": float(np.mean([b for _, b in faith])) if faith else float("nan")}
