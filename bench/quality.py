"""Quality per cost on the shapes world, measured honestly (issue #32): oracle faithfulness of imagefleet's cascade
policies at fixed budgets (a share of heavy-only's cost), every policy parameter tuned on one half of the rows and
reported on the other, with 95% bootstrap CIs clustered by prompt string, next to named ceilings.

    python bench/quality.py [--rows 2304] [--verify 64]      # the benchmark (then checks the winner for real)
    python bench/quality.py --only-verify --verify 64         # only the check, on quality.json's winner
    python bench/quality.py --verify 8 --policy max_drafts=3,redraw_below=65,escalate_fraction=0.25
    python bench/quality.py --scorer verifier [--rows 2304]   # the world's fact verifier as the scorer
    python bench/quality.py --scorer verifier --report-only   # BENCHMARKS.md's section again from the results
    python bench/quality.py --grammar v2 --scorer verifier    # the v2 world, on evaluation strings no model saw
    python bench/quality.py --grammar v2 --strings seen       # ... or on its training pool, for comparison
    python bench/quality.py --grammar v2 --scorer verifier --draft heavy@2   # drafts: the heavy model at 2 steps

Design. Rows: the world's grammar enumerated (651 strings); each GenEval task gets rows/6 rows, its strings
shuffled and cycled, so the set holds as many distinct strings as the rows allow; every row has its own id and so
its own derived seed. Folds: each task's rows split in two at random; each half's policy parameters are chosen on
the other half (2-fold), and both reported halves together make the table. Cost: measured CPU seconds per image
on one thread — draft and heavy generation, and the scorer per scored image, counted apart. Product policies are
replayed through imagefleet's code (bench/quality_replay.py); tuning and the ceilings use a candidate pool of 4
drafts per row (seeds `redraw_seed(first seed, the 1-draft key, k)`). `--verify N` runs the 0.30 winner through
`imagefleet.run` on N of its reported rows and checks the replay row by row.

Writes bench/results/quality.json and quality.png and rewrites BENCHMARKS.md's quality section in place. With
`--scorer verifier` (bench/world/models/verifier as the `facts` scorer, each row's world facts in a `facts` column;
scores 0..1) it writes quality_verifier.json and .png instead, rewrites (or adds) BENCHMARKS.md's verifier section
right after the CLIP one (bench/quality_verifier_report.py), and reports the scorer's pairwise accuracy on the
verifier's held-out and training strings apart. With `--grammar v2` (bench/world/models_v2, the v2 oracle; 2,700
rows by default, so every one of the 539 evaluation strings is a row) it writes quality_v2_<strings>_<scorer>.json
and .png and the v2 section (bench/quality_v2_report.py), which reads every v2 results file there is. `--draft
heavy@K` (v2) makes the drafts with the heavy model's own weights at K denoising steps instead of the small draft
model (a few-step mode of the heavy model: a user drafting with fewer steps of the very model they escalate
to): results in quality_v2_<strings>_<scorer>_draft-heavyK.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality_v2_report, quality_verifier_report  # noqa: E402
from bench.common import REPO, git_rev, machine  # noqa: E402
from bench.quality_design import (  # noqa: E402
    DESIGN_SEED,
    Row,
    evaluation_rows,
    grammar,
    strings_for,
    training_strings,
    verify_rows,
)
from bench.quality_replay import (  # noqa: E402
    DRAFTS,
    SCORE_TOLERANCE,
    SCORERS,
    Batch,
    Policy,
    Replay,
    v2_results_name,
    verify,
)
from bench.quality_report import markdown, plot, update_benchmarks  # noqa: E402

RESULTS = REPO / "bench" / "results"
BUDGETS = (0.2, 0.3, 0.42)  # shares of heavy-only's cost
POOL = 4  # candidate drafts per row (tuning, ceilings)
CALIBRATION_ROUNDS, CALIBRATION_ROWS = 7, 64  # the cost measurement: rounds of a draft then a heavy batch of 64 rows
FRACTIONS = tuple(round(0.01 * k, 2) for k in range(1, 61))
QUANTILES = tuple(round(0.1 * k, 1) for k in range(1, 10))
BOOTSTRAP = 2000
NAMES = {"clip": "quality.json", "verifier": "quality_verifier.json"}  # results file per scorer (v1)
ROWS = {"v1": 2304, "v2": 2700}  # default rows: v2's 450 a task make every one of its 539 evaluation strings a row


def results_name(scorer: str, world: str = "v1", which: str = "unseen", draft: str = "draft") -> str:
    """The results file of a run: v1 per scorer (NAMES), v2 per strings, scorer and draft (v2_results_name)."""
    return NAMES[scorer] if world == "v1" else v2_results_name(which, scorer, draft)


@dataclass
class Pool:
    """Per row: POOL candidate drafts' CLIP scores S and oracle faithfulness F (candidate 0 = the row's own
    seed), the heavy image at the row's seed (H), and the row's 1-draft key (ties in escalation)."""

    S: np.ndarray
    F: np.ndarray
    H: np.ndarray
    keys: np.ndarray
    digits: int = 1  # score decimals the grid's thresholds keep (CLIP 0..100: 1; the verifier's 0..1: 3)


def make_pool(replay: Replay, rows: list[Row], log: Any) -> Pool:
    """Every row's first draft, its POOL - 1 further candidates and its heavy image, through the replay's cache."""
    from imagefleet.actors.redrawer import redraw_seed

    ids = [r.id for r in rows]
    base = replay.preprocess(Policy(threshold=0.0), ids)
    n, everything = len(ids), list(range(len(ids)))
    S, F = np.zeros((n, POOL)), np.zeros((n, POOL))
    for k in range(POOL):
        batch = dict(base, seed=np.array([redraw_seed(int(s), str(key), k) for s, key in
                                          zip(base["seed"], base["image_key"], strict=True)]))
        started = time.perf_counter()
        replay.make("draft", batch, everything)
        log(f"pool: candidate {k} of {n} rows in {time.perf_counter() - started:.0f} s")
        made = [replay.image("draft", str(p), int(s)) for p, s in zip(batch["prompt"], batch["seed"], strict=True)]
        S[:, k], F[:, k] = [m.score for m in made], [m.faithfulness for m in made]
    batch = heavy_rows(replay, base)
    started = time.perf_counter()
    replay.make("heavy", batch, everything)
    log(f"pool: heavy of {n} rows in {time.perf_counter() - started:.0f} s")
    H = np.array([replay.image("heavy", str(p), int(s)).faithfulness for p, s in
                  zip(batch["prompt"], batch["seed"], strict=True)])
    return Pool(S, F, H, np.asarray(base["image_key"], dtype=str), 1 if replay.scorer_name == "clip" else 3)


def heavy_rows(replay: Replay, base: Batch) -> Batch:
    """The preprocessor's rows `base` set up for the heavy model (its steps, guidance and size)."""
    heavy, n = replay.config(Policy(threshold=0.0)).generators["heavy"].defaults, len(base["seed"])
    return dict(base, num_steps=np.full(n, heavy.num_steps), guidance_scale=np.full(n, heavy.guidance_scale),
                width=np.full(n, heavy.width), height=np.full(n, heavy.height))


