"""`GET /metrics`: the coordinator's service-wide figures in Prometheus's text format.

The coordinator keeps the figures for every client, ZeroMQ and HTTP alike
(`pipeline/coordinator/metrics.py`) and sends a snapshot in its status reply; a
`prometheus_client` collector turns that snapshot into metric families at each
scrape. Latencies arrive in milliseconds and are exposed in seconds, as
Prometheus names them.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

PREFIX = "xtts"
# snapshot histogram -> (metric name, help, divisor to base units)
HISTOGRAMS = {
    "ttfa_ms": ("ttfa_seconds", "Time to first audio: text accepted to first block out of the reassembler.", 1000),
    "played_ttfa_ms": ("played_ttfa_seconds", "Time to first audio played by a real-time player with the "
                       "profile's pre-buffer.", 1000),
    "rtf": ("rtf", "Real-time factor per stream: time to the last block over audio duration.", 1),
    "stage_ms": ("stage_latency_seconds", "Latency of each stage of a stream's first audio.", 1000),
}
COUNTERS = {
    "streams": "Streams that ended, by profile and outcome (completed, cancelled, failed).",
    "errors": "Errors sent to clients, by code (docs/protocol.md).",
    "underruns": "Times a real-time player would have starved.",
    "underrun_ms": "Milliseconds a real-time player would have starved.",
    "seam_violations": "Reassembler checks that failed (0 in a healthy service).",
    "messages_dropped_slow_client": "Audio messages dropped for clients that read too slowly.",
    "audio_dropped_slow_client_s": "Seconds of audio dropped for clients that read too slowly.",
    "audio_seconds": "Seconds of audio delivered.",
    "worker_deaths": "Worker processes found dead by the coordinator.",
    "worker_restarts": "Worker processes restarted by the supervisor.",
}
GAUGES = {
    "open_streams": "Streams open now.",
    "queue_depth": "Chunks waiting for a worker or being synthesized.",
    "gpu_memory_bytes": "GPU memory each worker's engine holds (its allocator's reserve), on CUDA.",
}
GAUGE_LABELS = {"gpu_memory_bytes": "worker"}


class SnapshotCollector:
    def __init__(self, healthy: bool, state: Mapping[str, Any]):
        self.healthy = healthy
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snap = self.state.get("metrics") or {}
        yield from self._service()
        for key, hist in (snap.get("histograms") or {}).items():
            if key in HISTOGRAMS:
                yield _histogram(key, hist)
        for key, series in (snap.get("counters") or {}).items():
            if key in COUNTERS:
                yield _counter(key, series)
        for key, value in (snap.get("gauges") or {}).items():
            if key in GAUGES:
                yield _gauge(key, value)

    def _service(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 when no process of the service has been given up on.",
                                value=1 if self.healthy else 0)
        yield GaugeMetricFamily(f"{PREFIX}_serving", "1 once a worker is ready to speak.",
                                value=1 if self.state.get("serving") else 0)
        restarts = CounterMetricFamily(f"{PREFIX}_process_restarts", "Restarts of each process by the supervisor.",
                                       labels=["process"])
        for name, proc in ((self.state.get("supervisor") or {}).get("processes") or {}).items():
            if isinstance(proc, Mapping):
                restarts.add_metric([name], proc.get("restarts") or 0)
        yield restarts


def _histogram(key: str, hist: Mapping[str, Any]) -> Metric:
    name, doc, divisor = HISTOGRAMS[key]
    series = hist.get("series") or []
    labels = sorted({label for s in series for label in s.get("labels", {})})
    family = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    bounds = [b / divisor for b in hist.get("buckets") or []]
    for s in series:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(_le, bounds), "+Inf"], s["counts"]):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([s["labels"].get(label, "") for label in labels], buckets, s["sum"] / divisor)
    return family


def _counter(key: str, series: list[Mapping[str, Any]]) -> Metric:
    labels = sorted({label for s in series for label in s.get("labels", {})})
    family = CounterMetricFamily(f"{PREFIX}_{key}", COUNTERS[key], labels=labels)
    for s in series:
        family.add_metric([s["labels"].get(label, "") for label in labels], s["value"])
    return family


def _gauge(key: str, value: Any) -> Metric:
    if isinstance(value, Mapping):
        family = GaugeMetricFamily(f"{PREFIX}_{key}", GAUGES[key], labels=[GAUGE_LABELS.get(key, "label")])
        for label, number in value.items():
            family.add_metric([label], number)
        return family
    return GaugeMetricFamily(f"{PREFIX}_{key}", GAUGES[key], value=value)


def _le(bound: float) -> str:
    return repr(float(bound))


def render(healthy: bool, state: Mapping[str, Any], gateway_registry: CollectorRegistry | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(healthy, state))
    text = generate_latest(registry)
    return text + (generate_latest(gateway_registry) if gateway_registry is not None else b"")
