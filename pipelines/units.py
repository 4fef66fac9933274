"""How a run states throughput and durations: one definition each, shared by the live panel (jobs/progress.py),
the end-of-run summary (jobs/run_text.py) and the report (pipelines/report.py), so one run shows one rate."""

from __future__ import annotations

THROUGHPUT_MEANS = "new images / run wall time"
"""What the run's one throughput figure divides: the images this run made (ok rows not found already present),
by its wall time (from the start of the run's graph, `pipelines.manifest.write_manifest`, until its last manifest
row is staged; `RunSummary.wall_s`). Images already present count as ready, never as throughput."""


def throughput(num_new: float, wall_s: float) -> float:
    """Images per second as THROUGHPUT_MEANS says (0 before any time has passed)."""
    return num_new / wall_s if wall_s > 0 else 0.0


def throughput_text(num_new: float, wall_s: float) -> str:
    """'1.51 img/s (new images / run wall time)': how the panel, the summary and the report all print it."""
    return f"{throughput(num_new, wall_s):.2f} img/s ({THROUGHPUT_MEANS})"


def duration(seconds: float) -> str:
    """A duration for people: '0.4 ms', '850 ms', '12.3 s', '4 min 05 s', '1 h 02 min' ('–' when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative or infinite: not a duration
        return "–"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.0f} µs"
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f} ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def duration_ms(ms: float) -> str:
    """`duration` of a value in milliseconds (the manifest's stage timings)."""
    return duration(ms / 1000)
