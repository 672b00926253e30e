"""Service-wide figures for monitoring: fixed-bucket histograms, counters and gauges.

The coordinator owns one `ServiceMetrics`, observes every `done` and `error` it
sends to a client (ZeroMQ and HTTP clients alike, since the gateway is a ZeroMQ
client too) and puts `snapshot()` into its status reply as ``state["metrics"]``.
The gateway renders that snapshot in Prometheus format. Nothing here touches a
socket or a clock, so it is tested on its own; a snapshot is plain data
(dicts, lists, numbers, strings) that msgpack and JSON both carry.

Latencies are kept in milliseconds, as the `done` metrics give them; the
Prometheus rendering converts them to seconds.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any, Iterable, Mapping

TTFA_BUCKETS_MS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
STAGE_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
STAGES = ("chunker", "queue_wait", "engine_first_piece", "transport", "reassembler", "delivery")
MAX_LABEL_CHARS = 64  # a label value comes from a request (a profile name): it must not grow a series without bound
MAX_SERIES = 200      # per family: past this, new label sets fold into "other"


class Histogram:
    """Counts per bucket (the last one is +Inf), a sum and a count, per label set."""

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}

    def observe(self, value: float, **labels: str) -> None:
        if not _is_number(value):
            return
        key = _key(labels, self.series)
        entry = self.series.get(key)
        if entry is None:
            entry = self.series[key] = {"counts": [0] * (len(self.bounds) + 1), "sum": 0.0, "count": 0}
        entry["counts"][bisect_left(self.bounds, value)] += 1
        entry["sum"] += float(value)
        entry["count"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"buckets": list(self.bounds),
                "series": [{"labels": dict(key), "counts": list(e["counts"]), "sum": e["sum"], "count": e["count"]}
                           for key, e in self.series.items()]}


class Counter:
    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        if not _is_number(amount) or amount <= 0:
            return
        key = _key(labels, self.values)
        self.values[key] = self.values.get(key, 0) + amount

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"labels": dict(key), "value": value} for key, value in self.values.items()]


class ServiceMetrics:
    def __init__(self) -> None:
        self.histograms = {
            "ttfa_ms": Histogram(TTFA_BUCKETS_MS),
            "played_ttfa_ms": Histogram(TTFA_BUCKETS_MS),
            "rtf": Histogram(RTF_BUCKETS),
            "stage_ms": Histogram(STAGE_BUCKETS_MS),
        }
        self.counters = {name: Counter() for name in (
            "streams", "errors", "underruns", "underrun_ms", "seam_violations", "messages_dropped_slow_client",
            "audio_dropped_slow_client_s", "audio_seconds")}

    def observe_done(self, metrics: Mapping[str, Any]) -> None:
        """One stream finished (completed or cancelled): its `done` metrics."""
        if not isinstance(metrics, Mapping):
            return
        profile = _label(metrics.get("profile"))
        outcome = "cancelled" if metrics.get("cancelled") else "completed"
        self.counters["streams"].inc(profile=profile, outcome=outcome)
        if not metrics.get("cancelled"):  # a barge-in's figures describe the interruption, not the service
            self.histograms["ttfa_ms"].observe(metrics.get("ttfa_ms"), profile=profile)
            self.histograms["played_ttfa_ms"].observe(metrics.get("played_ttfa_ms"), profile=profile)
            self.histograms["rtf"].observe(metrics.get("rtf"), profile=profile)
        stages = metrics.get("stages_ms")
        if isinstance(stages, Mapping):
            for stage in STAGES:
                self.histograms["stage_ms"].observe(stages.get(stage), stage=stage)
        for name in ("underruns", "underrun_ms", "seam_violations", "messages_dropped_slow_client",
                     "audio_dropped_slow_client_s"):
            self.counters[name].inc(metrics.get(name) or 0)
        self.counters["audio_seconds"].inc(metrics.get("audio_s") or 0, profile=profile)

    def observe_error(self, code: str, ends_stream: bool = True, profile: str = "unknown") -> None:
        """An `error` sent to a client. ``ends_stream`` is False for `chunk_failed`, after which the stream goes on."""
        code = _label(code)
        self.counters["errors"].inc(code=code)
        if ends_stream and code != "chunk_failed":
            self.counters["streams"].inc(profile=_label(profile), outcome="failed")

    def observe_abandoned(self, profile: str) -> None:
        """A stream freed because its client vanished: nobody was told, but it counts."""
        self.counters["streams"].inc(profile=_label(profile), outcome="abandoned")

    def snapshot(self, gauges: Mapping[str, Any] | None = None,
                 totals: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything observed so far, plus figures the caller keeps itself.

        ``gauges``: live values (open streams, queue depth, ...); a value is a
        number, or a mapping of label value to number for one label (e.g.
        ``gpu_memory_bytes={"w0": 1.2e9}``, rendered with a ``worker`` label).
        ``totals``: counters counted elsewhere (worker deaths in the pool,
        restarts in the supervisor's report), rendered as counters.
        """
        counters = {name: c.snapshot() for name, c in self.counters.items()}
        for name, value in (totals or {}).items():
            if _is_number(value):
                counters[name] = [{"labels": {}, "value": value}]
        checked = {name: _gauge(value) for name, value in (gauges or {}).items()}
        return {
            "histograms": {name: h.snapshot() for name, h in self.histograms.items()},
            "counters": counters,
            "gauges": {name: value for name, value in checked.items() if value is not None},
        }


def _gauge(value: Any) -> float | dict[str, float] | None:
    if isinstance(value, Mapping):
        return {_label(k): float(v) for k, v in value.items() if _is_number(v)}
    return float(value) if _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label(value: Any) -> str:
    text = value if isinstance(value, str) and value else "unknown"
    return text[:MAX_LABEL_CHARS]


def _key(labels: Mapping[str, str], existing: Mapping) -> tuple[tuple[str, str], ...]:
    key = tuple(sorted((name, _label(value)) for name, value in labels.items()))
    if key not in existing and len(existing) >= MAX_SERIES:
        key = tuple((name, "other") for name, _ in key)
    return key
