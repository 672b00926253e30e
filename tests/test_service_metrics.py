"""The service-wide figures: what `done` and `error` add, and how /metrics renders them (no sockets)."""

from __future__ import annotations

import json

import msgpack
from prometheus_client.parser import text_string_to_metric_families

from pipeline.coordinator.metrics import MAX_SERIES, TTFA_BUCKETS_MS, ServiceMetrics
from pipeline.gateway.prom import render

DONE = {"ttfa_ms": 42.0, "played_ttfa_ms": 230.0, "rtf": 0.08, "audio_s": 1.5, "profile": "fast", "underruns": 2,
        "underrun_ms": 30.0, "seam_violations": 0, "messages_dropped_slow_client": 3, "cancelled": False}


def families(text: bytes) -> dict[str, dict]:
    """name -> {(sample name, sorted labels): value}, through prometheus_client's own parser."""
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text.decode()):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def test_done_fills_histograms_and_counters():
    m = ServiceMetrics()
    m.observe_done(DONE)
    m.observe_done({**DONE, "ttfa_ms": 4000.0, "profile": "cinematic"})
    snap = m.snapshot()
    ttfa = {tuple(s["labels"].items()): s for s in snap["histograms"]["ttfa_ms"]["series"]}
    fast = ttfa[(("profile", "fast"),)]
    assert fast["count"] == 1 and fast["sum"] == 42.0
    assert fast["counts"][TTFA_BUCKETS_MS.index(50)] == 1 and sum(fast["counts"]) == 1  # 42 ms falls in le=50
    assert ttfa[(("profile", "cinematic"),)]["counts"][TTFA_BUCKETS_MS.index(5000)] == 1
    counters = {name: {tuple(s["labels"].items()): s["value"] for s in series}
                for name, series in snap["counters"].items()}
    assert counters["streams"][(("outcome", "completed"), ("profile", "fast"))] == 1
    assert counters["underruns"][()] == 4 and counters["messages_dropped_slow_client"][()] == 6


def test_cancelled_streams_count_but_do_not_skew_latency():
    m = ServiceMetrics()
    m.observe_done({**DONE, "cancelled": True})
    snap = m.snapshot()
    assert snap["histograms"]["ttfa_ms"]["series"] == []
    assert snap["counters"]["streams"] == [{"labels": {"outcome": "cancelled", "profile": "fast"}, "value": 1}]


def test_errors_by_code_and_failed_streams():
    m = ServiceMetrics()
    m.observe_error("bad_voice")
    m.observe_error("chunk_failed")          # the stream goes on
    m.observe_error("bad_header", ends_stream=False)
    snap = m.snapshot()
    errors = {s["labels"]["code"]: s["value"] for s in snap["counters"]["errors"]}
    assert errors == {"bad_voice": 1, "chunk_failed": 1, "bad_header": 1}
    assert snap["counters"]["streams"] == [{"labels": {"outcome": "failed", "profile": "unknown"}, "value": 1}]


def test_stage_latencies_when_present_and_junk_ignored():
    m = ServiceMetrics()
    m.observe_done({**DONE, "stages_ms": {"chunker": 0.02, "queue_wait": 1.5, "engine_first_piece": 20.0,
                                           "reassembler": 0.1, "delivery": 0.4, "made_up": 5}})
    m.observe_done({"ttfa_ms": None, "rtf": "fast", "underruns": True, "profile": 7})  # wrong types: no effect
    m.observe_done("not a mapping")
    stages = {s["labels"]["stage"]: s["count"] for s in m.snapshot()["histograms"]["stage_ms"]["series"]}
    assert stages == {"chunker": 1, "queue_wait": 1, "engine_first_piece": 1, "reassembler": 1, "delivery": 1}
    assert sum(s["count"] for s in m.snapshot()["histograms"]["ttfa_ms"]["series"]) == 1


def test_label_values_from_requests_cannot_grow_without_bound():
    m = ServiceMetrics()
    for i in range(MAX_SERIES + 50):
        m.observe_done({**DONE, "profile": f"profile-{i}" + "x" * 500})
    series = m.snapshot()["histograms"]["ttfa_ms"]["series"]
    assert len(series) == MAX_SERIES + 1  # the rest fold into "other"
    assert max(len(s["labels"]["profile"]) for s in series) <= 64


def test_snapshot_is_plain_data_with_gauges_and_totals():
    m = ServiceMetrics()
    m.observe_done(DONE)
    snap = m.snapshot(gauges={"open_streams": 3, "queue_depth": 7, "gpu_memory_bytes": {"w0": 1.5e9},
                              "bogus": "x"},
                      totals={"worker_deaths": 2, "worker_restarts": 1})
    assert msgpack.unpackb(msgpack.packb(snap)) == json.loads(json.dumps(snap))
    assert snap["gauges"] == {"open_streams": 3.0, "queue_depth": 7.0, "gpu_memory_bytes": {"w0": 1.5e9}}
    assert snap["counters"]["worker_deaths"] == [{"labels": {}, "value": 2}]


def test_prometheus_rendering_reads_back_in_seconds():
    m = ServiceMetrics()
    for ttfa in (42.0, 42.0, 180.0):
        m.observe_done({**DONE, "ttfa_ms": ttfa})
    m.observe_error("too_many_streams")
    state = {"serving": True, "supervisor": {"processes": {"coordinator": {"restarts": 0}, "gateway": {"restarts": 2}}},
             "metrics": m.snapshot(gauges={"open_streams": 1, "gpu_memory_bytes": {"w0": 2048}},
                                   totals={"worker_restarts": 4})}
    fams = families(render(True, state))
    ttfa = fams["xtts_ttfa_seconds"]
    assert ttfa[("xtts_ttfa_seconds_count", (("profile", "fast"),))] == 3
    assert abs(ttfa[("xtts_ttfa_seconds_sum", (("profile", "fast"),))] - 0.264) < 1e-9
    assert ttfa[("xtts_ttfa_seconds_bucket", (("le", "0.05"), ("profile", "fast")))] == 2
    assert ttfa[("xtts_ttfa_seconds_bucket", (("le", "+Inf"), ("profile", "fast")))] == 3
    assert fams["xtts_errors"][("xtts_errors_total", (("code", "too_many_streams"),))] == 1
    assert fams["xtts_process_restarts"][("xtts_process_restarts_total", (("process", "gateway"),))] == 2
    assert fams["xtts_worker_restarts"][("xtts_worker_restarts_total", ())] == 4
    assert fams["xtts_open_streams"][("xtts_open_streams", ())] == 1
    assert fams["xtts_gpu_memory_bytes"][("xtts_gpu_memory_bytes", (("worker", "w0"),))] == 2048
    assert fams["xtts_healthy"][("xtts_healthy", ())] == 1 and fams["xtts_serving"][("xtts_serving", ())] == 1


def test_rendering_an_empty_or_old_status_still_parses():
    fams = families(render(False, {}))
    assert fams["xtts_healthy"][("xtts_healthy", ())] == 0
