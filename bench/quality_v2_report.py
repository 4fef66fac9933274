"""BENCHMARKS.md's section on the quality benchmark in the v2 world (`python bench/quality.py --grammar v2 ...`):
every v2 results file there is (bench/results/quality_v2_<strings>_<scorer>.json: strings `unseen` — evaluation
strings no model or scorer saw in training — or `seen`, the training pool; scorer `clip` or `verifier`) in one
summary table, the headline run (unseen strings, the verifier; else the first there is) in full, and the verdict
at <= 0.30 of heavy's cost. The section sits after the other quality sections and is replaced in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.quality_replay import Policy, draft_spec, v2_results_name
from bench.quality_report import _ci, table, verify_text

TITLE = "## Quality per cost on strings no model saw: the v2 world"
AFTER = ("## Quality per cost with the trained fact verifier", "## Quality per cost: the shapes world")
DRAFT_ORDER = ("draft", "heavy@3", "heavy@2", "heavy@4")  # the draft generators (bench/quality_replay.DRAFTS)
ORDER = tuple(v2_results_name(which, scorer, draft)
              for which in ("unseen", "seen") for draft in DRAFT_ORDER for scorer in ("verifier", "clip"))
SCORER = {"clip": "world CLIP (v2)", "verifier": "fact verifier (v2)"}


def _name(q: dict[str, Any]) -> str:
    return SCORER[q.get("scorer", "clip")]


def _draft(q: dict[str, Any]) -> str:
    _, steps = draft_spec(q.get("draft", "draft"))
    return "draft model (4 steps)" if steps is None else f"heavy model, {steps} steps"


def _at(q: dict[str, Any], prefix: str, budget: float | None = 0.3) -> dict[str, Any]:
    return next(r for r in q["results"] if r["budget"] == budget and r["policy"].startswith(prefix))


def _best(q: dict[str, Any], budget: float) -> str:
    """The best product policy's faithfulness at `budget` (bold at 0.30), or why there is none."""
    if budget in q.get("budgets_unaffordable", []):
        return "– (one draft costs more)"
    return ("**{}**" if budget == 0.3 else "{}").format(_ci(_at(q, "cascade, every parameter tuned", budget)[
        "faithfulness"]))


