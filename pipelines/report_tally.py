"""What the run report needs from the manifest, accumulated one batch at a time in bounded memory: counts, cost,
timings, completion times, cascade routes and scores, and the sampled rows the page shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagefleet.actors.better_keeper import KEPT_DRAFT
from imagefleet.actors.gain_model import PREDICTED
from imagefleet.actors.manifest_schema import REPORT_COLUMNS
from imagefleet.actors.manifest_types import decode
from imagefleet.pipelines.charts import SCORE_BIN
from imagefleet.pipelines.report_stats import Sketch, Timeline

NUM_THUMBS = 48
NUM_PAIRS = 12  # escalated images shown next to their drafts
NUM_PROBLEMS = 200
STAGES = ("queue_ms", "generate_ms", "encode_ms", "upload_ms")  # timing rows of the page, in pipeline order
COLUMNS = list(REPORT_COLUMNS)  # the manifest columns flagged `report`
# the cascade's score histograms: (series, route, score column); drawn in this order and these colours
SCORE_SERIES = (("kept drafts", "draft", "clip_score"), ("escalated: draft score", "escalated", "draft_score"),
                ("escalated: final score", "escalated", "clip_score"),
                ("escalated, draft kept: heavy score", KEPT_DRAFT, "heavy_score"),
                ("predicted heavy: score", PREDICTED, "clip_score"))
SERIES_COLOURS = dict(zip((s for s, _, _ in SCORE_SERIES), ("#16a34a", "#f59e0b", "#2563eb", "#dc2626", "#7c3aed"),
                          strict=True))
ESCALATED_ROUTES = ("escalated", KEPT_DRAFT)
"""Routes of rows the cascade escalated: ending as the heavy image, or as the draft (its heavy image scored lower)."""


@dataclass
class Tally:
    """What the page needs, accumulated one manifest batch at a time: about 40 bytes per image (timings and
    timestamps as float arrays), fixed-size counters for routes and score histograms, and bounded samples;
    never the manifest itself, so a million-row report stays small."""

    step: int
    """Every step-th ok image goes to the contact sheet."""
    pair_step: int = 1
    """Every pair_step-th escalated image goes to the draft | final sample."""
    total: int = 0
    num_new: int = 0
    """Images this run made: ok rows not already present (as `RunSummary.num_written` counts them)."""
    num_ok_seen: int = 0
    num_escalated_seen: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    cost_by_gen: dict[str, float] = field(default_factory=dict)
    stages: dict[str, Sketch] = field(default_factory=lambda: {name: Sketch() for name in STAGES})
    """This run's timings (its images and its failed rows)."""
    earlier_stages: dict[str, Sketch] = field(default_factory=lambda: {name: Sketch() for name in STAGES})
    """Timings an earlier run recorded for the images this run found already present (carried columns)."""
    fresh_times: Timeline = field(default_factory=Timeline)
    earlier_times: Timeline = field(default_factory=Timeline)
    routes: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    """(route, generator, draft generator) -> [rows, ok rows, USD]."""
    num_drafted: int = 0
    """Cascade rows that produced a draft: kept drafts plus escalated rows (either outcome)."""
    scores: dict[str, dict[int, int]] = field(default_factory=dict)
    """Score histogram per SCORE_SERIES name: bin -> count."""
    problems: list[dict[str, Any]] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-image metrics from <output>/evaluations/*.parquet: image key -> {metric: value}."""
    metric_sums: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(group, metric) -> [images evaluated, sum]; groups are routes, `escalated: draft`, `escalated_kept_draft:
    heavy` (the heavy images rows did not keep) and `all`."""
    rounds: dict[str, int] = field(default_factory=dict)
    """Cascade rows with an image by where they ended: `draft round k` (the row kept its k-th draft), or the
    route of an escalated or predicted row."""
    round_metrics: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(rounds key, metric) -> [images evaluated, sum] of the rows' final images."""
    baselines: list[dict[str, Any]] = field(default_factory=list)
    """Reference runs of the same prompts (evaluations/baselines.parquet), e.g. draft only and heavy only: each a
    dict of `baseline`, `images`, `cost_usd_per_image` and its metrics' means."""

    def add(self, batch: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        table = pa.Table.from_batches([batch])
        self.total += table.num_rows
        for r in table.group_by("status").aggregate([("status", "count")]).to_pylist():
            key = r["status"] or ""
            self.by_status[key] = self.by_status.get(key, 0) + r["status_count"]
        for r in table.group_by("generator").aggregate([("cost_usd", "sum")]).to_pylist():
            key = r["generator"] or ""
            self.cost_by_gen[key] = self.cost_by_gen.get(key, 0.0) + (r["cost_usd_sum"] or 0)
        status_ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
        present = pc.and_(status_ok, pc.fill_null(table.column("already_present"), False))
        self.num_new += (pc.sum(status_ok).as_py() or 0) - (pc.sum(present).as_py() or 0)
        ok = pc.fill_null(pc.and_(status_ok, pc.not_equal(table.column("image_uri"), "")), False)
        # already present: made by an earlier run, whose timings the row carries (or by a racing writer)
        earlier = pc.fill_null(pc.and_(ok, table.column("already_present")), False)
        ok_np = ok.to_numpy(zero_copy_only=False)
        self._timings(table, ok_np, earlier.to_numpy(zero_copy_only=False))
        if len(self.problems) < NUM_PROBLEMS:
            bad = table.filter(pc.invert(status_ok))
            self.problems += bad.slice(0, NUM_PROBLEMS - len(self.problems)).to_pylist()
        self.num_ok_seen = _pick(table, ok_np, self.sample, NUM_THUMBS, self.step, self.num_ok_seen)
        route = pc.fill_null(table.column("route"), "")
        route_np = route.to_numpy(zero_copy_only=False)
        ended = _round_keys(table, route_np)
        for key in ended[ok_np]:
            if key:
                self.rounds[key] = self.rounds.get(key, 0) + 1
        if self.evaluations:
            self._metrics(table, ok_np, ended)
        if pc.any(pc.not_equal(route, "")).as_py():
            self._cascade(table, route, route_np, ok_np)
            self.num_escalated_seen = _pick(table, ok_np & (route_np == "escalated"), self.pairs, NUM_PAIRS,
                                            self.pair_step, self.num_escalated_seen)

    def _metrics(self, table: Any, ok: Any, ended: Any = None) -> None:
        """Sum each evaluated image's metrics per route (an escalated row's kept draft counts as `escalated: draft`,
        the heavy image of a row that kept its draft as `escalated_kept_draft: heavy`), and the final images' per
        rounds key."""
        keys = table.column("image_key").to_pylist()
        routes = table.column("route").to_pylist()
        drafts = table.column("draft_image_key").to_pylist()
        names = table.column_names  # (a table from before keep_better has no heavy images)
        heavy = table.column("heavy_image_key").to_pylist() if "heavy_image_key" in names else [None] * len(keys)
        for i in [int(j) for j in ok.nonzero()[0]]:
            groups = [("all", keys[i]), (routes[i] or "", keys[i])]
            if routes[i] == "escalated" and drafts[i]:
                groups.append(("escalated: draft", drafts[i]))
            if routes[i] == KEPT_DRAFT and heavy[i]:
                groups.append((f"{KEPT_DRAFT}: heavy", heavy[i]))
            for group, key in groups:
                for metric, value in self.evaluations.get(key, {}).items():
                    acc = self.metric_sums.setdefault((group, metric), [0, 0.0])
                    acc[0], acc[1] = acc[0] + 1, acc[1] + value
            for metric, value in self.evaluations.get(keys[i], {}).items() if ended is not None and ended[i] else ():
                acc = self.round_metrics.setdefault((str(ended[i]), metric), [0, 0.0])
                acc[0], acc[1] = acc[0] + 1, acc[1] + value

    def _timings(self, table: Any, ok: Any, earlier: Any) -> None:
        import numpy as np

        for name in STAGES:
            v = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            keep = np.isfinite(v) & (v > 0)
            self.stages[name].add(v[keep & ~earlier])
            self.earlier_stages[name].add(v[keep & earlier])
        made_at = decode("generated_at", table.column("generated_at").combine_chunks()).to_numpy(
            zero_copy_only=False)  # unix seconds (NaN: not recorded)
        self.fresh_times.add(made_at[ok & ~earlier])
        self.earlier_times.add(made_at[earlier])

    def _cascade(self, table: Any, route: Any, route_np: Any, ok: Any) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        groups = pa.table({"route": route, "generator": pc.fill_null(table.column("generator"), ""),
                           "draft_generator": pc.fill_null(table.column("draft_generator"), ""),
                           "cost": pc.fill_null(table.column("cost_usd"), 0.0), "ok": ok.astype(np.int64)})
        aggregated = groups.group_by(["route", "generator", "draft_generator"]).aggregate(
            [("ok", "count"), ("ok", "sum"), ("cost", "sum")])
        for r in aggregated.to_pylist():
            acc = self.routes.setdefault((r["route"], r["generator"], r["draft_generator"]), [0, 0, 0.0])
            acc[0] += r["ok_count"]
            acc[1] += r["ok_sum"] or 0
            acc[2] += r["cost_sum"] or 0.0
        escalated = np.isin(route_np, ESCALATED_ROUTES)
        self.num_drafted += int(np.sum(escalated) + np.sum(ok & (route_np == "draft")))
        for series, name, column in SCORE_SERIES:
            # an escalated row's draft score exists even when its heavy image failed; the others need the image
            rows = (route_np == name) & (True if column == "draft_score" else ok)
            values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)[rows]
            values = np.clip(values[np.isfinite(values)], -1e4, 1e4)  # bounds the number of bins
            bins, counts = np.unique(np.floor(values / SCORE_BIN).astype(np.int64), return_counts=True)
            hist = self.scores.setdefault(series, {})
            for b, c in zip(bins.tolist(), counts.tolist(), strict=True):
                hist[b] = hist.get(b, 0) + c


def _round_keys(table: Any, route: Any) -> Any:
    """Per row, where a cascade row ended: `draft round k` for a kept draft (`draft_round`; null: the only draft),
    else its route ('' outside a cascade)."""
    import numpy as np

    rounds = table.column("draft_round").to_numpy(zero_copy_only=False) if "draft_round" in table.column_names \
        else np.full(len(route), np.nan)
    kept = np.where(np.isfinite(rounds.astype(np.float64)), rounds, 1).astype(np.float64).astype(np.int64)
    return np.array([f"draft round {k}" if r == "draft" else r for r, k in zip(route, kept, strict=True)],
                    dtype=object)


def _pick(table: Any, mask: Any, into: list[dict[str, Any]], limit: int, step: int, seen: int) -> int:
    """Append every step-th row of `mask` (counting from `seen` over all batches) to `into`, up to `limit` rows;
    returns the new count of mask rows seen."""
    import numpy as np
    import pyarrow as pa

    rows = np.flatnonzero(mask)
    picks = rows[(np.arange(rows.size) + seen) % step == 0][: max(0, limit - len(into))]
    if picks.size:
        into += table.take(pa.array(picks, pa.int64())).to_pylist()
    return seen + int(rows.size)

