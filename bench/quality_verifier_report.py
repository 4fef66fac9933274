"""BENCHMARKS.md's section on the quality benchmark with the world's trained fact verifier as the cascade's scorer
(`python bench/quality.py --scorer verifier`), from bench/results/quality_verifier.json, next to the world-CLIP
run's figures (quality.json) on the same rows. The section sits right after the CLIP quality section and is
replaced in place; no other section is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.quality_replay import Policy
from bench.quality_report import _ci, table

TITLE = "## Quality per cost with the trained fact verifier as the scorer"
AFTER = "## Quality per cost: the shapes world"  # the CLIP section this one follows


def _at(q: dict[str, Any], prefix: str, budget: float = 0.3) -> dict[str, Any] | None:
    """The result at `budget` whose name starts with `prefix` (None if the file has none)."""
    return next((r for r in q["results"] if r["budget"] == budget and r["policy"].startswith(prefix)), None)


def _pairwise(q: dict[str, Any], clip: dict[str, Any] | None) -> str:
    """The verifier's within-prompt pairwise accuracy: all pairs, its held-out strings, its training strings."""
    p = q["clip_within_prompt_pairwise"]  # the key names the run's scorer's accuracy, whichever it is
    text = f"**{_ci(p)}** on all {q['pairs']:,} pairs (mean of tasks)"
    if clip:
        text += (f", against world CLIP's {_ci(clip['clip_within_prompt_pairwise'])} on the "
                 f"{clip['pairs']:,} pairs of the same rows (quality.json)")
    for name, label in (("held_out", "on the verifier's **held-out** strings"), ("training", "on its training "
                                                                                 "strings")):
        s = q.get(f"pairwise_verifier_{name}_strings")
        if s:
            text += (f"; {label} ({s['rows']} rows, {s['pairs']:,} pairs) {_ci(s)} (pooled {_ci(s['pooled'])}"
                     + (f"; no pair in {', '.join(s['tasks_without_pairs'])}" if s["tasks_without_pairs"] else "")
                     + ")")
    return text + "."


def _verdict(q: dict[str, Any], clip: dict[str, Any] | None) -> list[str]:
    """At <= 0.30 of heavy's cost: the best product policy and adaptive drafts against heavy, and the limits."""
    w = q["winner"]
    lines = [f"**At ≤ 0.30 of heavy-only's cost, on held-out rows, against heavy only's {w['heavy']:.3f}:**"]
    for name, x in (("the best product policy (every parameter tuned)", w), ("adaptive drafts", q["adaptive"])):
        lines.append(f"- {name}: {' / '.join(Policy(**pol).label() for pol in x['policies'])} → "
                     f"**{_ci(x['faithfulness'])}** at {x['cost_vs_heavy']:.3f} of heavy's cost — "
                     + ("**reached** (lower CI end at or above heavy's estimate, within budget)."
                        if x["reaches_heavy"] else
                        f"**not reached** (lower CI end {x['faithfulness']['low']:.3f} < {w['heavy']:.3f}; "
                        f"{x['faithfulness']['value'] - w['heavy']:+.3f} on the point estimate)."))
    if clip:
        c = clip["winner"]
        lines.append(f"- the same benchmark with world CLIP as the scorer (quality.json, same rows and images): "
                     f"{_ci(c['faithfulness'])} at {c['cost_vs_heavy']:.3f} of heavy's cost; the verifier's "
                     f"policy: {w['faithfulness']['value'] - c['faithfulness']['value']:+.3f} against it.")
    perfect, hindsight = _at(q, "ceiling: perfect"), _at(q, "ceiling: hindsight")
    held, trained = q.get("pairwise_verifier_held_out_strings"), q.get("pairwise_verifier_training_strings")
    if perfect and hindsight:
        gap = perfect["faithfulness"]["value"] - w["faithfulness"]["value"]
        lines.append(
            f"- what limits it: the same policies driven by a perfect draft scorer reach "
            f"{_ci(perfect['faithfulness'])} ({_ci(perfect['vs_heavy'], True)} against heavy); the verifier's "
            f"policy is {abs(gap):.3f} {'below' if gap >= 0 else 'above'} that ceiling, "
            + ("so the drafts and the budget allow heavy's faithfulness and the scorer's ranking of one prompt's "
               if perfect["faithfulness"]["value"] >= w["heavy"] else
               "so even a perfect draft scorer falls short here: the draft model is a limit too, besides the "
               "scorer's ranking of one prompt's ")
            + f"drafts ({q['clip_within_prompt_pairwise']['value']:.3f} pairwise; the issue's estimate of what "
            "matching heavy at ≤ 0.30 needs: ≥ 0.9)" + (" is the limit" if gap > 0.02 else
                                                        " no longer holds the policy back: it is at the ceiling")
            + (f". Unseen strings are not what holds it back: {held['value']:.3f} on the verifier's held-out "
               f"strings against {trained['value']:.3f} on its training strings" if held and trained else "")
            + f". Escalation with hindsight alone reaches {_ci(hindsight['faithfulness'])}.")
    return lines