def summary(runs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per run: the baselines, the best product policy per budget, the ceilings at 0.30, the scorer."""
    lines = ["| strings | scorer | draft generator | draft / heavy cost (measured) | draft only | heavy only | best "
             "product policy at 0.20 / **0.30** / 0.42 of heavy's cost | adaptive drafts at 0.30 | ceiling at 0.30: "
             "perfect draft scorer / hindsight escalation | oracle best-of-4 (4 drafts' cost) | scorer's within-prompt "
             "pairwise accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        q = runs.get(name)
        if not q:
            continue
        lines.append(
            f"| {q['strings_kind']} ({q['strings']['evaluated']} strings, {q['rows']} rows) | {_name(q)} "
            f"| {_draft(q)} | {q['costs']['draft_vs_heavy']:.3f} | {_ci(q['results'][0]['faithfulness'])} | "
            f"{_ci(q['results'][1]['faithfulness'])} | "
            + " / ".join(_best(q, b) for b in q["budgets"])
            + f" | {_ci(q['adaptive']['faithfulness']) if q['adaptive'] else '– (none fits)'} | "
            f"{_ci(_at(q, 'ceiling: perfect')['faithfulness'])} / "
            f"{_ci(_at(q, 'ceiling: hindsight')['faithfulness'])} | "
            f"{_ci(_at(q, 'ceiling: oracle best-of-4', None)['faithfulness'])} | "
            f"{_ci(q['clip_within_prompt_pairwise'])} |")
    return lines


def _verdict(q: dict[str, Any]) -> list[str]:
    w, perfect, best4 = q["winner"], _at(q, "ceiling: perfect"), _at(q, "ceiling: oracle best-of-4", None)
    lines = [f"**At ≤ 0.30 of heavy-only's cost, {q['strings_kind']} strings, {_name(q)}, {_draft(q)} as the draft, "
             "on held-out "
             f"rows, against heavy only's {w['heavy']:.3f}:**"]
    for label, x in (("the best product policy (every parameter tuned)", w), ("adaptive drafts", q["adaptive"])):
        if x is None:
            lines.append(f"- {label}: no policy of the family fits the budget.")
            continue
        lines.append(f"- {label}: {' / '.join(Policy(**pol).label() for pol in x['policies'])} → "
                     f"**{_ci(x['faithfulness'])}** at {x['cost_vs_heavy']:.3f} of heavy's cost — "
                     + ("**reached** (lower CI end at or above heavy's estimate, within budget)." if x["reaches_heavy"]
                        else f"**not reached** ({x['faithfulness']['value'] - w['heavy']:+.3f} on the point "
                             f"estimate; lower CI end {x['faithfulness']['low']:.3f})."))
    gap = perfect["faithfulness"]["value"] - w["faithfulness"]["value"]
    lines.append(f"- the same policies with a perfect draft scorer: {_ci(perfect['faithfulness'])} "
                 f"({_ci(perfect['vs_heavy'], True)} against heavy); the scorer's policy is {abs(gap):.3f} "
                 f"{'below' if gap >= 0 else 'above'} it "
                 f"at {q['clip_within_prompt_pairwise']['value']:.3f} within-prompt pairwise accuracy"
                 + (". So even a perfect draft scorer falls short here: **the draft model is the limit** (the "
                    f"oracle's best of 4 drafts reaches {_ci(best4['faithfulness'])} at "
                    f"{best4['cost_vs_heavy']:.2f} of heavy's cost), then the "
                    "scorer." if perfect["faithfulness"]["value"] < w["heavy"] else ": the scorer is the limit."))
    return lines


def _calibration(c: dict[str, Any]) -> str:
    """How the run's draft / heavy ratio was measured."""
    if "calibration" not in c:
        return (" from the pool's phases (CPU time on a shared machine: a phase run while something else loads "
                "it skews the ratio, 0.10 to 0.15 for one pair of models)")
    k, r = c["calibration"], c["calibration"]["draft_vs_heavy_rounds"]
    return (f": {k['rounds']} interleaved rounds of a draft then a heavy batch of the same {k['rows']} rows, the "
            f"median round of each (the rounds' ratios {min(r):.3f}–{max(r):.3f}), so load on the shared machine "
            f"hits both alike (the pool's phases gave {c['pool_phases']['draft_vs_heavy']:.3f}); runs marked "
            "\"before the interleaved calibration\" took the pool's phases")


def markdown(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The section from the v2 results files (name -> results)."""
    if not runs:
        return []
    head = next(runs[n] for n in ORDER if n in runs)
    s, c = head["strings"], head["costs"]
    lines = [TITLE, "", *[f"- {q['at']} · {q['machine']} · commit {q['commit']} · `{q['command']}`"
                          + (f" · {q['benchmark_wall_s'] / 60:.0f} min wall, one thread"
                             if q.get("benchmark_wall_s") else "") + (f" ({q['note']})" if q.get("note") else "")
                          for n in ORDER for q in [runs.get(n)] if q], "",
             "The benchmark above (same design, folds, budgets, bootstrap and product replay) in the v2 world "
             "(bench/world/README.md \"v2 grammar\"): 2,692 prompt strings, of which 539 **evaluation strings** "
             "that no model saw in training — neither the UNets, their frozen text encoder, world CLIP, the VAE nor "
             "the fact verifier (every v2 model is trained on the other 2,153, the training pool); "
             f"models in bench/world/models_v2. `unseen` rows are the evaluation strings ({s['rows_per_task']} rows "
             "a task, strings cycled: " + ", ".join(f"{t} {v[1]}" for t, v in sorted(s["per_task"].items()))
             + f"; {s['evaluated_unseen_by_every_model']} of {s['evaluated']} evaluated strings unseen by every "
             "model); `seen` rows are drawn the same way from the training pool, for comparison. Cost: draft "
             f"{c['draft_cpu_s'] * 1000:.1f} ms, heavy {c['heavy_cpu_s'] * 1000:.1f} ms CPU per image (**draft / "
             f"heavy = {c['draft_vs_heavy']:.3f}**), scoring {c['score_cpu_s'] * 1000:.2f} ms per scored image "
             f"({_name(head)}), all counted, in the headline run; each run measures its own{_calibration(c)}. "
             "Training cost is reported apart (bench/world/README.md).", "",
             *summary(runs), ""]
    for name in ORDER:
        if name in runs and runs[name]["strings_kind"] == "unseen":
            lines += [*_verdict(runs[name]), ""]
    lines += [f"Every policy and ceiling of the headline run ({head['strings_kind']} strings, "
              f"{_name(head)}):", "", *table(head)]
    v = head.get("verify")
    if v:
        lines += ["", verify_text(v) + f" Identical pixels {v['identical_pixels']}/{v['rows']} ({v['at']}, commit "
                  f"{v['commit']})."]
    png = next(n for n in ORDER if n in runs).replace(".json", ".png")
    return [*lines, "", f"![quality per cost, v2](bench/results/{png})", ""]


def update_benchmarks(runs: dict[str, dict[str, Any]], path: Path = REPO / "BENCHMARKS.md") -> None:
    """Replace this section in place, or put it right after the last quality section there is."""
    lines = path.read_text().split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    mine = next((i for i in heads if lines[i] == TITLE), None)
    if mine is None:
        after = next(i for prefix in AFTER for i in heads if lines[i].startswith(prefix))
        start = end = next((i for i in heads if i > after), len(lines))
    else:
        start, end = mine, next((i for i in heads if i > mine), len(lines))
    path.write_text("\n".join(lines[:start] + markdown(runs) + lines[end:]))
