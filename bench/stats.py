"""The numbers every benchmark reports the same way: percentiles, millisecond summaries, file names."""

from __future__ import annotations

import statistics
from typing import Any


def pct(values: list[float], q: float) -> float | None:
    """The one percentile rule of the benches: nearest rank on the sorted values (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary_ms(values_s: list[float]) -> dict[str, Any]:
    """p50, p95 and mean in milliseconds of durations given in seconds."""
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "mean_ms": statistics.fmean(ms) if ms else None}


def slug(name: str) -> str:
    """A device name as it appears in a result file's name: "NVIDIA H200" -> "nvidia-h200"."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