def calibrate(replay: Replay, rows: list[Row], log: Any) -> dict[str, Any]:
    """Draft and heavy cost per image, measured interleaved: CALIBRATION_ROUNDS rounds, each a draft batch then a
    heavy batch of the same CALIBRATION_ROWS rows at seeds of their own (nothing from the cache), so the shared
    machine's load at the time hits both alike. The cost of each is its median round (CPU s per image); the rounds'
    draft / heavy ratios give the spread. (The pool's own timings, phase by phase, are kept for reference: a phase
    run while something else loads the machine skews their ratio, 0.10 to 0.15 for one pair of models.)"""
    ids = [r.id for r in rows[::max(1, len(rows) // CALIBRATION_ROWS)][:CALIBRATION_ROWS]]
    base = replay.preprocess(Policy(threshold=0.0), ids)
    rounds: dict[str, list[float]] = {"draft": [], "heavy": []}
    for k in range(CALIBRATION_ROUNDS):
        seeds = np.array([(int(s) + 1_000_003 * (k + 1)) % 2**31 for s in base["seed"]])
        for name, batch in (("draft", dict(base, seed=seeds)), ("heavy", heavy_rows(replay, dict(base, seed=seeds)))):
            cpu, n = replay.cpu[name][0], replay.cpu[name][1]
            replay.make(name, batch, list(range(len(ids))))
            rounds[name].append((replay.cpu[name][0] - cpu) / max(1, replay.cpu[name][1] - n))
    ratios = np.array(rounds["draft"]) / np.array(rounds["heavy"])
    out = {"rounds": CALIBRATION_ROUNDS, "rows": len(ids), "draft_cpu_s": rounds["draft"],
           "heavy_cpu_s": rounds["heavy"], "draft_vs_heavy_rounds": [round(float(r), 4) for r in ratios]}
    log(f"calibration: draft / heavy per round {', '.join(f'{r:.3f}' for r in ratios)}")
    return out


def adaptive(S: np.ndarray, max_drafts: int, stop: float) -> tuple[np.ndarray, np.ndarray]:
    """The Redrawer's rule on candidate scores: draw the next draft while the best so far is below `stop`, keep
    the best (ties keep the earlier). Returns the kept candidate and the number of drafts per row."""
    n = len(S)
    kept, best, drafts = np.zeros(n, dtype=int), S[:, 0].copy(), np.ones(n)
    for k in range(1, max_drafts):
        go = best < stop
        drafts += go
        better = go & (S[:, k] > best)
        kept[better], best[better] = k, S[better, k]
    return kept, drafts


def stop_at(policy: Policy) -> float:
    """The score at which the Redrawer stops drawing: `redraw_below`, or never (best-of-N) when it has none. A
    threshold of 0 is a threshold (no score is below it: one draft), not "none" — a 0..1 scorer's low quantile
    rounds to it."""
    return math.inf if policy.redraw_below is None else policy.redraw_below


def evaluate(pool: Pool, idx: np.ndarray, cost: dict[str, float], policy: Policy, by_oracle: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`policy` on the pool's rows idx: faithfulness, generation cost and scoring cost per row (escalated rows take
    the heavy image at the row's seed; the product's heavy image uses the kept draft's seed)."""
    from imagefleet.actors.escalator import escalation_count
    from imagefleet.configs.routing import CascadeConfig

    S, n = (pool.F if by_oracle else pool.S)[idx], len(idx)
    kept, drafts = adaptive(S, policy.max_drafts, stop_at(policy))
    best, faith = S[np.arange(n), kept], pool.F[idx][np.arange(n), kept]
    up = np.zeros(n, dtype=bool)
    if policy.escalate_fraction is not None:
        count = escalation_count(CascadeConfig(**policy.cascade()), 1.0, n) or 0
        up[np.lexsort((pool.keys[idx], best))[:count]] = True  # the Escalator's ranking: (score, key)
    else:
        up = best < float(policy.threshold or 0.0)
    return (np.where(up, pool.H[idx], faith), drafts * cost["draft"] + up * cost["heavy"],
            (drafts + up) * cost["score"])


def grid(pool: Pool, idx: np.ndarray, by_oracle: bool) -> list[Policy]:
    """Every policy tried: max_drafts 1..POOL; redraw_below at the tuning rows' first-draft score deciles (CLIP,
    0.1 apart) or faithfulness levels (oracle), or never stopping (best-of-N); escalate_fraction 0.01..0.60 or
    nothing; with one draft also absolute thresholds (CLIP; midpoints between the tuning rows' scores)."""
    S = (pool.F if by_oracle else pool.S)[idx]
    stops = sorted({float(x) for x in np.unique(S[:, 0])} - {0.0}) if by_oracle else \
        sorted({round(float(np.quantile(S[:, 0], q)), pool.digits) for q in QUANTILES})
    rules: list[tuple[int, float | None]] = [(1, None)] + [(m, t) for m in range(2, POOL + 1)
                                                          for t in [*stops, math.inf]]
    out = [Policy(m, t, escalate_fraction=f) for m, t in rules for f in FRACTIONS]
    out += [Policy(m, t, threshold=0.0) for m, t in rules]
    if not by_oracle:
        ranked = np.sort(S[:, 0])
        out += [Policy(threshold=round(float((ranked[k - 1] + ranked[k]) / 2), pool.digits + 1))
                for k in sorted({max(1, int(f * len(idx))) for f in FRACTIONS})]
    return out


def tune(pool: Pool, idx: np.ndarray, cost: dict[str, float], budget: float, by_oracle: bool, keep: Any
         ) -> Policy | None:
    """The most faithful policy on rows idx (ties: the cheaper) whose mean cost is within budget; None when none of
    the family's policies fits (a family that must escalate, when one draft nearly fills the budget)."""
    best: tuple[float, float] | None = None
    chosen = Policy(threshold=0.0)
    for policy in grid(pool, idx, by_oracle):
        if not keep(policy):
            continue
        faith, gen, score = evaluate(pool, idx, cost, policy, by_oracle)
        spent = float((gen + score).mean())
        if spent <= budget + 1e-12 and (best is None or (float(faith.mean()), -spent) > best):
            best, chosen = (float(faith.mean()), -spent), policy
    return None if best is None else chosen


FAMILIES = {  # product policies, tuned on the pool, replayed through imagefleet's code on the reported half
    "cascade, 1 draft, escalate_fraction": lambda p: p.max_drafts == 1 and p.escalate_fraction is not None,
    "cascade, 1 draft, threshold": lambda p: p.max_drafts == 1 and p.escalate_fraction is None,
    "cascade, adaptive drafts (max_drafts 2-4, redraw_below) + escalate_fraction or none":
        lambda p: p.max_drafts > 1,
    "cascade, every parameter tuned (max_drafts 1-4, redraw_below, escalate_fraction or threshold)": lambda p: True,
}
WINNER = list(FAMILIES)[-1]  # the reported best product policy: declared before any result, not picked on them
ADAPTIVE = list(FAMILIES)[2]


def replayed(replay: Replay, policy: Policy, rows: list[Row], idx: np.ndarray, cost: dict[str, float]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The product's cascade on rows idx (bench/quality_replay.py); checks the Redrawer kept and drew what the
    pool's rule says it would on the same scores, and that the escalation count is the policy's."""
    from imagefleet.actors.escalator import escalation_count
    from imagefleet.configs.routing import CascadeConfig

    ids = [rows[i].id for i in idx]
    out = replay.run(policy, ids)
    drafts = np.array([len(out[i].drafts) for i in ids])
    up = np.array([out[i].route.startswith("escalated") for i in ids])  # heavy paid for, whichever was kept
    S = np.full((len(ids), policy.max_drafts), -math.inf)
    for j, rid in enumerate(ids):
        S[j, :drafts[j]] = [replay.image("draft", rows[idx[j]].prompt, s).score for s in out[rid].drafts]
    kept, expected = adaptive(S, policy.max_drafts, stop_at(policy))
    rounds = np.array([out[i].draft_round for i in ids])
    count = escalation_count(CascadeConfig(**policy.cascade()), 1.0, len(ids)) if policy.escalate_fraction else None
    if not (np.array_equal(drafts, expected) and np.array_equal(rounds, kept + 1)) or \
            (count is not None and int(up.sum()) != count):
        raise RuntimeError(f"the replay of {policy.label()} disagrees with the Redrawer's / Escalator's rule")
    faith = np.array([out[i].faithfulness for i in ids])
    return faith, drafts * cost["draft"] + up * cost["heavy"], (drafts + up) * cost["score"]


class Bootstrap:
    """95% intervals from resampling prompt strings with replacement within each task (the rows' strata), all of
    a string's rows together; the statistic is the mean over tasks of the task's ratio sum(num) / sum(den)."""

    def __init__(self, rows: list[Row], resamples: int = BOOTSTRAP) -> None:
        rng = np.random.default_rng(DESIGN_SEED)
        self.tasks = sorted({r.task for r in rows})
        self.members: dict[str, list[np.ndarray]] = {}
        self.weights: dict[str, np.ndarray] = {}
        for task in self.tasks:
            by_string: dict[str, list[int]] = {}
            for i, r in enumerate(rows):
                if r.task == task:
                    by_string.setdefault(r.prompt, []).append(i)
            self.members[task] = [np.array(v) for v in by_string.values()]
            k = len(by_string)
            self.weights[task] = rng.multinomial(k, [1 / k] * k, size=resamples).astype(float)

    def _stat(self, num: np.ndarray, den: np.ndarray, resampled: bool) -> np.ndarray | float:
        parts = []
        for task in self.tasks:
            n = np.array([num[m].sum() for m in self.members[task]])
            d = np.array([den[m].sum() for m in self.members[task]])
            w = self.weights[task] if resampled else np.ones((1, len(n)))
            with np.errstate(invalid="ignore"):  # a resample of a task without a single pair
                parts.append((w @ n) / (w @ d))
        out = np.mean(parts, axis=0)
        return out if resampled else float(out[0])

    def mean(self, values: np.ndarray, den: np.ndarray | None = None) -> dict[str, float]:
        den = np.ones(len(values)) if den is None else den
        draws = self._stat(values, den, True)
        return {"value": self._stat(values, den, False), "low": float(np.nanquantile(draws, 0.025)),
                "high": float(np.nanquantile(draws, 0.975))}


def pairwise(pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """Per row, how often CLIP orders two of its candidate drafts as the oracle does (pairs whose faithfulness
    differs; equal scores count half), and how many such pairs there are."""
    right, pairs = np.zeros(len(pool.S)), np.zeros(len(pool.S))
    for a in range(POOL):
        for b in range(a + 1, POOL):
            differ = pool.F[:, a] != pool.F[:, b]
            agree = np.sign(pool.S[:, a] - pool.S[:, b]) * np.sign(pool.F[:, a] - pool.F[:, b])
            right += differ * np.where(agree == 0, 0.5, agree > 0)
            pairs += differ
    return right, pairs


def best_of(pool: Pool, count: int, cost: dict[str, float]
            ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]]:
    """The most faithful of each row's first `count` candidates (the oracle's pick; ties keep the earlier), and
    the best-scoring by CLIP (the product's best_of mode, on the pool's seeds)."""
    n = len(pool.S)
    gen, score = np.full(n, count * cost["draft"]), np.full(n, count * cost["score"])
    by_oracle, by_clip = np.argmax(pool.F[:, :count], axis=1), np.argmax(pool.S[:, :count], axis=1)
    return {f"ceiling: oracle best-of-{count} (the most faithful of {count} drafts)":
            (pool.F[np.arange(n), by_oracle], gen, score, []),
            f"reference: best-of-{count} by CLIP (candidate pool)": (pool.F[np.arange(n), by_clip], gen, score, [])}


def ceilings(pool: Pool, folds: list[np.ndarray], cost: dict[str, float], budget: float
             ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]]:
    """What knowing the oracle would buy at this budget (per row: faithfulness, generation, scoring cost)."""
    n = len(pool.S)
    per_draft = cost["draft"] + cost["score"]
    best_n = max(1, min(POOL, int(budget / per_draft + 1e-9)))
    out = {}
    # perfect draft scorer: the oracle's faithfulness as the score, in the same policies, tuned the same way
    faith, gen, score, chosen = np.zeros(n), np.zeros(n), np.zeros(n), []
    for k in (0, 1):
        policy = tune(pool, folds[1 - k], cost, budget, True, FAMILIES[WINNER])
        assert policy is not None, "one scored draft fits (run() skips a budget it doesn't)"
        faith[folds[k]], gen[folds[k]], score[folds[k]] = evaluate(pool, folds[k], cost, policy, True)
        chosen.append(policy.label())
    out["ceiling: perfect draft scorer (oracle scores drive the same policies)"] = (faith, gen, score, chosen)
    # hindsight escalation: one draft, then the rows the heavy model improves most, as many as the budget buys
    gain, faith, gen = pool.H - pool.F[:, 0], pool.F[:, 0].copy(), np.full(n, cost["draft"])
    for idx in folds:
        count = int((budget - cost["draft"]) / cost["heavy"] * len(idx))
        top = idx[np.argsort(-gain[idx], kind="stable")[:count]]
        top = top[gain[top] > 0]
        faith[top], gen[top] = pool.H[top], cost["draft"] + cost["heavy"]
    out["ceiling: hindsight escalation (the largest actual heavy gains; no scorer)"] = (
        faith, gen, np.zeros(n), [f"escalates up to {(budget - cost['draft']) / cost['heavy']:.3f} of rows"])
    if best_n > 1:
        out.update(best_of(pool, best_n, cost))
    return out


def _seen(world: str) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """The world's every string by task, and the strings each generator and CLIP saw in training (v1: the
    training streams replayed; v2: the training pool, by construction)."""
    if world == "v1":
        return grammar(), training_strings()
    from bench.world import split

    pool = {p for texts in split.training_strings().values() for p in texts}
    return split.enumerate_strings("v2"), {m: pool for m in ("clip", "draft", "heavy")}


def run(n_rows: int, log: Any = print, scorer: str = "clip", world: str = "v1", which: str = "unseen",
        draft: str = "draft") -> dict[str, Any]:
    """The benchmark: rows, candidate pool, then per budget every family tuned on one half and reported on the
    other, ceilings, intervals."""
    # 1 the grammar, the strings each model saw in training, the evaluation rows
    (every_by_task, seen), strings = _seen(world), strings_for(world, which)
    rows = evaluation_rows(n_rows, strings)
    folds = [np.array([i for i, r in enumerate(rows) if r.fold == k]) for k in (0, 1)]
    replay = Replay([(r.id, r.prompt) for r in rows], scorer, world, draft)
    # 2 every row's candidate drafts and heavy image; costs measured on them (CPU s per image, one thread)
    pool = make_pool(replay, rows, log)
    pooled_cost = {name: replay.seconds(name) for name in ("draft", "heavy")}
    calibration = calibrate(replay, rows, log)
    cost = {name: float(np.median(calibration[f"{name}_cpu_s"])) for name in ("draft", "heavy")}
    cost["score"] = replay.seconds("score")
    boot = Bootstrap(rows)
    heavy = pool.H

    def entry(name: str, kind: str, budget: float | None, faith: np.ndarray, gen: np.ndarray, score: np.ndarray,
              chosen: list[str]) -> dict[str, Any]:
        spent = float((gen + score).mean()) / cost["heavy"]
        return {"policy": name, "kind": kind, "budget": budget, "chosen": chosen,
                "faithfulness": boot.mean(faith), "vs_heavy": boot.mean(faith - heavy),
                "cost_vs_heavy": spent, "generation_vs_heavy": float(gen.mean()) / cost["heavy"],
                "scoring_vs_heavy": float(score.mean()) / cost["heavy"],
                "within_budget": budget is None or spent <= budget + 1e-9}

    n = len(rows)
    results = [entry("draft only", "baseline", None, pool.F[:, 0], np.full(n, cost["draft"]), np.zeros(n), []),
               entry("heavy only", "baseline", None, heavy, np.full(n, cost["heavy"]), np.zeros(n), [])]
    results += [entry(name, name.split(":")[0], None, *values) for name, values in best_of(pool, POOL, cost).items()]
    policies: dict[str, Any] = {}
    # 3 each budget: every product family tuned on one half, replayed through the product on the other
    one_draft = (cost["draft"] + cost["score"]) / cost["heavy"]  # the least a row can cost, as a share of heavy's
    unaffordable = [b for b in BUDGETS if one_draft > b]
    if 0.3 in unaffordable:
        raise SystemExit(f"one scored draft costs {one_draft:.3f} of heavy's cost: over the 0.30 budget the verdict "
                         "is made at; choose a cheaper --draft")
    for budget in BUDGETS:
        limit = budget * cost["heavy"]
        if budget in unaffordable:  # one scored draft a row costs more: no policy (and no ceiling) fits
            log(f"{budget}: one scored draft costs {one_draft:.3f} of heavy's cost; no policy fits")
            continue
        for family, keep in FAMILIES.items():
            faith, gen, score, chosen = np.zeros(n), np.zeros(n), np.zeros(n), []
            tuned = [tune(pool, folds[1 - k], cost, limit, False, keep) for k in (0, 1)]
            if None in tuned:
                log(f"{budget} {family}: no policy of the family fits")
                continue
            for k, policy in enumerate(tuned):
                assert policy is not None
                started = time.perf_counter()
                faith[folds[k]], gen[folds[k]], score[folds[k]] = replayed(replay, policy, rows, folds[k], cost)
                log(f"{budget} {family} fold {k}: {policy.label()} ({time.perf_counter() - started:.0f} s)")
                chosen.append(policy.label())
                policies[f"{budget}|{family}|{k}"] = policy.__dict__
            results.append(entry(family, "product", budget, faith, gen, score, chosen))
        for name, (faith, gen, score, chosen) in ceilings(pool, folds, cost, limit).items():
            results.append(entry(name, name.split(":")[0], budget, faith, gen, score, chosen))
    # 4 the scorer, the strings, the verdict
    right, pairs = pairwise(pool)
    evaluated = {r.prompt for r in rows}
    every = {p for texts in every_by_task.values() for p in texts}
    unseen = every - seen["clip"] - seen["draft"] - seen["heavy"]
    heavy_value = results[1]["faithfulness"]["value"]

    def verdict(family: str) -> dict[str, Any]:
        """The family at 0.30 of heavy's cost on held-out rows, against heavy only's point estimate."""
        r = next(r for r in results if r["policy"] == family and r["budget"] == 0.3)
        return {"budget": 0.3, "family": family, "policies": [policies[f"0.3|{family}|{k}"] for k in (0, 1)],
                "faithfulness": r["faithfulness"], "cost_vs_heavy": r["cost_vs_heavy"], "heavy": heavy_value,
                "reaches_heavy": r["faithfulness"]["low"] >= heavy_value and r["within_budget"]}

    return {
        "at": time.strftime("%Y-%m-%d %H:%M"), "rows": n, "design_seed": DESIGN_SEED, "budgets": list(BUDGETS),
        "grammar": world, "strings_kind": which if world == "v2" else "seen", "draft": draft,
        "budgets_unaffordable": unaffordable,
        "bootstrap_resamples": BOOTSTRAP,
        "strings": {"grammar": len(every), "evaluated": len(evaluated),
                    "per_task": {t: [len(strings[t]), len({r.prompt for r in rows if r.task == t})] for t in strings},
                    "rows_per_task": n // len(strings),
                    "seen_by": {m: len(every & seen[m]) for m in ("clip", "draft", "heavy")},
                    "unseen_by_every_model": len(unseen),
                    "evaluated_unseen_by_every_model": len(evaluated & unseen),
                    "evaluated_not_in": {m: sorted(evaluated - seen[m]) for m in ("clip", "draft", "heavy")}},
        "costs": {**{f"{k}_cpu_s": v for k, v in cost.items()},
                  **{f"{k}_wall_s": replay.seconds(k, "wall") for k in ("draft", "heavy")},
                  "oracle_cpu_s": replay.seconds("oracle"), "draft_vs_heavy": cost["draft"] / cost["heavy"],
                  "score_vs_heavy": cost["score"] / cost["heavy"], "images_made": {
                      k: replay.cpu[k][1] for k in ("draft", "heavy")}, "calibration": calibration,
                  "pool_phases": {f"{k}_cpu_s": v for k, v in pooled_cost.items()}
                  | {"draft_vs_heavy": pooled_cost["draft"] / pooled_cost["heavy"]}},
        "scorer": scorer, "clip_within_prompt_pairwise": boot.mean(right, pairs), "pairs": int(pairs.sum()),
        **(verifier_strings(rows, right, pairs, world) if scorer == "verifier" else {}),
        "results": results, "policies": policies,
        "winner": verdict(WINNER),
        "adaptive": verdict(ADAPTIVE) if f"0.3|{ADAPTIVE}|0" in policies else None,  # None: no policy of it fits
    }


def verifier_strings(rows: list[Row], right: np.ndarray, pairs: np.ndarray, world: str = "v1") -> dict[str, Any]:
    """The scorer's pairwise accuracy on rows of the verifier's held-out strings and of its training strings
    (bench/world/verifier_data.split), each with its own clustered CI."""
    from bench.world.verifier_data import split

    _, held = split(world)
    unseen = {s for texts in held.values() for s in texts}
    out: dict[str, Any] = {"verifier_unseen_strings_evaluated": len({r.prompt for r in rows} & unseen)}
    for name, keep in (("held_out", True), ("training", False)):
        idx = np.array([i for i, r in enumerate(rows) if (r.prompt in unseen) == keep])
        paired = {rows[i].task for i in idx if pairs[i]}  # a task without a pair has no ratio: left out
        tasks = np.array([i for i in idx if rows[i].task in paired], dtype=int)
        if len(tasks):
            out[f"pairwise_verifier_{name}_strings"] = {
                **Bootstrap([rows[i] for i in tasks]).mean(right[tasks], pairs[tasks]), "rows": len(idx),
                "pairs": int(pairs[idx].sum()), "pooled": Bootstrap([Row(rows[i].id, rows[i].prompt, "all", 0)
                                                                    for i in idx]).mean(right[idx], pairs[idx]),
                "tasks_without_pairs": sorted({rows[i].task for i in idx} - paired)}
    return out


def check(n_rows: int, count: int, policy: Policy, log: Any = print, scorer: str = "clip", world: str = "v1",
          which: str = "unseen", draft: str = "draft") -> dict[str, Any]:
    """--verify: the policy through imagefleet.run on `count` rows against the replay of the same rows."""
    rows = verify_rows(n_rows, count, strings_for(world, which))
    return verify(Replay([(r.id, r.prompt) for r in rows], scorer, world, draft), policy, [r.id for r in rows], log)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=0,
                   help="evaluation rows (a multiple of 6; default 2304, with --grammar v2 2700)")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="after the benchmark, run the 0.30 winner through imagefleet.run on N of its reported rows "
                        "and check the replay row by row")
    p.add_argument("--only-verify", action="store_true",
                   help="no benchmark: --verify the winner recorded in the results file")
    p.add_argument("--scorer", choices=SCORERS, default="clip",
                   help="clip (the world's CLIP) or verifier (the world's fact verifier as the facts scorer); "
                        "verifier results go to their own results file and BENCHMARKS.md section")
    p.add_argument("--grammar", choices=["v1", "v2"], default="v1",
                   help="v2: the v2 world (bench/world/models_v2), on strings no model saw (--strings unseen)")
    p.add_argument("--strings", choices=["unseen", "seen"], default="unseen",
                   help="v2 only: its evaluation strings (unseen by every model) or its training pool (seen)")
    p.add_argument("--draft", choices=DRAFTS, default="draft",
                   help="v2 only: the draft generator: the world's draft model (4 steps), or the heavy model "
                        "sampled with K steps (heavy@K); results go to their own file")
    p.add_argument("--policy", default="",
                   help="no benchmark: --verify this policy instead (max_drafts=3,redraw_below=65,...)")
    p.add_argument("--report-only", action="store_true",
                   help="no benchmark: the plot and BENCHMARKS.md's section again from the scorer's results file")
    args = p.parse_args()
    args.rows = args.rows or ROWS[args.grammar]
    if args.grammar == "v1" and args.draft != "draft":
        p.error("--draft applies to --grammar v2")
    name = results_name(args.scorer, args.grammar, args.strings, args.draft)
    if args.report_only:
        return finish(json.loads((RESULTS / name).read_text()))
    import torch

    torch.set_num_threads(1)  # one core, like one generator actor (Ray sets OMP_NUM_THREADS=1)
    if args.policy:  # a given policy, printed only (tests)
        result = check(args.rows, args.verify or 8, Policy.parse(args.policy),
                       log=lambda text: print(text, file=sys.stderr), scorer=args.scorer, world=args.grammar,
                       which=args.strings, draft=args.draft)  # stdout: the JSON only
        print(json.dumps(result, indent=2))
        return 0 if result["agree"] else 1
    command = "python bench/quality.py" + "".join(f" --{k} {v}" for k, v, default in (
        ("grammar", args.grammar, "v1"), ("strings", args.strings, "unseen"),
        ("rows", args.rows, ROWS[args.grammar]), ("scorer", args.scorer, "clip"), ("draft", args.draft, "draft"))
        if v != default)
    if args.only_verify:  # the recorded winner again; the check replaces the recorded one
        q = json.loads((RESULTS / name).read_text())
        q["verify"] = checked(q["rows"], args.verify or 64, Policy(**q["winner"]["policies"][0]),
                              f"{command} --only-verify --verify {args.verify or 64}", args)
        return finish(q)
    started = time.perf_counter()
    q = run(args.rows, lambda text: print(text, flush=True), args.scorer, args.grammar, args.strings, args.draft)
    q["machine"], q["commit"] = machine(), git_rev()
    q["command"] = command + (f" --verify {args.verify}" if args.verify else "")
    q["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    if args.verify:
        q["verify"] = checked(args.rows, args.verify, Policy(**q["winner"]["policies"][0]), q["command"], args)
    return finish(q)


def checked(n_rows: int, count: int, policy: Policy, command: str, args: argparse.Namespace) -> dict[str, Any]:
    """--verify with its own date, commit and command (it may be rerun alone later)."""
    result = check(n_rows, count, policy, scorer=args.scorer, world=args.grammar, which=args.strings,
                   draft=args.draft)
    rows = verify_rows(n_rows, count, strings_for(args.grammar, args.strings))
    return {**result, "row_ids": [r.id for r in rows], "at": time.strftime("%Y-%m-%d %H:%M"),
            "commit": git_rev(), "command": command, "score_tolerance": SCORE_TOLERANCE}


def finish(q: dict[str, Any]) -> int:
    """The results file, its plot and BENCHMARKS.md's section (v1 CLIP: quality.json and the quality section; v1
    verifier: quality_verifier.json and its section; v2: quality_v2_<strings>_<scorer>.json and the v2 section,
    from every v2 results file there is); exit 1 when --verify disagreed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    scorer, world = q.get("scorer", "clip"), q.get("grammar", "v1")
    name = results_name(scorer, world, q.get("strings_kind", "unseen"), q.get("draft", "draft"))
    (RESULTS / name).write_text(json.dumps(q, indent=2))
    plot(q, (RESULTS / name).with_suffix(".png"))
    if world == "v2":
        found = {f.name: json.loads(f.read_text()) for f in sorted(RESULTS.glob("quality_v2_*.json"))}
        quality_v2_report.update_benchmarks(found)
        print("\n".join(quality_v2_report.markdown(found)))
    elif scorer == "clip":
        update_benchmarks(q)
        print("\n".join(markdown(q)))
    else:
        clip = json.loads((RESULTS / NAMES["clip"]).read_text()) if (RESULTS / NAMES["clip"]).exists() else None
        quality_verifier_report.update_benchmarks(q, clip)
        print("\n".join(quality_verifier_report.markdown(q, clip)))
    return 0 if not q.get("verify") or q["verify"]["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
