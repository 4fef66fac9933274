"""Bounded accumulators for the report: a run's timings and completion times in fixed memory, whatever its rows.

Small runs keep every value (exact percentiles and curves); past `EXACT` values an accumulator folds into a
histogram: log-spaced bins for timings (percentiles within ~1.3%), time buckets that coarsen as the run's span
grows for completions. A million-row report used to hold ~40 bytes per image here (BENCHMARKS.md, scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imagefleet.pipelines.units import duration_ms

EXACT = 4096
"""Values kept exactly before an accumulator switches to its histogram."""
LOG_LO, LOG_HI, LOG_BINS = -3.0, 8.0, 1000
"""Timing histogram: log10 of milliseconds from 1 µs to ~28 h in 1000 bins (each 2.6% wide)."""
MAX_BUCKETS = 20_000
"""Completion-time buckets kept at most; past that the buckets double in width."""


class Sketch:
    """Count, mean and percentiles of positive values (milliseconds)."""

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.values: list[np.ndarray] | None = []
        self.bins = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        if not values.size:
            return
        self.count += int(values.size)
        self.total += float(values.sum())
        if self.values is not None:
            self.values.append(values)
            if self.count <= EXACT:
                return
            values, self.values = np.concatenate(self.values), None
            self.bins = np.zeros(LOG_BINS, dtype=np.int64)
        where = (np.log10(values) - LOG_LO) / (LOG_HI - LOG_LO) * LOG_BINS
        np.add.at(self.bins, np.clip(where.astype(np.int64), 0, LOG_BINS - 1), 1)

    def stats(self) -> tuple[str, str, str]:
        """(mean, p50, p95) as the page prints them, in human units ('850 ms', '12.3 s'); dashes when empty."""
        if not self.count:
            return "–", "–", "–"
        return (duration_ms(self.total / self.count), duration_ms(self.percentile(50)),
                duration_ms(self.percentile(95)))

    def percentile(self, q: float) -> float:
        if self.values is not None:
            return float(np.percentile(np.concatenate(self.values), q))
        rank = np.searchsorted(np.cumsum(self.bins), q / 100 * self.count)
        return float(10 ** (LOG_LO + (min(int(rank), LOG_BINS - 1) + 0.5) / LOG_BINS * (LOG_HI - LOG_LO)))


class Timeline:
    """When images completed (Unix seconds): count, first, last and a cumulative curve."""

    def __init__(self) -> None:
        self.count, self.first, self.last = 0, float("inf"), float("-inf")
        self.values: list[np.ndarray] | None = []
        self.width = 0.0
        self.buckets: dict[int, int] = {}

    def add(self, times: Any) -> None:
        t = np.asarray(times, dtype=np.float64)
        t = t[np.isfinite(t) & (t > 0)]
        if not t.size:
            return
        self.count += int(t.size)
        self.first, self.last = min(self.first, float(t.min())), max(self.last, float(t.max()))
        if self.values is not None:
            self.values.append(t)
            if self.count <= EXACT:
                return
            t, self.values = np.concatenate(self.values), None
            self.width = max((self.last - self.first) / MAX_BUCKETS, 1e-3)
        self._bucket(t)

    def _bucket(self, t: np.ndarray) -> None:
        keys, counts = np.unique(np.floor(t / self.width).astype(np.int64), return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
            self.buckets[k] = self.buckets.get(k, 0) + c
        while len(self.buckets) > MAX_BUCKETS:  # twice as wide: merge pairs
            self.width *= 2
            merged: dict[int, int] = {}
            for k, c in self.buckets.items():
                merged[k // 2] = merged.get(k // 2, 0) + c
            self.buckets = merged

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(seconds since the first completion, images completed by then), ascending."""
        if self.values is not None:
            t = np.sort(np.concatenate(self.values)) if self.values else np.zeros(0)
            return t - (t[0] if t.size else 0.0), np.arange(1, t.size + 1)
        keys = np.array(sorted(self.buckets), dtype=np.int64)
        ends = np.minimum((keys + 1) * self.width, self.last) - self.first  # a bucket's images are done by its end
        return np.maximum(ends, 0.0), np.cumsum([self.buckets[k] for k in keys.tolist()])