def markdown(q: dict[str, Any], clip: dict[str, Any] | None = None) -> list[str]:
    """The section from quality_verifier.json (and quality.json, world CLIP's run, for comparison)."""
    s, c = q["strings"], q["costs"]
    lines = [TITLE, "", f"{q['at']} · {q['machine']} · commit {q['commit']} · `{q['command']}`"
             + (f" · {q['benchmark_wall_s'] / 60:.0f} min wall, one thread" if q.get("benchmark_wall_s") else ""),
             "", *([q["note"], ""] if q.get("note") else []),
             "The benchmark above, run again with the world's trained fact verifier (bench/world/models/verifier, "
             "bench/world/README.md \"The verifier\") as the cascade's scorer: the product's `facts` backend, each "
             "row's world facts in a `facts` column (`verifier_data.world_facts`), score = the mean P(yes) over a "
             f"prompt's facts (0..1). Same design, rows ({q['rows']}, {s['evaluated']} distinct strings), seeds, "
             "folds and bootstrap; the candidate drafts and heavy images are the same images, so only the scores, "
             "and the policies tuned on them, differ" + (
                 " (draft only, heavy only and the oracle's best-of-4 equal quality.json's to the last digit)"
                 if clip and [r["faithfulness"] for r in q["results"][:3]] ==
                 [r["faithfulness"] for r in clip["results"][:3]] else "") + ". Scoring costs "
             f"{c['score_cpu_s'] * 1000:.2f} ms per scored image (= {c['score_vs_heavy']:.4f} of a heavy image; "
             f"draft / heavy = {c['draft_vs_heavy']:.3f}), counted in every policy's cost.", "",
             f"**Seen strings.** Every evaluated prompt string was seen in training by the UNets and by the CLIP "
             f"(the world's v1 grammar: the CLIP saw {s['seen_by']['clip']} of {s['grammar']} strings, the draft "
             f"UNet {s['seen_by']['draft']}, the heavy UNet {s['seen_by']['heavy']}), so these figures are on "
             "seen strings for the generators. The verifier itself never saw "
             f"{q.get('verifier_unseen_strings_evaluated', '–')} of the evaluated strings (its held-out split), and "
             "its accuracy is reported on them apart. A richer grammar, whose evaluation strings no model saw, is "
             "being built in bench/world; this section is to be rerun on it.", "", *table(q), "",
             f"The verifier's within-prompt pairwise accuracy (two drafts of one row whose faithfulness differs, "
             f"ordered as the oracle orders them): {_pairwise(q, clip)}", "", *_verdict(q, clip)]
    v = q.get("verify")
    if v:
        lines += ["", f"`--verify {v['rows']}`: the winner's fold-0 policy "
                  f"({Policy(**q['winner']['policies'][0]).label()}) run through "
                  f"`imagefleet.run` (in process, the `facts` scorer) on {v['rows']} of its reported rows, against "
                  "the replay: " + ("**agree**" if v["agree"] else "**disagree**") + " — "
                  + ", ".join(f"{k} {n}/{v['rows']}" for k, n in v["checks"].items())
                  + f" (score within {v.get('score_tolerance', 0.01)}; faithfulness {v['faithfulness_run']:.3f} "
                  f"run, {v['faithfulness_replay']:.3f} replay; {v['escalated']} escalated, {v['redrawn']} "
                  f"redrawn; identical pixels {v['identical_pixels']}/{v['rows']}; {v['at']}, commit "
                  f"{v['commit']})."]
    return [*lines, "", "![quality per cost, verifier](bench/results/quality_verifier.png)", ""]


def update_benchmarks(q: dict[str, Any], clip: dict[str, Any] | None = None,
                      path: Path = REPO / "BENCHMARKS.md") -> None:
    """Replace this section in place, or put it right after the CLIP quality section; nothing else changes."""
    lines = path.read_text().split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    mine = next((i for i in heads if lines[i] == TITLE), None)
    if mine is None:
        clip_at = next(i for i in heads if lines[i].startswith(AFTER))
        start = end = next((i for i in heads if i > clip_at), len(lines))
    else:
        start, end = mine, next((i for i in heads if i > mine), len(lines))
    path.write_text("\n".join(lines[:start] + markdown(q, clip) + lines[end:]))
